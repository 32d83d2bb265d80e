"""Device faults and power cuts, through the real FUSE mount.

How faults are injected: this machine has no device-mapper (no dm-error/dm-flakey),
and a loop device that is open cannot be detached (the detach waits for the last
close), so pstorefs mounts an image that lives inside tests/helpers/faultyfs.py, a
test-only FUSE filesystem that passes every read, write and fdatasync of pstorefs'
source through (direct_io: no page cache in between) and fails the ones on configured
byte ranges — EIO, short reads, EIO/ENOSPC/short writes, failing fdatasync, a device
that vanishes (EIO, ENXIO, capacity 0, or its server killed: ENOTCONN), a stalled read —
or SIGKILLs the pstorefs daemon at an exact write. pstorefs itself has no test hook: it
sees an ordinary image file whose I/O fails.

Power cuts: besides SIGKILL at random moments of an erase storm (the page cache keeps
every completed write, so a zone must be as before or erased), the write sequence of a
storm is logged by faultyfs and replayed as a power cut would leave it: everything up
to the last completed fdatasync, plus any subset of the writes issued after it (each
write lies inside one 512-byte sector, which a disk commits whole).
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import random
import shutil
import signal
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from helpers.cases import (
    ERASE_CASES,
    Case,
    ExpectedZone,
    case_by_id,
    expected_after_erase,
    sha256,
    zone_layout,
)
from helpers.faultyfs import FaultyMount
from helpers.machine import (
    PSTOREFS,
    alive,
    holder_pids,
    mounted,
    require_fuse,
    run,
    unmount,
    wait_for,
)
from pstorefs.cli.options import parse_options
from pstorefs.fs import LISTING_REFRESH
from pstorefs.store import open_store

T = TypeVar("T")

ALL_FRONTS = case_by_id("x86_64-all-fronts")
I386 = case_by_id("i386-all-fronts")
KMSG = case_by_id("kmsg-deflate-3oops")
PLAIN = case_by_id("kmsg-plain-3oops")
SECTOR = 512
FIGURES: dict[str, int] = {}


def count(key: str, n: int = 1) -> None:
    FIGURES[key] = FIGURES.get(key, 0) + n


@pytest.fixture(autouse=True, scope="module")
def _report_figures() -> Iterator[None]:
    yield
    if FIGURES:
        print("\nfault figures: " + ", ".join(f"{k}: {v}" for k, v in sorted(FIGURES.items())))


@pytest.fixture(autouse=True)
def _fuse_machine() -> None:
    require_fuse()


# -- helpers ------------------------------------------------------------------------------------
class Hung(AssertionError):
    pass


def within(seconds: float, fn: Callable[[], T], what: str) -> T:
    """`fn()` in a thread; fail (not hang) if it has not returned after `seconds`."""
    box: dict[str, object] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    if t.is_alive():
        try:
            with open(f"/proc/self/task/{t.native_id}/stack") as fh:
                stack = " < ".join(line.split()[-1] for line in fh)
        except OSError:
            stack = "?"
        raise Hung(f"{what}: no answer after {seconds} s (blocked in the kernel at {stack})")
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]


def os_error(fn: Callable[[], object]) -> int | None:
    """The errno `fn()` fails with, or None if it succeeds."""
    try:
        fn()
    except OSError as exc:
        return exc.errno
    return None


def start_stalled(fm: FaultyMount, action: Callable[[], object]) -> threading.Thread:
    """`action` in a thread, returned once the device has stalled it."""
    t = threading.Thread(target=action, daemon=True)
    t.start()
    assert wait_for(lambda: any(f.get("fault") == "stall" for f in fm.faults()), 10), \
        "the device never stalled"
    return t


def kernel_name(name: str) -> tuple[str, int]:
    kind, _, index = name.partition("-pstore_blk-")
    return kind, int(index)


def zones_of(case: Case, name: str, size: int | None = None) -> list[ExpectedZone]:
    kind, index = kernel_name(name)
    zones = [z for z in zone_layout(case, size) if z.type == kind]
    return [zones[index]] if kind == "dmesg" else zones


def hlen(case: Case) -> int:
    return 28 if case.meta["arch"] == "i386" else 40


def data_sector(case: Case, name: str, image: bytes) -> tuple[int, int]:
    """A 512-byte sector in the middle of the record's bytes (not its header)."""
    z = zones_of(case, name)[0]
    (datalen,) = struct.unpack_from("<i", image, z.offset + 4)
    first = z.offset + 12 + (hlen(case) if z.type == "dmesg" else 0)
    mid = (first + z.offset + 12 + datalen) // 2
    start = max(mid // SECTOR * SECTOR, (first + SECTOR - 1) // SECTOR * SECTOR)
    assert start + SECTOR <= z.offset + 12 + datalen + SECTOR, name
    return start, start + SECTOR


def daemon_of(source: Path) -> int:
    pids = [p for p in holder_pids(source) if p != os.getpid()]
    assert len(pids) == 1, f"expected one pstorefs daemon on {source}, found {pids}"
    return pids[0]


@contextlib.contextmanager
def pstorefs_on(source: Path, mnt: Path, options: str) -> Iterator[tuple[Path, str]]:
    """`pstorefs SOURCE MNT -o OPTIONS`; yields (mnt, what the mount command printed)."""
    mnt.mkdir(parents=True, exist_ok=True)
    r = run([PSTOREFS, str(source), str(mnt), "-o", options], timeout=30)
    assert r.returncode == 0, f"pstorefs failed: {r.returncode} {r.stderr}"
    assert os.path.ismount(mnt)
    try:
        yield mnt, r.stderr
    finally:
        unmount(mnt, source)
        if not wait_for(lambda: not os.path.ismount(mnt), 5):
            run(["fusermount3", "-uz", str(mnt)])


@contextlib.contextmanager
def faulty_case(tmp_path: Path, case: Case, image: str = "image.bin"
                ) -> Iterator[FaultyMount]:
    disk = tmp_path / "disk.img"
    shutil.copyfile(case.file(image), disk)
    with FaultyMount(disk, tmp_path / "lower") as fm:
        yield fm


def stalled_reads(case: Case, *names: str) -> list[dict[str, object]]:
    """Faults that stall every read of each named record's first data sector."""
    image = case.image.read_bytes()
    return [{"op": "read", "start": start, "end": end, "stall": True}
            for start, end in (data_sector(case, name, image) for name in names)]


def erased_zone(before: bytes, z: ExpectedZone, *, start_too: bool) -> bytes:
    b = bytearray(before[z.offset:z.offset + z.size])
    b[4:8] = bytes(4)
    if start_too:
        b[8:12] = bytes(4)
    return bytes(b)


def straddles(z: ExpectedZone) -> bool:
    """`datalen` and `start` in different 512-byte sectors."""
    return (z.offset + 4) // SECTOR != (z.offset + 11) // SECTOR


def zone_verdicts(case: Case, before: bytes, after: bytes, *,
                  zones: list[ExpectedZone] | None = None
                  ) -> tuple[list[str], dict[str, int]]:
    """Every zone byte-identical to before, or exactly erased: datalen 0 (dmesg), datalen
    and start 0 (pmsg, console, ftrace; where the two straddle a sector, datalen 0 alone
    is the allowed step between). Nothing outside the zones changes."""
    problems: list[str] = []
    tally = {"intact": 0, "erased": 0}
    zones = zones if zones is not None else zone_layout(case, len(before))
    end = 0
    for z in zones:
        a, b = before[z.offset:z.offset + z.size], after[z.offset:z.offset + z.size]
        end = max(end, z.offset + z.size)
        if a == b:
            tally["intact"] += 1
            continue
        ring = z.type != "dmesg"
        ok = b == erased_zone(before, z, start_too=ring)
        if not ok and ring and straddles(z):
            ok = b == erased_zone(before, z, start_too=False)
        if ok:
            tally["erased"] += 1
        else:
            problems.append(f"{z.type} zone at {z.offset:#x} torn: header {a[:12].hex()} -> "
                            f"{b[:12].hex()}, body {'same' if a[12:] == b[12:] else 'CHANGED'}")
    if before[end:] != after[end:]:
        problems.append("bytes after the last zone changed")
    return problems, tally


def read_all(mnt: Path, names: list[str]) -> dict[str, bytes | int]:
    out: dict[str, bytes | int] = {}
    for name in names:
        try:
            out[name] = (mnt / name).read_bytes()
        except OSError as exc:
            out[name] = exc.errno or -1
    return out


# == read faults ===================================================================================
@pytest.mark.parametrize("mode", ["EIO", "short"])
@pytest.mark.parametrize("case,victim", [
    (ALL_FRONTS, "dmesg-pstore_blk-1"), (ALL_FRONTS, "console-pstore_blk-0"),
    (ALL_FRONTS, "ftrace-pstore_blk-0"), (I386, "dmesg-pstore_blk-0"),
    (KMSG, "dmesg-pstore_blk-2")], ids=lambda v: v.id if isinstance(v, Case) else v)
def test_bad_sector_fails_that_record_only(case: Case, victim: str, mode: str,
                                           tmp_path: Path) -> None:
    """A bad sector inside one record: reading it gives EIO; every other record reads as
    the kernel showed it; the mount and its daemon stay; once the sector reads again, so
    does the record (no error was cached); nothing was written."""
    want = case.files
    image = case.image.read_bytes()
    start, end = data_sector(case, victim, image)
    rule = {"op": "read", "start": start, "end": end}
    rule.update({"short": True} if mode == "short" else {"errno": "EIO"})
    with faulty_case(tmp_path, case) as fm:
        fm.set(faults=[rule])
        with pstorefs_on(fm.file, tmp_path / "mnt", case.options) as (m, _):
            pid = daemon_of(fm.file)
            code = within(10, lambda: os_error(lambda: (m / victim).read_bytes()), "cat")
            assert code == 5, f"{victim} over a bad sector: errno {code}, want EIO"
            others = sorted(set(want) - {victim})
            got = within(30, lambda: read_all(m, others), "reading the others")
            for name in others:
                assert got[name] == want[name], f"{name} (the bad sector is in {victim})"
            listing = within(10, lambda: sorted(os.listdir(m)), "ls")
            assert listing == others, "ls shows exactly the readable records"
            assert within(10, lambda: os.statvfs(m), "statfs").f_namemax >= 255
            assert alive(pid) and os.path.ismount(m), "the daemon died"
            injected = [f for f in fm.faults() if f["op"] == "read"]
            assert injected, "no fault was injected: the test did not test"
            count(f"read faults injected ({mode})", len(injected))
            fm.clear()
            assert within(10, lambda: (m / victim).read_bytes(), "cat after repair") \
                == want[victim], "the record reads again once the sector does"
            assert sorted(os.listdir(m)) == sorted(want)
        assert sha256(fm.image) == sha256(case.image), "the image was written to"


@pytest.mark.parametrize("case,victim", [
    (ALL_FRONTS, "dmesg-pstore_blk-1"), (ALL_FRONTS, "pmsg-pstore_blk-0"),
    (I386, "console-pstore_blk-0"), (KMSG, "dmesg-pstore_blk-0")],
    ids=lambda v: v.id if isinstance(v, Case) else v)
def test_bad_sector_in_a_zone_header_at_open(case: Case, victim: str, tmp_path: Path) -> None:
    """The header of one zone unreadable when mounting: that zone is skipped with a log
    line naming it, everything else mounts and reads as the kernel showed it."""
    z = zones_of(case, victim)[0]
    kind, index = kernel_name(victim)
    with faulty_case(tmp_path, case) as fm:
        fm.set(faults=[{"op": "read", "start": z.offset, "end": z.offset + SECTOR,
                        "errno": "EIO"}])
        with pstorefs_on(fm.file, tmp_path / "mnt", case.options) as (m, stderr):
            lines = [ln for ln in stderr.splitlines() if f"{kind} zone {index}" in ln]
            assert lines, f"no log line names the skipped {kind} zone {index}: {stderr!r}"
            assert "Traceback" not in stderr
            others = sorted(set(case.files) - {victim})
            assert within(10, lambda: sorted(os.listdir(m)), "ls") == others
            got = within(30, lambda: read_all(m, others), "reading")
            for name in others:
                assert got[name] == case.files[name], name
            count("zone headers unreadable at open", 1)
        assert sha256(fm.image) == sha256(case.image)


def test_every_zone_header_unreadable_at_open(tmp_path: Path) -> None:
    """A device whose every header read fails: refused in one line, or mounted empty
    with the failures logged; never a traceback, never a write."""
    case = ALL_FRONTS
    with faulty_case(tmp_path, case) as fm:
        fm.set(faults=[{"op": "read", "errno": "EIO"}])
        mnt = tmp_path / "mnt"
        mnt.mkdir()
        r = run([PSTOREFS, str(fm.file), str(mnt), "-o", case.options])
        assert "Traceback" not in r.stderr, r.stderr
        if r.returncode == 0:
            try:
                assert os.listdir(mnt) == []
                assert len(r.stderr.strip().splitlines()) >= len(zone_layout(case)), r.stderr
            finally:
                unmount(mnt, fm.file)
        else:
            assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        count("read faults injected (EIO)", len(fm.faults()))
        assert sha256(fm.image) == sha256(case.image)


# == write faults during rm =======================================================================
WRITE_FAULTS = {
    "write EIO": {"op": "write", "errno": "EIO"},
    "write ENOSPC": {"op": "write", "errno": "ENOSPC"},
    "short write": {"op": "write", "short": True},
    "header unreadable": {"op": "read", "errno": "EIO"},  # rm's re-validation read fails
}


@pytest.mark.parametrize("fault", sorted(WRITE_FAULTS))
@pytest.mark.parametrize("victim", ["dmesg-pstore_blk-0", "pmsg-pstore_blk-0",
                                    "ftrace-pstore_blk-0"])
def test_write_fault_during_rm(victim: str, fault: str, tmp_path: Path) -> None:
    """The write of an erase fails (or the re-read of the header before it): rm reports
    an error, the zone is as before (or
    erased, never torn), the record stays listed and readable, other records and the
    mount are unaffected; once the device writes again, rm succeeds and writes exactly
    the kernel's erase."""
    case = ALL_FRONTS
    before = case.image.read_bytes()
    zones = zones_of(case, victim)
    rule = dict(WRITE_FAULTS[fault], start=zones[0].offset, end=zones[-1].offset + SECTOR)
    injected_errno = {"write EIO": errno.EIO, "write ENOSPC": errno.ENOSPC}.get(fault, errno.EIO)
    with faulty_case(tmp_path, case) as fm:
        with pstorefs_on(fm.file, tmp_path / "mnt", case.options) as (m, _):
            pid = daemon_of(fm.file)
            content = (m / victim).read_bytes()
            fm.set(faults=[rule])
            code = within(10, lambda: os_error(lambda: os.unlink(m / victim)), "rm")
            assert code in (injected_errno, errno.EIO), f"rm with a {fault}: errno {code}"
            assert fm.faults(), "no fault was injected"
            count(f"write faults injected ({fault})", len(fm.faults()))
            problems, tally = zone_verdicts(case, before, fm.image.read_bytes())
            assert not problems, problems
            assert tally["erased"] == 0, "the failed erase left the zone erased"
            assert victim in os.listdir(m), "a failed rm removed the name"
            assert (m / victim).read_bytes() == content
            assert alive(pid)
            for name in sorted(set(case.files) - {victim, "console-pstore_blk-0"}):
                assert (m / name).read_bytes() == case.files[name], name
            fm.clear()
            assert within(10, lambda: os_error(lambda: os.unlink(m / victim)), "rm") is None
            assert victim not in os.listdir(m)
        after = fm.image.read_bytes()
    want = bytearray(before)
    for z in zones:
        want[z.offset:z.offset + z.size] = erased_zone(before, z, start_too=z.type != "dmesg")
    assert after == bytes(want), "the retried rm did not write exactly the erase"


@pytest.mark.parametrize("victim", ["dmesg-pstore_blk-0", "console-pstore_blk-0"])
def test_rm_after_a_failed_fdatasync(victim: str, tmp_path: Path) -> None:
    """fdatasync fails after the erase was written: rm reports EIO and the zone is as
    before or erased (never torn). The record is still listed; rm once the device is
    healthy again must complete the erase (not fail with EBUSY because the zone now
    holds our own half-done erase) and leave exactly the kernel's erase."""
    case = ALL_FRONTS
    before = case.image.read_bytes()
    zones = zones_of(case, victim)
    with faulty_case(tmp_path, case) as fm:
        with pstorefs_on(fm.file, tmp_path / "mnt", case.options) as (m, _):
            (m / victim).read_bytes()
            fm.set(faults=[{"op": "fsync", "errno": "EIO", "times": 1}])
            code = within(10, lambda: os_error(lambda: os.unlink(m / victim)), "rm")
            assert code == errno.EIO, f"rm with fdatasync failing: errno {code}"
            count("fdatasync faults injected", len(fm.faults()))
            problems, _ = zone_verdicts(case, before, fm.image.read_bytes())
            assert not problems, problems
            fm.clear()
            retry = within(10, lambda: os_error(lambda: os.unlink(m / victim)), "rm again")
            # done now (None), or already gone with the first rm (ENOENT); not EBUSY
            assert retry in (None, errno.ENOENT), (
                f"rm after a failed fdatasync, device healthy again: "
                f"{os.strerror(retry or 0)} (errno {retry})")
            assert victim not in os.listdir(m)
        after = fm.image.read_bytes()
    want = bytearray(before)
    for z in zones:
        want[z.offset:z.offset + z.size] = erased_zone(before, z, start_too=z.type != "dmesg")
    assert after == bytes(want)


# == the source vanishes ===========================================================
@pytest.mark.parametrize("how", ["EIO", "ENXIO", "capacity 0", "server gone"])
def test_source_vanishes_while_mounted(how: str, tmp_path: Path) -> None:
    """The USB stick is pulled: reads of records not yet read fail with EIO, rm fails,
    ls and statfs answer, nothing hangs, umount works and the daemon exits; nothing was
    written."""
    case = ALL_FRONTS
    names = sorted(case.files)
    with faulty_case(tmp_path, case) as fm:
        mnt = tmp_path / "mnt"
        with pstorefs_on(fm.file, mnt, case.options) as (m, _):
            pid = daemon_of(fm.file)
            early = "pmsg-pstore_blk-0"
            assert (m / early).read_bytes() == case.files[early]
            if how == "server gone":
                assert fm.proc is not None
                fm.proc.kill()
                fm.proc.wait(10)
            elif how == "capacity 0":
                fm.set(vanish_size0=True)
            else:
                fm.set(vanish=how)
            codes = {}
            for name in names:
                if name != early:
                    codes[name] = within(10, lambda n=name: os_error(
                        lambda: (m / n).read_bytes()), f"cat {name}")
            assert all(c == errno.EIO for c in codes.values()), (
                f"reads after the source vanished ({how}): "
                + ", ".join(f"{n}: {errno.errorcode.get(c, c) if c else 'read OK'}"
                            for n, c in codes.items()))
            rm = within(10, lambda: os_error(lambda: os.unlink(m / "dmesg-pstore_blk-0")), "rm")
            assert rm is not None, "rm succeeded on a vanished device"
            within(10, lambda: os.listdir(m), "ls")
            within(10, lambda: os.statvfs(m), "statfs")
            assert alive(pid), "the daemon died when its source vanished"
            count(f"vanished-device calls ({how})", len(codes) + 1)
            r = run(["umount", str(m)], timeout=20)
            assert r.returncode == 0, f"umount after the source vanished: {r.stderr}"
            assert wait_for(lambda: not alive(pid), 10), "the daemon did not exit"
            assert not os.path.ismount(m)
        if how == "server gone":
            run(["fusermount3", "-u", str(fm.mountpoint)])
    assert sha256(fm.image) == sha256(case.image), "written to while vanishing"


def test_stalled_read_does_not_freeze_the_mount(tmp_path: Path) -> None:
    """A read the device never answers blocks that `cat` only: ls, statfs and other
    records still answer; when the device answers, the cat completes with the right
    bytes; umount works."""
    case = ALL_FRONTS
    victim = "dmesg-pstore_blk-1"
    with faulty_case(tmp_path, case) as fm:
        fm.set(faults=stalled_reads(case, victim))
        with pstorefs_on(fm.file, tmp_path / "mnt", case.options) as (m, _):
            result: dict[str, bytes] = {}
            t = start_stalled(fm, lambda: result.update(v=(m / victim).read_bytes()))
            try:
                within(5, lambda: os.statvfs(m), "statfs")
                for name in ("pmsg-pstore_blk-0", "dmesg-pstore_blk-0",
                             "console-pstore_blk-0"):
                    got = within(5, lambda n=name: (m / n).read_bytes(),
                                 f"cat {name} while a read of {victim} is stalled")
                    assert got == case.files[name]
                within(5, lambda: os.listdir(m), "ls")
                assert t.is_alive(), "the stalled read returned while the device was stalled"
            finally:
                fm.clear()  # let everything blocked go, whatever happened
                t.join(10)
            assert not t.is_alive(), "the read did not complete after the device answered"
            assert result["v"] == case.files[victim]
            count("stalled reads", 1)


def test_a_stalled_decoding_process_does_not_freeze_a_pass(tmp_path: Path) -> None:
    """Reading in listing order hands the next records to the decoding process; when
    the device stalls it on one of them, the records after it are decoded by the
    daemon instead and read at once, and the stalled one completes once the device
    answers."""
    case = case_by_id("linux6.12-kmsg8-deflate-5oops")
    with contextlib.closing(open_store(str(case.image), parse_options([case.options]).store
                                       )) as store:
        order = [store.entry(r).name for r in store.records]
    victim = order[2]
    with faulty_case(tmp_path, case) as fm:
        fm.set(faults=stalled_reads(case, victim))
        with pstorefs_on(fm.file, tmp_path / "mnt", case.options) as (m, _):
            for name in order[:2]:  # in order: the rest goes to the decoding process
                assert within(5, lambda n=name: (m / n).read_bytes(), f"cat {name}") \
                    == case.files[name]
            assert wait_for(lambda: any(f.get("fault") == "stall" for f in fm.faults()), 10), \
                "the decoding process never reached the stalled record"
            try:
                for name in order[3:]:
                    got = within(5, lambda n=name: (m / n).read_bytes(),
                                 f"cat {name} while the decoding process is stalled")
                    assert got == case.files[name]
            finally:
                fm.clear()
            assert within(10, lambda: (m / victim).read_bytes(), f"cat {victim}") \
                == case.files[victim]
            count("stalled decoding process", 1)


def test_stalled_fdatasync_of_an_rm_does_not_freeze_the_mount(tmp_path: Path) -> None:
    """An erase whose fdatasync the device never answers blocks that `rm` only (the
    event loop waits for a fast erase itself, and moves on past a slow one): statfs,
    and opens, reads and attributes of the other records answer meanwhile; once the
    device answers, the rm completes, durable, with the kernel's erase, and the next
    rm works as before. (`ls`, and lookups of names the kernel has not cached, wait:
    the kernel holds the directory's lock across an unlink, whatever the daemon does.)"""
    case = ALL_FRONTS
    victim, after = "dmesg-pstore_blk-0", "pmsg-pstore_blk-0"
    before = case.image.read_bytes()
    with faulty_case(tmp_path, case) as fm:
        with pstorefs_on(fm.file, tmp_path / "mnt", case.options) as (m, _):
            for name in case.files:
                assert (m / name).read_bytes() == case.files[name]
            fm.set(faults=[{"op": "fsync", "stall": True}])
            result: dict[str, int | None] = {}
            t = start_stalled(
                fm, lambda: result.update(code=os_error(lambda: os.unlink(m / victim))))
            try:
                within(5, lambda: os.statvfs(m), "statfs")
                for name in sorted(set(case.files) - {victim}):
                    got = within(5, lambda n=name: (m / n).read_bytes(),
                                 f"cat {name} while an erase's fdatasync is stalled")
                    assert got == case.files[name]
                    assert within(5, lambda n=name: os.listxattr(m / n), f"getfattr {name}")
                assert t.is_alive(), "rm returned while its fdatasync was stalled"
            finally:
                fm.clear()
                t.join(10)
            assert not t.is_alive(), "rm did not complete after the device answered"
            assert result["code"] is None, f"rm: {os.strerror(result['code'] or 0)}"
            assert within(10, lambda: os_error(lambda: os.unlink(m / after)), "rm") is None
            assert set(os.listdir(m)) == set(case.files) - {victim, after}
            count("stalled fdatasyncs", 1)
        image = fm.image.read_bytes()
    want = bytearray(before)
    for name in (victim, after):
        for z in zones_of(case, name):
            want[z.offset:z.offset + z.size] = erased_zone(before, z,
                                                           start_too=z.type != "dmesg")
    assert image == bytes(want)


# == power cuts ====================================================================
def storm(m: Path, names: list[str], done: list[float] | None = None,
          before: Callable[[int], None] | None = None) -> threading.Thread:
    """`rm` of every name, in order, in a thread; `done` gets the time each one ended,
    and `before(i)` is called as rm number i (from 0) starts."""
    def go() -> None:
        for i, name in enumerate(names):
            if before is not None:
                before(i)
            with contextlib.suppress(OSError):
                os.unlink(m / name)
            if done is not None:
                done.append(time.monotonic())

    t = threading.Thread(target=go, daemon=True)
    t.start()
    return t


def _kill_and_check(case: Case, img: Path, mnt: Path, before: bytes, after_rms: int,
                    delay: float) -> dict[str, int]:
    with mounted(img, mnt, case.options) as m:
        pid = daemon_of(img)
        names = sorted(os.listdir(m))
        killer = threading.Timer(delay, os.kill, (pid, signal.SIGKILL))

        def kill_during(i: int) -> None:  # `delay` into rm number `after_rms`, from the
            if i == after_rms:            # storm's own thread: no polling to miss it
                killer.start()

        t = storm(m, names, before=kill_during)
        t.join(15)
        killer.join(15)
        assert not t.is_alive(), "rm hung after the daemon was killed"
        assert wait_for(lambda: not alive(pid), 10)
        assert run(["fusermount3", "-u", str(m)]).returncode == 0
    after = img.read_bytes()
    problems, tally = zone_verdicts(case, before, after)
    assert not problems, (f"{case.id}, SIGKILL {delay * 1000:.2f} ms after rm number "
                          f"{after_rms}: {problems}")
    with mounted(img, mnt, case.options) as m:  # what is left reads as before
        left = sorted(os.listdir(m))
        assert set(left) <= set(case.files)
        for name in left:
            assert (m / name).read_bytes() == case.files[name], name
    return tally


@pytest.mark.parametrize("case", ERASE_CASES, ids=lambda c: c.id)
def test_sigkill_at_random_points_of_an_rm_storm(case: Case, tmp_path: Path) -> None:
    """SIGKILL the daemon at random moments of `rm` of every file (after a random number
    of rms have returned, plus a random part of the time one takes): each zone is
    byte-identical to before or exactly erased, and what is left reads as the kernel
    showed it."""
    rnd = random.Random(case.id)
    img = tmp_path / "image.bin"
    shutil.copyfile(case.image, img)
    before = img.read_bytes()
    mnt = tmp_path / "mnt"
    with mounted(img, mnt, case.options) as m:  # how long one rm takes
        names = sorted(os.listdir(m))
        t0 = time.monotonic()
        storm(m, names).join(30)
        per_rm = (time.monotonic() - t0) / max(len(names), 1)
    every_zone = zone_verdicts(case, before, img.read_bytes())[1]["erased"]
    window = 1.5 * per_rm
    outcomes: set[int] = set()
    for kill in range(12):  # 6, and more while every kill landed at one point (a
        if kill >= 6 and len(outcomes) > 1:  # loaded machine stretches the rms)
            break
        shutil.copyfile(case.image, img)
        tally = _kill_and_check(case, img, mnt, before, rnd.randrange(len(names)),
                                rnd.uniform(0, window))
        outcomes.add(tally["erased"])
        if tally["erased"] == every_zone:  # the storm was over: kill sooner
            window /= 2
        count("SIGKILLs during rm storms")
        count("zones checked after a SIGKILL", tally["intact"] + tally["erased"])
        count("zones found erased after a SIGKILL", tally["erased"])
    count("distinct kill outcomes (zones erased)", len(outcomes))
    assert len(outcomes) > 1 or len(names) == 1, "every kill landed at the same point"


def straddle_image(tmp_path: Path) -> tuple[Path, str, list[int]]:
    """An image whose ftrace zone 9 starts 504 bytes into a sector (64 KiB over 18
    CPUs), so its datalen and start lie in different sectors; records in CPU zones 8-10
    and one dmesg record. Returns the image, its options and the ftrace zone offsets."""
    from helpers.zone_writer import ZoneWriter
    from pstorefs.format.abi import X86_64
    w = ZoneWriter(X86_64, 128 << 10, kmsg_size=4 << 10, ftrace_size=64 << 10, nr_cpus=18)
    for cpu in (8, 9, 10):
        for n in range(4):
            w.ftrace_call(cpu, 0xFFFFFFFF81000000 + 0x10 * n, 0xFFFFFFFF81000100, 4 * n + cpu)
    w.dmesg(b"<0>an oops\n" * 20)
    path = tmp_path / "straddle.bin"
    w.save(path)
    offsets = [z.offset for z in w.zones if z.type.name == "FTRACE"]
    assert offsets[9] % SECTOR == 504
    return path, "kmsg_size=4,ftrace_size=64,nr_cpus=18", offsets


class StraddleCase:
    """Just enough of a Case for zone_layout/zone_verdicts."""

    capped = True

    def __init__(self, options: str, size: int) -> None:
        self.meta = {"mount_options": options, "image_bytes": size}

    def option(self, key: str, default: str | None = None) -> str | None:
        pairs = dict(kv.split("=", 1) for kv in self.meta["mount_options"].split(","))
        return pairs.get(key, default)


def _storm_through_faultyfs(tmp_path: Path, image: Path, options: str, *,
                            kill: tuple[int, str] | None = None, tag: str = "") -> FaultyMount:
    disk = tmp_path / f"disk{tag}.img"
    shutil.copyfile(image, disk)
    fm = FaultyMount(disk, tmp_path / f"lower{tag}")
    fm.start()
    try:
        mnt = tmp_path / f"mnt{tag}"
        with pstorefs_on(fm.file, mnt, options) as (m, _):
            names = sorted(os.listdir(m))
            pid = daemon_of(fm.file)
            if kill:
                fm.set(kill={"pid": pid, "at_write": kill[0], "when": kill[1]})
            t = storm(m, names)
            t.join(20)
            assert not t.is_alive(), "rm storm hung"
            if kill:
                assert wait_for(lambda: not alive(pid), 10), "the daemon was not killed"
                run(["fusermount3", "-u", str(m)])
    finally:
        fm.stop()
    return fm


def _storm_cases(tmp_path: Path) -> list[tuple[str, Path, str, object]]:
    straddle, options, _ = straddle_image(tmp_path)
    return [(c.id, c.image, c.options, c) for c in (ALL_FRONTS, I386, KMSG)] + [
        ("straddle", straddle, options, StraddleCase(options, straddle.stat().st_size))]


def test_sigkill_at_every_write_of_an_rm_storm(tmp_path: Path) -> None:
    """SIGKILL exactly before and exactly after each write an rm storm issues (faultyfs
    kills the daemon from inside its write): every zone as before or exactly erased."""
    for label, image, options, case in _storm_cases(tmp_path):
        full = _storm_through_faultyfs(tmp_path, image, options, tag=f"-{label}-full")
        writes = [e for e in full.events() if e["ev"] == "write"]
        assert writes, f"{label}: the storm wrote nothing"
        before = image.read_bytes()
        for k, when in itertools.product(range(1, len(writes) + 1), ("before", "after")):
            fm = _storm_through_faultyfs(tmp_path, image, options, kill=(k, when),
                                         tag=f"-{label}-{k}{when}")
            assert any(e["ev"] == "kill" for e in fm.events()), f"{label}: no kill at {k}"
            problems, tally = zone_verdicts(case, before, fm.image.read_bytes())
            assert not problems, f"{label}: SIGKILL {when} write {k}: {problems}"
            count("SIGKILLs at an exact write")
            count("zones checked after a SIGKILL", tally["intact"] + tally["erased"])
            shutil.rmtree(tmp_path / f"lower-{label}-{k}{when}", ignore_errors=True)


def crash_states(before: bytes, events: list[dict]) -> Iterator[bytes]:
    """Every image a power cut could leave during `events`: at each point, all writes up
    to the last completed fdatasync, plus any subset of the writes after it."""
    writes: list[tuple[int, bytes]] = []
    synced = 0
    points = []
    for e in events:
        if e["ev"] == "write":
            writes.append((e["off"], bytes.fromhex(e["data"])))
        elif e["ev"] == "fsync":
            synced = len(writes)
        points.append((synced, len(writes)))
    seen = set()
    for synced, issued in [(0, 0), *points]:
        if (synced, issued) in seen:
            continue
        seen.add((synced, issued))
        base = bytearray(before)
        for off, data in writes[:synced]:
            base[off:off + len(data)] = data
        pending = writes[synced:issued]
        assert len(pending) <= 12, "too many unsynced writes to enumerate"
        for mask in range(1 << len(pending)):
            img = bytearray(base)
            for i, (off, data) in enumerate(pending):
                assert off // SECTOR == (off + len(data) - 1) // SECTOR, (
                    f"a write at {off:#x} of {len(data)} bytes crosses a sector")
                if mask >> i & 1:
                    img[off:off + len(data)] = data
            yield bytes(img)


def test_power_cut_at_any_point_of_an_rm_storm(tmp_path: Path) -> None:
    """Replay each storm's logged writes and fdatasyncs as a power cut would leave the
    disk at every point (synced writes kept, unsynced ones any subset, each write
    within one sector): every zone as before or exactly erased; at the end, exactly the
    kernel's erase of every record."""
    for label, image, options, case in _storm_cases(tmp_path):
        fm = _storm_through_faultyfs(tmp_path, image, options, tag=f"-{label}")
        events = [e for e in fm.events() if e["ev"] in ("write", "fsync")]
        writes = [e for e in events if e["ev"] == "write"]
        assert writes and events[-1]["ev"] == "fsync", f"{label}: last write not synced"
        before = image.read_bytes()
        states = 0
        for state in crash_states(before, events):
            problems, _ = zone_verdicts(case, before, state)
            assert not problems, f"{label}: a power cut could leave: {problems}"
            states += 1
        final = fm.image.read_bytes()
        if isinstance(case, Case):
            want = bytearray(before)
            for off, value in _erase_diff(case, before):
                want[off] = value
            assert final == bytes(want), f"{label}: the storm's result is not the erase"
        problems, tally = zone_verdicts(case, before, final)
        assert not problems and tally["erased"] > 0
        count("power-cut states checked", states)
        count("writes replayed", len(writes))


def _erase_diff(case: Case, before: bytes) -> list[tuple[int, int]]:
    """The bytes the kernel's erase of every record changes (zeros in datalen/start)."""
    diff = []
    for z in zone_layout(case, len(before)):
        sig, datalen = struct.unpack_from("<Ii", before, z.offset)
        if datalen != 0 and sig in _SIGS.get(z.type, ()):
            span = range(z.offset + 4, z.offset + (8 if z.type == "dmesg" else 12))
            diff += [(i, 0) for i in span]
    return diff


_SIGS = {"dmesg": (0x43474244,), "console": (0x43474244 ^ 2,), "ftrace": (0x43474244 ^ 3,),
         "pmsg": (0x43474244 ^ 7,)}


def test_storm_matches_the_kernels_erase(tmp_path: Path) -> None:
    """Sanity of the replay's end state: the storm through faultyfs of the fixture's
    own erase list gives the kernel's image-after-erase (with the ftrace deviation)."""
    for case in (ALL_FRONTS, I386):
        er = case.meta["erase"]
        disk = tmp_path / f"{case.id}.img"
        shutil.copyfile(case.file(er["image_before"]), disk)
        with FaultyMount(disk, tmp_path / f"lower-{case.id}") as fm:
            with pstorefs_on(fm.file, tmp_path / f"mnt-{case.id}", case.options) as (m, _):
                for name in er["remove"]:
                    os.unlink(m / name)
        assert disk.read_bytes() == expected_after_erase(case), case.id


def test_a_record_a_listing_left_out_is_listed_once_readable(tmp_path: Path) -> None:
    """A record whose read stalls past the directory's patience is left out of that
    `ls` (the listing does not wait on one record); once the device answers, a later
    `ls` shows it, on kernels that cache the listing too (it is not left out for good,
    or systemd-pstore would never archive nor erase it)."""
    case = ALL_FRONTS
    victim = "dmesg-pstore_blk-1"
    with faulty_case(tmp_path, case) as fm:
        fm.set(faults=stalled_reads(case, victim))
        with pstorefs_on(fm.file, tmp_path / "mnt", case.options) as (m, _):
            for _ in range(3):  # listings while the device stalls: each leaves it out
                listed = within(10, lambda: sorted(os.listdir(m)), "ls while a read stalls")
                assert victim not in listed and set(listed) < set(case.files), listed
                time.sleep(1.5)
            fm.clear()  # the device answers
            assert wait_for(lambda: victim in os.listdir(m), 15), (
                f"{victim} never listed again once readable")
            assert sorted(os.listdir(m)) == sorted(case.files)
            assert (m / victim).read_bytes() == case.files[victim]


def test_a_listing_that_left_every_record_out_is_listed_again(tmp_path: Path) -> None:
    """Every record's read stalls past the directory's patience, so the listing the
    kernel caches is empty: it has no pages for an invalidation to drop, and Linux 6.18
    kept serving it for good. Once the device answers, a later `ls` (a new opendir, or
    the same directory read again) shows every record; and the listing that left
    nothing out is the kernel's again: it answers with the daemon stopped."""
    case = PLAIN
    with faulty_case(tmp_path, case) as fm:
        fm.set(faults=stalled_reads(case, *case.files))
        with pstorefs_on(fm.file, tmp_path / "mnt", case.options) as (m, _):
            held = os.open(m, os.O_RDONLY | os.O_DIRECTORY)
            try:
                for _ in range(2):  # listings while the device stalls: every record left out
                    assert within(10, lambda: os.listdir(m), "ls while reads stall") == []
                    time.sleep(LISTING_REFRESH + 0.5)
                fm.clear()  # the device answers
                assert wait_for(lambda: sorted(os.listdir(m)) == sorted(case.files), 15), (
                    "the records never listed again once readable")
                assert sorted(os.listdir(held)) == sorted(case.files), "the open directory"
            finally:
                os.close(held)
            time.sleep(LISTING_REFRESH + 0.5)  # a drop still due from the stalled listings
            assert sorted(os.listdir(m)) == sorted(case.files)
            daemon = daemon_of(fm.file)
            os.kill(daemon, signal.SIGSTOP)
            try:
                listed = within(5, lambda: os.listdir(m), "ls with the daemon stopped")
            finally:
                os.kill(daemon, signal.SIGCONT)
            assert sorted(listed) == sorted(case.files)
