"""The FUSE handlers: records of a `Store` as files of one directory.

Each handler is a shell: it checks the request, has the store (in a worker thread,
`in_thread`), the listing (`Listing`) or the read-ahead (`ReadAhead`) do the work, and
replies. What is left here is mapping records to inodes and attributes, the open
files, and refusing every write but `rm`.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass

import pyfuse3
import trio

from pstorefs.fs.decoder import DecodeProcess
from pstorefs.fs.erase import Eraser
from pstorefs.fs.errors import in_thread, internal_error
from pstorefs.fs.listing import Files, Listed, Listing, entry_within, kernel_caches_listing
from pstorefs.fs.read_ahead import ReadAhead
from pstorefs.store import UNSIZED, Body, Entry, RangedBody, Store

log = logging.getLogger(__name__)

FILE_MODE = 0o444
DIR_MODE = 0o750
"""The kernel's modes in /sys/fs/pstore (fs/pstore/inode.c)."""

ERASED_DIR = "erased"
"""Where `show_erased` puts the records `rm` erased whose bytes remain."""

XATTR_PREFIX = "user.pstore."
"""The store's record attributes appear as `user.pstore.<key>` (`getfattr -d`)."""

XATTRS_KEPT = 16
"""Records whose extended attributes are kept once asked for (`_xattrs`)."""

TIMEOUT = 300.0
"""Records never change behind our back (the source is held exclusively) and every
removal goes through `unlink`, so the kernel may cache entries and attributes long."""

STORE_IN_KERNEL = 1 << 20
"""Bodies up to this size are handed to the kernel's page cache as their file opens
(`notify_store`), so that no READ request follows: a `cat` reads from memory. Larger
ones are read as asked, as a reader of a long log may want only its head."""

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND
"""Open flags that would change a file: refused."""


@dataclass(frozen=True)
class Ownership:
    """Owner and modes of the files (`uid=`, `gid=`, `umask=`)."""

    uid: int = 0
    gid: int = 0
    umask: int | None = None

    def may_erase(self, uid: int) -> bool:
        """Whether user `uid` may `rm`: root and the files' owner (`uid=`), as only
        root may in the kernel's 0750 root-owned directory. Modes that let others in
        (`allow_other`, `umask=`) let them read, not erase."""
        return uid in (0, self.uid)

    @property
    def file_mode(self) -> int:
        return FILE_MODE if self.umask is None else FILE_MODE & ~self.umask

    @property
    def dir_mode(self) -> int:
        return DIR_MODE if self.umask is None else 0o777 & ~self.umask


class OpenFiles:
    """The contents of the open files: one copy per inode however many handles share
    it, kept until the last is released, so that a read is a slice of memory whatever
    the store's cache dropped meanwhile (or, a `RangedBody`, a range it renders). An
    inode whose content the kernel's page cache holds already (`Operations._in_kernel`)
    may be opened with none (`body` None): it is fetched on the first READ, which comes
    only if the kernel evicted pages."""

    def __init__(self) -> None:
        self._inodes: dict[int, int] = {}
        """The inode of each handle."""
        self._bodies: dict[int, tuple[Body | None, int]] = {}
        """Each open inode's content (None: not fetched) and how many handles it has."""
        self._next_fh = 1

    def __contains__(self, inode: int) -> bool:
        return inode in self._bodies

    def keep(self, inode: int, body: Body) -> bool:
        """Keep `body` as the content of `inode` for its handles, unless another open
        kept it first (it won the race for the read): whether this one was kept."""
        if self.body(inode) is not None:
            return False
        self._bodies[inode] = (body, self._bodies.get(inode, (None, 0))[1])
        return True

    def body(self, inode: int) -> Body | None:
        """The content kept for `inode`, None if none is."""
        return self._bodies.get(inode, (None, 0))[0]

    def open(self, inode: int) -> int:
        """A new handle on `inode`, with its content kept or not (see the class)."""
        body, opens = self._bodies.get(inode, (None, 0))
        self._bodies[inode] = (body, opens + 1)
        fh = self._next_fh
        self._next_fh += 1
        self._inodes[fh] = inode
        return fh

    def inode(self, fh: int) -> int:
        return self._inodes[fh]

    def release(self, fh: int) -> None:
        inode = self._inodes.pop(fh, None)
        if inode is None:
            return
        body, opens = self._bodies[inode]
        if opens > 1:
            self._bodies[inode] = (body, opens - 1)
        else:
            del self._bodies[inode]


def _store_in_kernel(inode: int, body: bytes) -> bool:
    """Put `body` in the kernel's page cache of `inode` before the open replies (with
    `keep_cache`, which keeps it there): the reads that follow are answered by the
    kernel, one request per file fewer. Whether it was stored: where the kernel
    refuses, reads ask as usual."""
    try:
        pyfuse3.notify_store(inode, 0, body)
    except OSError as exc:
        log.debug("storing inode %d in the page cache: %s", inode, exc)
        return False
    return True


class Operations(pyfuse3.Operations):
    """The root holding one file per record, and with `show_erased` the read-only
    `erased/` directory of erased records.

    Inodes are `ROOT_INODE + 1 + index` into the records followed by the erased ones,
    fixed for the life of the mount (so `forget` has nothing to release); `erased/`
    comes after them. `unlink` erases on the device and removes the name; the inode
    stays readable through its open handles (pyfuse3's unlink rule).
    """

    supports_dot_lookup = True
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, store: Store, ownership: Ownership, *, read_only: bool,
                 show_erased: bool = False,
                 before_erase: Callable[[], None] | None = None) -> None:
        """`before_erase` runs before every erase, which does not happen if it raises
        (`-o sync_before_erase`: the copy of the record made elsewhere is on disk)."""
        super().__init__()
        self.store = store
        self.ownership = ownership
        self.read_only = read_only
        self.mount_time_ns = time.time_ns()
        self._live = len(store.records)
        self._files = Files(store.records, list(store.erased) if show_erased else [])
        self._listed = Listed(len(self._files))
        self._erased_dir = (pyfuse3.ROOT_INODE + 1 + len(self._files)) if show_erased else None
        self._listing = Listing(store, self._files, self._listed,
                                kernel_caches=kernel_caches_listing(show_erased),
                                changed_ns=self.mount_time_ns)
        self._read_ahead = ReadAhead(store, self._files, self._listed, self._live)
        self._open = OpenFiles()
        self._in_kernel = bytearray(len(self._files))
        """1 for each file whose whole content was stored in the kernel's page cache
        (`_store_in_kernel`) since the kernel last forgot its inode: opening it again
        needs nothing from the store (`keep_cache` keeps those pages)."""
        self._recent_xattrs: dict[int, dict[str, str]] = {}
        self._erase_lock = trio.Lock()
        self._eraser = Eraser(store)
        self._before_erase = before_erase

    def start_decoder(self) -> None:
        """Read ahead in a decoding process (`pstorefs.fs.decoder`) from now on: to be
        called before the event loop starts, with no other thread running."""
        self._read_ahead.decoder = DecodeProcess.fork(self.store, self._files)

    def close(self) -> None:
        """End what the mount started besides the event loop: the decoding process."""
        if self._read_ahead.decoder is not None:
            self._read_ahead.decoder.stop()

    # -- helpers ------------------------------------------------------------------
    def _index(self, inode: int) -> int:
        index = inode - pyfuse3.ROOT_INODE - 1
        if not 0 <= index < len(self._files):
            raise pyfuse3.FUSEError(errno.ENOENT)
        return index

    def _dir_attrs(self, inode: int) -> pyfuse3.EntryAttributes:
        attrs = self._base_attrs(inode, stat.S_IFDIR | self.ownership.dir_mode)
        attrs.st_nlink = 3 if inode == pyfuse3.ROOT_INODE and self._erased_dir else 2
        attrs.st_size = 0
        if inode == pyfuse3.ROOT_INODE:  # moved on as the kernel's listing is dropped
            attrs.st_mtime_ns = attrs.st_ctime_ns = self._listing.changed_ns
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
        """A file's attributes; `entry` None or `UNSIZED` means its size is not known
        yet (see DIRECTORY_PATIENCE, `Store.unsized`)."""
        attrs = self._base_attrs(inode, stat.S_IFREG | self.ownership.file_mode)
        if entry is None or entry.size == UNSIZED:  # the size is not known yet
            attrs.st_size = 0
            attrs.attr_timeout = attrs.entry_timeout = 0
            return attrs
        attrs.st_size = entry.size
        attrs.st_blksize = 4096
        attrs.st_blocks = (entry.size + 511) // 512
        if entry.time_ns is not None:
            attrs.st_mtime_ns = attrs.st_ctime_ns = entry.time_ns
        return attrs

    async def _entry(self, inode: int) -> Entry:
        record = self._files[self._index(inode)]
        known = self.store.entry(record, wait=False)
        return known if known is not None else await in_thread(self.store, self.store.entry,
                                                               record)

    async def _find(self, parent: int, name: bytes) -> int:
        """The inode of the listed file `name` in directory `parent`, or ENOENT."""
        try:
            text = os.fsdecode(name)
        except UnicodeDecodeError:
            raise pyfuse3.FUSEError(errno.ENOENT) from None
        if parent != pyfuse3.ROOT_INODE:
            index = await self._find_erased(text)
        elif text == ERASED_DIR and self._erased_dir:
            return self._erased_dir
        else:
            index = self._locate(text)
        if index not in self._listed:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return pyfuse3.ROOT_INODE + 1 + index

    def _locate(self, name: str) -> int:
        """The index of the record holding file `name` (see `Store.locate`), -1 if none:
        from the headers, never the device, so that a lookup never waits."""
        try:
            record = self.store.locate(name)
        except Exception as exc:  # a bug must not end the mount
            raise internal_error(exc, self.store) from None
        return self._files.index(record) if record is not None else -1

    async def _find_erased(self, name: str) -> int:
        """The index of the erased record whose file is `name`, -1 if none."""
        for index in range(self._live, len(self._files)):
            if (await in_thread(self.store, self.store.entry, self._files[index])).name == name:
                return index
        return -1

    async def _lookup_attrs(self, inode: int, name: str) -> pyfuse3.EntryAttributes:
        """The attributes a lookup answers: no waiting on a stalled device (the name
        was found from the headers), and ENOENT once decoding shows the record's name
        is another (a compressed record is `.enc.z` only if it does not decode)."""
        if inode in (pyfuse3.ROOT_INODE, self._erased_dir):
            return self._dir_attrs(inode)
        entry = await entry_within(self.store, self._files[self._index(inode)], inode)
        if entry is not None and entry.name != name:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._file_attrs(inode, entry)

    def _check_dir(self, inode: int) -> None:
        if inode not in (pyfuse3.ROOT_INODE, self._erased_dir):
            raise pyfuse3.FUSEError(errno.ENOTDIR)

    def _check_erasable(self, parent_inode: int) -> None:
        """`rm` erases in the root of a writable mount only: erased/ is a read-only view."""
        self._check_dir(parent_inode)
        if self.read_only:
            raise pyfuse3.FUSEError(errno.EROFS)
        if parent_inode != pyfuse3.ROOT_INODE:
            raise pyfuse3.FUSEError(errno.EPERM)

    def _refuse_write(self) -> pyfuse3.FUSEError:
        return pyfuse3.FUSEError(errno.EROFS if self.read_only else errno.EPERM)

    def _reply_entry(self, token: pyfuse3.ReaddirToken, index: int, entry: Entry) -> bool:
        """Add a record's file to a listing: whether the reply had room."""
        inode = pyfuse3.ROOT_INODE + 1 + index
        return pyfuse3.readdir_reply(token, os.fsencode(entry.name),
                                     self._file_attrs(inode, entry), inode)

    # -- the directory ----------------------------------------------------------------
    async def lookup(self, parent_inode: int, name: bytes,
                     ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        self._check_dir(parent_inode)
        if name in (b".", b".."):
            return self._dir_attrs(parent_inode if name == b"." else pyfuse3.ROOT_INODE)
        inode = await self._find(parent_inode, name)
        self._read_ahead.requested(inode - pyfuse3.ROOT_INODE - 1)
        await self._read_ahead.arrived(inode - pyfuse3.ROOT_INODE - 1, body=False)
        attrs = await self._lookup_attrs(inode, os.fsdecode(name))
        if attrs.attr_timeout and self._listing.found_again(inode - pyfuse3.ROOT_INODE - 1):
            await self._listing.forget()  # before the reply: the next `ls` shows it
        return attrs

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        if inode in (pyfuse3.ROOT_INODE, self._erased_dir):
            return self._dir_attrs(inode)
        return self._file_attrs(inode, await self._entry(inode))

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        self._check_dir(inode)
        if self._listing.kernel_caches:  # see kernel_caches_listing
            raise pyfuse3.FUSEError(errno.ENOSYS)
        return inode

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        """Offsets are inode numbers, so a listing resumes correctly after an rm."""
        fh = fh or pyfuse3.ROOT_INODE  # no OPENDIR (see opendir): the root
        indexes = (range(self._live, len(self._files)) if fh == self._erased_dir
                   else range(self._live))
        room = await self._listing.reply(indexes, start_id - pyfuse3.ROOT_INODE,
                                         functools.partial(self._reply_entry, token))
        if room and fh == pyfuse3.ROOT_INODE and self._erased_dir and self._erased_dir > start_id:
            pyfuse3.readdir_reply(token, os.fsencode(ERASED_DIR),
                                  self._dir_attrs(self._erased_dir), self._erased_dir)

    async def releasedir(self, fh: int) -> None:
        return None

    async def forget(self, inode_list: list[tuple[int, int]]) -> None:
        """Inodes are fixed for the mount's life: nothing to release, but the kernel's
        page cache of a forgotten inode is gone with it."""
        for inode, _ in inode_list:
            with contextlib.suppress(pyfuse3.FUSEError):  # not a record's file
                self._in_kernel[self._index(inode)] = 0

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
        """The content is read now and stored in the kernel's page cache, so that no
        READ follows; unless it is there already from an earlier open (a copy after a
        first read, as systemd-pstore does): then nothing is read at all."""
        if flags & WRITE_FLAGS:
            raise pyfuse3.FUSEError(errno.EROFS if self.read_only else errno.EACCES)
        index = self._index(inode)
        if inode not in self._open and not self._in_kernel[index]:
            self._read_ahead.requested(index, opened=True)
            await self._read_ahead.arrived(index, body=True)
            body = await self._body(inode)
            if (self._open.keep(inode, body) and isinstance(body, bytes)
                    and len(body) <= STORE_IN_KERNEL):
                self._in_kernel[index] = _store_in_kernel(inode, body)
        return pyfuse3.FileInfo(fh=self._open.open(inode), keep_cache=True)

    async def _body(self, inode: int) -> Body:
        """The content of `inode`: the open files', the store's cache, or decoded."""
        body = self._open.body(inode)
        if body is None:
            record = self._files[self._index(inode)]
            body = self.store.body(record, wait=False)
            if body is None:
                body = await in_thread(self.store, self.store.body, record)
        return body

    async def read(self, fh: int, off: int, size: int) -> bytes:
        """Asked only for what the kernel's page cache lacks: a body too large for
        `notify_store` or a ranged one (which renders the range in a worker thread),
        or pages the kernel evicted since."""
        inode = self._open.inode(fh)
        body = await self._body(inode)
        self._open.keep(inode, body)
        if isinstance(body, RangedBody):
            return await in_thread(self.store, body.read, off, size)
        return body[off:off + size]

    async def release(self, fh: int) -> None:
        self._open.release(fh)

    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self._check_erasable(parent_inode)
        if not self.ownership.may_erase(ctx.uid):
            raise pyfuse3.FUSEError(errno.EPERM)
        await trio.lowlevel.checkpoint_if_cancelled()  # a cancelled rm erases nothing
        try:  # an rm at a time, and no trip through the scheduler for the first
            self._erase_lock.acquire_nowait()
        except trio.WouldBlock:
            await self._erase_lock.acquire()
        try:
            inode = await self._find(parent_inode, name)
            if (await self._entry(inode)).name != os.fsdecode(name):
                raise pyfuse3.FUSEError(errno.ENOENT)  # located, not found: see Store.locate
            if inode in self._open:  # its handles read on after the erase (unlink rule)
                body = await self._body(inode)
                if inode in self._open:  # not if their RELEASE came meanwhile
                    self._open.keep(inode, body)
            if self._before_erase is not None:
                await in_thread(self.store, self._before_erase)
            await self._eraser.erase(self._files[self._index(inode)])
            self._listed.discard(self._index(inode))
            self._read_ahead.removed()
        finally:
            self._erase_lock.release()

    # -- extended attributes: what the store knows of a record ---------------------------
    async def _xattrs(self, inode: int) -> dict[str, str]:
        """The record's attributes, kept for the few records asked last: a copy with
        its attributes (systemd-pstore's) lists them, then asks for each."""
        if inode in (pyfuse3.ROOT_INODE, self._erased_dir):
            return {}
        attrs = self._recent_xattrs.pop(inode, None)
        if attrs is None:
            record = self._files[self._index(inode)]
            try:
                attrs = self.store.attributes(record, wait=False)
            except Exception as exc:  # a bug must not end the mount
                raise internal_error(exc, self.store) from None
            if attrs is None:
                attrs = await in_thread(self.store, self.store.attributes, record)
        self._recent_xattrs[inode] = attrs
        while len(self._recent_xattrs) > XATTRS_KEPT:
            self._recent_xattrs.pop(next(iter(self._recent_xattrs)))
        return attrs

    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        return [os.fsencode(XATTR_PREFIX + key) for key in await self._xattrs(inode)]

    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        """security.*, system.posix_acl_*, trusted.*: namespaces this filesystem does not
        have. ENOTSUP, not ENODATA, has `ls -l` stop asking for them on this mount
        (coreutils remembers it per device) instead of twice per file."""
        if not name.startswith(b"user."):
            raise pyfuse3.FUSEError(errno.EOPNOTSUPP)
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
