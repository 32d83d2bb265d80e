"""The daemon under pressure: rm of a zone that changed, readers racing removers,
simultaneous opens of one file, SIGKILL during an rm storm."""

from __future__ import annotations

import contextlib
import errno
import os
import random
import signal
import struct
import threading
import time
from pathlib import Path

import pytest

from helpers.cases import ZONE_SIG, zone_layout
from helpers.machine import holder_pids, mounted, run
from helpers.mounts import (
    ALL_FRONTS,
    I386,
    KMSG,
    PLAIN,
    assert_same_image,
    copy_image,
    daemon_pid,
    dmesg_offsets,
    poke,
    wait_gone,
    zone_changes_allowed,
)


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
