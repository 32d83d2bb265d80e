"""Decoding compressed dmesg records, as pstore's `decompress_record` would.

Linux 6.6+ compresses dmesg records only with raw deflate. Before (so on every
pstore/zone kernel from 5.8 to 6.5), `pstore.compress=` chose any of the crypto API's
compressors, and the record's `compressed` flag does not say which; each is stored in
the raw form of its crypto algorithm:

- deflate: raw deflate, no zlib header (crypto/deflate.c: `zlib_deflateInit2(...,
  -DEFLATE_DEF_WINBITS, ...)`, windowBits 11; 6.6+ platform.c uses -MAX_WBITS).
- lzo: bare LZO1X, no header (crypto/lzo.c: `lzo1x_1_compress`,
  `lzo1x_decompress_safe`, any result but LZO_E_OK is an error).
- lz4 and lz4hc: a bare LZ4 block, no frame (crypto/lz4.c and crypto/lz4hc.c both
  decompress with `LZ4_decompress_safe(src, dst, slen, *dlen)`), so an lz4hc record
  decodes, and is named, as lz4: the two cannot be told apart.
- zstd: one zstd frame (crypto/zstd.c: `ZSTD_compressCCtx`, `ZSTD_decompressDCtx`;
  `zstd_compress_cctx`, `zstd_decompress_dctx` since 5.16).
- 842: the software 842 format of lib/842 (crypto/842.c calls `sw842_decompress`).
  Records that powerpc's nx-842 driver wrote carry that driver's own 0xf842 group
  header instead, and stay undecoded.

A decode counts only if it consumes a whole stream and its output fits `limit` bytes;
every decoder stops producing output after `limit` (+ 1) bytes, so a decompression
bomb costs no more memory than a legitimate record (zstd's decoder may also need the
window buffer that a kernel frame declares: 2 MiB for a 5.8-5.15 frame without a
content size, at most the power of two above `limit` otherwise).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

import lz4.block
import lzo

try:  # Python 3.14+ has Zstandard in the standard library
    from compression import zstd
except ImportError:
    from backports import zstd

from pstorefs.codecs import sw842
from pstorefs.format.consts import DUMP_HEADER

# The order "auto" tries them in: deflate first (the only one of 6.6+ kernels), 842
# last (pure Python, the slowest).
CODECS: tuple[str, ...] = ("deflate", "zstd", "lzo", "lz4", "842")
_ALIASES = {"lz4hc": "lz4"}  # the same block format and decoder, see above

_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"  # RFC 8878 frame magic, little-endian 0xFD2FB528


def _deflate(data: bytes, limit: int) -> bytes | None:
    """Raw deflate; a windowBits -15 inflater reads the kernels' -11 and -15 streams.
    Like the kernel's inflate, bytes after the final block are ignored."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        out = inflater.decompress(data, limit + 1)
    except zlib.error:
        return None
    return out if inflater.eof and len(out) <= limit else None


# The kernel compresses at ZSTD_DEF_LEVEL 3 with params for an unknown size, a 2 MiB
# window (windowLog 21). 5.16+ frames also carry their size (single segment: window =
# size); 5.8-5.15's zstd 1.3.1 wrote no size, so their frames declare the 2 MiB window
# and a streaming decoder needs that buffer. A larger window is refused.
_ZSTD_WINDOW_LOG = 21


def _zstd(data: bytes, limit: int) -> bytes | None:
    """Exactly one frame and nothing after it, as ZSTD_compressCCtx writes; a frame
    that declares more content than `limit` is refused before decoding."""
    if not data.startswith(_ZSTD_MAGIC):
        return None
    low, high = zstd.DecompressionParameter.window_log_max.bounds()
    window_log = min(max(limit.bit_length(), _ZSTD_WINDOW_LOG, low), high)
    try:
        size = zstd.get_frame_info(data).decompressed_size
        if size is not None and size > limit:
            return None
        decoder = zstd.ZstdDecompressor(
            options={zstd.DecompressionParameter.window_log_max: window_log})
        out = decoder.decompress(data, max_length=limit + 1)
    except zstd.ZstdError:
        return None
    return out if decoder.eof and not decoder.unused_data and len(out) <= limit else None


def _lzo(data: bytes, limit: int) -> bytes | None:
    """liblzo2's lzo1x_decompress_safe into a `limit`-byte buffer, as crypto/lzo.c."""
    try:
        return lzo.decompress(data, False, limit)
    except lzo.error:
        return None


def _lz4(data: bytes, limit: int) -> bytes | None:
    """LZ4_decompress_safe into a `limit`-byte buffer, as crypto/lz4.c: it fails unless
    the block ends exactly at the end of the input and fits the buffer."""
    try:
        return lz4.block.decompress(data, uncompressed_size=limit)
    except lz4.block.LZ4BlockError:
        return None


_DECODERS: dict[str, Callable[[bytes, int], bytes | None]] = {
    "deflate": _deflate, "zstd": _zstd, "lzo": _lzo, "lz4": _lz4, "842": sw842.decompress,
}


def _decode(name: str, data: bytes, limit: int) -> bytes | None:
    """One codec's verdict; a limit too large to allocate means it does not decode."""
    try:
        return _DECODERS[name](data, limit)
    except (OverflowError, MemoryError):
        return None


_LIMIT_CAP = (1 << 31) - 1
"""lz4 and lzo take the output size as a C int; no zone's text comes near it."""


def decompress(data: bytes, limit: int, codec: str = "auto") -> tuple[bytes, str] | None:
    """The record's text and the codec that decoded it, or None.

    A named codec (one of CODECS, or "lz4hc") decodes alone. "auto" decides by
    evidence, since any of them may decode bytes that another wrote: it takes the
    first codec in CODECS order whose output starts with the dump header every
    pstore dmesg record begins with ("Oops#1 Part1\\n"); failing that, deflate's
    output as such (a 6.6+ kernel would show it); else None. No other codec is taken
    without the header: LZO and LZ4 decode much random input and carry no checksum,
    and a real record of any codec has it. Raises ValueError only for an unknown
    codec name; bad data gives None.
    """
    data = bytes(data)
    if limit < 0:
        return None
    limit = min(limit, _LIMIT_CAP)
    if codec != "auto":
        name = _ALIASES.get(codec, codec)
        if name not in _DECODERS:
            raise ValueError(f"unknown compressor {codec!r}: not one of {', '.join(CODECS)}")
        text = _decode(name, data, limit)
        return None if text is None else (text, name)
    fallback = None
    for name in CODECS:
        text = _decode(name, data, limit)
        if text is None:
            continue
        if DUMP_HEADER.match(text):
            return text, name
        if name == "deflate":
            fallback = text, name
    return fallback
