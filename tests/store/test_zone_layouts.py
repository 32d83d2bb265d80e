"""The store layer on zone layouts the kernel's images do not have, made by the test
writer (tests/helpers/zone_writer.py): other zone sizes, wrapped rings, several ftrace
CPUs, the 128 MiB cap; what erase writes; the body cache; thousands of zones."""

from __future__ import annotations

import os
import random
import struct
import tracemalloc
from contextlib import closing
from pathlib import Path

import pytest

from helpers.cases import case_by_id
from helpers.zone import KD, KIB, MIB, assert_same_image, config, listing, oops_text, save
from helpers.zone_writer import HEADER, Ring, ZoneWriter, deflate
from pstorefs.errors import GeometryError, SourceError, ZoneChangedError
from pstorefs.format.abi import BE32, I386, LE32, X86_64, Abi
from pstorefs.format.consts import KmsgDumpReason, PstoreType
from pstorefs.store import StoreConfig, open_store, symbols
from pstorefs.store.cache import ITEM_OVERHEAD, BodyCache
from pstorefs.store.device import Device
from pstorefs.store.zone.layout import Geometry
from pstorefs.store.zone.store import ZoneStore


def zone_tuples(zones: list) -> list[tuple[PstoreType, int, int, int]]:
    return [(z.type, z.index, z.offset, z.size) for z in zones]


# == layouts the fixtures do not have (test writer) ========================================
@pytest.mark.parametrize("kmsg_kib", [4, 8, 32])
@pytest.mark.parametrize("abi", [X86_64, I386], ids=lambda a: a.name)
def test_other_kmsg_sizes(tmp_path: Path, abi: Abi, kmsg_kib: int) -> None:
    w = ZoneWriter(abi, 256 * KIB, kmsg_size=kmsg_kib * KIB)
    texts = [oops_text(n) for n in range(1, 5)]
    w.dmesg(texts[0], time=(1_700_000_001, 5))
    w.dmesg(deflate(texts[1], -11), compressed=True, time=(1_700_000_002, 999_999_999))
    w.dmesg(deflate(texts[2], -15), compressed=True, time=(1_700_000_003, 0))
    w.dmesg(texts[3], reason=KmsgDumpReason.PANIC, time=(1_700_000_004, 7))
    path = save(w, tmp_path)
    with closing(open_store(str(path), StoreConfig(kmsg_size=kmsg_kib, read_only=True))) as s:
        assert isinstance(s, ZoneStore) and s.abi is abi
        assert zone_tuples(s.zones) == zone_tuples(w.zones)
        assert len(s.zones) == 256 // kmsg_kib
        assert listing(s) == {
            "dmesg-blkoops-0": b"Oops: Total 1 times\n" + texts[0],
            "dmesg-blkoops-1": texts[1],
            "dmesg-blkoops-2": texts[2],
            "dmesg-blkoops-3": b"Panic: Total 1 times\n" + texts[3],
        }
        times = [s.entry(r).time_ns for r in s.records]
        assert times == [1_700_000_001_000_000_005, 1_700_000_002_999_999_999,
                         1_700_000_003_000_000_000, 1_700_000_004_000_000_007]


def test_wrapped_dmesg_round_robin(tmp_path: Path) -> None:
    w = ZoneWriter(X86_64, 16 * KIB, kmsg_size=4 * KIB)
    texts = [oops_text(n, 5000 if n == 6 else 1000) for n in range(1, 7)]
    for n, text in enumerate(texts, 1):
        assert w.dmesg(text, time=(1_700_000_000 + n, 1000 * n + 7)) == (n - 1) % 4
    path = save(w, tmp_path)
    with closing(open_store(str(path), StoreConfig(kmsg_size=4, read_only=True))) as store:
        assert [(r.id, r.counter) for r in store.records] == [(0, 5), (1, 6), (2, 3), (3, 4)]
        got = listing(store)
    assert got == {
        "dmesg-blkoops-0": b"Oops: Total 5 times\n" + texts[4],
        "dmesg-blkoops-1": b"Oops: Total 6 times\n" + texts[5][:4096 - 12 - 40],
        "dmesg-blkoops-2": b"Oops: Total 3 times\n" + texts[2],
        "dmesg-blkoops-3": b"Oops: Total 4 times\n" + texts[3],
    }


def test_ambiguous_dmesg_headers_need_abi(tmp_path: Path) -> None:
    """A header with time 0, counter 0 and reason 0 reads the same on both ABIs."""
    w = ZoneWriter(X86_64, 16 * KIB, kmsg_size=4 * KIB)
    w.dmesg(b"Unknown dump\n", reason=KmsgDumpReason.UNDEF, time=(0, 0))
    path = save(w, tmp_path)
    with pytest.raises(GeometryError):
        open_store(str(path), StoreConfig(kmsg_size=4, read_only=True))
    with closing(open_store(str(path), StoreConfig(kmsg_size=4, read_only=True,
                                                   abi="x86_64"))) as store:
        assert listing(store) == {"dmesg-blkoops-0": b"Unknown: Total 0 times\nUnknown dump\n"}
        assert store.entry(store.records[0]).time_ns is None


def test_partition_tail_smaller_than_a_zone(tmp_path: Path) -> None:
    w = ZoneWriter(X86_64, MIB, kmsg_size=48 * KIB)
    assert len(w.dmesg_zones) == 21  # 21 * 48 KiB, 16 KiB left over
    w.dmesg(oops_text(1))
    w.dmesg(oops_text(2))
    tail = 21 * 48 * KIB
    w.put(tail, bytes(w.image[0:HEADER + 40 + 3000]))  # a record-like tail: not a zone
    path = save(w, tmp_path)
    with closing(open_store(str(path), StoreConfig(kmsg_size=48, read_only=True))) as store:
        assert isinstance(store, ZoneStore)
        assert zone_tuples(store.zones) == zone_tuples(w.zones)
        assert store.zones[-1].offset + store.zones[-1].size == tail
        assert sorted(listing(store)) == ["dmesg-blkoops-0", "dmesg-blkoops-1"]


def test_128_mib_cap(tmp_path: Path) -> None:
    """Zones past 128 MiB are not the kernel's (Linux 5.11+): not listed, whatever they
    hold, while the first zone past the cap holds no header."""
    w = ZoneWriter(X86_64, 128 * KIB, kmsg_size=64 * KIB)
    w.dmesg(oops_text(1))
    w.dmesg(oops_text(2))
    path = tmp_path / "big.bin"
    with open(path, "wb") as fh:
        fh.truncate(129 * MIB)
        fh.write(w.image[:64 * KIB])
        fh.seek(128 * MIB + 64 * KIB)
        fh.write(w.image[64 * KIB:])
    with closing(open_store(str(path), StoreConfig(kmsg_size=64, read_only=True))) as store:
        assert isinstance(store, ZoneStore) and len(store.zones) == 2048
        assert store.geometry.capped
        assert listing(store) == {"dmesg-blkoops-0": b"Oops: Total 1 times\n" + oops_text(1)}


@pytest.mark.parametrize("options", [{"kmsg_size": 64}, {}], ids=["given", "detected"])
def test_records_past_the_cap(tmp_path: Path, options: dict[str, int]) -> None:
    """A 5.8-5.10 kernel used the whole partition: when the first zone past 128 MiB holds
    a dmesg header, every zone of the partition is read."""
    w = ZoneWriter(X86_64, 128 * MIB, kmsg_size=64 * KIB)
    for n in range(2048):
        w.dmesg(oops_text(n))
    past = ZoneWriter(X86_64, 64 * KIB, kmsg_size=64 * KIB)  # zone 2048, as 5.10 wrote it
    past.dmesg(oops_text(2048))
    path = tmp_path / "old.bin"
    path.write_bytes(bytes(w.image) + bytes(past.image) + bytes(960 * KIB))
    with closing(open_store(str(path), StoreConfig(read_only=True, **options))) as store:
        assert isinstance(store, ZoneStore) and not store.geometry.capped
        assert len(store.zones) == 2064 and len(store.records) == 2049
        last = store.find("dmesg-blkoops-2048")
        assert last is not None and last.zones[0].offset == 128 * MIB
        assert store.read(last) == b"Oops: Total 1 times\n" + oops_text(2048)


def ftrace_line(cpu: int, stamp: int, ip: int, parent: int, width: int = 16) -> bytes:
    """`CPU:%d ts:%llu %08lx  %08lx  %ps <- %pS` without a System.map."""
    return (f"CPU:{cpu} ts:{stamp} {ip:0{width}x}  {parent:0{width}x}  "
            f"0x{ip:x} <- 0x{parent:x}\n").encode()


TEXT = 0xFFFFFFFF81000000


def two_cpu_writer() -> ZoneWriter:
    w = ZoneWriter(X86_64, 64 * KIB, kmsg_size=4 * KIB, ftrace_size=8 * KIB, nr_cpus=2)
    for cpu, stamp, ip in [(0, 1, 0x10), (0, 3, 0x20), (0, 5, 0x30), (0, 5, 0x40),
                           (1, 2, 0x50), (1, 3, 0x60), (1, 5, 0x70), (1, 6, 0x80)]:
        w.ftrace_call(cpu, TEXT + ip, TEXT + 0x100 + ip, stamp)
    return w


def test_two_cpu_ftrace_merge(tmp_path: Path) -> None:
    """Merged by ts >> 8; on equal ts the later CPU zone's record first."""
    w = two_cpu_writer()
    assert [z.size for z in w.zones if z.type is PstoreType.FTRACE] == [4096, 4096]
    path = save(w, tmp_path)
    cfg = StoreConfig(kmsg_size=4, ftrace_size=8, nr_cpus=2, read_only=True)
    with closing(open_store(str(path), cfg)) as store:
        assert isinstance(store, ZoneStore) and store.abi is X86_64
        got = listing(store)
    order = [(0, 1, 0x10), (1, 2, 0x50), (1, 3, 0x60), (0, 3, 0x20), (1, 5, 0x70),
             (0, 5, 0x30), (0, 5, 0x40), (1, 6, 0x80)]
    assert got == {"ftrace-blkoops-0": b"".join(
        ftrace_line(cpu, stamp, TEXT + ip, TEXT + 0x100 + ip) for cpu, stamp, ip in order)}


def test_ftrace_with_a_system_map(tmp_path: Path) -> None:
    system_map = tmp_path / "System.map"
    system_map.write_text(f"{TEXT:x} T _stext\n{TEXT + 0x10:x} T do_one\n"
                          f"{TEXT + 0x20:x} t do_two\n{TEXT + 0x1000:x} T _etext\n")
    path = save(two_cpu_writer(), tmp_path)
    cfg = StoreConfig(kmsg_size=4, ftrace_size=8, nr_cpus=2, read_only=True,
                      system_map=str(system_map))
    with closing(open_store(str(path), cfg)) as store:
        text = listing(store)["ftrace-blkoops-0"].decode().splitlines()
    assert text[0] == ("CPU:0 ts:1 ffffffff81000010  ffffffff81000110  "
                       "do_one <- do_two+0xf0/0xfe0")
    assert text[3] == ("CPU:0 ts:3 ffffffff81000020  ffffffff81000120  "
                       "do_two <- do_two+0x100/0xfe0")


@pytest.mark.parametrize(("abi", "arch"), [(BE32, "mips"), (LE32, "mipsel")], ids=["be", "le"])
def test_ftrace_of_a_32_bit_writer_with_a_sign_extended_map(tmp_path: Path, abi: Abi,
                                                           arch: str) -> None:
    """A MIPS32 System.map lists `ffffffff801291bc`; the records hold `801291d4`."""
    system_map = tmp_path / "System.map"
    system_map.write_text("ffffffff80100000 T _stext\nffffffff801291bc T raise_softirq\n"
                          "ffffffff80129210 T __raise_softirq_irqoff\n"
                          "ffffffff80173ed0 T update_process_times\n"
                          "ffffffff80173f68 t process_timeout\nffffffff806d7f20 T _etext\n")
    w = ZoneWriter(abi, 64 * KIB, kmsg_size=4 * KIB, ftrace_size=4 * KIB)
    w.dmesg(oops_text(1))
    w.ftrace_call(0, 0x801291D4, 0x80173F2C, 2486358)
    path = save(w, tmp_path)
    cfg = StoreConfig(kmsg_size=4, ftrace_size=4, abi=arch, read_only=True,
                      system_map=str(system_map))
    with closing(open_store(str(path), cfg)) as store:
        assert isinstance(store, ZoneStore) and store.abi is abi
        text = listing(store)["ftrace-blkoops-0"]
    assert text == (b"CPU:0 ts:2486358 801291d4  80173f2c  "
                    b"raise_softirq <- update_process_times+0x5c/0x98\n")


def test_system_map_errors(tmp_path: Path) -> None:
    path = save(two_cpu_writer(), tmp_path)
    not_a_map = tmp_path / "notes.txt"
    not_a_map.write_text("hello\n")
    for system_map in (tmp_path / "missing.map", not_a_map):
        with pytest.raises(SourceError):
            open_store(str(path), StoreConfig(kmsg_size=4, ftrace_size=8, nr_cpus=2,
                                              read_only=True, system_map=str(system_map)))


def test_system_map_read_is_capped_whatever_its_size_says(monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    """/proc/kallsyms is a regular file of size 0 that reads megabytes: what is read is
    counted against the cap (lowered here to 64 KiB), not what fstat said."""
    monkeypatch.setattr(symbols, "MAX_SYSTEM_MAP", 64 * KIB)
    assert os.stat("/proc/kallsyms").st_size == 0
    with pytest.raises(SourceError, match=r"more than \d+ MiB read: not a System\.map"):
        symbols.load_system_map("/proc/kallsyms")


def test_two_cpu_ftrace_erase_clears_every_zone(tmp_path: Path) -> None:
    w = two_cpu_writer()
    path = save(w, tmp_path)
    with closing(open_store(str(path), StoreConfig(kmsg_size=4, ftrace_size=8,
                                                   nr_cpus=2))) as store:
        store.erase(store.records[0])
    for ring in w.ftrace:
        ring.erase()
    assert_same_image(path.read_bytes(), bytes(w.image))


def test_two_cpu_ftrace_erase_refused_when_cpu1_changed(tmp_path: Path) -> None:
    w = two_cpu_writer()
    path = save(w, tmp_path)
    with closing(open_store(str(path), StoreConfig(kmsg_size=4, ftrace_size=8,
                                                   nr_cpus=2))) as store:
        record = store.records[0]
        w.ftrace_call(1, TEXT + 0x90, TEXT + 0x190, 7)  # CPU 1 traced on meanwhile
        w.save(path)
        with pytest.raises(ZoneChangedError):
            store.erase(record)
    assert_same_image(path.read_bytes(), bytes(w.image))  # CPU 0 untouched too


def stream(rnd: random.Random, size: int) -> bytes:
    text = "".join(f"[{i:6d}] line {i} of the stream\n" for i in range(size // 20))
    return text.encode()[:size]


def write_in_chunks(ring: Ring, data: bytes, rnd: random.Random) -> None:
    at = 0
    while at < len(data):
        n = rnd.randrange(1, 700)
        ring.write(data[at:at + n])
        at += n


@pytest.mark.parametrize("with_dmesg", [True, False], ids=["dmesg-votes", "ftrace-votes"])
@pytest.mark.parametrize("abi", [X86_64, I386], ids=lambda a: a.name)
def test_wrapped_rings(tmp_path: Path, abi: Abi, with_dmesg: bool) -> None:
    rnd = random.Random(abi.name)
    w = ZoneWriter(abi, 64 * KIB, kmsg_size=8 * KIB, pmsg_size=8 * KIB, console_size=8 * KIB,
                   ftrace_size=8 * KIB)
    size = 8 * KIB - HEADER
    assert w.pmsg is not None and w.console is not None
    pmsg, console = stream(rnd, 25000), stream(rnd, size + 1)
    write_in_chunks(w.pmsg, pmsg, rnd)
    write_in_chunks(w.console, console, rnd)
    width = 2 * abi.long_size
    calls = [(TEXT + 0x10 * i if abi is X86_64 else 0xC1000000 + 0x10 * i,
              (TEXT if abi is X86_64 else 0xC1000000) + 0x8000 + i, 1000 + i) for i in range(700)]
    for ip, parent, stamp in calls:
        w.ftrace_call(0, ip, parent, stamp)
    if with_dmesg:
        w.dmesg(oops_text(1))
    for zone, total in ((0, len(pmsg)), (8 * KIB, len(console)),
                        (16 * KIB, 700 * abi.ftrace_record_size)):
        _sig, datalen, start = struct.unpack_from("<Iii", w.image, zone)
        assert (datalen, start) == (size, total % size)
    path = save(w, tmp_path)
    cfg = StoreConfig(kmsg_size=8, pmsg_size=8, console_size=8, ftrace_size=8, read_only=True)
    with closing(open_store(str(path), cfg)) as store:
        assert isinstance(store, ZoneStore) and store.abi is abi
        got = listing(store)
    kept = size // abi.ftrace_record_size
    want = {"pmsg-blkoops-0": pmsg[-size:], "console-blkoops-0": console[-size:],
            "ftrace-blkoops-0": b"".join(ftrace_line(0, stamp, ip, parent, width)
                                         for ip, parent, stamp in calls[-kept:])}
    if with_dmesg:
        want["dmesg-blkoops-0"] = b"Oops: Total 1 times\n" + oops_text(1)
    assert got == want


def test_ring_exactly_full_then_one_more(tmp_path: Path) -> None:
    w = ZoneWriter(X86_64, 16 * KIB, kmsg_size=4 * KIB, pmsg_size=4 * KIB)
    assert w.pmsg is not None
    data = stream(random.Random(1), 4084)
    w.pmsg.write(data[:1000])
    w.pmsg.write(data[1000:])
    cfg = StoreConfig(kmsg_size=4, pmsg_size=4, read_only=True)
    with closing(open_store(str(save(w, tmp_path, "full.bin")), cfg)) as store:
        assert listing(store) == {"pmsg-blkoops-0": data}
    w.pmsg.write(b"!")
    with closing(open_store(str(save(w, tmp_path, "more.bin")), cfg)) as store:
        assert listing(store) == {"pmsg-blkoops-0": data[1:] + b"!"}


def test_ftrace_size_not_divisible_by_nr_cpus(tmp_path: Path) -> None:
    """64 KiB over 6 CPUs: six 10922-byte zones end at 65532, where dmesg zones start;
    their count still comes from the nominal sizes."""
    w = ZoneWriter(X86_64, 256 * KIB, kmsg_size=8 * KIB, pmsg_size=4 * KIB,
                   ftrace_size=64 * KIB, nr_cpus=6)
    ftrace = [z for z in w.zones if z.type is PstoreType.FTRACE]
    assert [z.size for z in ftrace] == [10922] * 6
    assert w.dmesg_zones[0].offset == 4096 + 65532 and len(w.dmesg_zones) == 23
    assert w.pmsg is not None
    w.pmsg.write(b"hello pmsg\n")
    for cpu in range(6):
        for n in range(3):
            w.ftrace_call(cpu, TEXT + 0x100 * cpu + n, TEXT + 0x8000, 10 * n + cpu)
    w.dmesg(oops_text(1))
    w.dmesg(deflate(oops_text(2)), compressed=True)
    path = save(w, tmp_path)
    cfg = StoreConfig(kmsg_size=8, pmsg_size=4, ftrace_size=64, nr_cpus=6)
    with closing(open_store(str(path), cfg)) as store:
        assert isinstance(store, ZoneStore)
        assert zone_tuples(store.zones) == zone_tuples(w.zones)
        got = listing(store)
        calls = sorted((10 * n + cpu, cpu, n) for cpu in range(6) for n in range(3))
        assert got == {
            "dmesg-blkoops-0": b"Oops: Total 1 times\n" + oops_text(1),
            "dmesg-blkoops-1": oops_text(2),
            "ftrace-blkoops-0": b"".join(ftrace_line(cpu, stamp, TEXT + 0x100 * cpu + n,
                                                     TEXT + 0x8000)
                                         for stamp, cpu, n in calls),
            "pmsg-blkoops-0": b"hello pmsg\n",
        }
        ft = store.find("ftrace-blkoops-0")
        assert ft is not None and len(ft.zones) == 6
        store.erase(ft)
    for ring in w.ftrace:
        ring.erase()
    assert_same_image(path.read_bytes(), bytes(w.image))


class RecordingDevice(Device):
    """A Device that logs its writes and syncs."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.log: list[tuple[str, int, bytes]] = []

    def write(self, offset: int, data: bytes) -> None:
        self.log.append(("write", offset, data))
        super().write(offset, data)

    def sync(self) -> None:
        self.log.append(("sync", 0, b""))
        super().sync()


def test_erase_writes_only_datalen_and_start(tmp_path: Path) -> None:
    """At most the 8 bytes of datalen and start per zone; where they straddle a sector
    (an 18-CPU split puts ftrace zone 9 at 32760, 504 bytes into a sector) datalen is
    written and synced first; dmesg: datalen alone."""
    w = ZoneWriter(X86_64, 128 * KIB, kmsg_size=4 * KIB, ftrace_size=64 * KIB, nr_cpus=18)
    offsets = {z.index: z.offset for z in w.zones if z.type is PstoreType.FTRACE}
    assert (offsets[8], offsets[9], offsets[10]) == (29120, 32760, 36400)
    for cpu in (8, 9, 10):
        for n in range(4):
            w.ftrace_call(cpu, TEXT + 0x10 * n, TEXT + 0x100, 4 * n + cpu)
    w.dmesg(oops_text(1))
    path = save(w, tmp_path)
    device = RecordingDevice(str(path))
    store = ZoneStore(device, Geometry(kmsg_size=4 * KIB, ftrace_size=64 * KIB, nr_cpus=18),
                      name="blkoops")
    with closing(store):
        ftrace = store.find("ftrace-blkoops-0")
        dmesg = store.find("dmesg-blkoops-0")
        assert ftrace is not None and dmesg is not None
        store.erase(ftrace)
        zero4, zero8 = bytes(4), bytes(8)
        assert device.log == [("write", 29124, zero8),
                              ("write", 32764, zero4), ("sync", 0, b""), ("write", 32768, zero4),
                              ("write", 36404, zero8), ("sync", 0, b"")]
        device.log.clear()
        store.erase(dmesg)
        at = w.dmesg_zones[0].offset + 4
        assert device.log == [("write", at, zero4), ("sync", 0, b"")]
    for cpu in (8, 9, 10):
        w.ftrace[cpu].erase()
    w.erase_dmesg(0)
    assert_same_image(path.read_bytes(), bytes(w.image))


# == the body cache ========================================================================
def test_body_cache_is_an_lru_within_budget() -> None:
    o = ITEM_OVERHEAD
    cache = BodyCache(100 + 3 * o)
    cache.put("a", b"a" * 40)
    cache.put("b", b"b" * 40)
    assert cache.get("a") == b"a" * 40  # a is now the most recent
    cache.put("c", b"c" * 40)            # 120 > 100: b goes
    assert cache.get("b") is None
    assert cache.get("a") == b"a" * 40 and cache.get("c") == b"c" * 40
    cache.put("huge", b"h" * (101 + 3 * o - o))  # bigger than the budget: never kept
    assert cache.get("huge") is None and cache.get("a") is not None
    cache.put("a", b"A" * 10)            # replacing frees the old body
    cache.put("d", b"d" * 50)            # 10 + 40 + 50 = 100 fits
    assert [cache.get(k) is not None for k in "acd"] == [True, True, True]
    cache.drop("c")
    cache.drop("never there")
    assert cache.get("c") is None
    cache.put("e", b"e" * 40)            # 10 + 50 + 40: fits after the drop
    assert [cache.get(k) is not None for k in "ade"] == [True, True, True]


@pytest.mark.parametrize("budget", [0, 40_000, 80_000, 1 << 20])
def test_store_cache_stays_within_budget(budget: int) -> None:
    case = case_by_id(KD)
    store = ZoneStore(Device(str(case.image), read_only=True), Geometry(kmsg_size=64 * KIB),
                      name="pstore_blk", cache_budget=budget)
    with closing(store):
        for _ in range(2):
            assert listing(store) == case.files
            cached = [store.read(r, wait=False) for r in store.records]
            assert sum(len(b) for b in cached if b is not None) <= budget
        if budget >= sum(len(b) for b in case.files.values()):
            assert all(b is not None for b in cached)


# == thousands of zones: found from the headers, kept compact ==============================
def many_records(tmp_path: Path, count: int = 4096) -> Path:
    w = ZoneWriter(X86_64, count * 4 * KIB, kmsg_size=4 * KIB)
    for n in range(count):
        w.dmesg(deflate(oops_text(n, 600)), compressed=True)
    return save(w, tmp_path)


def test_zone_list_is_the_kernels_zones(tmp_path: Path) -> None:
    """`Geometry.zones` makes the dmesg zones when asked for: the same zones, in the
    same order, as listing them out."""
    g = Geometry(kmsg_size=8 * KIB, pmsg_size=16 * KIB, console_size=8 * KIB,
                 ftrace_size=8 * KIB, nr_cpus=2)
    zones = g.zones(MIB)
    listed = list(zones)
    assert len(zones) == len(listed) == 4 + (MIB - 32 * KIB) // (8 * KIB)
    assert [z.type for z in listed[:4]] == [PstoreType.PMSG, PstoreType.CONSOLE,
                                             PstoreType.FTRACE, PstoreType.FTRACE]
    dmesg = listed[4:]
    assert all(z.index == i and z.offset == 32 * KIB + i * 8 * KIB and z.size == 8 * KIB
               for i, z in enumerate(dmesg))
    assert zones[-1] == dmesg[-1] and zones[4] == dmesg[0] and zones[1:3] == listed[1:3]
    assert zones.dmesg(7) == dmesg[7]
    with pytest.raises(IndexError):
        zones[len(zones)]


def test_records_are_made_again_equal_and_found_in_log_time(tmp_path: Path) -> None:
    path = many_records(tmp_path)
    with closing(open_store(str(path), StoreConfig(kmsg_size=4, read_only=True))) as store:
        records = store.records
        assert len(records) == 4096
        assert records[17] == records[17] and hash(records[17]) == hash(records[17])
        assert records.index(records[4000]) == 4000 and records[-1] == records[4095]
        assert records[4000] in records
        other = records[5]._replace(snapshot=(bytes(52),))
        assert other not in records
        with pytest.raises(ValueError):
            records.index(other)
        assert store.find("dmesg-blkoops-4095") == records[4095]
        assert store.find("dmesg-blkoops-4096") is None
        assert [r.id for r in records[10:13]] == [10, 11, 12]


def test_memory_grows_by_bytes_per_record_not_by_objects(tmp_path: Path) -> None:
    """What opening keeps is a few dozen bytes per record (its zone index, the header
    bytes erase compares, its size once decoded), not a record's objects (some 500
    bytes): 16,384 records of a 128 MiB partition stay around a megabyte. Decoding them
    all adds only what the fixed-budget cache keeps."""
    path = many_records(tmp_path)
    tracemalloc.start()
    try:
        store = open_store(str(path), StoreConfig(kmsg_size=4, read_only=True))
        opened, _ = tracemalloc.get_traced_memory()
        for record in store.records:
            store.entry(record)
        decoded, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    try:
        per_record = opened / len(store.records)
        assert per_record < 160, f"{per_record:.0f} bytes held per record"
        assert decoded - opened < 2.2 * MIB, "decoded bodies beyond the cache's budget"
        assert {store.entry(r).name for r in store.records} == {
            f"dmesg-blkoops-{n}" for n in range(4096)}
    finally:
        store.close()


def test_a_read_that_an_erase_overlapped_is_read_again(tmp_path: Path) -> None:
    """On flash an erase rewrites a whole erase block, neighbours included: a record
    read while an erase writes is read again, and what the torn read saw is not kept."""
    case = case_by_id("kmsg-deflate-3oops")
    path = tmp_path / "image.bin"
    path.write_bytes(case.image.read_bytes())
    with closing(open_store(str(path), config(case))) as store:
        store.erases_reach_other_records = True  # as on flash (erasesize=)
        record = store.records[1]
        real_read = store.device.read
        reads = []

        def torn(offset: int, size: int) -> bytes:
            reads.append(offset)
            if len(reads) == 1:  # an erase begins and ends while this read runs
                store._erases += 2
                return b"\xff" * size
            return real_read(offset, size)

        store.device.read = torn
        assert store.read(record) == case.files["dmesg-pstore_blk-1"]
        assert len(reads) == 2
        assert store.entry(record).name == "dmesg-pstore_blk-1"


def test_attributes_without_waiting_only_from_what_is_known() -> None:
    """`attributes(wait=False)` never decodes: a compressed record's compressor is
    known only once decoded, so before that it is None; after, the same as waiting."""
    case = case_by_id(KD)
    store = ZoneStore(Device(str(case.image), read_only=True), Geometry(kmsg_size=64 * KIB),
                      name="pstore_blk", cache_budget=0)
    with closing(store):
        compressed = [r for r in store.records if r.compressed]
        assert compressed
        for record in compressed:
            assert store.attributes(record, wait=False) is None
            assert store.read(record, wait=False) is None  # nothing was decoded
            want = store.attributes(record)
            assert want["compressor"] == "deflate"
            assert store.attributes(record, wait=False) == want
