"""A reader of the kernel's software 842 format, for pstore records written with
`pstore.compress=842` (Linux before 6.6).

No maintained Python library reads 842, so this is a small pure-Python port of
`sw842_decompress()` in Linux lib/842/842_decompress.c (GPL-2.0-or-later, by Dan
Streetman), with the format of lib/842/842.h: a stream of 5-bit templates, each
writing 8 bytes from data actions (D2/D4/D8: literal bytes) and index actions
(I2/I4/I8: 8/9/8-bit indexes into ring buffers of the last 512/2048/2048 output
bytes), plus the templates repeat (6-bit count, last 8 bytes again count+1 times),
zeros (8 zero bytes), short data (3-bit count, 1..7 literal bytes) and end; after
end comes the CRC32 (lib/crc32.c `crc32_be(0, ...)`) of the whole output, then zero
padding to a multiple of 8 bytes (what `sw842_compress()` writes).

It is stricter than the kernel where the kernel trusts its input: every write is
bounded by `limit` (the kernel does not bound index and short-data writes), a repeat
needs 8 earlier bytes, and only zero padding may follow the CRC.
"""

from __future__ import annotations

import binascii

# lib/842/842.h
_OP_REPEAT, _OP_ZEROS, _OP_SHORT_DATA, _OP_END = 0x1B, 0x1C, 0x1D, 0x1E
# An action is (kind, size): kind "D" reads size literal bytes, "I" an index.
_D2, _D4, _D8 = ("D", 2), ("D", 4), ("D", 8)
_I2, _I4, _I8 = ("I", 2), ("I", 4), ("I", 8)
# decomp_ops[] of 842_decompress.c: the 26 regular templates, 0x00..0x19.
_TEMPLATES: tuple[tuple[tuple[str, int], ...], ...] = (
    (_D8,), (_D4, _D2, _I2), (_D4, _I2, _D2), (_D4, _I2, _I2), (_D4, _I4),
    (_D2, _I2, _D4), (_D2, _I2, _D2, _I2), (_D2, _I2, _I2, _D2), (_D2, _I2, _I2, _I2),
    (_D2, _I2, _I4), (_I2, _D2, _D4), (_I2, _D4, _I2), (_I2, _D2, _I2, _D2),
    (_I2, _D2, _I2, _I2), (_I2, _D2, _I4), (_I2, _I2, _D4), (_I2, _I2, _D2, _I2),
    (_I2, _I2, _I2, _D2), (_I2, _I2, _I2, _I2), (_I2, _I2, _I4), (_I4, _D4),
    (_I4, _D2, _I2), (_I4, _I2, _D2), (_I4, _I2, _I2), (_I4, _I4), (_I8,),
)
# Index width in bits and ring size in bytes (I2_BITS, I2_FIFO_SIZE, ...).
_INDEX = {2: (8, 2 * 256), 4: (9, 4 * 512), 8: (8, 8 * 256)}
_BITREV8 = bytes(int(f"{i:08b}"[::-1], 2) for i in range(256))


class _Corrupt(Exception):
    """The stream is not one complete, valid 842 stream within the limit."""


def crc32_be(data: bytes) -> int:
    """lib/crc32.c `crc32_be(0, data, len)`: MSB-first CRC32 (0x04c11db7), seed 0,
    no final xor. Computed with zlib's LSB-first CRC on bit-reversed bytes, which
    is the same register read backwards (a loop in Python would be far slower)."""
    raw = binascii.crc32(data.translate(_BITREV8), 0xFFFFFFFF) ^ 0xFFFFFFFF
    return int(f"{raw:032b}"[::-1], 2)


def decompress(data: bytes, limit: int) -> bytes | None:
    """The output of one complete sw842 stream if it is at most `limit` bytes and
    its CRC matches, else None (never an exception)."""
    try:
        return _decompress(bytes(data), limit)
    except _Corrupt:
        return None


def _decompress(data: bytes, limit: int) -> bytes:
    padded = data + bytes(9)  # a 64-bit read at any bit offset stays in bounds
    nbits = 8 * len(data)
    pos = 0
    out = bytearray()

    def take(n: int) -> int:
        """Next n bits, MSB first (next_bits); running off the end is corruption."""
        nonlocal pos
        end = pos + n
        if end > nbits:
            raise _Corrupt
        start = pos >> 3
        chunk = int.from_bytes(padded[start:start + 9], "big")
        pos = end
        return (chunk >> (72 - (end - 8 * start))) & ((1 << n) - 1)

    def room(n: int) -> None:
        if len(out) + n > limit:
            raise _Corrupt

    def index(size: int) -> None:
        """__do_index: copy `size` bytes from the ring of the last output bytes."""
        bits, fifo = _INDEX[size]
        total = len(out) & ~7
        offset = take(bits) * size
        if total > fifo:
            section = total - total % fifo
            if offset >= total % fifo:
                section -= fifo
            offset += section
        if offset + size > total:
            raise _Corrupt
        room(size)
        out.extend(out[offset:offset + size])

    while True:
        op = take(5)
        if op < len(_TEMPLATES):
            for kind, size in _TEMPLATES[op]:
                if kind == "D":
                    room(size)
                    out.extend(take(8 * size).to_bytes(size, "big"))
                else:
                    index(size)
        elif op == _OP_REPEAT:
            count = take(6) + 1
            if len(out) < 8:
                raise _Corrupt
            room(8 * count)
            out.extend(out[-8:] * count)
        elif op == _OP_ZEROS:
            room(8)
            out.extend(bytes(8))
        elif op == _OP_SHORT_DATA:
            count = take(3)
            if not count:
                raise _Corrupt
            room(count)
            out.extend(take(8 * count).to_bytes(count, "big"))
        elif op == _OP_END:
            break
        else:  # 0x1a and 0x1f are no template
            raise _Corrupt
    if take(32) != crc32_be(bytes(out)):
        raise _Corrupt
    used = (pos + 7) // 8
    if len(data) > (used + 7) & ~7 or (pos < nbits and take(nbits - pos) != 0):
        raise _Corrupt
    return bytes(out)
