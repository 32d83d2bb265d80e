"""Sparse sources: a large image that holds a few records opens as a small one does.

`Device.next_data` tells where an image file's holes are (SEEK_DATA, SEEK_HOLE) and every
scan skips them (`data_slots`): what reads as zeros is not read. The oracles: the same
bytes written out densely list the same records, files, attributes and layout; and
opening a 1 GiB sparse image that holds one record reads a handful of times, not once a
zone or a page, and allocates no per-zone list.
"""

from __future__ import annotations

import dataclasses
import os
import struct
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import pytest

from helpers.cases import BACKEND_CASES, CASES, Case
from helpers.detect import oops_text, write_sparse
from helpers.flash import flash_image, mtdoops_page, text
from helpers.machine import require
from helpers.zone_writer import ZoneWriter
from pstorefs.cli.options import parse_options
from pstorefs.format.abi import X86_64, kmsg_header_struct
from pstorefs.format.consts import PSTORE_KMSG_HEADER_MAGIC, PSZ_SIG, KmsgDumpReason
from pstorefs.format.ramoops import PERSISTENT_RAM_SIG, RamBuffer, build_buffer
from pstorefs.store import Store, StoreConfig, open_store
from pstorefs.store.device import DataRun, Device, data_slots
from pstorefs.store.zone.layout import SZ_128M

KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30
BLOCK = 4096
"""The filesystem block: a block of zeros written as a hole."""


def sparse_copy(data: bytes, path: Path) -> Path:
    """`data` with every block of zeros left a hole; fails if the filesystem keeps none
    (the test would then prove nothing)."""
    blocks = {at: data[at:at + BLOCK] for at in range(0, len(data), BLOCK)}
    write_sparse(path, len(data), {at: b for at, b in blocks.items() if b.count(0) != len(b)})
    if any(b.count(0) == len(b) for b in blocks.values()):
        with open(path, "rb") as fh:
            require(os.lseek(fh.fileno(), 0, os.SEEK_HOLE) < len(data),
                    f"a filesystem with holes under {path.parent}")
    return path


def listing(store: Store) -> list[tuple[object, ...]]:
    """Everything a mount shows of each record, and where its erase would write."""
    return [(store.entry(r), store.read(r), store.attributes(r),
             tuple(z.offset for z in r.zones), r.erased)
            for r in (*store.records, *store.erased)]


def opened(path: Path, config: StoreConfig) -> tuple[list[tuple[object, ...]], dict]:
    with closing(open_store(str(path), config)) as store:
        return listing(store), store.layout().as_dict()


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


# == sparse and dense: the same files =======================================================
def case_config(case: Case, **overrides: object) -> StoreConfig:
    """The case's mount options (and its System.map), read-only."""
    return dataclasses.replace(parse_options([case.options]).store, read_only=True,
                               **overrides)


def configs(case: Case) -> Iterator[tuple[str, StoreConfig]]:
    """The case's options; its layout detected (only the name, the erase block and the
    System.map given); for pstore/zone, with the erased records shown."""
    given = case_config(case)
    yield "options", given
    yield "detected", StoreConfig(name=given.name, erasesize=given.erasesize,
                                  system_map=given.system_map, read_only=True)
    if case in CASES:
        yield "show_erased", case_config(case, show_erased=True)


IMAGES = [(case, label, config, name) for case in (*CASES, *BACKEND_CASES)
          for label, config in configs(case)
          for name in ("image.bin", "image-after-erase.bin") if name in case.images]


@pytest.mark.parametrize(("case", "label", "config", "image"), IMAGES,
                         ids=[f"{c.id}-{label}-{n.removesuffix('.bin')}"
                              for c, label, _, n in IMAGES])
def test_sparse_image_lists_as_the_dense_one(case: Case, label: str, config: StoreConfig,
                                             image: str, tmp_path: Path) -> None:
    data = (case.file(image)).read_bytes()
    dense = tmp_path / "dense.img"
    dense.write_bytes(data)
    sparse = sparse_copy(data, tmp_path / "sparse.img")
    assert opened(sparse, config) == opened(dense, config)


def zone_image_past_the_cap() -> bytes:
    """A 5.8-5.10 writer's partition: 64 KiB zones over 136 MiB, records at zones 0, 1
    and the two past 128 MiB, one erased."""
    w = ZoneWriter(X86_64, SZ_128M, kmsg_size=64 * KIB)
    for n in range(3):
        w.dmesg(oops_text(n, 3000))
    w.erase_dmesg(2)
    image = bytearray(w.image) + bytearray(8 * MIB)
    for zone in range(2048, 2050):
        image[zone * 64 * KIB:(zone + 1) * 64 * KIB] = w.image[:64 * KIB]
    return bytes(image)


def blkoops_image() -> bytes:
    """The blkoops RFC format: records in zones 0-2 of 64 KiB, and a stale one in zone 5
    after two never written: its recovery ends at zone 3, as the kernel's does."""
    kmsg = kmsg_header_struct(X86_64)
    image = bytearray(8 * MIB)
    for zone in (0, 1, 2, 5):
        body = kmsg.build({"magic": PSTORE_KMSG_HEADER_MAGIC, "tv_sec": 1_700_000_000 + zone,
                           "tv_nsec": 0, "compressed": 0, "counter": zone + 1,
                           "reason": KmsgDumpReason.OOPS}) + oops_text(zone, 2000)
        record = struct.pack("<Ii", PSZ_SIG, len(body)) + body
        image[zone * 64 * KIB:zone * 64 * KIB + len(record)] = record
    return bytes(image)


def mtdoops_image() -> bytes:
    """Erased flash around a few pages, the way the kernel leaves them, then zeros."""
    pages = {n: mtdoops_page(n, text(n)) for n in (0, 1, 7)}
    return flash_image(pages, 64 * KIB) + bytes(4 * MIB)


WRITTEN: dict[str, tuple[Callable[[], bytes], StoreConfig]] = {
    "zone-past-the-cap": (zone_image_past_the_cap, StoreConfig(read_only=True,
                                                               show_erased=True)),
    "zone-past-the-cap-options": (zone_image_past_the_cap,
                                  StoreConfig(kmsg_size=64, read_only=True)),
    "blkoops": (blkoops_image, StoreConfig(read_only=True)),
    "mtdoops": (mtdoops_image, StoreConfig(read_only=True)),
}


@pytest.mark.parametrize("label", list(WRITTEN))
def test_written_sparse_image_lists_as_the_dense_one(label: str, tmp_path: Path) -> None:
    make, config = WRITTEN[label]
    data = make()
    dense = tmp_path / "dense.img"
    dense.write_bytes(data)
    got = opened(sparse_copy(data, tmp_path / "sparse.img"), config)
    assert got == opened(dense, config)
    assert got[0], "no record listed: the image tests nothing"


def test_blkoops_recovery_ends_at_the_first_zone_never_written(tmp_path: Path) -> None:
    path = sparse_copy(blkoops_image(), tmp_path / "sparse.img")
    with closing(open_store(str(path), StoreConfig(read_only=True))) as store:
        assert [r.id for r in store.records] == [0, 1, 2]


# == what opening a large sparse image reads ================================================
def dmesg_record(offset: int = 0) -> dict[int, bytes]:
    w = ZoneWriter(X86_64, MIB, kmsg_size=64 * KIB)
    w.dmesg(oops_text(1, 500))
    return {offset: bytes(w.image[:4 * KIB])}


def ramoops_record() -> dict[int, bytes]:
    line = b"====1700000000.123456-D\nOops#1 Part1\n"
    return {0: build_buffer(RamBuffer(PERSISTENT_RAM_SIG, len(line), len(line)),
                            little_endian=True) + line}


ONE_RECORD: dict[str, tuple[dict[int, bytes], StoreConfig, int]] = {
    # label: (the bytes written, the options, the records listed)
    "zone-dmesg-at-0": (dmesg_record(), StoreConfig(), 1),
    "zone-past-the-cap": ({**dmesg_record(), **dmesg_record(SZ_128M)}, StoreConfig(), 2),
    "zone-options-past-the-cap": ({**dmesg_record(), **dmesg_record(SZ_128M)},
                                  StoreConfig(kmsg_size=64), 2),
    "blkoops-at-0": ({0: blkoops_image()[:4 * KIB]}, StoreConfig(), 1),
    "mtdoops-page-at-0": ({0: mtdoops_page(1, text(1))}, StoreConfig(erasesize=64 * KIB), 1),
    "ramoops-zeros": ({}, StoreConfig(backend="ramoops"), 0),
    "ramoops-dmesg-at-0": (ramoops_record(), StoreConfig(), 1),
    "nothing": ({}, StoreConfig(), 0),
}


@pytest.mark.parametrize("label", list(ONE_RECORD))
def test_a_large_sparse_image_reads_as_few_times_as_it_has_records(
        label: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pieces, config, count = ONE_RECORD[label]
    path = write_sparse(tmp_path / "sparse.img", GIB, pieces)
    reads: list[tuple[int, int]] = []
    read = Device.read

    def counted(self: Device, offset: int, length: int) -> bytes:
        reads.append((offset, length))
        return read(self, offset, length)

    monkeypatch.setattr(Device, "read", counted)
    tracemalloc.start()
    try:
        with closing(open_store(str(path), config)) as store:
            assert len(store.records) == count
            peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(reads) <= 32, reads  # ramoops' detection tries a few headers in a block
    assert sum(length for _, length in reads) <= 2 * MIB, reads
    assert peak < 4 * MIB, f"{peak} bytes allocated to open it"
