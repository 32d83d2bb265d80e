"""The FUSE adapter: records of a `Store` as files of one directory.

Thin by design: names, sizes, contents, attributes and erasing all come from the
store; this module maps them to inodes and errnos, and decides what to decode ahead
and what the kernel may cache. Blocking store calls (device reads, decoding, fdatasync)
run in worker threads so the event loop keeps answering.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import stat
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
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

LISTING_REFRESH = 1.0
"""How long after a listing that left records out the kernel is told to drop it (the
kernel caches a reply after it arrived)."""

READDIR_BATCH = 256
"""Entries a listing decodes ahead at a time (a reply holds some 100 to 200)."""

DECODE_THREADS = max(1, min(2, os.cpu_count() or 1))
"""Worker threads decoding ahead at once: zlib and the other codecs release the GIL,
so two decode side by side while the event loop answers."""

READ_AHEAD = 32
READ_AHEAD_BYTES = 512 << 10
"""At most how many records, and how many bytes of them, are decoded ahead of lookups
and opens in listing order: well within what the store's cache keeps (2 MiB)."""

XATTRS_KEPT = 16
"""Records whose extended attributes are kept once asked for (`_xattrs`)."""

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
    fixed for the life of the mount (so `forget` has nothing to release); `erased/`
    comes after them. `unlink` erases on the device and removes the name; the inode
    stays readable through its open handles (pyfuse3's unlink rule).
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
        self._records = _Files(store.records, list(store.erased) if show_erased else [])
        self._listed = _Listed(len(self._records))
        self._erased_dir = (pyfuse3.ROOT_INODE + 1 + len(self._records)) if show_erased else None
        self._caches_listing = self._erased_dir is None and _kernel_at_least(5, 1)
        """Whether the kernel caches the root's listing (see opendir)."""
        self._left_out: set[int] = set()
        """Records a listing left out (unreadable or stalled), see `_forget_listing`."""
        self._forget_pending = False
        self._notify_limiter = trio.CapacityLimiter(1)
        """Its own thread for telling the kernel to drop a listing: never waits behind
        decodes stuck on a stalled device."""
        self._last_found = -2
        self._ahead_end = -1
        self._ahead_busy = False
        self._handles: dict[int, int] = {}
        self._bodies: dict[int, tuple[bytes, int]] = {}
        self._recent_xattrs: dict[int, dict[str, str]] = {}
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
        if entry is None:  # neither size nor (for a compressed record) name is sure yet
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
        record = self._records[self._index(inode)]
        known = self.store.entry(record, wait=False)
        return known if known is not None else await self._call(self.store.entry, record)

    async def _entry_within(self, inode: int) -> Entry | None:
        """The entry, or None if the device does not give it within the patience."""
        record = self._records[self._index(inode)]
        known = self.store.entry(record, wait=False)
        if known is not None:
            return known
        with trio.move_on_after(DIRECTORY_PATIENCE):
            return await self._call(self.store.entry, record, abandon_on_cancel=True)
        log.warning("%s: record %d: the device has not answered in %g s; its size is "
                    "given later", self.store.describe(), inode, DIRECTORY_PATIENCE)
        return None

    async def _find(self, parent: int, name: bytes) -> int:
        try:
            text = os.fsdecode(name)
        except UnicodeDecodeError:
            raise pyfuse3.FUSEError(errno.ENOENT) from None
        if parent == pyfuse3.ROOT_INODE and text == ERASED_DIR and self._erased_dir:
            return self._erased_dir
        if parent == pyfuse3.ROOT_INODE:
            try:
                record = self.store.locate(text)  # from the headers: never the device
            except Exception:  # a bug must not end the mount (see _call)
                log.exception("internal error on %s", self.store.describe())
                raise pyfuse3.FUSEError(errno.EIO) from None
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
        is another (a compressed record is `.enc.z` only if it does not decode)."""
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
            self._read_ahead(inode - pyfuse3.ROOT_INODE - 1)
        attrs = await self._lookup_attrs(inode, os.fsdecode(name))
        index = inode - pyfuse3.ROOT_INODE - 1
        if attrs.attr_timeout and index in self._left_out:  # a listing left it out
            self._left_out.discard(index)
            await self._forget_listing()  # before the reply: the next `ls` shows it
        return attrs

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        if inode in (pyfuse3.ROOT_INODE, self._erased_dir):
            return self._dir_attrs(inode)
        return self._file_attrs(inode, await self._entry(inode))

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        self._check_dir(inode)
        if self._caches_listing:
            # The root is the only directory: without OPENDIR (ENOSYS, once per mount;
            # Linux 5.1 and later) the kernel caches its listing (FOPEN_CACHE_DIR,
            # fuse_do_open's default then) and drops that cache when an unlink changes
            # the directory; readdir is then asked with fh 0.
            raise pyfuse3.FUSEError(errno.ENOSYS)
        return inode

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        """Offsets are inode numbers, so a listing resumes correctly after an rm."""
        fh = fh or pyfuse3.ROOT_INODE  # no OPENDIR (see opendir): the root
        first = self._live if fh == self._erased_dir else 0
        start = max(start_id - pyfuse3.ROOT_INODE, first)  # the index after start_id's
        room, stalled = True, False
        while room and (batch := self._listed.next(start, READDIR_BATCH)):
            start = batch[-1] + 1
            room, stall = await self._reply_batch(
                token, [index for index in batch if self._parent(index) == fh])
            stalled = stalled or stall
        if (room and fh == pyfuse3.ROOT_INODE and self._erased_dir
                and self._erased_dir > start_id):
            pyfuse3.readdir_reply(token, os.fsencode(ERASED_DIR),
                                  self._dir_attrs(self._erased_dir), self._erased_dir)
        if stalled:  # its read goes on: once done, the next listing should show it
            self._forget_listing_later()

    async def _reply_batch(self, token: pyfuse3.ReaddirToken,
                           indexes: list[int]) -> tuple[bool, bool]:
        """Add those records' entries to the reply, decoded ahead (`_decode_ahead`):
        whether the reply had room for all, and whether the device stalled on any.

        A record left out (unreadable, or stalled past `DIRECTORY_PATIENCE`, when the
        batch's others are left out too rather than waited for one by one) is noted in
        `_left_out`, so that finding it again refreshes the kernel's listing."""
        with trio.move_on_after(DIRECTORY_PATIENCE) as patience:
            await self._decode_ahead(indexes)
        if patience.cancelled_caught:
            log.warning("%s: the device has not answered in %g s: records not read yet "
                        "are left out of this listing", self.store.describe(),
                        DIRECTORY_PATIENCE)
        stalled = patience.cancelled_caught
        for index in indexes:
            inode = pyfuse3.ROOT_INODE + 1 + index
            try:
                entry = (self.store.entry(self._records[index], wait=False)
                         if patience.cancelled_caught else await self._entry_within(inode))
                stalled = stalled or entry is None
            except pyfuse3.FUSEError:
                entry = None  # unreadable: logged
            if entry is None:
                self._left_out.add(index)
                continue
            self._left_out.discard(index)
            attrs = self._file_attrs(inode, entry)
            if not pyfuse3.readdir_reply(token, os.fsencode(entry.name), attrs, inode):
                return False, stalled
        return True, stalled

    async def _forget_listing(self) -> None:
        """Have the kernel drop the listing it cached (see opendir), so that the next
        one asks again: a listing left records out, and one of them is found now."""
        if not self._caches_listing:
            return
        try:
            await trio.to_thread.run_sync(pyfuse3.invalidate_inode, pyfuse3.ROOT_INODE, False,
                                          limiter=self._notify_limiter)
        except OSError as exc:
            log.debug("dropping the kernel's listing: %s", exc)

    def _forget_listing_later(self) -> None:
        """`_forget_listing` a while after the listing just replied (once the kernel
        has cached it: `LISTING_REFRESH`), one pending at a time."""
        if self._forget_pending or not self._caches_listing:
            return
        self._forget_pending = True

        async def later() -> None:
            try:
                await trio.sleep(LISTING_REFRESH)
                await self._forget_listing()
            finally:
                self._forget_pending = False

        trio.lowlevel.spawn_system_task(_logged(later))

    async def releasedir(self, fh: int) -> None:
        return None

    async def _decode_ahead(self, indexes: Sequence[int], *, bodies: bool = False) -> None:
        """Have the store know the entries of those records (with `bodies`, have their
        contents in its cache), decoding what it does not on `DECODE_THREADS` worker
        threads at once. Errors are left for the record's own request to report; if
        this is cancelled, the threads stop after the record each is on."""
        records = map(self._records.__getitem__, indexes)
        if bodies:
            missing = [r for r in records if self.store.read(r, wait=False) is None]
        else:
            missing = [r for r in records if self.store.entry(r, wait=False) is None]
        decode = self.store.read if bodies else self.store.entry
        stop = threading.Event()

        def run(part: list[Record]) -> None:
            for record in part:
                if stop.is_set():
                    return
                with contextlib.suppress(Exception):
                    decode(record)

        in_thread = functools.partial(trio.to_thread.run_sync, abandon_on_cancel=True)
        try:
            async with trio.open_nursery() as nursery:
                for n in range(min(DECODE_THREADS, len(missing))):
                    nursery.start_soon(in_thread, run, missing[n::DECODE_THREADS])
        finally:
            stop.set()

    def _read_ahead(self, index: int) -> None:
        """Lookups or opens in listing order (`cat *`, `rm *`, systemd-pstore): decode
        the next records in the background, up to `READ_AHEAD` of them or
        `READ_AHEAD_BYTES` of known sizes, so that their lookups and opens are answered
        from memory. Only a request for the record after the previous one starts it,
        one batch at a time; a request elsewhere starts the count again there."""
        in_order = index == self._last_found + 1
        self._last_found = index
        if not self._ahead_end - READ_AHEAD <= index <= self._ahead_end + 1:
            self._ahead_end = index  # a new pass, or a jump: read ahead from here on
        if (index < 0 or not in_order or self._ahead_busy
                or index + READ_AHEAD // 2 <= self._ahead_end):
            return
        batch, size = [], 0
        for ahead in range(max(index + 1, self._ahead_end + 1),
                           min(index + READ_AHEAD + 1, self._live)):
            if ahead in self._listed:
                batch.append(ahead)
                entry = self.store.entry(self._records[ahead], wait=False)
                size += entry.size if entry else 0
                if size > READ_AHEAD_BYTES:
                    break
        if not batch:
            return
        self._ahead_end, self._ahead_busy = batch[-1], True

        async def run() -> None:
            try:
                await self._decode_ahead(batch, bodies=True)
            finally:
                self._ahead_busy = False

        trio.lowlevel.spawn_system_task(_logged(run))

    async def forget(self, inode_list: list[tuple[int, int]]) -> None:
        return None  # inodes are fixed for the mount's life: nothing to release

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
            index = self._index(inode)
            self._read_ahead(index)
            record = self._records[index]
            body = self.store.read(record, wait=False)
            if body is None:
                body = await self._call(self.store.read, record)
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
            if (await self._entry(inode)).name != os.fsdecode(name):
                raise pyfuse3.FUSEError(errno.ENOENT)  # located, not found: see Store.locate
            index = self._index(inode)
            await self._call(self.store.erase, self._records[index])
            self._listed.discard(index)

    # -- extended attributes: what the store knows of a record ---------------------------
    async def _xattrs(self, inode: int) -> dict[str, str]:
        """The record's attributes, kept for the few records asked last: a copy with
        its attributes (systemd-pstore's) lists them, then asks for each."""
        if inode in (pyfuse3.ROOT_INODE, self._erased_dir):
            return {}
        attrs = self._recent_xattrs.pop(inode, None)
        if attrs is None:
            attrs = await self._call(self.store.attributes, self._records[self._index(inode)])
        self._recent_xattrs[inode] = attrs
        while len(self._recent_xattrs) > XATTRS_KEPT:
            self._recent_xattrs.pop(next(iter(self._recent_xattrs)))
        return attrs

    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        return [os.fsencode(XATTR_PREFIX + key) for key in await self._xattrs(inode)]

    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        if not name.startswith(b"user."):
            # security.*, system.posix_acl_*, trusted.*: namespaces this filesystem does
            # not have. ENOTSUP, not ENODATA, has `ls -l` stop asking for them on this
            # mount (coreutils remembers it per device) instead of twice per file.
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


class _Files:
    """The records behind the files, by index from 0: the store's (not copied: a store
    may make each record when asked for it), then with `show_erased` the erased ones."""

    def __init__(self, live: Sequence[Record], erased: list[Record]) -> None:
        self._live = live
        self._erased = erased

    def __len__(self) -> int:
        return len(self._live) + len(self._erased)

    def __getitem__(self, index: int) -> Record:
        n = len(self._live)
        return self._live[index] if index < n else self._erased[index - n]

    def index(self, record: Record) -> int:
        try:
            return self._live.index(record)
        except ValueError:
            return len(self._live) + self._erased.index(record)


class _Listed:
    """Which record indexes still have their file (`rm` takes them out), a byte each."""

    def __init__(self, count: int) -> None:
        self._on = bytearray(b"\x01") * count
        self._count = count

    def __contains__(self, index: int) -> bool:
        return 0 <= index < len(self._on) and self._on[index] == 1

    def __len__(self) -> int:
        return self._count

    def discard(self, index: int) -> None:
        if index in self:
            self._on[index] = 0
            self._count -= 1

    def next(self, start: int, limit: int) -> list[int]:
        """Up to `limit` listed indexes from `start` on, in order."""
        found: list[int] = []
        at = start
        while len(found) < limit and (at := self._on.find(1, at)) >= 0:
            found.append(at)
            at += 1
        return found


def _kernel_at_least(major: int, minor: int) -> bool:
    """Whether the running kernel is that release or later."""
    try:
        found = tuple(int(part) for part in os.uname().release.split(".")[:2])
    except ValueError:
        return False
    return found >= (major, minor)


def _logged(task: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
    """A background task whose failure is logged: one that raised would end the mount."""
    async def run() -> None:
        try:
            await task()
        except Exception:
            log.exception("internal error in a background task")
    return run
