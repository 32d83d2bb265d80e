"""The one exception tree of pstorefs.  Each error carries a message fit for a user."""

from __future__ import annotations

import errno


class PstoreError(Exception):
    """Base of every error pstorefs reports: its text is one line for the user."""

    errno = errno.EIO


class UsageError(PstoreError):
    """A bad command line or option (exit code 2)."""

    errno = errno.EINVAL


class SourceError(PstoreError):
    """The source cannot be used: missing, wrong kind, in use, unreadable."""


class GeometryError(PstoreError):
    """The zone sizes do not describe a layout that fits the source."""

    errno = errno.EINVAL


class FormatError(PstoreError):
    """Bytes that do not parse as the struct expected at that offset."""

    def __init__(self, what: str, offset: int) -> None:
        super().__init__(f"{what} at offset {offset:#x} is not valid")
        self.offset = offset


class DeviceError(PstoreError):
    """The device failed a read or a write (EIO, short read, device gone)."""

    def __init__(self, message: str, code: int = errno.EIO) -> None:
        super().__init__(message)
        self.errno = code


class ZoneChangedError(PstoreError):
    """The zone on disk is not the one listed: someone else wrote it. Nothing was written."""

    errno = errno.EBUSY


class ReadOnlyError(PstoreError):
    """A write was asked of a read-only store."""

    errno = errno.EROFS


class EraseUnsupportedError(PstoreError):
    """The back end's writer defines no erase: refused with EPERM, as pstore refuses
    `rm` for a back end without one (fs/pstore/inode.c `pstore_unlink`)."""

    errno = errno.EPERM
