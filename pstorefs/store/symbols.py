"""Loading the writing kernel's System.map (plain or gzipped), within fixed bounds.

The map is the user's, but it is read as root at boot: a FIFO, a device or a gzip bomb
given by mistake must end in a one-line refusal, not a hang or an exhausted machine.
A gzipped map is inflated twice, in chunks: once to learn its size, which is refused
past `MAX_SYSTEM_MAP` before anything is kept, then to parse it line by line.
"""

from __future__ import annotations

import os
import stat
import zlib
from collections.abc import Iterator
from typing import BinaryIO

from pstorefs.errors import SourceError
from pstorefs.format.kallsyms import SymbolTable

MAX_SYSTEM_MAP = 64 << 20
"""The most bytes of System.map text, and of the file itself: a kernel built with every
option has a System.map of some 20 MiB; a map past this is not one."""

_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 20
_MAX_LINE = 4096
"""Longer than any System.map line (an address, a type letter and a symbol name)."""


def load_system_map(path: str) -> SymbolTable:
    """The text symbols of the System.map at `path`; SourceError if it is not a
    regular file, cannot be read, holds more than `MAX_SYSTEM_MAP` bytes of text
    (gzipped or not), or no kernel text symbol."""
    fd = _open_regular(path)
    try:
        with os.fdopen(fd, "rb", closefd=False) as fh:
            gzipped = fh.read(2) == _GZIP_MAGIC
            fh.seek(0)
            if gzipped and _inflates_past(path, fh, MAX_SYSTEM_MAP):
                raise SourceError(f"system_map={path}: inflates past "
                                  f"{MAX_SYSTEM_MAP >> 20} MiB: not a System.map")
            fh.seek(0)
            chunks = _inflated(path, fh) if gzipped else iter(lambda: fh.read(_CHUNK), b"")
            table = SymbolTable(_lines(path, _capped(path, chunks)))
    except OSError as exc:
        raise SourceError(f"system_map={path}: cannot read: {exc.strerror}") from None
    finally:
        os.close(fd)
    if not len(table):
        raise SourceError(f"system_map={path}: no kernel text symbols in it "
                          "(is it a System.map?)")
    return table


def _open_regular(path: str) -> int:
    """A descriptor of `path` if it is a regular file of at most `MAX_SYSTEM_MAP`
    bytes; opened non-blocking, so that a FIFO is refused rather than waited on."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise SourceError(f"system_map={path}: cannot read: {exc.strerror}") from None
    st = os.fstat(fd)
    refusal = ("not a regular file" if not stat.S_ISREG(st.st_mode) else
               f"{st.st_size} bytes, more than a System.map holds" if st.st_size > MAX_SYSTEM_MAP
               else None)
    if refusal:
        os.close(fd)
        raise SourceError(f"system_map={path}: {refusal}")
    return fd


def _capped(path: str, chunks: Iterator[bytes]) -> Iterator[bytes]:
    """`chunks`, refused once they pass `MAX_SYSTEM_MAP` bytes: a regular file's size
    does not bound what it reads (/proc's files say 0 bytes, a file may grow)."""
    total = 0
    for chunk in chunks:
        total += len(chunk)
        if total > MAX_SYSTEM_MAP:
            raise SourceError(f"system_map={path}: more than {MAX_SYSTEM_MAP >> 20} MiB "
                              "read: not a System.map")
        yield chunk


def _inflates_past(path: str, fh: BinaryIO, limit: int) -> bool:
    """Whether the gzip stream of `fh` inflates to more than `limit` bytes; stops
    inflating there."""
    total = 0
    for chunk in _inflated(path, fh):
        total += len(chunk)
        if total > limit:
            return True
    return False


def _inflated(path: str, fh: BinaryIO) -> Iterator[bytes]:
    """The gzip stream of `fh` (every member) inflated, a chunk of at most `_CHUNK`
    bytes at a time."""
    inflater = zlib.decompressobj(zlib.MAX_WBITS | 16)
    data, fed = fh.read(_CHUNK), False
    try:
        while data:
            fed = True
            yield inflater.decompress(data, _CHUNK)
            data = inflater.unconsumed_tail
            if inflater.eof:  # a member ended: another may follow
                data = inflater.unused_data or fh.read(_CHUNK)
                inflater, fed = zlib.decompressobj(zlib.MAX_WBITS | 16), False
            elif not data:
                data = fh.read(_CHUNK)
        yield inflater.flush()
    except zlib.error as exc:
        raise SourceError(f"system_map={path}: cannot read: bad gzip data ({exc})") from None
    if fed and not inflater.eof:
        raise SourceError(f"system_map={path}: cannot read: the gzip data ends early")


def _lines(path: str, chunks: Iterator[bytes]) -> Iterator[str]:
    """The text of `chunks`, a line at a time; a line longer than any of a System.map
    is refused (it would otherwise be gathered whole)."""
    rest = b""
    for chunk in chunks:
        lines = (rest + chunk).split(b"\n")
        rest = lines.pop()
        if len(rest) > _MAX_LINE:
            raise SourceError(f"system_map={path}: a line of more than {_MAX_LINE} bytes: "
                              "not a System.map")
        yield from (line.decode("ascii", errors="replace") for line in lines)
    if rest:
        yield rest.decode("ascii", errors="replace")
