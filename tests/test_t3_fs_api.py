"""The FUSE adapter driven directly: `pstorefs.fs.Operations` over a real `ZoneStore`
opened on copies of the kernel-written fixtures, without mounting anything.

What is checked here is the contract each handler keeps with the kernel: attributes,
contents, the errno of every refusal, lookup counts and the unlink rule (an unlinked
inode stays readable through its open handles and its attributes until `forget`).
readdir needs a real `ReaddirToken`, so listings are tested through a mount
(test_t4_mount.py).
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import struct
import time
from dataclasses import dataclass
from pathlib import Path

import pyfuse3
import pytest
import trio
import trio.lowlevel
from conftest import (
    CASES,
    ERASE_CASES,
    ZONE_SIG,
    Case,
    case_by_id,
    expected_after_erase,
    two_cpu_ftrace_image,
    zone_layout,
)
from writer import ZoneWriter, deflate

from pstorefs.cli.options import parse_options
from pstorefs.format.abi import X86_64 as X86_64_ABI
from pstorefs.fs import Operations, Ownership
from pstorefs.store import open_store
from pstorefs.store.cache import ITEM_OVERHEAD
from pstorefs.store.device import Device
from pstorefs.store.zone.layout import Geometry
from pstorefs.store.zone.store import ZoneStore

ROOT = pyfuse3.ROOT_INODE
KMSG = case_by_id("kmsg-deflate-3oops")
I386 = case_by_id("i386-all-fronts")
ALL_FRONTS = case_by_id("x86_64-all-fronts")
RECORD_CASES = [c for c in CASES if c.meta["files"]]

WRITE_FLAGS = {
    "O_WRONLY": os.O_WRONLY,
    "O_RDWR": os.O_RDWR,
    "O_RDONLY|O_TRUNC": os.O_RDONLY | os.O_TRUNC,
    "O_RDONLY|O_APPEND": os.O_RDONLY | os.O_APPEND,
    "O_WRONLY|O_CREAT": os.O_WRONLY | os.O_CREAT,
}


@dataclass
class Ctx:
    """Duck-typed `pyfuse3.RequestContext`: what the kernel tells about the caller."""

    uid: int = 0
    gid: int = 0
    pid: int = os.getpid()
    umask: int = 0o022


CTX = Ctx()


@dataclass
class Mounted:
    """An `Operations` over a store opened on an image copy, as the CLI builds it."""

    ops: Operations
    image: Path
    case: Case
    t_before: int
    t_after: int


@pytest.fixture
def open_ops(tmp_path: Path):
    """`open_ops(case, image=..., extra=..., ownership=...)` -> Mounted; closed at the end."""
    stores = []

    def factory(case: Case, image: str = "image.bin", extra: str = "",
                ownership: Ownership | None = None, path: Path | None = None) -> Mounted:
        if path is None:
            path = tmp_path / f"{case.id}-{len(stores)}-{image}"
            shutil.copyfile(case.dir / image, path)
        opts = parse_options([case.options + ("," + extra if extra else "")])
        store = open_store(str(path), opts.store)
        stores.append(store)
        t_before = time.time_ns()
        ops = Operations(store, ownership or Ownership(opts.uid, opts.gid, opts.umask),
                         read_only=store.read_only)
        return Mounted(ops, path, case, t_before, time.time_ns())

    yield factory
    for store in stores:
        store.close()


async def expect_errno(code: int, coro) -> None:
    with pytest.raises(pyfuse3.FUSEError) as info:
        await coro
    assert info.value.errno == code, (
        f"errno {errno.errorcode.get(info.value.errno)} != {errno.errorcode[code]}")


async def read_all(ops: Operations, inode: int, limit: int = 8 << 20) -> bytes:
    """The whole file in 4 KiB reads, as the kernel asks for it (at most `limit` bytes)."""
    fi = await ops.open(inode, os.O_RDONLY, CTX)
    try:
        chunks, off = [], 0
        while off <= limit and (chunk := await ops.read(fi.fh, off, 4096)):
            chunks.append(chunk)
            off += len(chunk)
        return b"".join(chunks)
    finally:
        await ops.release(fi.fh)


# -- lookup / getattr ------------------------------------------------------------------
@pytest.mark.parametrize("case", RECORD_CASES, ids=lambda c: c.id)
async def test_lookup_and_getattr_every_file(open_ops, case: Case) -> None:
    m = open_ops(case)
    inodes = set()
    for f in case.meta["files"]:
        want = case.files[f["name"]]
        attrs = await m.ops.lookup(ROOT, f["name"].encode(), CTX)
        assert attrs.st_ino > ROOT and attrs.st_ino not in inodes
        inodes.add(attrs.st_ino)
        # a lookup reads no device: a size not known yet is 0, valid for no time
        assert attrs.st_size in (0, len(want)) and (attrs.st_size or attrs.attr_timeout == 0)
        for a in (await m.ops.getattr(attrs.st_ino, CTX),
                  await m.ops.lookup(ROOT, f["name"].encode(), CTX)):
            assert a.st_ino == attrs.st_ino
            assert stat.S_ISREG(a.st_mode), f["name"]
            assert stat.S_IMODE(a.st_mode) == int(f["mode"], 8) == 0o444
            assert a.st_size == len(want), f"{f['name']}: st_size {a.st_size} != {len(want)}"
            assert (a.st_uid, a.st_gid) == (0, 0)
            assert a.st_nlink == 1
            if f["mtime_ns"] is not None:
                assert a.st_mtime_ns == f["mtime_ns"]
            else:
                assert m.t_before <= a.st_mtime_ns <= m.t_after, "not the mount time"
            assert a.entry_timeout >= 0 and a.attr_timeout >= 0


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
async def test_root_attributes_and_dot_lookups(open_ops, case: Case) -> None:
    m = open_ops(case)
    root = await m.ops.getattr(ROOT, CTX)
    assert root.st_ino == ROOT
    assert stat.S_ISDIR(root.st_mode) and stat.S_IMODE(root.st_mode) == 0o750
    assert (root.st_uid, root.st_gid) == (0, 0)
    assert root.st_nlink == 2
    assert m.t_before <= root.st_mtime_ns <= m.t_after
    for name in (b".", b".."):
        attrs = await m.ops.lookup(ROOT, name, CTX)
        assert attrs.st_ino == ROOT and stat.S_ISDIR(attrs.st_mode)
    await expect_errno(errno.ENOSYS, m.ops.opendir(ROOT, CTX))  # the kernel caches the listing
    st = await m.ops.statfs(CTX)
    assert st.f_namemax >= 255 and st.f_bsize > 0


UNKNOWN_NAMES = [b"nope", b"dmesg-pstore_blk-99", b"dmesg-blkoops-0", b"dmesg-pstore_blk-00",
                 b"dmesg-pstore_blk-0.enc.z", b"dmesg-pstore_blk--1", b"dmesg-pstore_blk-+0",
                 b"dmesg-pstore_blk-", b"pmsg-pstore_blk-1", b"ftrace-pstore_blk-1",
                 b"mce-pstore_blk-0", b"-pstore_blk-0", b"\xff\xfe-pstore_blk-0",
                 b"dmesg-pstore_blk-0/", b"DMESG-pstore_blk-0", b" dmesg-pstore_blk-0",
                 b"dmesg-pstore_blk-0\x00"]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
async def test_unknown_names_are_enoent(open_ops, case: Case) -> None:
    m = open_ops(case)
    known = {f["name"].encode() for f in case.meta["files"]}
    for name in [*UNKNOWN_NAMES, b"console-pstore_blk-0", b"ftrace-pstore_blk-0",
                 b"pmsg-pstore_blk-0", b"dmesg-pstore_blk-2"]:
        if name in known:
            continue
        await expect_errno(errno.ENOENT, m.ops.lookup(ROOT, name, CTX))


async def test_unknown_inodes_are_enoent(open_ops) -> None:
    m = open_ops(KMSG)
    count = len(KMSG.meta["files"])
    highest = max([(await m.ops.lookup(ROOT, f["name"].encode(), CTX)).st_ino
                   for f in KMSG.meta["files"]])
    assert highest >= ROOT + count
    for inode in (0, highest + 1000, 1 << 40, (1 << 63) - 1):
        await expect_errno(errno.ENOENT, m.ops.getattr(inode, CTX))
        await expect_errno(errno.ENOENT, m.ops.open(inode, os.O_RDONLY, CTX))


async def test_lookup_below_a_file_is_enotdir(open_ops) -> None:
    m = open_ops(KMSG)
    inode = (await m.ops.lookup(ROOT, b"dmesg-pstore_blk-0", CTX)).st_ino
    await expect_errno(errno.ENOTDIR, m.ops.lookup(inode, b"dmesg-pstore_blk-0", CTX))
    await expect_errno(errno.ENOTDIR, m.ops.opendir(inode, CTX))
    await expect_errno(errno.ENOTDIR, m.ops.unlink(inode, b"dmesg-pstore_blk-0", CTX))


async def test_empty_partition_has_no_files(open_ops) -> None:
    m = open_ops(case_by_id("empty-partition"))
    for name in (b"dmesg-pstore_blk-0", b"dmesg-pstore_blk-1", b"pmsg-pstore_blk-0"):
        await expect_errno(errno.ENOENT, m.ops.lookup(ROOT, name, CTX))
        await expect_errno(errno.ENOENT, m.ops.unlink(ROOT, name, CTX))
    for inode in range(ROOT + 1, ROOT + 20):
        await expect_errno(errno.ENOENT, m.ops.getattr(inode, CTX))
    assert m.image.read_bytes() == case_by_id("empty-partition").image.read_bytes()


async def test_name_option_changes_file_names(open_ops) -> None:
    m = open_ops(KMSG, extra="name=blkoops")
    await expect_errno(errno.ENOENT, m.ops.lookup(ROOT, b"dmesg-pstore_blk-0", CTX))
    attrs = await m.ops.lookup(ROOT, b"dmesg-blkoops-0", CTX)
    assert await read_all(m.ops, attrs.st_ino) == KMSG.files["dmesg-pstore_blk-0"]


async def test_ownership_and_umask(open_ops) -> None:
    m = open_ops(KMSG, ownership=Ownership(1234, 4321, 0o027))
    root = await m.ops.getattr(ROOT, CTX)
    assert stat.S_IMODE(root.st_mode) == 0o750 and (root.st_uid, root.st_gid) == (1234, 4321)
    attrs = await m.ops.lookup(ROOT, b"dmesg-pstore_blk-0", CTX)
    assert stat.S_IMODE(attrs.st_mode) == 0o440 and (attrs.st_uid, attrs.st_gid) == (1234, 4321)
    m = open_ops(KMSG, ownership=Ownership(umask=0))
    assert stat.S_IMODE((await m.ops.getattr(ROOT, CTX)).st_mode) == 0o777
    attrs = await m.ops.lookup(ROOT, b"dmesg-pstore_blk-1", CTX)
    assert stat.S_IMODE(attrs.st_mode) == 0o444


# -- open / read / release ------------------------------------------------------------------
@pytest.mark.parametrize("case", RECORD_CASES, ids=lambda c: c.id)
async def test_open_read_release(open_ops, case: Case) -> None:
    m = open_ops(case)
    for name, want in case.files.items():
        inode = (await m.ops.lookup(ROOT, name.encode(), CTX)).st_ino
        assert await read_all(m.ops, inode) == want, name
        fi = await m.ops.open(inode, os.O_RDONLY, CTX)
        n = len(want)
        for off, size in ((0, 1), (1, 4099), (n // 3, 7), (n - 7, 4099), (n - 1, 1),
                          (n, 4096), (n + 1, 10), (n + 10**9, 4096), (0, n + 100),
                          (4095, 4097), (131071, 65536)):
            got = await m.ops.read(fi.fh, max(off, 0), size)
            assert got == want[max(off, 0):max(off, 0) + size], (name, off, size)
        await m.ops.release(fi.fh)


async def test_several_handles_are_independent(open_ops) -> None:
    m = open_ops(ALL_FRONTS)
    handles = {}
    for name in ALL_FRONTS.files:
        inode = (await m.ops.lookup(ROOT, name.encode(), CTX)).st_ino
        handles[name] = [(await m.ops.open(inode, os.O_RDONLY, CTX)).fh for _ in range(3)]
    all_fh = [fh for fhs in handles.values() for fh in fhs]
    assert len(set(all_fh)) == len(all_fh), "file handles reused while open"
    for name, fhs in handles.items():
        await m.ops.release(fhs[0])
        for fh in fhs[1:]:
            assert await m.ops.read(fh, 5, 100) == ALL_FRONTS.files[name][5:105]
            await m.ops.release(fh)


@pytest.mark.parametrize("read_only", [False, True], ids=["rw", "ro"])
@pytest.mark.parametrize("flag", list(WRITE_FLAGS), ids=list(WRITE_FLAGS))
async def test_write_opens_refused(open_ops, flag: str, read_only: bool) -> None:
    m = open_ops(KMSG, extra="ro" if read_only else "")
    assert m.ops.read_only is read_only
    inode = (await m.ops.lookup(ROOT, b"dmesg-pstore_blk-0", CTX)).st_ino
    await expect_errno(errno.EROFS if read_only else errno.EACCES,
                       m.ops.open(inode, WRITE_FLAGS[flag], CTX))
    assert m.image.read_bytes() == KMSG.image.read_bytes()


def _write_calls(ops: Operations, inode: int) -> dict[str, object]:
    attrs = pyfuse3.EntryAttributes()
    attrs.st_size = 0
    attrs.st_mode = stat.S_IFREG | 0o666
    fields = pyfuse3.SetattrFields()
    name = b"dmesg-pstore_blk-0"
    return {
        "setattr": lambda: ops.setattr(inode, attrs, fields, None, CTX),
        "create": lambda: ops.create(ROOT, b"new", 0o644, os.O_WRONLY | os.O_CREAT, CTX),
        "mknod": lambda: ops.mknod(ROOT, b"node", stat.S_IFREG | 0o644, 0, CTX),
        "mkdir": lambda: ops.mkdir(ROOT, b"dir", 0o755, CTX),
        "rmdir": lambda: ops.rmdir(ROOT, name, CTX),
        "rename": lambda: ops.rename(ROOT, name, ROOT, b"renamed", 0, CTX),
        "rename-over": lambda: ops.rename(ROOT, name, ROOT, b"dmesg-pstore_blk-1", 0, CTX),
        "link": lambda: ops.link(inode, ROOT, b"hardlink", CTX),
        "symlink": lambda: ops.symlink(ROOT, b"symlink", b"dmesg-pstore_blk-0", CTX),
        "write": lambda: ops.write(1, 0, b"x"),
        "setxattr": lambda: ops.setxattr(inode, b"user.x", b"1", CTX),
        "removexattr": lambda: ops.removexattr(inode, b"user.x", CTX),
    }


WRITE_OPS = [
    "setattr", "create", "mknod", "mkdir", "rmdir", "rename", "rename-over", "link",
    "symlink", "write", "setxattr", "removexattr"]


@pytest.mark.parametrize("read_only", [False, True], ids=["rw", "ro"])
async def test_every_other_write_refused(open_ops, read_only: bool) -> None:
    m = open_ops(KMSG, extra="ro" if read_only else "")
    inode = (await m.ops.lookup(ROOT, b"dmesg-pstore_blk-0", CTX)).st_ino
    fi = await m.ops.open(inode, os.O_RDONLY, CTX)
    calls = _write_calls(m.ops, inode)
    assert sorted(calls) == sorted(WRITE_OPS)
    for what, call in calls.items():
        try:
            await call()
        except pyfuse3.FUSEError as exc:
            want = errno.EROFS if read_only else errno.EPERM
            assert exc.errno == want, f"{what}: {errno.errorcode.get(exc.errno)}"
        else:
            pytest.fail(f"{what} succeeded on a pstorefs")
    # nothing changed: same names, same content, same image
    assert await m.ops.read(fi.fh, 0, 1 << 20) == KMSG.files["dmesg-pstore_blk-0"]
    await m.ops.release(fi.fh)
    await expect_errno(errno.ENOENT, m.ops.lookup(ROOT, b"renamed", CTX))
    await expect_errno(errno.ENOENT, m.ops.lookup(ROOT, b"new", CTX))
    assert (await m.ops.lookup(ROOT, b"dmesg-pstore_blk-0", CTX)).st_ino == inode
    assert m.image.read_bytes() == KMSG.image.read_bytes()


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


# -- what keeps the kernel's requests few and answered from memory --------------------------
async def test_unlink_of_the_enc_z_name_of_a_record_that_decodes_is_enoent(open_ops) -> None:
    """`find` answers from the headers, so `.enc.z` finds an undecoded compressed record
    too: unlink must settle the name before erasing anything."""
    m = open_ops(KMSG)
    await expect_errno(errno.ENOENT, m.ops.unlink(ROOT, b"dmesg-pstore_blk-1.enc.z", CTX))
    assert m.image.read_bytes() == KMSG.image.read_bytes()
    attrs = await m.ops.lookup(ROOT, b"dmesg-pstore_blk-1", CTX)
    assert await read_all(m.ops, attrs.st_ino) == KMSG.files["dmesg-pstore_blk-1"]


async def test_xattrs_outside_user_are_not_supported(open_ops) -> None:
    """ENOTSUP, not ENODATA, for the namespaces `ls -l` asks about (SELinux labels,
    POSIX ACLs): coreutils then stops asking on this mount."""
    m = open_ops(KMSG)
    inode = (await m.ops.lookup(ROOT, b"dmesg-pstore_blk-0", CTX)).st_ino
    for name in (b"security.selinux", b"system.posix_acl_access", b"trusted.x"):
        await expect_errno(errno.EOPNOTSUPP, m.ops.getxattr(inode, name, CTX))
    await expect_errno(errno.ENODATA, m.ops.getxattr(inode, b"user.nope", CTX))
    assert await m.ops.getxattr(inode, b"user.pstore.reason_code", CTX) == b"2"


async def test_opendir_is_left_to_the_kernel_only_without_erased_dir(open_ops) -> None:
    """Without `erased/` the root is the only directory: OPENDIR answers ENOSYS so the
    kernel caches the listing, and readdir is then asked with fh 0. With `erased/`,
    readdir must tell the two directories apart by their handles."""
    m = open_ops(KMSG, extra="show_erased")
    await expect_errno(errno.ENOSYS, m.ops.opendir(ROOT, CTX))
    ops = Operations(m.ops.store, Ownership(), read_only=False, show_erased=True)
    assert await ops.opendir(ROOT, CTX) == ROOT


async def test_lookups_in_listing_order_decode_ahead(open_ops) -> None:
    """A lookup of the record after the one looked up before starts decoding the next
    ones in the background: their opens then find the body in the store's cache."""
    m = open_ops(KMSG)
    store = m.ops.store
    records = list(store.records)
    assert all(store.read(r, wait=False) is None for r in records)
    await m.ops.lookup(ROOT, b"dmesg-pstore_blk-0", CTX)
    assert store.read(records[2], wait=False) is None, "a single lookup is no order"
    await m.ops.lookup(ROOT, b"dmesg-pstore_blk-1", CTX)
    for _ in range(1000):
        if store.read(records[2], wait=False) is not None:
            break
        await trio.sleep(0.01)
    assert store.read(records[2], wait=False) == KMSG.files["dmesg-pstore_blk-2"]
    assert m.image.read_bytes() == KMSG.image.read_bytes()


async def test_xattrs_of_a_record_are_asked_for_once(open_ops) -> None:
    """A copy with its attributes (systemd-pstore) lists them and asks for each: the
    store computes them once."""
    m = open_ops(KMSG)
    inode = (await m.ops.lookup(ROOT, b"dmesg-pstore_blk-0", CTX)).st_ino
    calls = []
    real = m.ops.store.attributes
    m.ops.store.attributes = lambda record: calls.append(record) or real(record)
    names = await m.ops.listxattr(inode, CTX)
    values = {n: await m.ops.getxattr(inode, n, CTX) for n in names}
    assert len(calls) == 1 and len(values) >= 8
    assert values[b"user.pstore.zone_offset"] == b"0"


async def test_names_with_non_ascii_digits_are_enoent(open_ops) -> None:
    """`²` and `①` are digits to `str.isdigit` but no record's number: ENOENT, and the
    handler answers (an exception there would end the mount)."""
    m = open_ops(KMSG)
    for name in ("dmesg-pstore_blk-²", "dmesg-pstore_blk-①", "dmesg-pstore_blk-\u0661"):
        await expect_errno(errno.ENOENT, m.ops.lookup(ROOT, name.encode(), CTX))
    assert (await m.ops.lookup(ROOT, b"dmesg-pstore_blk-1", CTX)).st_ino > ROOT


async def test_a_second_pass_in_order_reads_ahead_again(tmp_path: Path) -> None:
    """Read-ahead follows the requests: after a pass over every record, a pass from
    the first again (a second `cat *`) is read ahead as the first one was."""
    w = ZoneWriter(X86_64_ABI, 64 * 4096, kmsg_size=4096)
    for n in range(64):
        w.dmesg(deflate(f"Oops#{n + 1} Part1\nrecord {n}\n".encode() * 20), compressed=True)
    path = tmp_path / "many.bin"
    path.write_bytes(bytes(w.image))
    # a cache for some 40 of the 64 bodies: after a pass, the first ones are gone
    store = ZoneStore(Device(str(path), read_only=True), Geometry(kmsg_size=4096),
                      name="pstore_blk", cache_budget=40 * (400 + ITEM_OVERHEAD))
    ops = Operations(store, Ownership(), read_only=True)
    records = list(store.records)

    async def decoded_ahead(at: int) -> bool:
        for _ in range(500):
            if store.read(records[at], wait=False) is not None:
                return True
            await trio.sleep(0.01)
        return False

    try:
        for n in range(64):
            await ops.lookup(ROOT, f"dmesg-pstore_blk-{n}".encode(), CTX)
        assert await decoded_ahead(63)
        assert store.read(records[20], wait=False) is None, "the cache holds every body"
        for n in range(10):
            await ops.lookup(ROOT, f"dmesg-pstore_blk-{n}".encode(), CTX)
            await trio.sleep(0.02)
        assert await decoded_ahead(20), "the second pass was not read ahead"
    finally:
        store.close()
