"""Driving the test-only blockconsole writer as printk would, and what the tests read
back of its images."""

from __future__ import annotations

from pathlib import Path

from helpers.blockconsole_writer import (
    BCON_LONG_HEADERSIZE,
    CACHE_MASK,
    CACHE_SIZE,
    BlockConsole,
    mkblockconsole,
)

UUID = 0x5EED0BC1


def formatted(tiles: int, extra: int = 0) -> bytearray:
    """A zeroed device of `tiles` tiles (and `extra` bytes past them), mkblockconsole'd."""
    disk = bytearray(tiles * CACHE_SIZE + extra)
    mkblockconsole(disk, UUID)
    return disk


def lines(first: int, count: int) -> bytes:
    """printk-like lines of varied length, numbered so a failure shows where."""
    return b"".join(b"[%5d.%06d] line %d %s\n" % (i, i * 7919 % 10**6, i, b"x" * (i * 37 % 190))
                    for i in range(first, first + count))


class Console:
    """A boot of the writer and the text printk gave it. Console writes end at tile
    ends (printk may split a line over two writes, and the writeback thread the first
    one woke runs before the second), so no text is lost where the log wraps; `starts`
    is where in `text` each tile's console bytes began, in its latest round."""

    def __init__(self, disk: bytearray) -> None:
        self.bc = BlockConsole(disk)
        self.text = bytearray()
        self.starts: dict[int, int] = {}

    def printk(self, text: bytes) -> None:
        while text:
            in_tile = self.bc.console_bytes & CACHE_MASK
            if in_tile == BCON_LONG_HEADERSIZE:
                self.starts[self.bc.console_bytes // CACHE_SIZE] = len(self.text)
            n = min(len(text), CACHE_SIZE - in_tile)
            self.bc.bcon_write(text[:n])
            self.text += text[:n]
            text = text[n:]

    def fill_tile(self) -> None:
        """Text up to the end of the current tile exactly, so it is written whole."""
        room = CACHE_SIZE - (self.bc.console_bytes & CACHE_MASK)
        self.printk(b"#" * (room - 1) + b"\n")


def save(disk: bytearray, path: Path) -> Path:
    path.write_bytes(disk)
    return path


def wrapped_log(tmp_path: Path) -> tuple[Path, bytes]:
    """A 3-tile device whose log wrapped once, and the text a reader gets back from it
    (the oldest tile, overwritten, is gone)."""
    disk = formatted(3)
    con = Console(disk)
    while con.bc.round < 1 or con.bc.console_bytes // CACHE_SIZE != 1:
        con.printk(lines(0, 400))
    con.fill_tile()
    return save(disk, tmp_path / "bcon.img"), bytes(con.text[con.starts[2]:])
