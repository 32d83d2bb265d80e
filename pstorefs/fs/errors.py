"""What a failure becomes in the mount: the errno a request answers with, or a log line.

The store's errors say what went wrong; which errno tells a program so is the front
end's choice, made here and only here (`errno_of`). Every blocking store call goes
through `in_thread`, so no error of the store or of a bug reaches pyfuse3, which stops
serving on any exception that is not a FUSEError.
"""

from __future__ import annotations

import errno
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pyfuse3
import trio

from pstorefs.errors import (
    DeviceError,
    EraseUnsupportedError,
    GeometryError,
    PstoreError,
    ReadOnlyError,
    UsageError,
    ZoneChangedError,
)
from pstorefs.store import Store

log = logging.getLogger(__name__)

T = TypeVar("T")

ABANDON_ON_CANCEL = ("abandon_on_cancel" if "abandon_on_cancel"
                     in inspect.signature(trio.to_thread.run_sync).parameters else "cancellable")
"""The name of trio.to_thread.run_sync's argument that lets a cancelled call return
while its thread runs on: `cancellable` until trio 0.23 (Debian 12 ships 0.22), then
`abandon_on_cancel` (later versions dropped the old name)."""

ERRNOS: dict[type[PstoreError], int] = {
    UsageError: errno.EINVAL,
    GeometryError: errno.EINVAL,
    ZoneChangedError: errno.EBUSY,
    ReadOnlyError: errno.EROFS,
    EraseUnsupportedError: errno.EPERM,  # as pstore answers `rm` without an erase
}
"""The errno of each error that is not EIO, by class."""

GONE = frozenset({errno.ENXIO, errno.ENODEV, errno.ENOMEDIUM, errno.ENOTCONN,
                  errno.ESHUTDOWN, errno.ECONNABORTED, errno.ESTALE, errno.EBADF})
"""What a source that went away (USB stick pulled, loop device or its server gone)
fails with. To programs these are all EIO: the record could not be read or written;
the cause stays in the logged message."""


def errno_of(exc: PstoreError) -> int:
    """The errno a request that met `exc` answers with: EIO for every failed read and
    for a vanished device; a failed write keeps what the device said (ENOSPC, EROFS)."""
    if isinstance(exc, DeviceError):
        if exc.writing and exc.cause is not None and exc.cause not in GONE:
            return exc.cause
        return errno.EIO
    return next((ERRNOS[cls] for cls in type(exc).__mro__ if cls in ERRNOS), errno.EIO)


def internal_error(exc: Exception, store: Store) -> pyfuse3.FUSEError:
    """EIO for a bug met on one record, logged with its traceback: it must not end
    the mount."""
    log.error("internal error on %s", store.describe(), exc_info=exc)
    return pyfuse3.FUSEError(errno.EIO)


async def in_thread(store: Store, func: Callable[..., T], *args: object,
                    abandon_on_cancel: bool = False) -> T:
    """Run a blocking call of `store` in a worker thread, so the event loop keeps
    answering; its errors become the FUSEError the request answers with, logged."""
    try:
        return await trio.to_thread.run_sync(func, *args, **{ABANDON_ON_CANCEL: abandon_on_cancel})
    except Exception as exc:
        raise fuse_error(exc, store) from None


def fuse_error(exc: Exception, store: Store) -> pyfuse3.FUSEError:
    """What a blocking call of `store` that raised `exc` answers with, logged."""
    if isinstance(exc, PstoreError):
        log.error("%s", exc)
        return pyfuse3.FUSEError(errno_of(exc))
    if isinstance(exc, OSError):
        log.error("%s: %s", store.describe(), exc)
        return pyfuse3.FUSEError(exc.errno or errno.EIO)
    return internal_error(exc, store)


def logged(task: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
    """A background task whose failure is logged: one that raised would end the mount."""
    async def run() -> None:
        try:
            await task()
        except Exception:
            log.exception("internal error in a background task")
    return run
