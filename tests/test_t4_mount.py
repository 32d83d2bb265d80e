"""Real FUSE mounts: the `pstorefs` CLI, mount(8) through mount.fuse3, /etc/fstab, loop
devices and systemd-pstore, checked against what the kernel showed for each bundled case.

Everything here needs root, /dev/fuse, fuse3, loop devices and systemd-pstore; a missing
piece fails the test (conftest.require), it never skips.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import re
import shutil
import signal
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import (
    CASES,
    ERASE_CASES,
    PSTOREFS,
    ZONE_SIG,
    Case,
    case_by_id,
    expected_after_erase,
    holder_pids,
    mounted,
    require,
    require_fuse,
    run,
    sha256,
    two_cpu_ftrace_image,
    unmount,
    wait_for,
    zone_layout,
)

from pstorefs import __version__

KMSG = case_by_id("kmsg-deflate-3oops")
PLAIN = case_by_id("kmsg-plain-3oops")
I386 = case_by_id("i386-all-fronts")
ALL_FRONTS = case_by_id("x86_64-all-fronts")
SYSTEMD_PSTORE = "/lib/systemd/systemd-pstore"
FSTAB = Path("/etc/fstab")

_fstab_lock = threading.Lock()


@pytest.fixture(autouse=True)
def _fuse_machine(tmp_path: Path) -> Iterator[None]:
    """Needs FUSE; afterwards no mount may be left under the test's directory, not even
    a dead one (which os.path.ismount does not see)."""
    require_fuse()
    yield
    top = os.path.realpath(tmp_path)
    with open("/proc/mounts") as fh:
        left = [_unescape(line.split()[1]) for line in fh]
    for target in reversed([t for t in left if t.startswith(top + os.sep)]):
        run(["fusermount3", "-uz", target])


# -- helpers ----------------------------------------------------------------------------
def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def proc_mount(mnt: str | os.PathLike) -> tuple[str, str, list[str]] | None:
    """(source, type, options) of the mount at `mnt` in /proc/mounts."""
    want = os.path.realpath(mnt)
    found = None
    with open("/proc/mounts") as fh:
        for line in fh:
            source, target, fstype, opts, *_ = line.split()
            if _unescape(target) == want:
                found = (_unescape(source), fstype, opts.split(","))
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
    dest = tmp / (as_name or f"{case.id}-{name}")
    shutil.copyfile(case.dir / name, dest)
    return dest


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


@contextlib.contextmanager
def helper_mounted(source: str | os.PathLike, mnt: Path, options: str | None
                   ) -> Iterator[Path]:
    """`mount -t fuse.pstorefs -o OPTIONS SOURCE MNT` (mount(8) -> mount.fuse3)."""
    require(shutil.which("mount.fuse3") is not None, "mount.fuse3 (Debian package fuse3)")
    mnt.mkdir(exist_ok=True)
    cmd = ["mount", "-t", "fuse.pstorefs"] + (["-o", options] if options else [])
    r = run([*cmd, str(source), str(mnt)])
    assert r.returncode == 0, f"{cmd}: rc {r.returncode}: {r.stderr}"
    assert os.path.ismount(mnt), "mount returned 0 but nothing is mounted"
    pids = holder_pids(source)
    try:
        yield mnt
    finally:
        if os.path.ismount(mnt):
            run(["umount", str(mnt)])
        unmount(mnt)
        wait_gone(pids)


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


def assert_refused(cmd: list[str], *, image: Path | None = None, mnt: Path | None = None,
                   **kw) -> str:
    """The command fails with one clear line on stderr, mounts nothing, writes nothing."""
    before = sha256(image) if image else None
    r = run(cmd, timeout=30, **kw)
    was_mounted = bool(mnt) and os.path.ismount(mnt)
    if was_mounted:
        unmount(mnt)
    out = r.stderr + r.stdout
    assert r.returncode != 0, f"{cmd}: accepted (rc 0): {out!r}"
    assert not was_mounted, f"{cmd}: failed but left a mount"
    assert "Traceback" not in out, f"{cmd}: traceback:\n{out}"
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"{cmd}: want one line on stderr, got {r.stderr!r}"
    if image:
        assert sha256(image) == before, f"{cmd}: the image was modified"
    return lines[0]


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


# -- every case through the CLI -----------------------------------------------------------
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_case_contents(case: Case, tmp_path: Path, mnt: Path) -> None:
    img = copy_image(tmp_path, case)
    before = sha256(img)
    t0 = time.time_ns()
    with mounted(img, mnt, case.options) as m:
        t1 = time.time_ns()
        check_contents(case, m, t0, t1)
        source, fstype, opts = proc_mount(m)
        assert (source, fstype) == (str(img), "fuse.pstorefs") and "rw" in opts
        vfs = os.statvfs(m)
        assert vfs.f_namemax >= 255
    assert sha256(img) == before, "the image changed although nothing was removed"


@pytest.mark.parametrize("case", ERASE_CASES, ids=lambda c: c.id)
def test_case_erase(case: Case, tmp_path: Path, mnt: Path) -> None:
    er = case.meta["erase"]
    img = copy_image(tmp_path, case, er["image_before"])
    with mounted(img, mnt, case.options) as m:
        handles = {}
        for name in er["remove"]:
            handles[name] = fh = open(m / name, "rb")
            fh.read(100)
        try:
            contents = {}
            for name, fh in handles.items():
                fh.seek(0)
                contents[name] = fh.read()
            for name in er["remove"]:
                os.unlink(m / name)
                assert not (m / name).exists()
                with pytest.raises(FileNotFoundError):
                    os.unlink(m / name)
            assert sorted(os.listdir(m)) == sorted(er["names_after"])
            for name, fh in handles.items():  # still readable through open handles
                fh.seek(0)
                assert fh.read() == contents[name], f"{name}: open handle after rm"
        finally:
            for fh in handles.values():
                fh.close()
    assert_same_image(img.read_bytes(), expected_after_erase(case), f"{case.id}: after rm")
    with mounted(img, mnt, case.options) as m:
        assert sorted(os.listdir(m)) == sorted(er["names_after"]), "removed records came back"
        if er["image_before"] == "image.bin":
            for name in er["names_after"]:
                assert (m / name).read_bytes() == case.files[name]


def test_ftrace_without_system_map_has_consistent_size(tmp_path: Path, mnt: Path) -> None:
    img = copy_image(tmp_path, ALL_FRONTS)
    with mounted(img, mnt, opts_without(ALL_FRONTS, "system_map")) as m:
        for name in ALL_FRONTS.files:
            data = (m / name).read_bytes()
            assert os.stat(m / name).st_size == len(data), name
            if not name.startswith("ftrace-"):
                assert data == ALL_FRONTS.files[name]
        text = (m / "ftrace-pstore_blk-0").read_text()
        assert text.startswith("CPU:0 ts:") and text.endswith("\n")


def test_copy_mmap_and_sendfile(tmp_path: Path, mnt: Path) -> None:
    """What systemd-pstore's copy and other readers use: sendfile, copy_file_range, mmap."""
    import mmap
    img = copy_image(tmp_path, ALL_FRONTS)
    with mounted(img, mnt, ALL_FRONTS.options) as m:
        for name, want in ALL_FRONTS.files.items():
            dest = tmp_path / f"copy-{name}"
            shutil.copyfile(m / name, dest)
            assert dest.read_bytes() == want, f"{name}: shutil.copyfile (sendfile)"
            with open(m / name, "rb") as src, open(dest, "wb") as out:
                left = len(want)
                with contextlib.suppress(OSError):
                    while left and (n := os.copy_file_range(src.fileno(), out.fileno(), left)):
                        left -= n
                if left:
                    out.seek(0)
                    out.truncate()
                    shutil.copyfileobj(src, out)
            assert dest.read_bytes() == want, f"{name}: copy_file_range"
            with open(m / name, "rb") as fh, mmap.mmap(fh.fileno(), 0, prot=mmap.PROT_READ) as mm:
                assert mm[:] == want, f"{name}: mmap"


def _two_cpu_text(records_per_cpu: int = 100) -> bytes:
    lines = []
    for k in range(2 * records_per_cpu):
        ip, pip = 0xFFFFFFFF81000000 + 16 * k, 0xFFFFFFFF82000000 + k // 2
        lines.append(f"CPU:{k % 2} ts:{k} {ip:08x}  {pip:08x}  0x{ip:x} <- 0x{pip:x}\n")
    return "".join(lines).encode()


def test_ftrace_of_two_cpus_merges_and_rm_erases_every_zone(tmp_path: Path, mnt: Path
                                                             ) -> None:
    data, opts = two_cpu_ftrace_image()
    img = tmp_path / "two-cpus.bin"
    img.write_bytes(data)
    area = next(z for z in zone_layout(ALL_FRONTS) if z.type == "ftrace")
    cpu_zones = [area.offset, area.offset + area.size // 2]
    with mounted(img, mnt, opts) as m:
        assert sorted(os.listdir(m)) == sorted(ALL_FRONTS.files)
        text = (m / "ftrace-pstore_blk-0").read_bytes()
        assert text == _two_cpu_text()
        assert os.stat(m / "ftrace-pstore_blk-0").st_size == len(text)
        os.unlink(m / "ftrace-pstore_blk-0")
        assert "ftrace-pstore_blk-0" not in os.listdir(m)
    now = img.read_bytes()
    want = bytearray(data)
    for at in cpu_zones:
        want[at + 4:at + 12] = bytes(8)  # datalen and start of every CPU zone
    assert_same_image(now, bytes(want), "rm of a two-CPU ftrace file")
    with mounted(img, mnt, opts) as m:
        assert "ftrace-pstore_blk-0" not in os.listdir(m), "CPU 1's zone brought it back"


def test_rm_of_dmesg_writes_datalen_only(tmp_path: Path, mnt: Path) -> None:
    """A dmesg zone's `start` is not the kernel's to erase: junk there stays."""
    img = copy_image(tmp_path, PLAIN)
    for at in dmesg_offsets(PLAIN)[:3]:
        poke(img, at + 8, struct.pack("<i", 0x1234))
    before = img.read_bytes()
    with mounted(img, mnt, PLAIN.options) as m:
        assert sorted(os.listdir(m)) == sorted(PLAIN.files)
        for name in PLAIN.files:
            assert (m / name).read_bytes() == PLAIN.files[name]
            os.unlink(m / name)
    want = bytearray(before)
    for at in dmesg_offsets(PLAIN)[:3]:
        want[at + 4:at + 8] = bytes(4)
    assert_same_image(img.read_bytes(), bytes(want), "rm of dmesg zones with a start")


SIZE_KEYS = ("kmsg_size", "pmsg_size", "console_size", "ftrace_size", "nr_cpus")


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_layout_detected_without_size_options(case: Case, tmp_path: Path, mnt: Path) -> None:
    """pstorecheck's `autodetect`: with no size options the layout is found from the
    image itself, and listing, contents and erase are still the kernel's."""
    opts = opts_without(case, *SIZE_KEYS)
    img = copy_image(tmp_path, case)
    before = sha256(img)
    t0 = time.time_ns()
    with mounted(img, mnt, opts) as m:
        check_contents(case, m, t0, time.time_ns())
    assert sha256(img) == before
    if "erase" not in case.meta:
        return
    er = case.meta["erase"]
    img = copy_image(tmp_path, case, er["image_before"])
    with mounted(img, mnt, opts) as m:
        for name in er["remove"]:
            os.unlink(m / name)
        assert sorted(os.listdir(m)) == sorted(er["names_after"])
    assert_same_image(img.read_bytes(), expected_after_erase(case), f"{case.id}: after rm")
    with mounted(img, mnt, opts) as m:
        assert sorted(os.listdir(m)) == sorted(er["names_after"])


# -- options --------------------------------------------------------------------------------
def test_default_name_is_blkoops(tmp_path: Path, mnt: Path) -> None:
    img = copy_image(tmp_path, KMSG)
    for opts in (opts_without(KMSG, "name"), None):
        with mounted(img, mnt, opts) as m:
            want = {n.replace("-pstore_blk-", "-blkoops-"): d for n, d in KMSG.files.items()}
            assert sorted(os.listdir(m)) == sorted(want) == [
                "dmesg-blkoops-0", "dmesg-blkoops-1", "dmesg-blkoops-2"]
            for name, data in want.items():
                assert (m / name).read_bytes() == data
    with mounted(img, mnt) as m:
        os.unlink(m / "dmesg-blkoops-0")
        assert sorted(os.listdir(m)) == ["dmesg-blkoops-1", "dmesg-blkoops-2"]
    assert_same_image(img.read_bytes(), expected_after_erase(KMSG), "rm dmesg-blkoops-0")


def test_name_option(tmp_path: Path, mnt: Path) -> None:
    img = copy_image(tmp_path, ALL_FRONTS)
    with mounted(img, mnt, opts_without(ALL_FRONTS, "name") + ",name=crashlog") as m:
        want = {n.replace("-pstore_blk-", "-crashlog-"): d for n, d in ALL_FRONTS.files.items()}
        assert sorted(os.listdir(m)) == sorted(want)
        for name, data in want.items():
            assert (m / name).read_bytes() == data


def test_generic_mount_options_are_ignored(tmp_path: Path, mnt: Path) -> None:
    img = copy_image(tmp_path, ALL_FRONTS)
    noise = ("dev,suid,rw,defaults,noatime,nofail,_netdev,x-systemd.automount,"
             "x-systemd.device-timeout=5,auto,noauto,relatime,exec,nodev,nosuid,async,"
             "nodiratime,comment=pstore")
    t0 = time.time_ns()
    with mounted(img, mnt, noise, extra=("-o", ALL_FRONTS.options)) as m:
        check_contents(ALL_FRONTS, m, t0, time.time_ns())
    # the last of a key wins, over several -o groups
    with mounted(img, mnt, "kmsg_size=4", extra=("-o", ALL_FRONTS.options)) as m:
        assert sorted(os.listdir(m)) == sorted(ALL_FRONTS.files)


def test_ro_option(tmp_path: Path, mnt: Path) -> None:
    img = copy_image(tmp_path, ALL_FRONTS)
    before = sha256(img)
    with mounted(img, mnt, ALL_FRONTS.options + ",ro") as m:
        assert "ro" in proc_mount(m)[2]
        for name in ALL_FRONTS.files:
            with pytest.raises(OSError) as info:
                os.unlink(m / name)
            assert info.value.errno == errno.EROFS, name
        assert sorted(os.listdir(m)) == sorted(ALL_FRONTS.files)
        refusals = _try_every_write(m, "dmesg-pstore_blk-0")
        assert all(code == errno.EROFS for code in refusals.values()), refusals
        assert sorted(os.listdir(m)) == sorted(ALL_FRONTS.files)
    assert sha256(img) == before


def _try_every_write(m: Path, name: str) -> dict[str, int]:
    """Each write operation a user could try on the mount, with the errno it got."""
    path = m / name
    other = sorted(n for n in os.listdir(m) if n != name)[0]
    ops = {
        "open for writing": lambda: open(path, "wb"),
        "open for appending": lambda: open(path, "ab"),
        "open read-write": lambda: open(path, "r+b"),
        "create": lambda: open(m / "new-file", "xb"),
        "truncate": lambda: os.truncate(path, 0),
        "rename": lambda: os.rename(path, m / "renamed"),
        "rename over": lambda: os.rename(path, m / other),
        "chmod": lambda: os.chmod(path, 0o666),
        "chown": lambda: os.chown(path, 1, 1),
        "utime": lambda: os.utime(path, (0, 0)),
        "mkdir": lambda: os.mkdir(m / "dir"),
        "mknod": lambda: os.mknod(m / "node", 0o644 | stat.S_IFREG),
        "setxattr": lambda: os.setxattr(path, "user.test", b"1"),
        "link": lambda: os.link(path, m / "hardlink"),
        "symlink": lambda: os.symlink(name, m / "symlink"),
        "chmod dir": lambda: os.chmod(m, 0o777),
    }
    codes = {}
    for what, op in ops.items():
        try:
            result = op()
        except OSError as exc:
            codes[what] = exc.errno
        else:
            with contextlib.suppress(Exception):
                result.close()
            pytest.fail(f"{what} succeeded on a pstorefs mount")
    return codes


def test_every_other_write_refused(tmp_path: Path, mnt: Path) -> None:
    img = copy_image(tmp_path, ALL_FRONTS)
    before = sha256(img)
    with mounted(img, mnt, ALL_FRONTS.options) as m:
        refusals = _try_every_write(m, "dmesg-pstore_blk-0")
        bad = {w: errno.errorcode.get(c) for w, c in refusals.items()
               if c not in (errno.EPERM, errno.EACCES, errno.EROFS)}
        assert not bad, f"refused with unexpected errnos: {bad}"
        assert sorted(os.listdir(m)) == sorted(ALL_FRONTS.files)
        assert (m / "dmesg-pstore_blk-0").read_bytes() == ALL_FRONTS.files["dmesg-pstore_blk-0"]
        assert stat.S_IMODE(os.stat(m).st_mode) == 0o750
    assert sha256(img) == before


def test_uid_gid_umask(tmp_path: Path, mnt: Path) -> None:
    img = copy_image(tmp_path, KMSG)
    with mounted(img, mnt, KMSG.options + ",uid=1234,gid=4321,umask=027") as m:
        st = os.stat(m)
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1234, 4321, 0o750)
        for name in KMSG.files:
            st = os.stat(m / name)
            assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1234, 4321, 0o440)
    with mounted(img, mnt, KMSG.options + ",umask=0") as m:
        assert stat.S_IMODE(os.stat(m).st_mode) == 0o777
        assert {stat.S_IMODE(os.stat(m / n).st_mode) for n in KMSG.files} == {0o444}
    with mounted(img, mnt, KMSG.options + ",uid=nobody,gid=nogroup,umask=0222") as m:
        st = os.stat(m / "dmesg-pstore_blk-0")
        assert (st.st_uid, st.st_gid) == (65534, 65534)
        assert stat.S_IMODE(st.st_mode) == 0o444
        assert stat.S_IMODE(os.stat(m).st_mode) == 0o555


_PROBE = r"""
import json, os, sys, hashlib
mnt = sys.argv[1]
out = {}
def attempt(key, fn):
    try:
        out[key] = ["ok", fn()]
    except OSError as exc:
        out[key] = ["err", exc.errno]
attempt("listdir", lambda: sorted(os.listdir(mnt)))
for name in sys.argv[2:]:
    p = os.path.join(mnt, name)
    attempt("stat " + name, lambda: os.stat(p).st_size)
    attempt("read " + name, lambda: hashlib.sha256(open(p, "rb").read()).hexdigest())
print(json.dumps(out))
"""


def _as_nobody(mnt: Path, names: list[str]) -> dict[str, list]:
    r = subprocess.run([sys.executable, "-c", _PROBE, str(mnt), *names], capture_output=True,
                       text=True, timeout=30, user="nobody", group="nogroup", extra_groups=[],
                       cwd="/")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.fixture
def public_mnt() -> Iterator[Path]:
    """A mount point that user nobody can reach (tmp_path's parents are 0700)."""
    top = Path(tempfile.mkdtemp(prefix="pstorefs-t4-", dir="/tmp"))
    top.chmod(0o755)
    (top / "mnt").mkdir()
    (top / "mnt").chmod(0o755)
    try:
        yield top / "mnt"
    finally:
        unmount(top / "mnt")
        shutil.rmtree(top, ignore_errors=True)


def test_allow_other(tmp_path: Path, public_mnt: Path) -> None:
    import hashlib
    img = copy_image(tmp_path, KMSG)
    names = sorted(KMSG.files)
    digests = {n: hashlib.sha256(KMSG.files[n]).hexdigest() for n in names}
    # allow_other and a mode that lets others in: nobody reads everything
    with mounted(img, public_mnt, KMSG.options + ",allow_other,umask=0"):
        got = _as_nobody(public_mnt, names)
        assert got["listdir"] == ["ok", names]
        for n in names:
            assert got[f"read {n}"] == ["ok", digests[n]], n
    # allow_other with group access
    with mounted(img, public_mnt, KMSG.options + ",allow_other,gid=nogroup"):
        got = _as_nobody(public_mnt, names)
        assert got["listdir"] == ["ok", names]
        assert all(got[f"read {n}"] == ["ok", digests[n]] for n in names), got
    # allow_other keeps the kernel's 0750 root:root directory closed to others
    with mounted(img, public_mnt, KMSG.options + ",allow_other"):
        got = _as_nobody(public_mnt, names)
        assert got["listdir"] == ["err", errno.EACCES], got
        assert all(got[f"read {n}"] == ["err", errno.EACCES] for n in names), got
    # without allow_other, FUSE keeps every other user out whatever the modes
    with mounted(img, public_mnt, KMSG.options + ",umask=0"):
        got = _as_nobody(public_mnt, names)
        assert got["listdir"] == ["err", errno.EACCES], got
        for n in names:
            assert got[f"stat {n}"] == ["err", errno.EACCES], got
            assert got[f"read {n}"] == ["err", errno.EACCES], got


def test_fsname_subtype_and_source_path(tmp_path: Path, mnt: Path) -> None:
    img = copy_image(tmp_path, KMSG, as_name="my image,1.bin")
    with mounted(img, mnt, KMSG.options + ",fsname=crashes,subtype=pstorecheck") as m:
        source, fstype, _ = proc_mount(m)
        assert (source, fstype) == ("crashes", "fuse.pstorecheck")
        assert sorted(os.listdir(m)) == sorted(KMSG.files)
    # a relative source shows as its absolute path; commas and spaces survive
    r = run([PSTOREFS, img.name, str(mnt), "-o", KMSG.options], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    try:
        assert proc_mount(mnt)[:2] == (str(img), "fuse.pstorefs")
        assert sorted(os.listdir(mnt)) == sorted(KMSG.files)
    finally:
        unmount(mnt, img)


# -- unmounting and signals -------------------------------------------------------------------
@pytest.mark.parametrize("how", ["fusermount3 -u", "umount", "SIGTERM", "SIGINT"])
def test_daemon_stops_cleanly(how: str, tmp_path: Path, mnt: Path) -> None:
    img = copy_image(tmp_path, KMSG)
    with mounted(img, mnt, KMSG.options) as m:
        pid = daemon_pid(img)
        os.unlink(m / "dmesg-pstore_blk-0")
        if how.startswith("SIG"):
            os.kill(pid, getattr(signal, how))
        else:
            r = run([*how.split(), str(m)])
            assert r.returncode == 0, r.stderr
        assert wait_for(lambda: not os.path.ismount(m), 10), f"{how}: still mounted"
        assert wait_gone([pid]), f"{how}: the daemon did not exit"
    assert proc_mount(mnt) is None
    assert_same_image(img.read_bytes(), expected_after_erase(KMSG), f"rm, then {how}")
    with mounted(img, mnt, KMSG.options) as m:  # the lock went with the daemon
        assert sorted(os.listdir(m)) == ["dmesg-pstore_blk-1", "dmesg-pstore_blk-2"]


@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT", "fusermount3 -u"])
@pytest.mark.parametrize("flag", ["-f", "-d"])
def test_foreground(flag: str, how: str, tmp_path: Path, mnt: Path) -> None:
    img = copy_image(tmp_path, KMSG)
    proc = subprocess.Popen([PSTOREFS, str(img), str(mnt), "-o", KMSG.options, flag],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: os.path.ismount(mnt) or proc.poll() is not None, 15)
        assert proc.poll() is None, f"{flag}: exited {proc.returncode}: {proc.stderr.read()}"
        assert os.path.ismount(mnt)
        assert holder_pids(img) == [proc.pid], "-f must serve from the process itself"
        assert (mnt / "dmesg-pstore_blk-1").read_bytes() == KMSG.files["dmesg-pstore_blk-1"]
        os.unlink(mnt / "dmesg-pstore_blk-0")
        if how.startswith("SIG"):
            proc.send_signal(getattr(signal, how))
        else:
            assert run([*how.split(), str(mnt)]).returncode == 0
        rc = proc.wait(15)
        _, err = proc.communicate(timeout=5)
        assert rc == 0, f"{flag} + {how}: exit {rc}: {err}"
        assert "Traceback" not in err, err
        assert not os.path.ismount(mnt) and proc_mount(mnt) is None
        if flag == "-d":
            assert err.strip(), "-d logs nothing"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        unmount(mnt)
    assert_same_image(img.read_bytes(), expected_after_erase(KMSG), f"{flag} + {how}")


def test_help_and_version() -> None:
    r = run([PSTOREFS, "--help"])
    assert r.returncode == 0 and not r.stderr
    for word in ("SOURCE", "MOUNTPOINT", "kmsg_size", "pmsg_size", "console_size",
                 "ftrace_size", "nr_cpus", "name=", "system_map", "abi=", "ro", "uid=",
                 "umask=", "allow_other", "-f"):
        assert word in r.stdout, word
    r = run([PSTOREFS, "--version"])
    assert r.returncode == 0
    assert r.stdout.strip() == f"pstorefs {__version__}"


# -- bad input ---------------------------------------------------------------------------------
KOPTS = KMSG.options


def _bad_inputs() -> dict[str, object]:
    """label -> function(tmp, img, mnt) -> the command line."""
    k = lambda v: re.sub(r"kmsg_size=[^,]*", f"kmsg_size={v}", KOPTS)  # noqa: E731

    def small(tmp: Path, img: Path, mnt: Path) -> list[str]:
        (tmp / "small.bin").write_bytes(img.read_bytes()[:4095])
        return [PSTOREFS, str(tmp / "small.bin"), str(mnt), "-o", KOPTS]

    def empty(tmp: Path, img: Path, mnt: Path) -> list[str]:
        (tmp / "empty.bin").write_bytes(b"")
        return [PSTOREFS, str(tmp / "empty.bin"), str(mnt), "-o", KOPTS]

    def mnt_is_file(tmp: Path, img: Path, mnt: Path) -> list[str]:
        (tmp / "file").write_bytes(b"x")
        return [PSTOREFS, str(img), str(tmp / "file"), "-o", KOPTS]

    def cli(*extra: str, source: str | None = None):
        return lambda tmp, img, mnt: [PSTOREFS, source or str(img), str(mnt), *extra]

    return {
        "missing source": lambda tmp, img, mnt: [PSTOREFS, str(tmp / "nope"), str(mnt),
                                                 "-o", KOPTS],
        "source is a directory": lambda tmp, img, mnt: [PSTOREFS, str(tmp), str(mnt),
                                                        "-o", KOPTS],
        "source is a character device": cli("-o", KOPTS, source="/dev/null"),
        "empty source": empty,
        "source smaller than 4 KiB": small,
        "missing mount point": lambda tmp, img, mnt: [PSTOREFS, str(img), str(tmp / "nomnt"),
                                                      "-o", KOPTS],
        "mount point is a file": mnt_is_file,
        "unknown option": cli("-o", KOPTS + ",bogus_option=1"),
        "unknown flag option": cli("-o", KOPTS + ",bogus"),
        "kmsg_size=abc": cli("-o", k("abc")),
        "kmsg_size without value": cli("-o", "kmsg_size"),
        "kmsg_size=0": cli("-o", k("0")),
        "kmsg_size=-4": cli("-o", k("-4")),
        "every size off": cli("-o", "kmsg_size=0,pmsg_size=-1,console_size=0,ftrace_size=0"),
        "kmsg_size larger than the image": cli("-o", k("4096")),
        "pmsg_size larger than the image": cli("-o", KOPTS + ",pmsg_size=2048"),
        "no room left for dmesg": cli("-o", KOPTS + ",console_size=1024"),
        "ftrace too small for nr_cpus": cli("-o", "kmsg_size=0,ftrace_size=4,nr_cpus=1024"),
        "nr_cpus=0": cli("-o", KOPTS + ",nr_cpus=0"),
        "nr_cpus=abc": cli("-o", KOPTS + ",nr_cpus=abc"),
        "abi=vax": cli("-o", KOPTS + ",abi=vax"),
        "uid=nosuchuser": cli("-o", KOPTS + ",uid=nosuchuser"),
        "gid=nosuchgroup": cli("-o", KOPTS + ",gid=nosuchgroup"),
        "umask=9": cli("-o", KOPTS + ",umask=9"),
        "name with a slash": cli("-o", KOPTS + ",name=a/b"),
        "missing system_map": cli("-o", KOPTS + ",system_map=/nonexistent/System.map"),
        "system_map not a System.map": lambda tmp, img, mnt: [
            PSTOREFS, str(img), str(mnt), "-o", f"{KOPTS},system_map={img}"],
        "no arguments": lambda tmp, img, mnt: [PSTOREFS],
        "one argument": lambda tmp, img, mnt: [PSTOREFS, str(img)],
        "extra argument": lambda tmp, img, mnt: [PSTOREFS, str(img), str(mnt), str(mnt),
                                                 "-o", KOPTS],
        "unknown flag": cli("-x"),
    }


BAD_INPUTS = _bad_inputs()


@pytest.mark.parametrize("label", list(BAD_INPUTS))
def test_bad_input_refused(label: str, tmp_path: Path, mnt: Path) -> None:
    img = copy_image(tmp_path, KMSG)
    cmd = BAD_INPUTS[label](tmp_path, img, mnt)
    assert_refused(cmd, image=img, mnt=mnt)
    assert proc_mount(mnt) is None


def test_unreadable_source_refused(public_mnt: Path) -> None:
    """As a user that may not read the source (root reads everything)."""
    top = public_mnt.parent
    img = copy_image(top, KMSG, as_name="secret.bin")
    img.chmod(0o600)
    before = sha256(img)
    line = assert_refused([PSTOREFS, str(img), str(public_mnt), "-o", KOPTS], image=img,
                          mnt=public_mnt, user="nobody", group="nogroup", extra_groups=[],
                          cwd="/")
    assert "denied" in line.lower() or "cannot" in line.lower(), line
    assert sha256(img) == before


def test_unbound_loop_device_refused(tmp_path: Path, mnt: Path) -> None:
    """A loop device with nothing behind it (size 0). Its node is made here, on a minor
    `losetup -f` never hands out while lower ones are free, so no other test can bind it
    in the meantime."""
    import fcntl
    require(os.path.exists("/dev/loop-control"), "loop devices (/dev/loop-control)")
    minor = 200 + os.getpid() % 50
    node = tmp_path / "loop-unbound"
    os.mknod(node, 0o600 | stat.S_IFBLK, os.makedev(7, minor))
    try:
        assert_refused([PSTOREFS, str(node), str(mnt), "-o", KOPTS], mnt=mnt)
    finally:
        ctl = os.open("/dev/loop-control", os.O_RDWR)
        try:
            with contextlib.suppress(OSError):
                fcntl.ioctl(ctl, 0x4C81, minor)  # LOOP_CTL_REMOVE
        finally:
            os.close(ctl)


def test_second_mount_of_the_same_image_refused(tmp_path: Path, mnt: Path) -> None:
    img = copy_image(tmp_path, KMSG)
    mnt2 = tmp_path / "mnt2"
    mnt2.mkdir()
    with mounted(img, mnt, KOPTS) as m:
        line = assert_refused([PSTOREFS, str(img), str(mnt2), "-o", KOPTS], mnt=mnt2)
        assert "use" in line, line
        # through another path to the same file, too
        link = tmp_path / "link.bin"
        link.symlink_to(img)
        assert_refused([PSTOREFS, str(link), str(mnt2), "-o", KOPTS], mnt=mnt2)
        hard = tmp_path / "hard.bin"
        os.link(img, hard)
        assert_refused([PSTOREFS, str(hard), str(mnt2), "-o", KOPTS + ",ro"], mnt=mnt2)
        # the first mount is unharmed
        assert (m / "dmesg-pstore_blk-2").read_bytes() == KMSG.files["dmesg-pstore_blk-2"]
        os.unlink(m / "dmesg-pstore_blk-0")
    assert_same_image(img.read_bytes(), expected_after_erase(KMSG), "first mount's rm")


def test_image_and_its_loop_device_are_one_source(tmp_path: Path, mnt: Path) -> None:
    img = copy_image(tmp_path, KMSG)
    mnt2 = tmp_path / "mnt2"
    mnt2.mkdir()
    with loop_device(img) as dev:
        # the image mounted directly: its loop device is refused
        with mounted(img, mnt, KOPTS) as m:
            assert_refused([PSTOREFS, dev, str(mnt2), "-o", KOPTS], image=img, mnt=mnt2)
            assert sorted(os.listdir(m)) == sorted(KMSG.files)
        # the loop device mounted: the image, and a second loop device on it, are refused
        with mounted(dev, mnt, KOPTS) as m:
            assert_refused([PSTOREFS, str(img), str(mnt2), "-o", KOPTS], image=img, mnt=mnt2)
            assert_refused([PSTOREFS, dev, str(mnt2), "-o", KOPTS], image=img, mnt=mnt2)
            with loop_device(img) as dev2:
                assert_refused([PSTOREFS, dev2, str(mnt2), "-o", KOPTS], image=img, mnt=mnt2)
            assert sorted(os.listdir(m)) == sorted(KMSG.files)
            assert proc_mount(m)[:2] == (dev, "fuse.pstorefs")


def test_exclusive_holder_of_the_device_refused(tmp_path: Path, mnt: Path) -> None:
    img = copy_image(tmp_path, KMSG)
    with loop_device(img) as dev:
        fd = os.open(dev, os.O_RDONLY | os.O_EXCL)
        try:
            line = assert_refused([PSTOREFS, dev, str(mnt), "-o", KOPTS], image=img, mnt=mnt)
            assert "use" in line or "busy" in line.lower(), line
        finally:
            os.close(fd)
        with mounted(dev, mnt, KOPTS) as m:
            # and pstorefs holds it exclusively in turn
            with pytest.raises(OSError) as info:
                os.close(os.open(dev, os.O_RDONLY | os.O_EXCL))
            assert info.value.errno == errno.EBUSY
            assert sorted(os.listdir(m)) == sorted(KMSG.files)


@pytest.mark.parametrize("how", ["losetup -r", "blockdev --setro", "immutable image"])
def test_read_only_source_mounts_read_only(how: str, tmp_path: Path, mnt: Path) -> None:
    img = copy_image(tmp_path, KMSG)
    before = sha256(img)
    with contextlib.ExitStack() as stack:
        if how == "immutable image":
            require(shutil.which("chattr") is not None, "chattr (e2fsprogs)")
            r = run(["chattr", "+i", str(img)])
            require(r.returncode == 0, f"chattr +i on {tmp_path} ({r.stderr.strip()})")
            stack.callback(run, ["chattr", "-i", str(img)])
            source = str(img)
        else:
            source = stack.enter_context(loop_device(img, *(["-r"] if "-r" in how else [])))
            if "setro" in how:
                assert run(["blockdev", "--setro", source]).returncode == 0
                stack.callback(run, ["blockdev", "--setrw", source])
        r = run([PSTOREFS, source, str(mnt), "-o", KOPTS])
        assert r.returncode == 0, r.stderr
        stack.callback(unmount, mnt, source)
        lines = [line for line in r.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and "read-only" in lines[0], f"want one warning: {r.stderr!r}"
        assert "Traceback" not in r.stderr
        assert os.path.ismount(mnt) and "ro" in proc_mount(mnt)[2]
        for name in KMSG.files:
            with pytest.raises(OSError) as info:
                os.unlink(mnt / name)
            assert info.value.errno == errno.EROFS
        assert sorted(os.listdir(mnt)) == sorted(KMSG.files)
        for name, data in KMSG.files.items():
            assert (mnt / name).read_bytes() == data
    assert sha256(img) == before


# -- mount(8), mount.fuse3 and fstab ---------------------------------------------------------
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_mount_helper_on_a_loop_device(case: Case, tmp_path: Path) -> None:
    img = copy_image(tmp_path, case)
    before = sha256(img)
    with loop_device(img) as dev:
        t0 = time.time_ns()
        with helper_mounted(dev, tmp_path / "mnt", case.options) as m:
            t1 = time.time_ns()
            check_contents(case, m, t0, t1)
            source, fstype, opts = proc_mount(m)
            assert (source, fstype) == (dev, "fuse.pstorefs") and "rw" in opts
    assert sha256(img) == before
    if "erase" not in case.meta:
        return
    er = case.meta["erase"]
    img = copy_image(tmp_path, case, er["image_before"])
    with loop_device(img) as dev:
        with helper_mounted(dev, tmp_path / "mnt", case.options) as m:
            for name in er["remove"]:
                os.unlink(m / name)
            assert sorted(os.listdir(m)) == sorted(er["names_after"])
        want = expected_after_erase(case)
        with open(dev, "rb") as fh:
            assert_same_image(fh.read(), want, f"{case.id}: {dev} after rm")
        with helper_mounted(dev, tmp_path / "mnt", case.options) as m:
            assert sorted(os.listdir(m)) == sorted(er["names_after"])
    assert_same_image(img.read_bytes(), want, f"{case.id}: backing file after rm")


def test_mount_helper_on_an_image_file_and_ro(tmp_path: Path) -> None:
    img = copy_image(tmp_path, ALL_FRONTS)
    before = sha256(img)
    t0 = time.time_ns()
    with helper_mounted(img, tmp_path / "mnt", ALL_FRONTS.options + ",nofail,_netdev") as m:
        check_contents(ALL_FRONTS, m, t0, time.time_ns())
        assert proc_mount(m)[:2] == (str(img), "fuse.pstorefs")
    with helper_mounted(img, tmp_path / "mnt", ALL_FRONTS.options + ",ro") as m:
        assert "ro" in proc_mount(m)[2]
        with pytest.raises(OSError) as info:
            os.unlink(m / "pmsg-pstore_blk-0")
        assert info.value.errno == errno.EROFS
    assert sha256(img) == before
    # a bad option through the helper: refused, nothing mounted
    r = run(["mount", "-t", "fuse.pstorefs", "-o", "bogus_option", str(img),
             str(tmp_path / "mnt")])
    assert r.returncode != 0 and not os.path.ismount(tmp_path / "mnt")
    assert "Traceback" not in r.stderr


@contextlib.contextmanager
def fstab_with(line: str) -> Iterator[None]:
    """/etc/fstab with `line` appended; the original is always put back."""
    with _fstab_lock:
        existed = FSTAB.exists()
        backup = FSTAB.read_bytes() if existed else b""
        try:
            FSTAB.write_bytes(backup + (b"" if not backup or backup.endswith(b"\n") else b"\n")
                              + line.encode() + b"\n")
            yield
        finally:
            if existed:
                FSTAB.write_bytes(backup)
            else:
                FSTAB.unlink(missing_ok=True)


@pytest.mark.parametrize("case,noise", [
    (KMSG, "nofail"),
    (ALL_FRONTS, "nofail,noauto,_netdev,x-systemd.device-timeout=5,defaults"),
], ids=["kmsg", "all-fronts-noisy"])
def test_fstab(case: Case, noise: str, tmp_path: Path) -> None:
    require(shutil.which("mount.fuse3") is not None, "mount.fuse3 (Debian package fuse3)")
    img = copy_image(tmp_path, case)
    before = sha256(img)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with loop_device(img) as dev, fstab_with(f"{dev} {mnt} fuse.pstorefs {case.options},"
                                             f"{noise} 0 0"):
        try:
            t0 = time.time_ns()
            r = run(["mount", str(mnt)])
            assert r.returncode == 0, f"mount {mnt}: {r.stderr}"
            check_contents(case, mnt, t0, time.time_ns())
            assert proc_mount(mnt)[:2] == (dev, "fuse.pstorefs")
            pids = holder_pids(dev)
            r = run(["umount", str(mnt)])
            assert r.returncode == 0, r.stderr
            assert not os.path.ismount(mnt) and wait_gone(pids)
            # by source: `mount DEV` finds the line, `umount DEV` finds the mount
            r = run(["mount", dev])
            assert r.returncode == 0, f"mount {dev}: {r.stderr}"
            assert os.path.ismount(mnt)
            assert sorted(os.listdir(mnt)) == sorted(case.files)
            pids = holder_pids(dev)
            r = run(["umount", dev])
            assert r.returncode == 0, f"umount {dev}: {r.stderr}"
            assert not os.path.ismount(mnt) and wait_gone(pids)
        finally:
            if os.path.ismount(mnt):
                run(["umount", str(mnt)])
            unmount(mnt)
    assert sha256(img) == before
    assert FSTAB.read_text().count(str(mnt)) == 0, "/etc/fstab was not restored"


# -- corrupt images -------------------------------------------------------------------------------
def used_dmesg_zones(case: Case) -> list[int]:
    img = case.image.read_bytes()
    return [off for off in dmesg_offsets(case)
            if struct.unpack_from("<Ii", img, off) [0] == ZONE_SIG["dmesg"]
            and struct.unpack_from("<i", img, off + 4)[0] > 0]


def zone_end(case: Case, name: str) -> int:
    """Where the zone(s) of the kernel's file `name` end."""
    kind, _, index = name.partition("-pstore_blk-")
    zones = [z for z in zone_layout(case) if z.type == kind]
    if kind == "dmesg":
        zones = [zones[int(index)]]
    return max(z.offset + z.size for z in zones)


def corrupt_variants(case: Case) -> dict[str, bytes]:
    img = case.image.read_bytes()
    z0, z1 = used_dmesg_zones(case)[:2]
    sec, comp, reason = (4, 16, 24) if case.meta["arch"] == "i386" else (8, 24, 32)
    out: dict[str, bytes] = {}

    def variant(label: str, at: int, fmt: str, value: int) -> None:
        b = bytearray(img)
        struct.pack_into(fmt, b, at, value)
        out[label] = bytes(b)

    variant("datalen past the zone", z0 + 4, "<i", 0x7FFFFFFF)
    variant("negative datalen", z0 + 4, "<i", -5)
    variant("start past the zone", z0 + 8, "<i", 1 << 30)
    b = bytearray(img)
    for i in range(z1 + 60, z1 + 400):
        b[i] ^= 0x5A
    out["garbled compressed payload"] = bytes(b)
    variant("bad dmesg magic", z0 + 12, "<I", 0x12345678)
    variant("compressed flag 7", z0 + 12 + comp, "<B", 7)
    variant("negative timestamp", z0 + 12 + sec, "<q", -1)
    variant("unknown reason", z0 + 12 + reason, "<I", 99)
    out["image cut inside a zone"] = img[:z1 + 1000]
    rnd = random.Random(7)
    b = bytearray(img)
    for _ in range(2000):
        b[rnd.randrange(len(b))] = rnd.randrange(256)
    out["2000 random byte flips"] = bytes(b)
    out["random bytes"] = rnd.randbytes(len(img))
    return out


CORRUPT_CASES = [KMSG, PLAIN, I386]
CORRUPT_LABELS = list(corrupt_variants(KMSG))


@pytest.mark.parametrize("label", CORRUPT_LABELS)
@pytest.mark.parametrize("case", CORRUPT_CASES, ids=lambda c: c.id)
def test_corrupt_image(case: Case, label: str, tmp_path: Path, mnt: Path) -> None:
    data = corrupt_variants(case)[label]
    bad = tmp_path / "bad.bin"
    bad.write_bytes(data)
    before = sha256(bad)
    z = dmesg_offsets(case)
    zone0_name = f"dmesg-pstore_blk-{z.index(used_dmesg_zones(case)[0])}"
    hdr_sec = 4 if case.meta["arch"] == "i386" else 8
    hlen = 28 if case.meta["arch"] == "i386" else 40
    with mounted(bad, mnt, case.options) as m:
        pid = daemon_pid(bad)
        got: dict[str, bytes | None] = {}
        for name in os.listdir(m):
            try:
                got[name] = (m / name).read_bytes()
                assert os.stat(m / name).st_size == len(got[name]), name
            except OSError as exc:
                assert exc.errno == errno.EIO, f"{name}: {exc}"
                got[name] = None
        assert os.path.ismount(m) and holder_pids(bad) == [pid], "the daemon died"
        assert sorted(os.listdir(m)) == sorted(got)
        want = case.files
        if label in ("datalen past the zone", "negative datalen", "start past the zone",
                     "bad dmesg magic", "compressed flag 7", "negative timestamp",
                     "unknown reason"):
            # only zone 0's header changed: every other record is intact
            for name, content in want.items():
                if name != zone0_name:
                    assert got.get(name) == content, f"{label}: {name}"
        if label in ("datalen past the zone", "negative datalen", "bad dmesg magic"):
            assert zone0_name not in got and zone0_name + ".enc.z" not in got
        if label == "start past the zone":  # dmesg zones have no ring start: kept
            assert got.get(zone0_name) == want[zone0_name]
        if label == "negative timestamp":
            assert got.get(zone0_name) == want[zone0_name]
            (nsec,) = struct.unpack_from("<i" if case.meta["arch"] == "i386" else "<q",
                                         data, z[0] + 12 + hdr_sec + 8)
            assert os.stat(m / zone0_name).st_mtime_ns == -1_000_000_000 + nsec
        compressed = data[z[0] + 12 + (16 if case.meta["arch"] == "i386" else 24)] != 0
        if label == "unknown reason":
            text = want[zone0_name]
            if case is PLAIN:  # the prefix line names the reason
                assert text.startswith(b"Oops: Total ")
                text = b"Unknown" + text[len(b"Oops"):]
            assert got.get(zone0_name) == text
        if label == "compressed flag 7":
            assert compressed
            if case is PLAIN:  # not deflate data: shown raw, as the kernel does
                (datalen,) = struct.unpack_from("<i", data, z[0] + 4)
                raw = data[z[0] + 12 + hlen:z[0] + 12 + datalen]
                assert got.get(zone0_name + ".enc.z") == raw
            else:
                assert got.get(zone0_name) == want[zone0_name]
        if label == "garbled compressed payload":
            zone1 = [o for o in z if struct.unpack_from("<i", data, o + 4)[0] > 0][1]
            index = z.index(zone1)
            name = f"dmesg-pstore_blk-{index}"
            (datalen,) = struct.unpack_from("<i", data, zone1 + 4)
            if data[zone1 + 12 + (16 if case.meta["arch"] == "i386" else 24)]:
                raw = data[zone1 + 12 + hlen:zone1 + 12 + datalen]
                assert name not in got
                assert got.get(name + ".enc.z") == raw, "the .enc.z holds the raw bytes"
            for other, content in want.items():
                if other != name:
                    assert got.get(other) == content, other
        if label == "image cut inside a zone":
            # records in the zones left whole read as before; the cut zone is not used
            for name, content in want.items():
                if zone_end(case, name) <= len(data):
                    assert got.get(name) == content, name
                else:
                    assert name not in got and name + ".enc.z" not in got, name
    assert sha256(bad) == before, f"{label}: the image was modified by reading it"


def test_mutated_images(tmp_path: Path, mnt: Path) -> None:
    """Random byte changes anywhere in any case: the mount comes up (or is refused in one
    line), every file reads or fails with EIO, the daemon lives, nothing is written."""
    rnd = random.Random(11)
    cases = [c for c in CASES if c.meta["files"]]
    for i in range(20):
        case = rnd.choice(cases)
        data = bytearray(case.image.read_bytes())
        for _ in range(rnd.choice((1, 10, 100, 1000))):
            data[rnd.randrange(len(data))] = rnd.randrange(256)
        bad = tmp_path / f"mutant-{i}.bin"
        bad.write_bytes(data)
        before = sha256(bad)
        r = run([PSTOREFS, str(bad), str(mnt), "-o", case.options])
        assert "Traceback" not in r.stderr, f"mutant {i} of {case.id}: {r.stderr}"
        if r.returncode != 0:
            assert len(r.stderr.strip().splitlines()) == 1, r.stderr
            assert not os.path.ismount(mnt)
            continue
        try:
            pid = daemon_pid(bad)
            for name in os.listdir(mnt):
                try:
                    content = (mnt / name).read_bytes()
                except OSError as exc:
                    assert exc.errno == errno.EIO, f"{name}: {exc}"
                else:
                    assert os.stat(mnt / name).st_size == len(content), name
            assert os.path.ismount(mnt) and holder_pids(bad) == [pid], f"mutant {i}: died"
        finally:
            unmount(mnt, bad)
        assert sha256(bad) == before, f"mutant {i} of {case.id} was written to"


# -- the daemon under pressure ------------------------------------------------------------------
@pytest.mark.parametrize("field", ["counter", "time", "datalen"])
def test_rm_ebusy_when_the_zone_changed(field: str, tmp_path: Path, mnt: Path) -> None:
    img = copy_image(tmp_path, KMSG)
    z1 = dmesg_offsets(KMSG)[1]
    at = {"counter": z1 + 12 + 28, "time": z1 + 12 + 8, "datalen": z1 + 4}[field]
    with mounted(img, mnt, KMSG.options) as m:
        assert sorted(os.listdir(m)) == sorted(KMSG.files)
        os.stat(m / "dmesg-pstore_blk-1")
        (old,) = struct.unpack_from("<i", img.read_bytes(), at)
        poke(img, at, struct.pack("<i", old - 1))
        modified = img.read_bytes()
        with pytest.raises(OSError) as info:
            os.unlink(m / "dmesg-pstore_blk-1")
        assert info.value.errno == errno.EBUSY
        assert img.read_bytes() == modified, "written although the zone changed"
        assert "dmesg-pstore_blk-1" in os.listdir(m)
        assert (m / "dmesg-pstore_blk-1").read_bytes() == KMSG.files["dmesg-pstore_blk-1"]
        os.unlink(m / "dmesg-pstore_blk-0")  # the others still erase
    want = bytearray(modified)
    struct.pack_into("<i", want, dmesg_offsets(KMSG)[0] + 4, 0)
    assert_same_image(img.read_bytes(), bytes(want), "after EBUSY and one rm")


def test_parallel_readers_while_removing(tmp_path: Path, mnt: Path) -> None:
    case = ALL_FRONTS
    img = copy_image(tmp_path, case)
    orig = img.read_bytes()
    want = case.files
    names = sorted(want)
    bad: list[str] = []
    errors: list[str] = []
    reads = [0]
    with mounted(img, mnt, case.options) as m:
        def reader(seed: int) -> None:
            r = random.Random(seed)
            try:
                for _ in range(40):
                    name = r.choice(names)
                    try:
                        fd = os.open(m / name, os.O_RDONLY)
                    except FileNotFoundError:
                        continue
                    try:
                        # drop the cached pages: the reads must reach the daemon
                        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                        for _ in range(3):
                            off = r.randrange(len(want[name]))
                            size = r.randrange(1, 20000)
                            if os.pread(fd, size, off) != want[name][off:off + size]:
                                bad.append(f"{name}@{off}+{size}")
                        whole = os.pread(fd, len(want[name]) + 10, 0)
                        if whole != want[name]:
                            bad.append(f"{name} whole")
                        reads[0] += 1
                    finally:
                        os.close(fd)
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(repr(exc))

        def remover(victims: list[str]) -> None:
            r = random.Random(len(victims))
            try:
                for name in victims:
                    time.sleep(r.random() * 0.05)
                    os.unlink(m / name)
            except Exception as exc:  # pragma: no cover
                errors.append(repr(exc))

        threads = [threading.Thread(target=reader, args=(i,)) for i in range(8)]
        threads += [threading.Thread(target=remover, args=(names[0::2],)),
                    threading.Thread(target=remover, args=(names[1::2],))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not any(t.is_alive() for t in threads), "threads hung"
        assert not errors, errors
        assert not bad, f"{len(bad)} wrong reads: {bad[:5]}"
        assert reads[0] > 0
        assert os.listdir(m) == []
    now = img.read_bytes()
    assert not zone_changes_allowed(case, orig, now)
    for z in zone_layout(case):
        sig, datalen = struct.unpack_from("<Ii", now, z.offset)
        if sig == ZONE_SIG[z.type]:
            assert datalen == 0, f"{z.type} zone at {z.offset:#x} not erased"


def test_simultaneous_opens_of_one_file(tmp_path: Path, mnt: Path) -> None:
    """Eight readers open the same file at the same instant, then close one by one while
    the others keep reading past the page cache: every read must still be served."""
    case = ALL_FRONTS
    img = copy_image(tmp_path, case)
    with mounted(img, mnt, case.options) as m:
        pid = daemon_pid(img)
        for name, want in sorted(case.files.items()):
            for round_ in range(4):
                barrier = threading.Barrier(8)
                failures: list[str] = []

                def reader(i: int, name: str = name, want: bytes = want,
                           barrier: threading.Barrier = barrier,
                           failures: list[str] = failures) -> None:
                    try:
                        barrier.wait(10)
                        fd = os.open(m / name, os.O_RDONLY)
                        try:
                            for step in range(i + 1):
                                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                                off = (i * 4099 + step * 8191) % len(want)
                                if os.pread(fd, 3000, off) != want[off:off + 3000]:
                                    failures.append(f"{name}: reader {i} at {off}")
                                time.sleep(0.002)
                        finally:
                            os.close(fd)
                    except Exception as exc:
                        failures.append(f"{name}: reader {i}: {exc!r}")

                threads = [threading.Thread(target=reader, args=(i,)) for i in range(8)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join(30)
                assert not failures, f"round {round_}: {failures[:4]}"
        assert holder_pids(img) == [pid] and os.path.ismount(m), "the daemon died"


def test_sigkill_during_rm_storm(tmp_path: Path) -> None:
    rnd = random.Random(13)
    for case in (ALL_FRONTS, PLAIN, ALL_FRONTS, KMSG, ALL_FRONTS, I386):
        img = copy_image(tmp_path, case)
        orig = img.read_bytes()
        mnt = tmp_path / f"mnt-{rnd.randrange(1 << 30)}"
        with mounted(img, mnt, case.options) as m:
            pid = daemon_pid(img)
            names = sorted(os.listdir(m))

            def storm(m: Path = m, names: list[str] = names) -> None:
                for name in names:
                    with contextlib.suppress(OSError):
                        os.unlink(m / name)

            t = threading.Thread(target=storm)
            t.start()
            time.sleep(rnd.random() * 0.015)
            os.kill(pid, signal.SIGKILL)
            t.join(15)
            assert not t.is_alive(), "rm hung after the daemon was killed"
            assert wait_gone([pid])
            # a dead FUSE mount does not pass os.path.ismount (ENOTCONN): unmount it here
            assert run(["fusermount3", "-u", str(m)]).returncode == 0
        problems = zone_changes_allowed(case, orig, img.read_bytes())
        assert not problems, problems
        with mounted(img, mnt, case.options) as m:  # what survived reads as before
            left = os.listdir(m)
            assert set(left) <= set(case.files)
            for name in left:
                if not name.startswith("ftrace-") or "system_map" in case.options:
                    assert (m / name).read_bytes() == case.files[name], name


# -- systemd-pstore --------------------------------------------------------------------------------
def _systemd_version() -> int:
    r = run(["systemctl", "--version"])
    m = re.match(r"systemd (\d+)", r.stdout)
    return int(m.group(1)) if m else 0


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_systemd_pstore_archives_everything(case: Case, tmp_path: Path, mnt: Path) -> None:
    require(os.access(SYSTEMD_PSTORE, os.X_OK), f"{SYSTEMD_PSTORE} (Debian package systemd)")
    img = copy_image(tmp_path, case)
    archive = tmp_path / "archive"
    archive.mkdir()
    with mounted(img, mnt, case.options) as m:
        r = run([SYSTEMD_PSTORE, str(m), str(archive)], timeout=60)
        assert r.returncode == 0, f"systemd-pstore: rc {r.returncode}: {r.stderr}"
        assert os.listdir(m) == [], "systemd-pstore could not remove every record"
    archived = {p.name: p.read_bytes() for p in archive.rglob("*") if p.is_file()}
    for name, content in case.files.items():
        assert archived.get(name) == content, f"{name} missing or different in the archive"
    dmesg = sorted((n for n in case.files if n.startswith("dmesg-")), reverse=True)
    if dmesg and _systemd_version() <= 252:
        # systemd <= 252 rebuilds dmesg.txt as "<name>:\n<content>" blocks, newest first
        want = b"".join(n.encode() + b":\n" + case.files[n] for n in dmesg)
        assert archived.get("dmesg.txt") == want, "dmesg.txt not rebuilt as systemd does"
    assert set(archived) <= set(case.files) | {"dmesg.txt"}
    now = img.read_bytes()
    for z in zone_layout(case):
        sig, datalen = struct.unpack_from("<Ii", now, z.offset)
        if sig == ZONE_SIG[z.type]:
            assert datalen == 0, f"{z.type} zone at {z.offset:#x} still holds a record"
    assert not zone_changes_allowed(case, case.image.read_bytes(), now)
    with mounted(img, mnt, case.options) as m:
        assert os.listdir(m) == [], "records came back after archiving"
