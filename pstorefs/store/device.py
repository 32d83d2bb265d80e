"""The source: a block device, an MTD character device (/dev/mtdN) or an image file,
opened once and held exclusively.

All I/O of pstorefs goes through `Device`, so this is where exclusivity, read-only
detection and durability are decided:

* a second pstorefs, or the kernel's own pstore_blk, must not write beside us: the
  source is `flock`ed (a POSIX lock would not survive the daemonizing fork), a loop
  device's backing file is locked as well (one image behind two loop devices is one
  source), and a block device is opened O_EXCL, which fails while a filesystem or
  another exclusive holder has it; an image opened for writing that backs a loop device
  holds that device O_EXCL in turn, or is refused;
* a source that refuses writing (write-protected card, `blockdev --setro`, a read-only
  file) is used read-only;
* every write is followed by fdatasync before it is reported done (on MTD, which has
  no fsync, by `mtd_sync`).

It also says where an image file has holes (`next_data`), so that the scans of a large
sparse image skip what reads as zeros (`data_slots`) instead of reading it.
"""

from __future__ import annotations

import errno
import fcntl
import glob
import itertools
import os
import stat
import struct
from collections.abc import Callable, Iterator, Sequence

from pstorefs.errors import DeviceError, ReadOnlyError, SourceError

BLKROGET = 0x125E
SECTOR_SIZE = 512
LOOP_MAJOR = 7
MTD_CHAR_MAJOR = 90
"""/dev/mtdN (even minors; the odd ones, /dev/mtdNro, refuse writing)."""


DataRun = tuple[int, int]
"""`(start, end)`: bytes of the source that may hold anything but zeros."""

NextData = Callable[[int], DataRun | None]
"""`next_data(offset)`: the first data run that ends after `offset`, its start at or after
`offset` (None: nothing but holes from `offset` on). What lies before it is a hole and
reads as zeros."""


def no_holes(size: int) -> NextData:
    """`next_data` of a source whose holes are not known (a device, bytes in memory): every
    byte is data."""
    def next_data(offset: int) -> DataRun | None:
        return (max(offset, 0), size) if offset < size else None

    return next_data


def data_slots(next_data: NextData, count: int, first: int, stride: int,
               length: int) -> Iterator[int]:
    """The indexes `i < count` of the `length`-byte slots at `first + i * stride` (zones,
    pages) that may hold data, in order. A slot wholly in a hole reads as zeros, so it
    is left out, and a run of them costs one look at the holes, not one per slot."""
    index = 0
    while index < count:
        run = next_data(first + index * stride)
        if run is None:
            return
        start, end = run
        index = max(index, (start - first - length) // stride + 1)
        while index < count and first + index * stride < end:
            yield index
            index += 1


def in_hole(next_data: NextData, offset: int, length: int) -> bool:
    """Whether the `length` bytes at `offset` lie wholly in a hole (read as zeros)."""
    run = next_data(offset)
    return run is None or run[0] >= offset + length


_IN_USE = ("in use by another holder (a mounted filesystem, the kernel's pstore_blk, or "
           "another program)")


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


def _loop_devices_backed_by(st: os.stat_result) -> list[str]:
    """The loop devices whose backing file is the file `st` describes: by its device
    and inode, as the name sysfs shows may be another link to it."""
    found = []
    for attr in sorted(glob.glob("/sys/block/loop*/loop/backing_file")):
        try:
            with open(attr) as fh:
                backing = os.stat(fh.read().rstrip("\n"))
        except OSError:  # detached meanwhile, or a backing file gone
            continue
        if (backing.st_dev, backing.st_ino) == (st.st_dev, st.st_ino):
            found.append(os.path.join("/dev", attr.split("/")[3]))
    return found


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
        self.is_file = stat.S_ISREG(st.st_mode)
        if not (self.is_block_device or self.is_mtd or self.is_file):
            raise SourceError(f"{path}: not a block device, MTD device or image file")
        self.read_only = read_only
        self.write_refused: str | None = None
        """Why a source asked for writing was opened read-only (None if it was not):
        the mount warns and goes on, `pstorectl erase` stops."""
        self.fd = self._open(path)
        try:
            self._lock(self.fd, path)
            if self.is_file and not self.read_only:
                self._hold_loop_devices(st)
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
            return SourceError(f"{path}: {_IN_USE}")
        return SourceError(f"{path}: cannot open: {exc.strerror}")

    def _hold_loop_devices(self, st: os.stat_result) -> None:
        """An image that backs a loop device is written only while nothing else holds
        the device (a filesystem mounted from it, the kernel's pstore_blk): each is held
        O_EXCL for the Device's lifetime, as a block device source is, or the image is
        refused."""
        for loop in _loop_devices_backed_by(st):
            try:
                self._fds.append(os.open(loop, os.O_RDONLY | os.O_EXCL | os.O_CLOEXEC))
            except OSError as exc:
                why = (f"is {_IN_USE}" if exc.errno == errno.EBUSY
                       else f"cannot be opened: {exc.strerror}")
                raise SourceError(f"{self.path}: backs {loop}, which {why}") from None

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

    def next_data(self, offset: int) -> DataRun | None:
        """The first data run at or after `offset` (see `NextData`): a file's, from
        SEEK_DATA and SEEK_HOLE; a device has no holes, all of it is data."""
        offset = max(offset, 0)
        if offset >= self.size:
            return None
        if not self.is_file:
            return offset, self.size
        try:
            start = os.lseek(self.fd, self.base + offset, os.SEEK_DATA)
            end = os.lseek(self.fd, start, os.SEEK_HOLE)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # only holes from there to the end of the file
                return None
            return offset, self.size  # a filesystem that tells no holes
        if start - self.base >= self.size:
            return None
        return start - self.base, min(end - self.base, self.size)

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
