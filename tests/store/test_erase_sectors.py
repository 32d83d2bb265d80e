"""Every back end's header writes go through `Device.write_fields`: one write when the
fields share a sector of the device (offsets counted from the device's start, not from
the `offset=` region's), else one write per field with a sync between. Checked with
the region placed at every offset that puts the erased fields across a sector boundary,
and the bytes after the erase compared with the same erase done at offset 0."""

from __future__ import annotations

import itertools
from contextlib import closing
from pathlib import Path

import pytest

from helpers.cases import BACKEND_CASES, CASES, Case, case_by_id
from pstorefs.store import StoreConfig, open_store
from pstorefs.store.device import SECTOR_SIZE, Device

ZONE = case_by_id("x86_64-all-fronts")
RAMOOPS = next(c for c in BACKEND_CASES if c.id == "ramoops-all-fronts")
assert ZONE in CASES


def options(case: Case, **extra: object) -> StoreConfig:
    kw: dict[str, object] = {}
    for pair in case.meta["mount_options"].split(","):
        key, value = pair.split("=", 1)
        kw[key] = value if key in ("name", "backend") else int(value)
    kw.update(extra)
    return StoreConfig(**kw)  # type: ignore[arg-type]


def erase_all(path: Path, config: StoreConfig, calls: list[tuple[str, int, int]] | None,
              monkeypatch: pytest.MonkeyPatch) -> None:
    real_write, real_sync = Device.write, Device.sync
    if calls is not None:
        monkeypatch.setattr(Device, "write", lambda self, off, data: (
            calls.append(("write", self.base + off, len(data))), real_write(self, off, data))[1])
        monkeypatch.setattr(Device, "sync", lambda self: (
            calls.append(("sync", 0, 0)), real_sync(self))[1])
    with closing(open_store(str(path), config)) as store:
        for record in list(store.records):
            store.erase(record)
    monkeypatch.undo()


@pytest.mark.parametrize("case", [ZONE, RAMOOPS], ids=lambda c: c.id)
@pytest.mark.parametrize("offset", [0, 500, 504, 506, 508, 510, 4096 - 8])
def test_header_writes_stay_within_a_sector_or_are_ordered(case: Case, offset: int,
                                                            tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    image = case.image.read_bytes()
    reference = tmp_path / "reference.bin"
    reference.write_bytes(image)
    erase_all(reference, options(case), None, monkeypatch)
    placed = tmp_path / "placed.bin"
    placed.write_bytes(b"\xa5" * offset + image + b"\x5a" * 4096)
    calls: list[tuple[str, int, int]] = []
    erase_all(placed, options(case, offset=offset, size=len(image)), calls, monkeypatch)
    after = placed.read_bytes()
    assert after[:offset] == b"\xa5" * offset and after[offset + len(image):] == b"\x5a" * 4096
    assert after[offset:offset + len(image)] == reference.read_bytes()
    writes = [(at, n) for kind, at, n in calls if kind == "write"]
    assert writes, "nothing was written"
    for at, n in writes:  # a field that itself straddles two sectors is written alone
        assert at // SECTOR_SIZE == (at + n - 1) // SECTOR_SIZE or n <= 4, (
            f"a {n}-byte write at {at:#x} joins fields across a sector boundary")
    for (kind, at, _), (next_kind, next_at, _) in itertools.pairwise(calls):
        # two writes of one header in different sectors are separated by a sync
        if kind == next_kind == "write" and 0 < next_at - at < 16:
            assert at // SECTOR_SIZE == next_at // SECTOR_SIZE, (
                f"writes at {at:#x} and {next_at:#x} straddle a sector with no sync between")
