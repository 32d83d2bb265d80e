"""Erasing on flash: whole erase blocks go to 0xFF, and nothing a block also holds is
lost with it.

NOR/NAND flash can only turn bits from 1 to 0 on a write; an erase block goes back
to all 0xFF as a whole. mtdpstore's and mtdoops' `rm` therefore erase whole blocks.
Where a block holds more than the record removed (mtdpstore with 128 KiB blocks and
64 KiB zones), the kernel loses the neighbour; here the rest of the block is written
back, so a record the user did not remove survives.
"""

from __future__ import annotations

import re

from pstorefs.store.device import Device

ERASED = 0xFF


def erase_keeping(device: Device, offset: int, length: int, erasesize: int) -> None:
    """Erase `[offset, offset + length)` as flash does: every erase block it touches
    goes to 0xFF, then the bytes of those blocks outside the range are written back.
    Durable (synced) before it returns.

    A power cut between the erase and the write-back loses the neighbours' bytes: flash
    gives no way to erase less than a block, and the kernel itself does the same
    without the write-back."""
    first = offset // erasesize * erasesize
    end = -(-(offset + length) // erasesize) * erasesize
    before = device.read(first, end - first)
    device.write(first, bytes([ERASED]) * (end - first))
    device.sync()
    kept = bytearray(before)
    kept[offset - first:offset - first + length] = bytes([ERASED]) * length
    for start, run in _written_runs(bytes(kept)):
        device.write(first + start, run)
    device.sync()


_WRITTEN = re.compile(rb"[^\xff](?:\xff{0,15}[^\xff])*")
"""A run of programmed bytes, gaps of fewer than 16 erased bytes included."""


def _written_runs(data: bytes) -> list[tuple[int, bytes]]:
    """The runs of `data` that are not erased flash (0xFF): only they need writing."""
    return [(m.start(), m.group()) for m in _WRITTEN.finditer(data)]
