"""blockconsole: the console log of Joern Engel's blockconsole patches (2012-2013, never
merged), as drivers/block/blockconsole.c writes it (seed 004_…, blob a760c3a7; "seed
N" below is that file's line N).  Pure: no I/O.

The device is a ring of 1 MiB tiles (`CACHE_SIZE`, seed 921); what is left after the
last whole tile is never used (`max_bytes = i_size & ~CACHE_MASK`, seed 1617). Each tile
starts with a 59-byte ASCII header, built by `bcon_init_first_page` (seed 1044-1059):

    0   "\\nLinux blockconsole version 1.1\\n"   BLOCKCONSOLE_MAGIC, 32 bytes
    32  uuid   "%08x\\n"   chosen by mkblockconsole, the series' formatting script
    41  round  "%08x\\n"   how often the log has wrapped
    50  tile   "%08x\\n"   `console_bytes >> 20` read before the header's position is
                          stored: the tile's own index where a boot starts the log
                          (`bcon_find_end_of_log`) and in tile 0 (rebuilt when the
                          writeback wraps), the previous tile's where the log runs on
                          into it (`bcon_advance_console_bytes`, seed 1061-1075).
                          Checked as hex, relied on for nothing.

and console text follows it. Text goes to the device in whole 512-byte sectors from a
1 MiB cache that mirrors a tile (`bcon_writeback`, seed 1303-1323): a sector once the
console has moved past it, or after padding (`clear_sector`, seed 1038: the rest of it
spaces and a final newline; `bcon_pad` after 1 s idle, `blockconsole_panic`).

Where the log is (`bcon_find_end_of_log`, seed 1183-1223): a boot starts at the first
tile whose first 50 bytes (magic, uuid, round) differ from tile 0's, found by binary
search, and zeroes it (`bcon_erase_segment`); at the end of the device `round` goes up
and the log goes on at tile 0 (`bcon_advance_write_bytes`, seed 1137-1145). Tiles from
that position on still hold the previous round: the log in write order is those tiles,
then the current round's from tile 0.

What the code leaves on the device besides text, which a reader has to live with:
zero sectors where nothing was written (skipped); the padding (dropped where it forms
the "spurious line" of spaces the code's comment describes, seed 859-862); and, after
the last sector a boot wrote, whatever the tile held before — zeros only in the tile
the boot started in: `bcon_erase_segment`'s bios have no `bi_end_io`, so their
`in_flight` never clears and every later erase of that boot is skipped (seed
1119-1121). Those sectors cannot be told from new ones and are shown where they lie.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from construct import Adapter, Bytes, Const, Struct, ValidationError

from pstorefs.errors import FormatError
from pstorefs.format.zone import parse

BLOCKCONSOLE_MAGIC = b"\nLinux blockconsole version 1.1\n"
BCON_HEADERSIZE = 50
"""What `bcon_find_end_of_log` compares: magic, uuid and round, not the tile index."""
BCON_LONG_HEADERSIZE = 59
"""The header with the tile index: where a tile's console text starts."""

CACHE_SIZE = 1 << 20
"""One tile: the writer's cache of 256 4-KiB pages, mirrored onto the device."""
SECTOR_SIZE = 512

VERSION = "1.1"
"""`bcon_magic_present` returns 11 for the one version there is."""

ROUND_MASK = 0xFFFFFFFF
"""`round` is a u32."""

_HEXDIGITS = frozenset(b"0123456789abcdefABCDEF")
_ZERO_SECTOR = bytes(SECTOR_SIZE)


class _Hex32(Adapter):  # type: ignore[misc]
    """A `%08x` field, accepted as `is_four_byte_hex` (seed 1150-1166) accepts it:
    exactly 8 hex digits of either case (int() alone would also take "0x", "_", " ")."""

    def _decode(self, obj: bytes, context: object, path: str) -> int:
        if not _HEXDIGITS.issuperset(obj):
            raise ValidationError(f"not 8 hex digits: {obj!r}", path=path)
        return int(obj, 16)


bcon_header = Struct(
    "magic" / Const(BLOCKCONSOLE_MAGIC),
    "uuid" / _Hex32(Bytes(8)), Const(b"\n"),
    "round" / _Hex32(Bytes(8)), Const(b"\n"),
    "tile" / _Hex32(Bytes(8)), Const(b"\n"),
)
"""The 59-byte tile header, checked as `bcon_magic_present` (seed 1168-1181) checks it."""


@dataclass(frozen=True)
class TileHeader:
    """A tile's header as read."""

    uuid: int
    round: int
    tile: int


def parse_tile_header(buf: bytes, offset: int) -> TileHeader:
    """The header at the start of `buf`, or FormatError."""
    h = parse(bcon_header, buf[:BCON_LONG_HEADERSIZE], offset,
              f"blockconsole {VERSION} tile header")
    return TileHeader(h.uuid, h.round, h.tile)


def magic_present(buf: bytes) -> bool:
    """`bcon_magic_present`: what the partition scan attaches a device for."""
    try:
        parse_tile_header(buf, 0)
    except FormatError:
        return False
    return True


def tile_count(size: int) -> int:
    """The tiles of a device of `size` bytes (`max_bytes >> 20`)."""
    return size // CACHE_SIZE


def find_end_of_log(read_prefix: Callable[[int], bytes], tiles: int) -> int:
    """`bcon_find_end_of_log`'s binary search, in tiles: the first tile whose first
    `BCON_HEADERSIZE` bytes differ from tile 0's (`tiles` if none found). It assumes
    the current round's tiles come first, as the writer leaves them, and reads
    log2(tiles) headers; `read_prefix(tile)` gives a tile's first bytes."""
    reference = read_prefix(0)[:BCON_HEADERSIZE]
    start, end = 0, tiles
    while (middle := (start + end) // 2) != start:
        if read_prefix(middle)[:BCON_HEADERSIZE] != reference:
            end = middle  # "If the two differ, we haven't written that far yet"
        else:
            start = middle
    return end


def next_write_offset(end: int, tiles: int) -> int:
    """Where the next boot writes (`bc->write_bytes` after `bcon_find_end_of_log`):
    the tile found, or tile 0 of a new round when every tile is this round's."""
    return end * CACHE_SIZE if end < tiles else 0


def previous_round(round_: int) -> int:
    return (round_ - 1) & ROUND_MASK


def read_order(headers: Iterable[tuple[int, TileHeader]], reference: TileHeader) -> list[int]:
    """The tiles of the log, oldest first: those of the device's uuid in the previous
    round, then those of the current one, each by index. Any other tile (another uuid
    from an earlier mkblockconsole, an older round, no header) is not the log's."""
    current = reference.round
    older = previous_round(current)
    ours = [(h.round == current, index) for index, h in headers
            if h.uuid == reference.uuid and h.round in (current, older)]
    return [index for _, index in sorted(ours)]


def strip_padding(sector: bytes) -> bytes:
    """A sector's text without the padding `bcon_pad` leaves when it follows a newline
    (or nothing): the "spurious line of up to 510 spaces and a newline". Padding after
    a partial line, and a lone final newline, cannot be told from text and are kept."""
    if not sector.endswith(b"\n"):
        return sector
    body = sector[:-1]
    text = body.rstrip(b" ")
    if len(text) < len(body) and (not text or text.endswith(b"\n")):
        return text
    return sector


def tile_text(tile: bytes) -> bytes:
    """The console text a tile holds (all of it, or its first sectors: whole sectors),
    in write order: its sectors after the header, zero sectors (erased, never written)
    left out."""
    parts = []
    for ofs in range(0, len(tile), SECTOR_SIZE):
        sector = tile[ofs:ofs + SECTOR_SIZE]
        if sector == _ZERO_SECTOR:
            continue
        parts.append(strip_padding(sector[BCON_LONG_HEADERSIZE:] if ofs == 0 else sector))
    return b"".join(parts)
