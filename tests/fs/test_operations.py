"""The FUSE adapter driven directly: `pstorefs.fs.Operations` over a real `ZoneStore`
opened on copies of the kernel-written fixtures, without mounting anything: lookup,
getattr, open, read, release, the writes it refuses, and what keeps the kernel's
requests few (read-ahead, xattrs, the kernel-cached listing). unlink: test_unlink.py.

What is checked here is the contract each handler keeps with the kernel: attributes,
contents, the errno of every refusal and lookup counts. readdir needs a real
`ReaddirToken`, so listings are tested through a mount (tests/mount).
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pyfuse3
import pytest
import trio
import trio.lowlevel

from helpers.cases import CASES, Case, case_by_id
from helpers.operations import ALL_FRONTS, CTX, KMSG, ROOT, expect_errno, read_all
from helpers.zone_writer import ZoneWriter, deflate
from pstorefs.format.abi import X86_64 as X86_64_ABI
from pstorefs.fs import Operations, Ownership
from pstorefs.store.cache import ITEM_OVERHEAD
from pstorefs.store.device import Device
from pstorefs.store.zone.layout import Geometry
from pstorefs.store.zone.store import ZoneStore

RECORD_CASES = [c for c in CASES if c.meta["files"]]

WRITE_FLAGS = {
    "O_WRONLY": os.O_WRONLY,
    "O_RDWR": os.O_RDWR,
    "O_RDONLY|O_TRUNC": os.O_RDONLY | os.O_TRUNC,
    "O_RDONLY|O_APPEND": os.O_RDONLY | os.O_APPEND,
    "O_WRONLY|O_CREAT": os.O_WRONLY | os.O_CREAT,
}


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
    m.ops.store.attributes = lambda record, **kw: calls.append(record) or real(record, **kw)
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
