"""Sparse sources: a large image that holds a few records opens as a small one does.

`Device.next_data` tells where an image file's holes are (SEEK_DATA, SEEK_HOLE) and every
scan skips them (`data_slots`): what reads as zeros is not read. The oracles: the same
bytes written out densely list the same records, files, attributes and layout; and
opening a 1 GiB sparse image that holds one record reads a handful of times, not once a
zone or a page, and allocates no per-zone list.
"""

from __future__ import annotations

from contextlib import closing
from pathlib import Path

from pstorefs.store.device import DataRun, Device, data_slots

KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30
BLOCK = 4096
"""The filesystem block: a block of zeros written as a hole."""


def write_sparse(path: Path, size: int, pieces: dict[int, bytes]) -> Path:
    """A `size`-byte file holding `pieces` (offset: bytes) and holes elsewhere."""
    with open(path, "wb") as fh:
        fh.truncate(size)
        for offset, data in pieces.items():
            fh.seek(offset)
            fh.write(data)
    return path


# == Device.next_data and data_slots ========================================================
def test_next_data_tells_the_holes(tmp_path: Path) -> None:
    path = write_sparse(tmp_path / "sparse.img", 8 * MIB,
                        {MIB: b"a" * 10, 3 * MIB + 5: b"b", 8 * MIB - 1: b"c"})
    with closing(Device(str(path), read_only=True)) as device:
        assert device.next_data(0) == (MIB, MIB + BLOCK)
        assert device.next_data(MIB + 7) == (MIB + 7, MIB + BLOCK)
        assert device.next_data(MIB + BLOCK) == (3 * MIB, 3 * MIB + BLOCK)
        assert device.next_data(3 * MIB + BLOCK) == (8 * MIB - BLOCK, 8 * MIB)
        assert device.next_data(8 * MIB) is None
    with closing(Device(str(path), read_only=True, offset=MIB + BLOCK, size=2 * MIB)) as region:
        assert region.next_data(0) == (2 * MIB - BLOCK, 2 * MIB)  # 3 MiB, cut at the end
        assert region.next_data(2 * MIB - 1) == (2 * MIB - 1, 2 * MIB)
        assert region.next_data(2 * MIB) is None
    empty = write_sparse(tmp_path / "empty.img", GIB, {})
    with closing(Device(str(empty), read_only=True)) as device:
        assert device.next_data(0) is None


def test_data_slots_skip_the_slots_in_holes() -> None:
    runs = [(100, 200), (10_000, 10_001), (50_000, 70_000)]
    asked: list[int] = []

    def next_data(offset: int) -> DataRun | None:
        asked.append(offset)
        return next(((max(a, offset), b) for a, b in runs if b > offset), None)

    # 1000 slots of 2 KiB every 4 KiB: slot 0 holds the first run, slot 2 (8192..10240)
    # the second, slot 12 (49152..51200) reaches into the third, which ends in slot 17
    got = list(data_slots(next_data, 1000, 0, 4096, 2048))
    assert got == [0, 2, *range(12, 18)]
    assert len(asked) <= 2 * len(runs) + 1
    # slots from another offset; a count that ends inside a run
    assert list(data_slots(next_data, 5, 40_000, 4096, 4096)) == [2, 3, 4]
    assert list(data_slots(next_data, 14, 0, 4096, 2048)) == [0, 2, 12, 13]
    assert list(data_slots(next_data, 0, 0, 4096, 2048)) == []
