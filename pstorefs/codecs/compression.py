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

zstd is decoded by the standard library's `compression.zstd` (Python 3.14+) or its
backport `backports.zstd` where either is importable, else by python-zstandard, the one
Debian 12 ships (python3-zstandard 0.20) and so the one pyproject.toml declares: a
Debian package then needs nothing from outside Debian. Both give the same verdicts.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

import lz4.block
import lzo

try:  # Python 3.14+ has Zstandard in the standard library; older ones may have its backport
    from compression import zstd
except ImportError:
    try:
        from backports import zstd
    except ImportError:
        zstd = None  # type: ignore[assignment]
try:  # declared for Python < 3.14: the zstd module Debian 12 ships
    import zstandard
except ImportError:
    zstandard = None  # type: ignore[assignment]
if zstd is None and zstandard is None:
    raise ImportError("pstorefs needs a zstd decoder: install zstandard (or backports.zstd)")

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


def _zstd_window_log(limit: int, low: int, high: int) -> int:
    """The largest window a frame may declare: the kernel's, or `limit`'s power of two."""
    return min(max(limit.bit_length(), _ZSTD_WINDOW_LOG, low), high)


def _zstd_stdlib(data: bytes, limit: int) -> bytes | None:
    """Exactly one frame and nothing after it, as ZSTD_compressCCtx writes; a frame
    that declares more content than `limit` is refused before decoding."""
    if not data.startswith(_ZSTD_MAGIC):
        return None
    window_log = _zstd_window_log(limit, *zstd.DecompressionParameter.window_log_max.bounds())
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


def _zstd_zstandard(data: bytes, limit: int) -> bytes | None:
    """_zstd_stdlib's verdicts through python-zstandard. Its one-shot decompress() is
    the bounded one: it allocates a frame's declared size (refused first if over
    `limit`) or `max_output_size`, and fails rather than write past it; but it ignores
    what follows the frame, and returns a frame that declares no content unread. So a
    decompressobj, which reports both (`unused_data`, `eof`) but has no output bound,
    runs second, on a frame now known to fit."""
    if not data.startswith(_ZSTD_MAGIC):
        return None
    window_log = _zstd_window_log(limit, zstandard.WINDOWLOG_MIN, zstandard.WINDOWLOG_MAX)
    try:
        size = zstandard.get_frame_parameters(data).content_size
        if size != zstandard.CONTENTSIZE_UNKNOWN and size > limit:
            return None
        decoder = zstandard.ZstdDecompressor(max_window_size=1 << window_log)
        out = decoder.decompress(data, max_output_size=limit + 1)
        frame = decoder.decompressobj()
        frame.decompress(data)
    except zstandard.ZstdError:
        return None
    return out if frame.eof and not frame.unused_data and len(out) <= limit else None


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
    "deflate": _deflate, "zstd": _zstd_stdlib if zstd is not None else _zstd_zstandard,
    "lzo": _lzo, "lz4": _lz4, "842": sw842.decompress,
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
