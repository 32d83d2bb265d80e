"""unlink through the FUSE adapter (`pstorefs.fs.Operations`, no mount): the erase as
the kernel's, byte for byte and synced; the unlink rule (an unlinked inode stays
readable through its open handles and its attributes until `forget`); EBUSY for a zone
that changed, EROFS, and the errnos of garbled records and failing sources."""

from __future__ import annotations

import errno
import os
import stat
import struct
import threading
from pathlib import Path

import pyfuse3
import pytest
import trio
import trio.lowlevel
import trio.testing

from helpers.cases import (
    ERASE_CASES,
    ZONE_SIG,
    Case,
    case_by_id,
    expected_after_erase,
    two_cpu_ftrace_image,
    zone_layout,
)
from helpers.operations import ALL_FRONTS, CTX, KMSG, ROOT, Ctx, expect_errno, read_all
from pstorefs.fs import Operations, Ownership

I386 = case_by_id("i386-all-fronts")


# -- unlink ---------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ERASE_CASES, ids=lambda c: c.id)
async def test_unlink_erases_as_the_kernel(open_ops, tmp_path: Path, case: Case) -> None:
    er = case.meta["erase"]
    m = open_ops(case, image=er["image_before"])
    for name in er["remove"]:
        await m.ops.lookup(ROOT, name.encode(), CTX)
        await m.ops.unlink(ROOT, name.encode(), CTX)
        await expect_errno(errno.ENOENT, m.ops.lookup(ROOT, name.encode(), CTX))
        await expect_errno(errno.ENOENT, m.ops.unlink(ROOT, name.encode(), CTX))
    for name in er["names_after"]:
        attrs = await m.ops.lookup(ROOT, name.encode(), CTX)
        if er["image_before"] == "image.bin":  # files/ shows image.bin's records
            assert await read_all(m.ops, attrs.st_ino) == case.files[name]
    m.ops.store.close()
    got, want = m.image.read_bytes(), expected_after_erase(case)
    diffs = [i for i in range(len(want)) if got[i] != want[i]]
    assert len(got) == len(want) and not diffs, (
        f"{len(diffs)} bytes differ from the kernel's erase, first at {diffs[:1]}")
    # what the next mount finds
    again = open_ops(case, path=m.image)
    names = sorted(again.ops.store.entry(r).name for r in again.ops.store.records)
    assert names == sorted(er["names_after"])


async def test_unlinked_inode_lives_until_forget(open_ops) -> None:
    m = open_ops(ALL_FRONTS)
    for name, want in ALL_FRONTS.files.items():
        inode = (await m.ops.lookup(ROOT, name.encode(), CTX)).st_ino
        attrs = await m.ops.getattr(inode, CTX)
        fi = await m.ops.open(inode, os.O_RDONLY, CTX)
        assert await m.ops.read(fi.fh, 0, 10) == want[:10]
        await m.ops.unlink(ROOT, name.encode(), CTX)
        # the name is gone...
        await expect_errno(errno.ENOENT, m.ops.lookup(ROOT, name.encode(), CTX))
        await expect_errno(errno.ENOENT, m.ops.unlink(ROOT, name.encode(), CTX))
        # ...the inode is not: the open handle reads everything, getattr answers
        assert await m.ops.read(fi.fh, 10, len(want)) == want[10:], name
        after = await m.ops.getattr(inode, CTX)
        assert after.st_ino == inode and after.st_size == attrs.st_size
        assert after.st_mode == attrs.st_mode and after.st_mtime_ns == attrs.st_mtime_ns
        # a second open of the inode (the kernel still knows it) reads the same bytes
        assert await read_all(m.ops, inode) == want, name
        await m.ops.release(fi.fh)
        assert (await m.ops.getattr(inode, CTX)).st_size == attrs.st_size
        await m.ops.forget([(inode, 1)])
    # forget must never raise, whatever counts the kernel sends
    await m.ops.forget([(ROOT + 1, 5), (ROOT + 2, 0), (10**6, 1)])
    await m.ops.forget([])
    await expect_errno(errno.ENOENT, m.ops.lookup(ROOT, b"dmesg-pstore_blk-1", CTX))


async def test_lookup_counts_follow_lookups_and_forgets(open_ops) -> None:
    m = open_ops(KMSG)
    inode = 0
    for _ in range(3):
        inode = (await m.ops.lookup(ROOT, b"dmesg-pstore_blk-1", CTX)).st_ino
    await m.ops.forget([(inode, 2)])
    assert (await m.ops.getattr(inode, CTX)).st_ino == inode
    await m.ops.forget([(inode, 1)])
    await m.ops.forget([(inode, 7)])  # more than it holds: ignored, no error
    # a fresh lookup after the kernel forgot gives the same inode number back
    assert (await m.ops.lookup(ROOT, b"dmesg-pstore_blk-1", CTX)).st_ino == inode


def _dmesg_zone_offset(case: Case, index: int) -> int:
    return [z for z in zone_layout(case) if z.type == "dmesg"][index].offset


def _counter_at(case: Case) -> int:
    return 20 if case.meta["arch"] == "i386" else 28


def _poke(path: Path, offset: int, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


CHANGES = {
    "dmesg counter": ("dmesg-pstore_blk-0", lambda c: _dmesg_zone_offset(c, 0) + 12
                      + _counter_at(c)),
    "dmesg time": ("dmesg-pstore_blk-0", lambda c: _dmesg_zone_offset(c, 0) + 12
                   + (4 if c.meta["arch"] == "i386" else 8)),
    "dmesg datalen": ("dmesg-pstore_blk-0", lambda c: _dmesg_zone_offset(c, 0) + 4),
    "pmsg start": ("pmsg-pstore_blk-0",
                   lambda c: next(z for z in zone_layout(c) if z.type == "pmsg").offset + 8),
    "console datalen": ("console-pstore_blk-0",
                        lambda c: next(z for z in zone_layout(c) if z.type == "console").offset
                        + 4),
    "ftrace start": ("ftrace-pstore_blk-0",
                     lambda c: next(z for z in zone_layout(c) if z.type == "ftrace").offset + 8),
}


@pytest.mark.parametrize("change", list(CHANGES))
async def test_unlink_ebusy_when_the_zone_changed(open_ops, change: str) -> None:
    name, where = CHANGES[change]
    m = open_ops(ALL_FRONTS)
    inode = (await m.ops.lookup(ROOT, name.encode(), CTX)).st_ino
    at = where(ALL_FRONTS)
    orig = m.image.read_bytes()
    (old,) = struct.unpack_from("<i", orig, at)
    _poke(m.image, at, struct.pack("<i", old - 1 if old > 0 else 1))
    modified = m.image.read_bytes()
    await expect_errno(errno.EBUSY, m.ops.unlink(ROOT, name.encode(), CTX))
    assert m.image.read_bytes() == modified, "an erase wrote after the zone changed"
    assert (await m.ops.lookup(ROOT, name.encode(), CTX)).st_ino == inode, "name dropped"
    # the zone as listed again: the erase goes through
    _poke(m.image, at, orig[at:at + 4])
    await m.ops.unlink(ROOT, name.encode(), CTX)
    await expect_errno(errno.ENOENT, m.ops.lookup(ROOT, name.encode(), CTX))
    assert m.image.read_bytes() != orig


async def test_unlink_ebusy_keeps_the_other_records(open_ops) -> None:
    m = open_ops(KMSG)
    at = _dmesg_zone_offset(KMSG, 1) + 12 + _counter_at(KMSG)
    (old,) = struct.unpack_from("<I", m.image.read_bytes(), at)
    _poke(m.image, at, struct.pack("<I", old + 1))
    await expect_errno(errno.EBUSY, m.ops.unlink(ROOT, b"dmesg-pstore_blk-1", CTX))
    await m.ops.unlink(ROOT, b"dmesg-pstore_blk-0", CTX)
    await m.ops.unlink(ROOT, b"dmesg-pstore_blk-2", CTX)
    img = m.image.read_bytes()
    for index, erased in ((0, True), (1, False), (2, True)):
        off = _dmesg_zone_offset(KMSG, index)
        (datalen,) = struct.unpack_from("<i", img, off + 4)
        assert (datalen == 0) is erased, index


async def test_ro_unlink_is_erofs(open_ops) -> None:
    m = open_ops(ALL_FRONTS, extra="ro")
    assert m.ops.read_only and m.ops.store.read_only
    for name in ALL_FRONTS.files:
        await m.ops.lookup(ROOT, name.encode(), CTX)
        await expect_errno(errno.EROFS, m.ops.unlink(ROOT, name.encode(), CTX))
        assert (await m.ops.lookup(ROOT, name.encode(), CTX)).st_size >= 0
    assert m.image.read_bytes() == ALL_FRONTS.image.read_bytes()


async def test_read_only_store_under_rw_operations_is_erofs(open_ops) -> None:
    """Should the adapter be told rw over a store that cannot write, the store's refusal
    still comes out as EROFS and nothing is written."""
    m = open_ops(KMSG, extra="ro")
    ops = Operations(m.ops.store, Ownership(), read_only=False)
    await expect_errno(errno.EROFS, ops.unlink(ROOT, b"dmesg-pstore_blk-0", CTX))
    assert (await ops.lookup(ROOT, b"dmesg-pstore_blk-0", CTX)).st_size > 0
    assert m.image.read_bytes() == KMSG.image.read_bytes()


async def test_concurrent_reads_and_unlinks(open_ops) -> None:
    m = open_ops(ALL_FRONTS)
    want = ALL_FRONTS.files
    inodes = {n: (await m.ops.lookup(ROOT, n.encode(), CTX)).st_ino for n in want}
    handles = {n: (await m.ops.open(i, os.O_RDONLY, CTX)).fh for n, i in inodes.items()}
    bad: list[str] = []

    async def reader(seed: int) -> None:
        for step in range(30):
            name = sorted(want)[(seed + step) % len(want)]
            off = (seed * 7919 + step * 104729) % len(want[name])
            if await m.ops.read(handles[name], off, 5000) != want[name][off:off + 5000]:
                bad.append(name)
            await trio.lowlevel.checkpoint()

    async def remover(name: str) -> None:
        await m.ops.unlink(ROOT, name.encode(), CTX)

    async with trio.open_nursery() as nursery:
        for seed in range(8):
            nursery.start_soon(reader, seed)
        for name in want:
            nursery.start_soon(remover, name)
    assert not bad
    for name, fh in handles.items():
        assert await m.ops.read(fh, 0, 1 << 20) == want[name]
        await m.ops.release(fh)
        await expect_errno(errno.ENOENT, m.ops.lookup(ROOT, name.encode(), CTX))
    img = m.image.read_bytes()
    for zone in zone_layout(ALL_FRONTS):
        sig, datalen = struct.unpack_from("<Ii", img, zone.offset)
        if sig == ZONE_SIG[zone.type]:
            assert datalen == 0, zone


async def test_garbled_compressed_record_is_enc_z(open_ops, tmp_path: Path) -> None:
    data = bytearray(KMSG.image.read_bytes())
    z1 = _dmesg_zone_offset(KMSG, 1)
    for i in range(z1 + 60, z1 + 400):
        data[i] ^= 0x5A
    path = tmp_path / "garbled.bin"
    path.write_bytes(data)
    m = open_ops(KMSG, path=path)
    await expect_errno(errno.ENOENT, m.ops.lookup(ROOT, b"dmesg-pstore_blk-1", CTX))
    attrs = await m.ops.lookup(ROOT, b"dmesg-pstore_blk-1.enc.z", CTX)
    (datalen,) = struct.unpack_from("<i", data, z1 + 4)
    raw = bytes(data[z1 + 12 + 40:z1 + 12 + datalen])
    assert attrs.st_size == len(raw)
    assert await read_all(m.ops, attrs.st_ino) == raw
    for name in (b"dmesg-pstore_blk-0", b"dmesg-pstore_blk-2"):
        inode = (await m.ops.lookup(ROOT, name, CTX)).st_ino
        assert await read_all(m.ops, inode) == KMSG.files[name.decode()]
    await m.ops.unlink(ROOT, b"dmesg-pstore_blk-1.enc.z", CTX)
    assert struct.unpack_from("<i", path.read_bytes(), z1 + 4) == (0,)


async def test_device_error_is_eio_not_a_crash(open_ops) -> None:
    """A source that shrinks behind the store's back: reads fail with EIO, every other
    handler keeps answering."""
    m = open_ops(KMSG)
    os.truncate(m.image, 4096)
    for name in KMSG.files:
        with pytest.raises(pyfuse3.FUSEError) as info:
            await m.ops.lookup(ROOT, name.encode(), CTX)
        assert info.value.errno in (errno.EIO, errno.ENOENT), info.value.errno
    assert stat.S_ISDIR((await m.ops.getattr(ROOT, CTX)).st_mode)
    assert m.image.stat().st_size == 4096


ERASE_TRACES = [
    (KMSG, "dmesg-pstore_blk-1"),
    (ALL_FRONTS, "dmesg-pstore_blk-0"),
    (ALL_FRONTS, "pmsg-pstore_blk-0"),
    (ALL_FRONTS, "console-pstore_blk-0"),
    (ALL_FRONTS, "ftrace-pstore_blk-0"),
    (I386, "ftrace-pstore_blk-0"),
    (None, "ftrace-pstore_blk-0"),  # two CPU zones
]


@pytest.mark.parametrize("case,name", ERASE_TRACES,
                         ids=[f"{c.id if c else 'two-cpus'}:{n}" for c, n in ERASE_TRACES])
async def test_erase_writes_exactly_the_kernels_bytes_then_syncs(
        open_ops, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: Case | None,
        name: str) -> None:
    """Every byte an rm writes, as seen at the system calls: zeros over `datalen` (dmesg)
    or `datalen` and `start` (the ring zones; every CPU zone of ftrace), nothing else,
    and a data sync after the last write, before rm returns."""
    if case is None:
        data, _ = two_cpu_ftrace_image()
        path = tmp_path / "two-cpus.bin"
        path.write_bytes(data)
        case = ALL_FRONTS
        area = next(z for z in zone_layout(case) if z.type == "ftrace")
        zones = [area.offset, area.offset + area.size // 2]
        m = open_ops(case, path=path, extra="nr_cpus=2")
    else:
        m = open_ops(case)
        kind, _, index = name.partition("-pstore_blk-")
        zones = [z.offset for z in zone_layout(case) if z.type == kind]
        if kind == "dmesg":
            zones = [zones[int(index)]]
    span = 4 if name.startswith("dmesg-") else 8
    allowed = {at + 4 + i for at in zones for i in range(span)}
    await m.ops.lookup(ROOT, name.encode(), CTX)
    before = m.image.read_bytes()

    events: list[tuple] = []
    real_pwrite, real_write = os.pwrite, os.write
    real_fdatasync, real_fsync = os.fdatasync, os.fsync

    def pwrite(fd: int, data: bytes, offset: int) -> int:
        events.append(("write", offset, bytes(data)))
        return real_pwrite(fd, data, offset)

    def write(fd: int, data: bytes) -> int:
        if fd > 2:
            events.append(("write", os.lseek(fd, 0, os.SEEK_CUR), bytes(data)))
        return real_write(fd, data)

    def sync(real):
        def call(fd: int) -> None:
            events.append(("sync",))
            return real(fd)
        return call

    monkeypatch.setattr(os, "pwrite", pwrite)
    monkeypatch.setattr(os, "write", write)
    monkeypatch.setattr(os, "fdatasync", sync(real_fdatasync))
    monkeypatch.setattr(os, "fsync", sync(real_fsync))
    await m.ops.unlink(ROOT, name.encode(), CTX)
    monkeypatch.undo()

    written = set()
    for event in events:
        if event[0] == "write":
            _, offset, data = event
            assert data == bytes(len(data)), f"non-zero bytes written at {offset:#x}"
            written |= set(range(offset, offset + len(data)))
    assert written == allowed, (f"wrote {sorted(written - allowed)[:8]} beyond the kernel's "
                                f"bytes, left {sorted(allowed - written)[:8]} unwritten")
    assert events and events[-1] == ("sync",), "rm returned before a data sync"
    after = bytearray(before)
    for i in allowed:
        after[i] = 0
    assert m.image.read_bytes() == bytes(after)


REJECTED_HEADERS = {
    "datalen past the zone": (4, "<i", 0x7FFFFFFF),
    "datalen one past the buffer": (4, "<i", 64 * 1024 - 12 + 1),
    "negative datalen": (4, "<i", -5),
    "datalen shorter than the dmesg header": (4, "<i", 10),
    "datalen zero (erased)": (4, "<i", 0),
    "bad dmesg magic": (12, "<I", 0x12345678),
    "console signature": (0, "<I", ZONE_SIG["console"]),
    "no signature": (0, "<I", 0),
}


@pytest.mark.parametrize("label", list(REJECTED_HEADERS))
async def test_rejected_dmesg_zone_is_not_a_file(open_ops, tmp_path: Path, label: str) -> None:
    """A zone the kernel would not read is no file at all (ENOENT, not EIO); the other
    records are untouched, and nothing is written."""
    at, fmt, value = REJECTED_HEADERS[label]
    data = bytearray(KMSG.image.read_bytes())
    struct.pack_into(fmt, data, _dmesg_zone_offset(KMSG, 0) + at, value)
    path = tmp_path / "bad.bin"
    path.write_bytes(data)
    m = open_ops(KMSG, path=path)
    for name in (b"dmesg-pstore_blk-0", b"dmesg-pstore_blk-0.enc.z"):
        await expect_errno(errno.ENOENT, m.ops.lookup(ROOT, name, CTX))
        await expect_errno(errno.ENOENT, m.ops.unlink(ROOT, name, CTX))
    for name in ("dmesg-pstore_blk-1", "dmesg-pstore_blk-2"):
        inode = (await m.ops.lookup(ROOT, name.encode(), CTX)).st_ino
        assert await read_all(m.ops, inode) == KMSG.files[name]
    assert path.read_bytes() == bytes(data)


async def test_concurrent_opens_of_one_inode(open_ops) -> None:
    """The kernel sends opens of one inode concurrently (8 readers of one file): every
    handle reads until its own release, whatever the order of the others' releases."""
    m = open_ops(ALL_FRONTS)
    name = "dmesg-pstore_blk-1"
    want = ALL_FRONTS.files[name]
    inode = (await m.ops.lookup(ROOT, name.encode(), CTX)).st_ino
    handles: list[int] = []

    async def opener() -> None:
        handles.append((await m.ops.open(inode, os.O_RDONLY, CTX)).fh)

    async with trio.open_nursery() as nursery:
        for _ in range(8):
            nursery.start_soon(opener)
    assert len(set(handles)) == 8
    for i, fh in enumerate(handles):
        await m.ops.release(fh)
        for other in handles[i + 1:]:
            try:
                got = await m.ops.read(other, 100, 200)
            except pyfuse3.FUSEError as exc:  # an errno is survivable; anything else is not
                pytest.fail(f"read on a live handle after another's release: errno {exc.errno}")
            assert got == want[100:300]


async def test_unlink_is_for_root_and_the_files_owner(open_ops) -> None:
    """EPERM for a caller that is neither root nor the files' owner (`uid=`), whatever
    the modes; nothing is written. The owner may, as root may."""
    name = sorted(KMSG.files)[0].encode()
    m = open_ops(KMSG, ownership=Ownership(uid=65534, umask=0))
    before = m.image.read_bytes()
    await expect_errno(errno.EPERM, m.ops.unlink(ROOT, name, Ctx(uid=1000)))
    assert m.image.read_bytes() == before
    await m.ops.unlink(ROOT, name, Ctx(uid=65534))
    assert m.image.read_bytes() != before


# -- the erase hand-off: the loop waits for a fast device, serves on past a slow one -----------
async def test_an_erase_that_stalls_leaves_the_loop_serving(open_ops, monkeypatch) -> None:
    """While a record's erase is stuck in the device, lookups and reads of the others
    are answered; the erase completes once the device answers, and the erases after a
    slow one are awaited without holding the loop at all, until one is fast again."""
    m = open_ops(KMSG)
    store = m.ops.store
    device_answers = threading.Event()
    erasing = threading.Event()
    real_erase = store.erase

    def stalled_erase(record) -> None:
        erasing.set()
        device_answers.wait()
        real_erase(record)

    store.erase = stalled_erase
    victim, other = b"dmesg-pstore_blk-0", b"dmesg-pstore_blk-1"
    await m.ops.lookup(ROOT, victim, CTX)
    assert m.ops._eraser.fast
    async with trio.open_nursery() as nursery:
        nursery.start_soon(m.ops.unlink, ROOT, victim, CTX)
        await trio.to_thread.run_sync(erasing.wait)
        attrs = await m.ops.lookup(ROOT, other, CTX)  # answered mid-erase
        assert await read_all(m.ops, attrs.st_ino) == KMSG.files[other.decode()]
        assert not device_answers.is_set()
        device_answers.set()
    await expect_errno(errno.ENOENT, m.ops.lookup(ROOT, victim, CTX))
    assert not m.ops._eraser.fast  # that one was slow: the next is awaited at once
    store.erase = real_erase
    monkeypatch.setattr("pstorefs.fs.erase.ERASE_PATIENCE", 3600.0)  # fast, whatever the load
    await m.ops.unlink(ROOT, other, CTX)
    assert m.ops._eraser.fast  # and fast again
    store.close()
    again = open_ops(KMSG, path=m.image)
    assert sorted(again.ops.store.entry(r).name for r in again.ops.store.records) == sorted(
        n for n in KMSG.files if n.encode() not in (victim, other))



async def test_a_cancelled_rm_erases_nothing(open_ops) -> None:
    """An rm whose handler is cancelled before it starts (the mount ending) writes
    nothing, though the erase lock is free and the record known without a wait."""
    m = open_ops(KMSG)
    name = sorted(KMSG.files)[0].encode()
    await m.ops.lookup(ROOT, name, CTX)
    before = m.image.read_bytes()
    with trio.CancelScope() as scope:
        scope.cancel()
        await m.ops.unlink(ROOT, name, CTX)
    assert scope.cancelled_caught
    assert m.image.read_bytes() == before
    await m.ops.lookup(ROOT, name, CTX)  # still there


async def test_an_unmount_waits_for_the_erase_under_way(open_ops) -> None:
    """Cancelling `unlink` while the device holds its erase (pyfuse3.main ending on an
    exception in another handler cancels the rest, and `mount` then closes the store)
    does not abandon the erase: the handler ends only once it is done."""
    m = open_ops(KMSG)
    store = m.ops.store
    device_answers = threading.Event()
    erasing = threading.Event()
    real_erase = store.erase
    erased: list[bool] = []

    def stalled_erase(record) -> None:
        erasing.set()
        device_answers.wait()
        real_erase(record)
        erased.append(True)

    store.erase = stalled_erase
    victim = b"dmesg-pstore_blk-0"
    await m.ops.lookup(ROOT, victim, CTX)
    ended: list[bool] = []
    unmount = trio.CancelScope()

    async def unlink() -> None:
        with unmount:
            try:
                await m.ops.unlink(ROOT, victim, CTX)
            finally:
                ended.append(True)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(unlink)
        await trio.to_thread.run_sync(erasing.wait)
        unmount.cancel()
        try:
            await trio.testing.wait_all_tasks_blocked()
            assert not ended  # still waiting for the device
        finally:
            device_answers.set()
    assert ended and erased


async def test_a_handle_released_during_rm_leaves_no_content_kept(open_ops, monkeypatch) -> None:
    """An open whose content the kernel's page cache already held keeps none here, so
    `rm` fetches it for the handle (unlink rule); the handle's RELEASE, which the kernel
    sends after close in the background, may come meanwhile: nothing is then kept for
    an inode without handles (a body per archived record would stay in memory)."""
    monkeypatch.setattr("pstorefs.fs.operations._store_in_kernel", lambda inode, body: True)
    m = open_ops(KMSG)
    store = m.ops.store
    victim = b"dmesg-pstore_blk-0"
    inode = (await m.ops.lookup(ROOT, victim, CTX)).st_ino
    await m.ops.release((await m.ops.open(inode, os.O_RDONLY, CTX)).fh)  # systemd-pstore reads
    fh = (await m.ops.open(inode, os.O_RDONLY, CTX)).fh  # and opens again: nothing read
    real_body = store.body
    reading, device_answers = threading.Event(), threading.Event()

    def slow_body(record, wait=True):
        if not wait:
            return None  # dropped from the store's cache
        reading.set()
        device_answers.wait()
        return real_body(record)

    store.body = slow_body
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(m.ops.unlink, ROOT, victim, CTX)
            assert await trio.to_thread.run_sync(reading.wait, 30), "rm never read the content"
            await m.ops.release(fh)
            device_answers.set()
    finally:
        device_answers.set()
    await expect_errno(errno.ENOENT, m.ops.lookup(ROOT, victim, CTX))
    assert inode not in m.ops._open
