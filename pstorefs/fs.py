"""The FUSE adapter: records of a `Store` as files of one directory.

Thin by design: names, sizes, contents, attributes and erasing all come from the
store; this module maps them to inodes and errnos and keeps the kernel's lookup counts.
Blocking store calls (device reads, decoding, fdatasync) run in worker threads so the
event loop keeps answering.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import pyfuse3
import trio

from pstorefs.errors import PstoreError
from pstorefs.store import Entry, Record, Store

log = logging.getLogger(__name__)

T = TypeVar("T")

FILE_MODE = 0o444
DIR_MODE = 0o750
"""The kernel's modes in /sys/fs/pstore (fs/pstore/inode.c)."""

ERASED_DIR = "erased"
"""Where `show_erased` puts the records `rm` erased whose bytes remain."""

XATTR_PREFIX = "user.pstore."
"""The store's record attributes appear as `user.pstore.<key>` (`getfattr -d`)."""

DIRECTORY_PATIENCE = 2.0
"""How long a lookup or a listing waits for one record's name and size. The kernel
holds the directory's lock across both, so a record whose sectors stall the device
would stall every name: past this, the lookup answers with the size still unknown
(0, valid for no time, so that stat() and reads ask `getattr`), and the listing leaves
the record out, while the read goes on in its thread and is kept."""

TIMEOUT = 300.0
"""Records never change behind our back (the source is held exclusively) and every
removal goes through `unlink`, so the kernel may cache entries and attributes long."""


@dataclass(frozen=True)
class Ownership:
    """Owner and modes of the files (`uid=`, `gid=`, `umask=`)."""

    uid: int = 0
    gid: int = 0
    umask: int | None = None

    @property
    def file_mode(self) -> int:
        return FILE_MODE if self.umask is None else FILE_MODE & ~self.umask

    @property
    def dir_mode(self) -> int:
        return DIR_MODE if self.umask is None else 0o777 & ~self.umask


class Operations(pyfuse3.Operations):
    """The root holding one file per record, and with `show_erased` the read-only
    `erased/` directory of erased records.

    Inodes are `ROOT_INODE + 1 + index` into the records followed by the erased ones,
    fixed for the life of the mount; `erased/` comes after them. `unlink` erases on the
    device and removes the name; the inode lives on, readable, until the kernel forgets
    it (pyfuse3's unlink rule).
    """

    supports_dot_lookup = True
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, store: Store, ownership: Ownership, *, read_only: bool,
                 show_erased: bool = False) -> None:
        super().__init__()
        self.store = store
        self.ownership = ownership
        self.read_only = read_only
        self.mount_time_ns = time.time_ns()
        self._live = len(store.records)
        self._records = list(store.records) + (list(store.erased) if show_erased else [])
        self._listed = set(range(len(self._records)))
        self._erased_dir = (pyfuse3.ROOT_INODE + 1 + len(self._records)) if show_erased else None
        self._lookups: dict[int, int] = {}
        self._handles: dict[int, int] = {}
        self._bodies: dict[int, tuple[bytes, int]] = {}
        self._next_fh = 1
        self._erase_lock = trio.Lock()

    # -- helpers ------------------------------------------------------------------
    async def _call(self, func: Callable[..., T], *args: object,
                    abandon_on_cancel: bool = False) -> T:
        """Run a blocking store call in a worker thread; its errors become errnos."""
        try:
            return await trio.to_thread.run_sync(func, *args,
                                                 abandon_on_cancel=abandon_on_cancel)
        except PstoreError as exc:
            log.error("%s", exc)
            raise pyfuse3.FUSEError(exc.errno) from None
        except OSError as exc:
            log.error("%s: %s", self.store.describe(), exc)
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
        except Exception:
            # A bug met on one record must not end the mount: pyfuse3 stops serving
            # on any exception that is not a FUSEError. Logged with its traceback.
            log.exception("internal error on %s", self.store.describe())
            raise pyfuse3.FUSEError(errno.EIO) from None

    def _index(self, inode: int) -> int:
        index = inode - pyfuse3.ROOT_INODE - 1
        if not 0 <= index < len(self._records):
            raise pyfuse3.FUSEError(errno.ENOENT)
        return index

    def _parent(self, index: int) -> int | None:
        return pyfuse3.ROOT_INODE if index < self._live else self._erased_dir

    def _dir_attrs(self, inode: int) -> pyfuse3.EntryAttributes:
        attrs = self._base_attrs(inode, stat.S_IFDIR | self.ownership.dir_mode)
        attrs.st_nlink = 3 if inode == pyfuse3.ROOT_INODE and self._erased_dir else 2
        attrs.st_size = 0
        return attrs

    def _base_attrs(self, inode: int, mode: int) -> pyfuse3.EntryAttributes:
        attrs = pyfuse3.EntryAttributes()
        attrs.st_ino = inode
        attrs.st_mode = mode
        attrs.st_uid = self.ownership.uid
        attrs.st_gid = self.ownership.gid
        attrs.st_atime_ns = attrs.st_mtime_ns = attrs.st_ctime_ns = self.mount_time_ns
        attrs.entry_timeout = attrs.attr_timeout = TIMEOUT
        return attrs

    def _file_attrs(self, inode: int, entry: Entry | None) -> pyfuse3.EntryAttributes:
        """A file's attributes; `entry` None means its size is not known yet (see
        DIRECTORY_PATIENCE)."""
        attrs = self._base_attrs(inode, stat.S_IFREG | self.ownership.file_mode)
        if entry is None:
            attrs.st_size = 0
            attrs.attr_timeout = 0
            return attrs
        attrs.st_size = entry.size
        attrs.st_blksize = 4096
        attrs.st_blocks = (entry.size + 511) // 512
        if entry.time_ns is not None:
            attrs.st_mtime_ns = attrs.st_ctime_ns = entry.time_ns
        return attrs

    async def _entry(self, inode: int) -> Entry:
        return await self._call(self.store.entry, self._records[self._index(inode)])

    async def _entry_within(self, inode: int) -> Entry | None:
        """The entry, or None if the device does not give it within the patience."""
        record = self._records[self._index(inode)]
        known = self.store.cached_entry(record)
        if known is not None:
            return known
        with trio.move_on_after(DIRECTORY_PATIENCE):
            return await self._call(self.store.entry, record, abandon_on_cancel=True)
        log.warning("%s: record %d: the device has not answered in %g s; its size is "
                    "given later", self.store.describe(), inode, DIRECTORY_PATIENCE)
        return None

    def _remember(self, inode: int) -> None:
        self._lookups[inode] = self._lookups.get(inode, 0) + 1

    async def _find(self, parent: int, name: bytes) -> int:
        try:
            text = os.fsdecode(name)
        except UnicodeDecodeError:
            raise pyfuse3.FUSEError(errno.ENOENT) from None
        if parent == pyfuse3.ROOT_INODE and text == ERASED_DIR and self._erased_dir:
            return self._erased_dir
        if parent == pyfuse3.ROOT_INODE:
            record: Record | None = await self._call(self.store.find, text)
            index = self._records.index(record) if record is not None else -1
        else:
            index = -1
            for i in range(self._live, len(self._records)):
                if (await self._call(self.store.entry, self._records[i])).name == text:
                    index = i
                    break
        if index not in self._listed:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return pyfuse3.ROOT_INODE + 1 + index

    async def _lookup_attrs(self, inode: int, name: str) -> pyfuse3.EntryAttributes:
        """The attributes a lookup answers: no waiting on a stalled device (the name
        was found from the headers), and ENOENT once decoding shows the record's name
        is another (a compressed record that is `.enc.z`)."""
        if inode in (pyfuse3.ROOT_INODE, self._erased_dir):
            return self._dir_attrs(inode)
        entry = await self._entry_within(inode)
        if entry is not None and entry.name != name:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._file_attrs(inode, entry)

    def _check_dir(self, inode: int) -> None:
        if inode not in (pyfuse3.ROOT_INODE, self._erased_dir):
            raise pyfuse3.FUSEError(errno.ENOTDIR)

    def _refuse_write(self) -> pyfuse3.FUSEError:
        return pyfuse3.FUSEError(errno.EROFS if self.read_only else errno.EPERM)

    # -- the directory ----------------------------------------------------------------
    async def lookup(self, parent_inode: int, name: bytes,
                     ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        self._check_dir(parent_inode)
        if name == b".":
            inode = parent_inode
        elif name == b"..":
            inode = pyfuse3.ROOT_INODE
        else:
            inode = await self._find(parent_inode, name)
        attrs = await self._lookup_attrs(inode, os.fsdecode(name))
        self._remember(inode)
        return attrs

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        if inode in (pyfuse3.ROOT_INODE, self._erased_dir):
            return self._dir_attrs(inode)
        return self._file_attrs(inode, await self._entry(inode))

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        self._check_dir(inode)
        return inode

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        """Offsets are inode numbers, so a listing resumes correctly after an rm."""
        for index in sorted(self._listed):
            inode = pyfuse3.ROOT_INODE + 1 + index
            if inode <= start_id or self._parent(index) != fh:
                continue
            try:
                entry = await self._entry_within(inode)
            except pyfuse3.FUSEError:
                continue  # unreadable record: logged, left out of this listing
            if entry is None:
                continue  # stalled: left out of this listing, its read goes on
            attrs = self._file_attrs(inode, entry)
            if not pyfuse3.readdir_reply(token, os.fsencode(entry.name), attrs, inode):
                return
            self._remember(inode)
        if fh == pyfuse3.ROOT_INODE and self._erased_dir and self._erased_dir > start_id:
            if pyfuse3.readdir_reply(token, os.fsencode(ERASED_DIR),
                                     self._dir_attrs(self._erased_dir), self._erased_dir):
                self._remember(self._erased_dir)

    async def releasedir(self, fh: int) -> None:
        return None

    async def forget(self, inode_list: list[tuple[int, int]]) -> None:
        for inode, count in inode_list:
            left = self._lookups.get(inode, 0) - count
            if left > 0:
                self._lookups[inode] = left
            else:
                self._lookups.pop(inode, None)

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        st = pyfuse3.StatvfsData()
        st.f_bsize = st.f_frsize = 4096
        st.f_blocks = st.f_bfree = st.f_bavail = 0
        st.f_files = len(self._listed) + 1
        st.f_ffree = st.f_favail = 0
        st.f_namemax = 255
        return st

    # -- files ---------------------------------------------------------------------------
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND):
            raise pyfuse3.FUSEError(errno.EROFS if self.read_only else errno.EACCES)
        if inode not in self._bodies:
            body = await self._call(self.store.read, self._records[self._index(inode)])
            self._bodies.setdefault(inode, (body, 0))  # another open may have won the race
        body, opens = self._bodies[inode]
        self._bodies[inode] = (body, opens + 1)  # one copy per inode, however many opens
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = inode
        return pyfuse3.FileInfo(fh=fh, keep_cache=True)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        return self._bodies[self._handles[fh]][0][off:off + size]

    async def release(self, fh: int) -> None:
        inode = self._handles.pop(fh, None)
        if inode is None:
            return
        body, opens = self._bodies[inode]
        if opens > 1:
            self._bodies[inode] = (body, opens - 1)
        else:
            del self._bodies[inode]

    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self._check_dir(parent_inode)
        if self.read_only:
            raise pyfuse3.FUSEError(errno.EROFS)
        if parent_inode != pyfuse3.ROOT_INODE:
            raise pyfuse3.FUSEError(errno.EPERM)  # erased/ is a read-only view
        async with self._erase_lock:
            inode = await self._find(parent_inode, name)
            index = self._index(inode)
            await self._call(self.store.erase, self._records[index])
            self._listed.discard(index)

    # -- extended attributes: what the store knows of a record ---------------------------
    async def _xattrs(self, inode: int) -> dict[str, str]:
        if inode in (pyfuse3.ROOT_INODE, self._erased_dir):
            return {}
        return await self._call(self.store.attributes, self._records[self._index(inode)])

    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        return [os.fsencode(XATTR_PREFIX + key) for key in await self._xattrs(inode)]

    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        key = os.fsdecode(name).removeprefix(XATTR_PREFIX)
        value = (await self._xattrs(inode)).get(key) if os.fsdecode(name) != key else None
        if value is None:
            raise pyfuse3.FUSEError(errno.ENODATA)
        return value.encode()

    # -- every other write is refused ------------------------------------------------------
    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes,
                      fields: pyfuse3.SetattrFields, fh: int | None,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        raise self._refuse_write()

    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: pyfuse3.RequestContext
                     ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        raise self._refuse_write()

    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        raise self._refuse_write()

    async def mkdir(self, parent_inode: int, name: bytes, mode: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        raise self._refuse_write()

    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        raise self._refuse_write()

    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int,
                     name_new: bytes, flags: int, ctx: pyfuse3.RequestContext) -> None:
        raise self._refuse_write()

    async def link(self, inode: int, new_parent_inode: int, new_name: bytes,
                   ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        raise self._refuse_write()

    async def symlink(self, parent_inode: int, name: bytes, target: bytes,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        raise self._refuse_write()

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        raise self._refuse_write()

    async def setxattr(self, inode: int, name: bytes, value: bytes,
                       ctx: pyfuse3.RequestContext) -> None:
        raise self._refuse_write()

    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        raise self._refuse_write()
