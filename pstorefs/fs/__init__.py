"""The FUSE adapter (pyfuse3 and trio): the records of a `Store` as files.

* `operations`: the handlers, short shells that check a request, delegate and reply;
  inodes, attributes, open files, and `Ownership` (`uid=`, `gid=`, `umask=`);
* `listing`: which records have a file, how long a listing or lookup waits for the
  device, and when the kernel's cached listing must be dropped;
* `read_ahead`: what is decoded before it is asked for, and where;
* `decoder`: the decoding process read-ahead uses, beside the event loop;
* `erase`: `rm`'s erase in a worker thread the loop waits for while the device is fast;
* `errors`: the one place where failures become errnos (`errno_of`) or log lines.
"""

from pstorefs.fs.errors import errno_of
from pstorefs.fs.listing import DIRECTORY_PATIENCE, LISTING_REFRESH, READDIR_BATCH
from pstorefs.fs.operations import (
    DIR_MODE,
    ERASED_DIR,
    FILE_MODE,
    TIMEOUT,
    XATTR_PREFIX,
    XATTRS_KEPT,
    Operations,
    Ownership,
)
from pstorefs.fs.read_ahead import DECODE_THREADS, READ_AHEAD, READ_AHEAD_BYTES, ReadAhead

__all__ = [
    "DECODE_THREADS",
    "DIRECTORY_PATIENCE",
    "DIR_MODE",
    "ERASED_DIR",
    "FILE_MODE",
    "LISTING_REFRESH",
    "READDIR_BATCH",
    "READ_AHEAD",
    "READ_AHEAD_BYTES",
    "TIMEOUT",
    "XATTRS_KEPT",
    "XATTR_PREFIX",
    "Operations",
    "Ownership",
    "ReadAhead",
    "errno_of",
]
