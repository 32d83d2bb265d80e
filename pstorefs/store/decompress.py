"""Decoding compressed dmesg records, as pstore's `decompress_record` would."""

from __future__ import annotations

import zlib


def inflate_raw(data: bytes, limit: int) -> bytes | None:
    """Raw deflate (the kernel compresses with windowBits -11 before 6.6, -15 after;
    a -15 inflater reads both).

    Like the kernel, accept only a complete stream whose output fits `limit` bytes;
    None otherwise, and the record is then shown raw as `.enc.z`. The limit also cuts
    off a deflate bomb after `limit + 1` bytes of output.
    """
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        out = inflater.decompress(data, limit + 1)
    except zlib.error:
        return None
    if not inflater.eof or len(out) > limit:
        return None
    return out
