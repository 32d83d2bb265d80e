"""What the real-mount tests share: the bundled cases they use, copies of images, loop
devices, mount(8), /proc/mounts, the daemon's pid, checking contents and images."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers.cases import Case, case_by_id, zone_layout
from helpers.machine import holder_pids, require, run, wait_for

KMSG = case_by_id("kmsg-deflate-3oops")
PLAIN = case_by_id("kmsg-plain-3oops")
I386 = case_by_id("i386-all-fronts")
ALL_FRONTS = case_by_id("x86_64-all-fronts")


def unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def proc_mount(mnt: str | os.PathLike) -> tuple[str, str, list[str]] | None:
    """(source, type, options) of the mount at `mnt` in /proc/mounts."""
    want = os.path.realpath(mnt)
    found = None
    with open("/proc/mounts") as fh:
        for line in fh:
            source, target, fstype, opts, *_ = line.split()
            if unescape(target) == want:
                found = (unescape(source), fstype, opts.split(","))
    return found


def wait_gone(pids: list[int], timeout: float = 10) -> bool:
    def gone() -> bool:
        for pid in pids:
            try:
                with open(f"/proc/{pid}/stat") as fh:
                    if fh.read().rsplit(")", 1)[1].split()[0] != "Z":
                        return False
            except OSError:
                pass
        return True
    return wait_for(gone, timeout)


def daemon_pid(source: str | os.PathLike) -> int:
    pids = [p for p in holder_pids(source) if p != os.getpid()]
    assert len(pids) == 1, f"expected one pstorefs daemon holding {source}, found {pids}"
    return pids[0]


def copy_image(tmp: Path, case: Case, name: str = "image.bin", as_name: str | None = None
               ) -> Path:
    return case.copy(name, tmp / (as_name or f"{case.id}-{name}"))


@contextlib.contextmanager
def loop_device(path: str | os.PathLike, *flags: str) -> Iterator[str]:
    require(shutil.which("losetup") is not None, "losetup (util-linux)")
    require(os.path.exists("/dev/loop-control"), "loop devices (/dev/loop-control)")
    r = run(["losetup", "-f", "--show", *flags, str(path)])
    assert r.returncode == 0, f"losetup failed: {r.stderr}"
    dev = r.stdout.strip()
    try:
        yield dev
    finally:
        wait_gone(holder_pids(dev))
        run(["losetup", "-d", dev])


def first_diff(a: bytes, b: bytes) -> int:
    return next((i for i in range(min(len(a), len(b))) if a[i] != b[i]), min(len(a), len(b)))


def assert_same_image(got: bytes, want: bytes, what: str) -> None:
    if got != want:
        diffs = [i for i in range(min(len(got), len(want))) if got[i] != want[i]]
        pytest.fail(f"{what}: {len(diffs)} bytes differ (sizes {len(got)}/{len(want)}), "
                    f"first at {diffs[:1] or min(len(got), len(want))}")


ODD_READS = ((0, 1), (1, 4099), (3, 7), (511, 513), (4095, 2), (4097, 65539))


def check_contents(case: Case, mnt: Path, t0: int, t1: int) -> None:
    """Listing, bytes, sizes, modes, owners and times exactly as the kernel showed them."""
    files = case.meta["files"]
    assert sorted(os.listdir(mnt)) == sorted(f["name"] for f in files)
    st = os.stat(mnt)
    assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o750
    assert (st.st_uid, st.st_gid) == (0, 0)
    assert t0 <= st.st_mtime_ns <= t1, "directory mtime is not the mount time"
    for f in files:
        path = mnt / f["name"]
        want = case.files[f["name"]]
        got = path.read_bytes()
        assert got == want, (f"{f['name']}: got {len(got)} B, kernel {len(want)} B, first "
                             f"difference at byte {first_diff(got, want)}")
        st = os.stat(path)
        assert stat.S_ISREG(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == int(f["mode"], 8) == 0o444
        assert (st.st_uid, st.st_gid) == (0, 0)
        assert st.st_nlink == 1
        assert st.st_size == len(want) == f["content_bytes"], f"{f['name']}: st_size"
        if f["mtime_ns"] is not None:
            assert st.st_mtime_ns == f["mtime_ns"], f"{f['name']}: mtime"
        else:
            assert t0 <= st.st_mtime_ns <= t1, f"{f['name']}: mtime is not the mount time"
        n = len(want)
        fd = os.open(path, os.O_RDONLY)
        try:
            offsets = [(off, size) for off, size in ODD_READS]
            offsets += [(n // 3, 4099), (n // 2 + 1, 1), (max(n - 7, 0), 4099),
                        (max(n - 1, 0), 10), (n, 4096), (n + 13, 4096)]
            for off, size in offsets:
                assert os.pread(fd, size, off) == want[off:off + size], (f["name"], off, size)
            os.lseek(fd, 0, os.SEEK_SET)
            chunks, total = [], 0
            while (chunk := os.read(fd, 1000)) and total <= n:  # bounded: a bad fs never ends
                chunks.append(chunk)
                total += len(chunk)
            assert b"".join(chunks) == want, f"{f['name']}: 1000-byte sequential reads"
        finally:
            os.close(fd)


def opts_without(case: Case, *keys: str) -> str:
    return ",".join(kv for kv in case.options.split(",") if kv.split("=")[0] not in keys)


def dmesg_offsets(case: Case) -> list[int]:
    return [z.offset for z in zone_layout(case) if z.type == "dmesg"]


def poke(path: Path, offset: int, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
        os.fsync(fd)
    finally:
        os.close(fd)


def zone_changes_allowed(case: Case, before: bytes, after: bytes) -> list[str]:
    """Problems, if any: every zone header is as it was or erased (datalen 0, and for a
    ring zone start 0), and nothing else of the image changed."""
    problems = []
    covered = 0
    for z in zone_layout(case, len(before)):
        a, b = before[z.offset:z.offset + 12], after[z.offset:z.offset + 12]
        if a != b:
            sig_kept = a[:4] == b[:4]
            datalen_zero = b[4:8] == bytes(4)
            start_ok = b[8:12] == a[8:12] or (z.type != "dmesg" and b[8:12] == bytes(4))
            if not (sig_kept and datalen_zero and start_ok):
                problems.append(f"{z.type} zone at {z.offset:#x}: header torn: "
                                f"{a.hex()} -> {b.hex()}")
        if before[z.offset + 12:z.offset + z.size] != after[z.offset + 12:z.offset + z.size]:
            problems.append(f"{z.type} zone at {z.offset:#x}: body modified")
        covered = max(covered, z.offset + z.size)
    if before[covered:] != after[covered:]:
        problems.append("bytes after the last zone modified")
    return problems
