"""blockconsole's format: tile headers as mkblockconsole and the seed's driver write
them, padding, the kernel's search for the end of the log, the read order of tiles."""

from __future__ import annotations

import pytest

from helpers.blockconsole import UUID, formatted
from helpers.blockconsole_writer import BCON_LONG_HEADERSIZE, SECTOR_SIZE
from pstorefs.errors import FormatError
from pstorefs.format.blockconsole import (
    TileHeader,
    find_end_of_log,
    magic_present,
    parse_tile_header,
    read_order,
    strip_padding,
    tile_text,
)


# -- the format ------------------------------------------------------------------------
def test_tile_header_as_mkblockconsole_writes_it() -> None:
    disk = formatted(1)
    assert parse_tile_header(bytes(disk[:64]), 0) == TileHeader(UUID, 0, 0)
    assert magic_present(bytes(disk[:BCON_LONG_HEADERSIZE]))
    assert tile_text(bytes(disk)) == b""  # the header, 452 spaces and a newline: no text


@pytest.mark.parametrize("change", [
    (0, b"\nLinux blockconsole version 1.2\n"),  # another version
    (32, b"5eed0bc\n\n"),  # seven digits
    (32, b"0x5eed0b\n"),  # what int() would take
    (32, b"5eed 0bc\n"),
    (41, b"0000000g\n"),
    (58, b" "),  # no newline after the tile index
])
def test_tile_header_refused(change: tuple[int, bytes]) -> None:
    ofs, data = change
    disk = formatted(1)
    disk[ofs:ofs + len(data)] = data
    assert not magic_present(bytes(disk[:BCON_LONG_HEADERSIZE]))
    with pytest.raises(FormatError):
        parse_tile_header(bytes(disk[:BCON_LONG_HEADERSIZE]), 0)


def test_tile_header_hex_of_either_case() -> None:
    disk = formatted(1)
    disk[32:40] = b"5EED0BC1"
    assert parse_tile_header(bytes(disk), 0).uuid == UUID


def test_short_header_refused() -> None:
    with pytest.raises(FormatError):
        parse_tile_header(bytes(formatted(1)[:58]), 0)


def test_strip_padding() -> None:
    line = b"[    1.000000] done\n"
    assert strip_padding(line + b" " * (SECTOR_SIZE - len(line) - 1) + b"\n") == line
    partial = b"[    1.000000] no newline yet"
    padded = partial + b" " * (SECTOR_SIZE - len(partial) - 1) + b"\n"
    assert strip_padding(padded) == padded  # cannot be told from text: kept
    full = b"y" * 510 + b"\n\n"
    assert strip_padding(full) == full  # a lone final newline may be text
    assert strip_padding(b" " * 452 + b"\n") == b""


def test_find_end_of_log_is_the_kernels_search() -> None:
    a, b = b"A" * 50, b"B" * 50
    for tiles in range(1, 20):
        for written in range(1, tiles + 1):
            heads = [a] * written + [b] * (tiles - written)
            assert find_end_of_log(heads.__getitem__, tiles) == written


def test_read_order() -> None:
    ref = TileHeader(UUID, 7, 0)
    headers = [(0, ref), (1, TileHeader(UUID, 7, 0)), (2, TileHeader(UUID, 6, 1)),
               (3, TileHeader(UUID, 6, 2)), (4, TileHeader(UUID, 5, 3)),
               (5, TileHeader(UUID + 1, 6, 4))]
    assert read_order(headers, ref) == [2, 3, 0, 1]
    first = TileHeader(UUID, 0, 0)
    assert read_order([(0, first), (1, TileHeader(UUID, 0xFFFFFFFF, 0))], first) == [1, 0]
