"""The one exception tree of pstorefs.  Each error carries a message fit for a user.

The errors say what went wrong, not how a front end reports it: the errno a request
answers with is the FUSE adapter's choice (`pstorefs.fs.errors`), the exit code the
command line's.
"""

from __future__ import annotations


class PstoreError(Exception):
    """Base of every error pstorefs reports: its text is one line for the user."""


class UsageError(PstoreError):
    """A bad command line or option (exit code 2)."""


class SourceError(PstoreError):
    """The source cannot be used: missing, wrong kind, in use, unreadable."""


class GeometryError(PstoreError):
    """The zone sizes do not describe a layout that fits the source."""


class FormatError(PstoreError):
    """Bytes that do not parse as the struct expected at that offset."""

    def __init__(self, what: str, offset: int) -> None:
        super().__init__(f"{what} at offset {offset:#x} is not valid")
        self.offset = offset


class DeviceError(PstoreError):
    """The device failed a call (EIO, short read, device gone). It keeps the facts a
    front end needs to report it: `cause`, the errno the system call failed with (None
    when none failed: a short read, a range outside the source); `writing`, whether
    that call wrote or flushed writes (a write, fdatasync, mtd_sync)."""

    def __init__(self, message: str, cause: int | None = None, *,
                 writing: bool = False) -> None:
        super().__init__(message)
        self.cause = cause
        self.writing = writing


class ZoneChangedError(PstoreError):
    """The zone on disk is not the one listed: someone else wrote it. Nothing was written."""


class ReadOnlyError(PstoreError):
    """A write was asked of a read-only store."""


class EraseUnsupportedError(PstoreError):
    """The back end's writer defines no erase, so nothing may be erased: pstore refuses
    `rm` for a back end without one (fs/pstore/inode.c `pstore_unlink`)."""
