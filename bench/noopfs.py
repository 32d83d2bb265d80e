"""A no-op pyfuse3 filesystem with the same files as a workload: the cost of FUSE in
Python itself, to split each pstorefs figure into FUSE overhead and pstorefs' own work.

    noopfs.py [--store] [--erase IMAGE] INDEX MOUNTPOINT READY_FD

Same names, sizes and mtimes as pstorefs shows (from the workload's index), and the
best protocol choices pyfuse3 allows for them: readdirplus with attributes from memory,
300 s entry and attribute timeouts, `keep_cache` on open, no OPENDIR (ENOSYS: the
kernel then caches the listing, FOPEN_CACHE_DIR), ENOTSUP for xattr namespaces other
than `user.` (so `ls -l` asks once per mount, not twice per file), ENODATA within it,
trio and pyfuse3's default worker count. Contents are zeros; `unlink` only forgets the
name. With `--store`, `open` hands the file's zeros to the kernel's page cache
(`notify_store`) before it replies, as pstorefs does with a body, so that `cat` makes
no READ: the floor of a filesystem answering two requests per file (LOOKUP, OPEN). With
`--erase`, `unlink` also makes the record's zone in IMAGE empty as `rm` on pstorefs does
(`datalen` = 0, durable before the reply), handed to a worker thread by pstorefs' own
`Eraser`, so that a stalled device would not freeze the mount: the floor of a stall-safe
`rm`, with nothing else of pstorefs' work (no record to find, decode or check). Writes "ok"
to READY_FD once mounted (as pstorefs' parent waits for its daemon), then serves in the
foreground until unmounted or sent SIGTERM.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import stat
import sys
import time
from typing import TYPE_CHECKING

import pyfuse3
import trio

if TYPE_CHECKING:
    from floors import Zones

TIMEOUT = 300.0


COUNTS: dict[str, int] = {}
"""Requests served, by operation, when NOOPFS_COUNTS names a file to write them to."""


def _counted(func):
    name = func.__name__

    async def wrapper(*args):
        COUNTS[name] = COUNTS.get(name, 0) + 1
        return await func(*args)

    wrapper.__name__ = name
    return wrapper


class NoopOps(pyfuse3.Operations):
    supports_dot_lookup = True
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, names: list[str], sizes: list[int], mtimes: list[int],
                 store: bool = False, zones: Zones | None = None) -> None:
        super().__init__()
        self.store = store
        self.eraser = None
        self.erasing = trio.Lock()
        """`rm`s one at a time, as pstorefs' `unlink` hands them to its `Eraser`."""
        if zones is not None:  # imported only here: pstorefs' imports are not the floor's
            from pstorefs.fs.erase import Eraser
            self.eraser = Eraser(zones)  # type: ignore[arg-type]
        self.stored: set[int] = set()
        """Inodes whose zeros the kernel's page cache holds (`--store`)."""
        self.names = [n.encode() for n in names]
        self.sizes = sizes
        self.mtimes = mtimes
        self.by_name = {n: pyfuse3.ROOT_INODE + 1 + i for i, n in enumerate(self.names)}
        self.listed = set(range(len(names)))
        self.zeros = bytes(max(sizes, default=0))
        self.now = time.time_ns()

    def _attrs(self, inode: int) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = inode
        a.entry_timeout = a.attr_timeout = TIMEOUT
        if inode == pyfuse3.ROOT_INODE:
            a.st_mode = stat.S_IFDIR | 0o750
            a.st_nlink = 2
            a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = self.now
            return a
        i = inode - pyfuse3.ROOT_INODE - 1
        a.st_mode = stat.S_IFREG | 0o444
        a.st_nlink = 1
        a.st_size = self.sizes[i]
        a.st_blksize = 4096
        a.st_blocks = (self.sizes[i] + 511) // 512
        a.st_atime_ns = self.now
        a.st_mtime_ns = a.st_ctime_ns = self.mtimes[i]
        return a

    async def lookup(self, parent_inode, name, ctx):
        if name == b"." or name == b"..":
            return self._attrs(pyfuse3.ROOT_INODE)
        inode = self.by_name.get(name)
        if parent_inode != pyfuse3.ROOT_INODE or inode is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attrs(inode)

    async def getattr(self, inode, ctx):
        return self._attrs(inode)

    async def opendir(self, inode, ctx):
        raise pyfuse3.FUSEError(errno.ENOSYS)  # one directory: let the kernel cache it

    async def readdir(self, fh, start_id, token):
        for i in sorted(self.listed):
            inode = pyfuse3.ROOT_INODE + 1 + i
            if inode <= start_id:
                continue
            if not pyfuse3.readdir_reply(token, self.names[i], self._attrs(inode), inode):
                return

    async def releasedir(self, fh):
        return None

    async def open(self, inode, flags, ctx):
        if self.store and inode not in self.stored:
            pyfuse3.notify_store(inode, 0, self.zeros[:self.sizes[inode - pyfuse3.ROOT_INODE - 1]])
            self.stored.add(inode)
        return pyfuse3.FileInfo(fh=inode, keep_cache=True)

    async def read(self, fh, off, size):
        end = min(off + size, self.sizes[fh - pyfuse3.ROOT_INODE - 1])
        return self.zeros[off:end] if end > off else b""

    async def release(self, fh):
        return None

    async def unlink(self, parent_inode, name, ctx):
        inode = self.by_name.pop(name, None)
        if inode is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        if self.eraser is not None:
            async with self.erasing:
                await self.eraser.erase(inode - pyfuse3.ROOT_INODE - 1)  # type: ignore[arg-type]
        self.listed.discard(inode - pyfuse3.ROOT_INODE - 1)

    async def getxattr(self, inode, name, ctx):
        if not name.startswith(b"user."):
            raise pyfuse3.FUSEError(errno.EOPNOTSUPP)
        raise pyfuse3.FUSEError(errno.ENODATA)

    async def listxattr(self, inode, ctx):
        return []

    async def forget(self, inode_list):
        for inode, _ in inode_list:  # its page cache went with it
            self.stored.discard(inode)

    async def statfs(self, ctx):
        st = pyfuse3.StatvfsData()
        st.f_bsize = st.f_frsize = 4096
        st.f_files = len(self.listed) + 1
        st.f_namemax = 255
        return st


async def _serve(ready_fd: int) -> None:
    async def stop_on_signal() -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                pyfuse3.terminate()
                return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(stop_on_signal)
        os.write(ready_fd, b"ok")
        os.close(ready_fd)
        await pyfuse3.main()
        nursery.cancel_scope.cancel()


def main(argv: list[str]) -> None:
    *flags, index, mountpoint, ready = argv  # by hand: argparse would weigh on the floor
    with open(index) as fh:
        meta = json.load(fh)
    zones = None
    if "--erase" in flags:
        from floors import Zones
        zones = Zones(flags[flags.index("--erase") + 1], meta)
    ops = NoopOps(meta["names"], meta["sizes"], meta["mtimes_ns"], "--store" in flags, zones)
    ready_fd = int(ready)
    counts = os.environ.get("NOOPFS_COUNTS")
    if counts:
        for name in ("lookup", "getattr", "opendir", "readdir", "releasedir", "open",
                     "read", "release", "unlink", "getxattr", "listxattr", "forget",
                     "statfs"):
            setattr(ops, name, _counted(getattr(ops, name)))
    pyfuse3.init(ops, mountpoint, {"fsname=noopfs", "subtype=noopfs", "nodev", "nosuid",
                                   "noexec"})
    try:
        trio.run(_serve, ready_fd)
    finally:
        pyfuse3.close(unmount=True)
        if counts:
            with open(counts, "w") as fh:
                json.dump(COUNTS, fh)


if __name__ == "__main__":
    main(sys.argv[1:])
