"""The source: a block device, an MTD character device (/dev/mtdN) or an image file,
opened once and held exclusively.

All I/O of pstorefs goes through `Device`, so this is where exclusivity, read-only
detection and durability are decided:

* a second pstorefs, or the kernel's own pstore_blk, must not write beside us: the
  source is `flock`ed (a POSIX lock would not survive the daemonizing fork), a loop
  device's backing file is locked as well (one image behind two loop devices is one
  source), and a block device is opened O_EXCL, which fails while a filesystem or
  another exclusive holder has it;
* a source that refuses writing (write-protected card, `blockdev --setro`, a read-only
  file) is used read-only;
* every write is followed by fdatasync before it is reported done (on MTD, which has
  no fsync, by `mtd_sync`).
"""

from __future__ import annotations

import errno
import fcntl
import itertools
import os
import stat
import struct
from collections.abc import Sequence

from pstorefs.errors import DeviceError, ReadOnlyError, SourceError

BLKROGET = 0x125E
SECTOR_SIZE = 512
LOOP_MAJOR = 7
MTD_CHAR_MAJOR = 90
"""/dev/mtdN (even minors; the odd ones, /dev/mtdNro, refuse writing)."""


def _loop_backing_file(rdev: int) -> str | None:
    """The file behind a loop device (or a partition of one), from sysfs."""
    sysdir = f"/sys/dev/block/{os.major(rdev)}:{os.minor(rdev)}"
    for candidate in (sysdir, os.path.join(sysdir, "..")):
        try:
            with open(os.path.join(candidate, "loop", "backing_file")) as fh:
                return fh.read().strip() or None
        except OSError:
            continue
    return None


class Device:
    """An open source: positioned reads, durable writes, exclusive for its lifetime.

    `offset` and `size` select a region of it (a partition inside a whole-disk image, a
    RAM dump): offsets are then relative to the region, and nothing outside it is read
    or written."""

    def __init__(self, path: str, *, read_only: bool = False, offset: int = 0,
                 size: int | None = None) -> None:
        self.path = path
        self.base = offset
        self._fds: list[int] = []
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise SourceError(f"{path}: no such file or device") from None
        except OSError as exc:
            raise SourceError(f"{path}: {exc.strerror}") from None
        if stat.S_ISDIR(st.st_mode):
            raise SourceError(f"{path}: is a directory, not a block device or image")
        self.is_block_device = stat.S_ISBLK(st.st_mode)
        self.is_mtd = stat.S_ISCHR(st.st_mode) and os.major(st.st_rdev) == MTD_CHAR_MAJOR
        if not (self.is_block_device or self.is_mtd or stat.S_ISREG(st.st_mode)):
            raise SourceError(f"{path}: not a block device, MTD device or image file")
        self.read_only = read_only
        self.write_refused: str | None = None
        """Why a source asked for writing was opened read-only (None if it was not):
        the mount warns and goes on, `pstorectl erase` stops."""
        self.fd = self._open(path)
        try:
            self._lock(self.fd, path)
            if self.is_block_device and os.major(st.st_rdev) == LOOP_MAJOR:
                backing = _loop_backing_file(st.st_rdev)
                if backing and os.path.exists(backing):
                    try:
                        backing_fd = os.open(backing, os.O_RDONLY | os.O_CLOEXEC)
                    except OSError as exc:
                        raise SourceError(f"{path}: cannot open its backing file {backing}: "
                                          f"{exc.strerror}") from None
                    self._fds.append(backing_fd)
                    self._lock(backing_fd, f"{path} (backing file {backing})")
            try:
                total = os.lseek(self.fd, 0, os.SEEK_END)
            except OSError as exc:
                raise SourceError(f"{path}: cannot tell its size: {exc.strerror}") from None
            if offset < 0 or offset > total or (size is not None
                                                and (size <= 0 or offset + size > total)):
                raise SourceError(f"{path}: offset={offset} size={size} lies outside its "
                                  f"{total} bytes")
            self.size = total - offset if size is None else size
        except BaseException:
            self.close()
            raise

    def _open(self, path: str) -> int:
        flags = os.O_CLOEXEC | (os.O_EXCL if self.is_block_device else 0)
        refused: OSError | None = None
        if not self.read_only:
            try:
                fd = os.open(path, os.O_RDWR | flags)
            except OSError as exc:
                if exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
                    raise self._open_error(path, exc) from None
                refused = exc
            else:
                self._fds.append(fd)
                if self.is_block_device and self._kernel_read_only(fd):
                    self.write_refused = "the device is read-only"
                    self.read_only = True
                return fd
        try:
            fd = os.open(path, os.O_RDONLY | flags)
        except OSError as exc:
            raise self._open_error(path, exc) from None
        self._fds.append(fd)
        if refused is not None:
            self.write_refused = f"cannot be opened for writing ({refused.strerror})"
            self.read_only = True
        return fd

    @staticmethod
    def _open_error(path: str, exc: OSError) -> SourceError:
        if exc.errno == errno.EBUSY:
            return SourceError(f"{path}: in use by another holder (a mounted filesystem, "
                               "the kernel's pstore_blk, or another program)")
        return SourceError(f"{path}: cannot open: {exc.strerror}")

    @staticmethod
    def _kernel_read_only(fd: int) -> bool:
        try:
            buf = fcntl.ioctl(fd, BLKROGET, b"\0" * 4)
        except OSError:
            return False
        return struct.unpack("i", buf)[0] != 0

    @staticmethod
    def _lock(fd: int, what: str) -> None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SourceError(f"{what}: already in use by another pstorefs") from None
        except OSError as exc:
            raise SourceError(f"{what}: cannot be locked ({exc.strerror}); pstorefs needs "
                              "an exclusive flock to be sure nothing else writes it") from None

    def _check_range(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise DeviceError(f"{self.path}: {length} bytes at {offset:#x} lie outside the "
                              f"{self.size}-byte source")

    def read(self, offset: int, length: int) -> bytes:
        """Exactly `length` bytes at `offset`, or DeviceError."""
        self._check_range(offset, length)
        try:
            data = os.pread(self.fd, length, self.base + offset)
        except OSError as exc:
            raise DeviceError(f"{self.path}: read of {length} bytes at {offset:#x} failed: "
                              f"{exc.strerror}", exc.errno) from None
        if len(data) != length:
            raise DeviceError(f"{self.path}: short read at {offset:#x} "
                              f"({len(data)} of {length} bytes)")
        return data

    def write(self, offset: int, data: bytes) -> None:
        """Write `data` at `offset`: not durable until `sync`."""
        if self.read_only:
            raise ReadOnlyError(f"{self.path}: read-only")
        self._check_range(offset, len(data))
        try:
            written = os.pwrite(self.fd, data, self.base + offset)
        except OSError as exc:
            raise DeviceError(f"{self.path}: write at {offset:#x} failed: {exc.strerror}",
                              exc.errno, writing=True) from None
        if written != len(data):
            raise DeviceError(f"{self.path}: short write at {offset:#x}", writing=True)

    def write_fields(self, offset: int, writes: Sequence[tuple[int, bytes]]) -> None:
        """The header writes of an erase, each `(offset from offset, bytes)`, in the
        order given, so that a power cut leaves the header as it was or as one of the
        prefixes of these writes. Where they are adjacent and all lie in one 512-byte
        sector of the device (offsets counted from the device's start, not the
        region's), they go in a single write, which a device commits whole; otherwise
        each write is synced before the next. (A field that itself straddles two sectors,
        in a zone placed at such an offset, is written whole: it cannot be made atomic.)
        Not durable until `sync`."""
        spans = sorted((self.base + offset + at, data) for at, data in writes)
        first, last = spans[0][0], spans[-1][0] + len(spans[-1][1])
        adjacent = all(a + len(d) == b for (a, d), (b, _) in itertools.pairwise(spans))
        if adjacent and first // SECTOR_SIZE == (last - 1) // SECTOR_SIZE:
            self.write(first - self.base, b"".join(data for _, data in spans))
            return
        for n, (at, data) in enumerate(writes):
            if n:
                self.sync()
            self.write(offset + at, data)

    def sync(self) -> None:
        """Have every write so far on the device (fdatasync)."""
        if self.is_mtd:
            self._mtd_sync()
            return
        try:
            os.fdatasync(self.fd)
        except OSError as exc:
            raise DeviceError(f"{self.path}: fdatasync failed: {exc.strerror}",
                              exc.errno, writing=True) from None

    def _mtd_sync(self) -> None:
        """mtdchar has no fsync: its writes and erases reach the driver before they
        return, and closing a writable descriptor calls `mtd_sync` (`mtdchar_close`),
        which is what flushes a driver that caches (block2mtd's page cache)."""
        try:
            os.close(os.open(f"/proc/self/fd/{self.fd}", os.O_WRONLY | os.O_CLOEXEC))
        except OSError as exc:
            raise DeviceError(f"{self.path}: mtd_sync (open and close) failed: "
                              f"{exc.strerror}", exc.errno, writing=True) from None

    def close(self) -> None:
        for fd in self._fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds.clear()
