"""Records of every writer era in the store: the blkoops RFC format and pre-5.8 reason
names.

The blkoops images are built here by `blkoops_zone`, which follows the RFC's code
(seed 001: blkz_init_zone, blkoops_write_kmsg_hdr, blkz_dmesg_write, blkz_zone_write):
no kernel ever merged that format, so no kernel-written image exists. Everything else
is checked against the kernel's fixtures or the test writer pinned to them.
"""

from __future__ import annotations

import hashlib
import struct
from contextlib import closing
from pathlib import Path

import pytest

from helpers.zone_writer import ZoneWriter, deflate
from pstorefs.format.abi import ABIS, Abi, kmsg_header_struct
from pstorefs.format.consts import PSTORE_KMSG_HEADER_MAGIC, PSZ_SIG, KmsgDumpReason, ZoneFormat
from pstorefs.store import Store, StoreConfig, open_store
from pstorefs.store.zone.store import ZoneStore

KIB = 1024


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def oops_text(n: int, reason: str = "Oops") -> bytes:
    return (f"{reason}#{n} Part1\n<4>[  {n}.000000] something went wrong, take {n}\n" * 40
            ).encode()


# == the blkoops RFC =========================================================================
def _padding(abi: Abi) -> list[int]:
    """Offsets of the C padding in the dmesg header: built with every field all-ones,
    what stays zero is padding."""
    s = kmsg_header_struct(abi)
    ones = s.build({"magic": 0xFFFFFFFF, "tv_sec": -1, "tv_nsec": -1, "compressed": 0xFF,
                    "counter": 0xFFFFFFFF, "reason": -1})
    return [i for i, b in enumerate(ones) if b == 0]


def blkoops_zone(abi: Abi, text: bytes, *, reason: int = KmsgDumpReason.OOPS, counter: int,
                 time: tuple[int, int] = (1_600_000_000, 5_000), compressed: bool = False,
                 zone_size: int) -> bytes:
    """The bytes `blkz_dmesg_write` puts on disk for one record: the zone buffer was
    memset 0xFF by blkz_init_zone, blkoops_write_kmsg_hdr sets the header's fields over
    it (its padding stays 0xFF), the record follows at sizeof(header), and FLUSH_ALL
    writes `datalen + sizeof(struct blkz_buffer)` bytes, no more."""
    order = "<" if abi.little_endian else ">"
    hdr = bytearray(kmsg_header_struct(abi).build({
        "magic": PSTORE_KMSG_HEADER_MAGIC, "tv_sec": time[0], "tv_nsec": time[1],
        "compressed": int(compressed), "counter": counter, "reason": reason}))
    for i in _padding(abi):
        hdr[i] = 0xFF
    body = bytes(hdr) + text[:zone_size - 8 - len(hdr)]
    return struct.pack(order + "Ii", PSZ_SIG, len(body)) + body


def blkoops_image(abi: Abi, zone_size: int, zones: int, records: list[bytes]) -> bytearray:
    """A partition of `zones` blkoops zones (blkz_cut_zones: from 0, each dmesg_size),
    `records` (already built zones) written round-robin from zone 0."""
    image = bytearray(zone_size * zones)
    for index, zone in enumerate(records):
        image[index * zone_size:index * zone_size + len(zone)] = zone
    return image


def rfc_records(abi: Abi, zone_size: int) -> tuple[list[bytes], dict[str, bytes]]:
    """Two oopses and a compressed panic, and the files the RFC's blkz_dmesg_read gives:
    `"blkoops: %s: Total %d times\\n"` before an uncompressed one, "Oops" or "Panic"."""
    texts = [oops_text(1), oops_text(2), oops_text(1, "Panic")]
    zones = [blkoops_zone(abi, texts[0], counter=1, zone_size=zone_size),
             blkoops_zone(abi, texts[1], counter=2, zone_size=zone_size),
             blkoops_zone(abi, deflate(texts[2]), reason=KmsgDumpReason.PANIC, counter=1,
                          compressed=True, zone_size=zone_size)]
    files = {"dmesg-blkoops-0": b"blkoops: Oops: Total 1 times\n" + texts[0],
             "dmesg-blkoops-1": b"blkoops: Oops: Total 2 times\n" + texts[1],
             "dmesg-blkoops-2": texts[2]}
    return zones, files


def listing(store: Store) -> dict[str, bytes]:
    return {store.entry(r).name: store.read(r) for r in store.records}


@pytest.mark.parametrize("abi", list(ABIS.values()), ids=lambda a: a.name)
@pytest.mark.parametrize("options", [{}, {"format": "blkoops", "kmsg_size": 16}],
                         ids=["detected", "given"])
def test_blkoops_format_reads(tmp_path: Path, abi: Abi, options: dict[str, object]) -> None:
    zones, files = rfc_records(abi, 16 * KIB)
    path = tmp_path / "rfc.bin"
    path.write_bytes(blkoops_image(abi, 16 * KIB, 16, zones))
    before = sha(path)
    with closing(open_store(str(path), StoreConfig(read_only=True, **options))) as store:
        assert isinstance(store, ZoneStore)
        assert store.geometry.format is ZoneFormat.BLKOOPS
        assert store.abi.little_endian == abi.little_endian
        assert store.abi.kmsg_header_size == abi.kmsg_header_size
        assert listing(store) == files
        assert [r.zones[0].offset for r in store.records] == [0, 16 * KIB, 32 * KIB]
    assert sha(path) == before


def test_blkoops_stops_at_the_first_unwritten_zone(tmp_path: Path) -> None:
    """blkz_recover_dmesg_meta stops at the first zone without the signature: the zones
    are used in order, so nothing after it is the RFC kernel's."""
    abi = ABIS["le64"]
    zones, files = rfc_records(abi, 16 * KIB)
    image = blkoops_image(abi, 16 * KIB, 16, zones)
    image[5 * 16 * KIB:5 * 16 * KIB + len(zones[0])] = zones[0]  # zone 5, after unused 3
    path = tmp_path / "rfc.bin"
    path.write_bytes(image)
    config = StoreConfig(read_only=True, format="blkoops", kmsg_size=16)
    with closing(open_store(str(path), config)) as store:
        assert sorted(listing(store)) == sorted(files)


def test_blkoops_erase(tmp_path: Path) -> None:
    """`blkoops_pstore_erase`: datalen 0, the 8-byte header flushed; nothing else."""
    abi = ABIS["le64"]
    zones, _ = rfc_records(abi, 16 * KIB)
    path = tmp_path / "rfc.bin"
    before = blkoops_image(abi, 16 * KIB, 16, zones)
    path.write_bytes(before)
    with closing(open_store(str(path), StoreConfig())) as store:
        record = store.find("dmesg-blkoops-1")
        assert record is not None
        store.erase(record)
    after = path.read_bytes()
    want = bytearray(before)
    want[16 * KIB + 4:16 * KIB + 8] = bytes(4)
    assert after == want
    with closing(open_store(str(path), StoreConfig(read_only=True, show_erased=True))) as store:
        assert isinstance(store, ZoneStore)
        assert sorted(listing(store)) == ["dmesg-blkoops-0", "dmesg-blkoops-2"]
        # the RFC wrote header + datalen only: where an erased record ended is lost
        assert list(store.erased) == []


# == reasons of every kernel era ==============================================================
@pytest.mark.parametrize(("reason", "text_reason", "shown"), [
    (KmsgDumpReason.PANIC, "Panic", "Panic"),
    (KmsgDumpReason.OOPS, "Oops", "Oops"),
    (KmsgDumpReason.EMERG, "Emergency", "Emergency"),
    (4, "Shutdown", "Shutdown"),   # 5.8+: SHUTDOWN
    (4, "Restart", "Restart"),     # before 5.8: RESTART, as its dump header says
    (5, "Halt", "Halt"),           # before 5.8 only
    (6, "Poweroff", "Poweroff"),   # before 5.8 only
    (0, "Unknown", "Unknown"),
    (9, "Unknown", "Unknown"),
])
@pytest.mark.parametrize("compressed", [False, True], ids=["plain", "deflate"])
def test_reason_names(tmp_path: Path, reason: int, text_reason: str, shown: str,
                      compressed: bool) -> None:
    """The "Total N times" line and the reason attribute name a pre-5.8 reason where the
    record shows it (docs/pstorefs.md, "Reasons")."""
    text = oops_text(1, text_reason)
    w = ZoneWriter(ABIS["le64"], 256 * KIB, kmsg_size=64 * KIB)
    w.dmesg(deflate(text) if compressed else text, reason=reason, counter=7,
            compressed=compressed)
    path = tmp_path / "r.bin"
    w.save(path)
    with closing(open_store(str(path), StoreConfig(kmsg_size=64, read_only=True))) as store:
        record, = store.records
        want = text if compressed else f"{shown}: Total 7 times\n".encode() + text
        assert store.read(record) == want
        attrs = store.attributes(record)
        assert attrs["reason"] == shown and attrs["reason_code"] == str(reason)
