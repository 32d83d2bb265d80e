"""Every ABI: the layouts derived from the C rules, the names `abi=` takes, ftrace
decoding and detection, without a store.

Kernel-written images exist for x86_64 and i386 only (tests/format/test_zone.py,
tests/store/test_zone.py); for the others, the writer (pinned to the kernel by
test_writer_rebuilds_fixture on those two) builds the image from the same `Abi`, so
these tests pin the layouts to the table below, which was derived by hand from the C
rules (see format/abi.py). Whole images of every ABI: tests/store/test_zone_abis.py.
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass

import pytest

from helpers.abis import ALL, WANT_ALIASES, calls
from helpers.ftrace import zone_text
from helpers.zone_writer import ftrace_record
from pstorefs.errors import GeometryError, UsageError
from pstorefs.format.abi import (
    ABI_ALIASES,
    ABI_NAMES,
    ABIS,
    BE32,
    BE32_CPUIP1,
    BE32_CPUIP3,
    BE32A4,
    BE64,
    I386,
    LE32,
    LE32_CPUIP1,
    LE32_CPUIP3,
    LE64,
    X86_64,
    Abi,
    ftrace_record_format,
    ftrace_record_struct,
    kmsg_header_format,
    kmsg_header_struct,
    resolve_abi,
    zone_header_format,
    zone_header_struct,
)
from pstorefs.format.abi_detect import detect_abi
from pstorefs.format.consts import PSTORE_KMSG_HEADER_MAGIC, PstoreType, zone_sig
from pstorefs.format.ftrace import FtraceRecord, parse_records
from pstorefs.format.kallsyms import NO_SYMBOLS, SymbolTable
from pstorefs.format.zone import kmsg_layout_fits, parse_kmsg_header


# == layouts ==============================================================================
@dataclass(frozen=True)
class Layout:
    """Offsets worked out by hand from the C rules; (offset, struct format) per field."""

    kmsg_size: int
    tv_sec: int
    tv_nsec: tuple[int, str]
    compressed: int
    counter: int
    reason: int
    ftrace_size: int
    ip: tuple[int, str]
    parent_ip: int
    ts: int


LP64 = Layout(40, 8, (16, "q"), 24, 28, 32, 24, (0, "Q"), 8, 16)
"""timespec64 8-aligned at 8, 8-byte tv_nsec; sizeof 36 rounded to 8; ulong 8."""
ILP32_A8 = Layout(40, 8, (16, "i"), 24, 28, 32, 16, (0, "I"), 4, 8)
"""timespec64 8-aligned at 8, 4-byte tv_nsec then 4 bytes of padding; ulong 4."""
ILP32_A4 = Layout(28, 4, (12, "i"), 16, 20, 24, 16, (0, "I"), 4, 8)
"""timespec64 4-aligned at 4, 12 bytes; sizeof 28; ulong 4."""

LAYOUTS = {
    LE64: LP64, BE64: LP64,
    LE32: ILP32_A8, BE32: ILP32_A8,
    LE32_CPUIP3: ILP32_A8, LE32_CPUIP1: ILP32_A8, BE32_CPUIP3: ILP32_A8, BE32_CPUIP1: ILP32_A8,
    I386: ILP32_A4, BE32A4: ILP32_A4,
}


def order(abi: Abi) -> str:
    return "<" if abi.little_endian else ">"


def test_every_abi_has_a_hand_derived_layout() -> None:
    assert set(LAYOUTS) == set(ALL)
    assert len(ABIS) == 10


KMSG = {"magic": PSTORE_KMSG_HEADER_MAGIC, "tv_sec": 0x0102030405060708,
        "tv_nsec": 999_999_999, "compressed": 1, "counter": 0x80000001, "reason": 2}


@pytest.mark.parametrize("abi", ALL, ids=lambda a: a.name)
def test_kmsg_header_offsets(abi: Abi) -> None:
    want = LAYOUTS[abi]
    s = kmsg_header_struct(abi)
    assert s.sizeof() == abi.kmsg_header_size == want.kmsg_size
    raw = s.build(KMSG)
    fields = {"magic": (0, "I"), "tv_sec": (want.tv_sec, "q"), "tv_nsec": want.tv_nsec,
              "compressed": (want.compressed, "B"), "counter": (want.counter, "I"),
              "reason": (want.reason, "i")}
    rest = bytearray(raw)
    for name, (offset, fmt) in fields.items():
        assert struct.unpack_from(order(abi) + fmt, raw, offset)[0] == KMSG[name], name
        rest[offset:offset + struct.calcsize(fmt)] = bytes(struct.calcsize(fmt))
    assert not any(rest), "C padding must be zero-filled"
    assert parse_kmsg_header(abi, raw, 0).tv_nsec == 999_999_999
    assert kmsg_layout_fits(abi, kmsg_header_struct(abi).build({**KMSG, "tv_sec": 1 << 30}))


@pytest.mark.parametrize("abi", ALL, ids=lambda a: a.name)
def test_ftrace_record_offsets(abi: Abi) -> None:
    want = LAYOUTS[abi]
    s = ftrace_record_struct(abi)
    assert s.sizeof() == abi.ftrace_record_size == want.ftrace_size
    raw = s.build({"ip": 0xC1000ABC, "parent_ip": 0xC2000DEF, "ts": 0x1122334455667788})
    offset, fmt = want.ip
    assert struct.unpack_from(order(abi) + fmt, raw, offset)[0] == 0xC1000ABC
    assert struct.unpack_from(order(abi) + fmt, raw, want.parent_ip)[0] == 0xC2000DEF
    assert struct.unpack_from(order(abi) + "Q", raw, want.ts)[0] == 0x1122334455667788


@pytest.mark.parametrize("abi", ALL, ids=lambda a: a.name)
def test_fast_formats_are_the_construct_layouts(abi: Abi) -> None:
    """The `struct.Struct` each layout is read with is derived from its construct
    definition: the same size, and every field read back from construct's bytes (with
    the padding filled, which must be skipped, not read)."""
    rng = random.Random(abi.name)
    for definition, fast, fields in (
            (zone_header_struct(abi), zone_header_format(abi), ("sig", "datalen", "start")),
            (kmsg_header_struct(abi), kmsg_header_format(abi),
             ("magic", "tv_sec", "tv_nsec", "compressed", "counter", "reason")),
            (ftrace_record_struct(abi), ftrace_record_format(abi), ("ip", "parent_ip", "ts"))):
        assert fast.size == definition.sizeof()
        for _ in range(50):
            raw = bytes(rng.getrandbits(8) for _ in range(fast.size))
            parsed = definition.parse(raw)
            assert fast.unpack(raw) == tuple(parsed[name] for name in fields)


@pytest.mark.parametrize("abi", ALL, ids=lambda a: a.name)
def test_zone_header_follows_the_byte_order(abi: Abi) -> None:
    raw = zone_header_struct(abi).build({"sig": zone_sig(PstoreType.DMESG), "datalen": 0x102,
                                         "start": 3})
    if abi.little_endian:
        assert raw == bytes.fromhex("44424743" "02010000" "03000000")
    else:
        assert raw == bytes.fromhex("43474244" "00000102" "00000003")


# == names ================================================================================
def test_aliases() -> None:
    assert ABI_ALIASES == WANT_ALIASES
    for alias, name in WANT_ALIASES.items():
        assert resolve_abi(alias) is ABIS[name]
    for name, abi in ABIS.items():
        assert resolve_abi(name) is abi and abi.name == name
    assert set(ABI_NAMES) == set(ABIS) | set(WANT_ALIASES)


def test_old_names_stay_importable() -> None:
    assert X86_64 is LE64 and resolve_abi("x86_64") is X86_64
    assert I386.name == "i386" and resolve_abi("i686") is I386


@pytest.mark.parametrize("name", ["sparc", "auto", "", "X86_64", "le32-cpuip2"])
def test_unknown_abi_is_a_usage_error(name: str) -> None:
    with pytest.raises(UsageError) as exc:
        resolve_abi(name)
    message = str(exc.value)
    assert "\n" not in message and f"abi={name}:" in message
    for valid in ("le64", "be32a4", "le32-cpuip1", "x86_64", "armeb"):
        assert valid in message


# == ftrace decoding ==========================================================================
def test_writer_encodes_the_cpu_as_the_kernel_does() -> None:
    assert ftrace_record(LE32, 0xC0001000, 0xC0002000, 1234, 2) == struct.pack(
        "<IIQ", 0xC0001000, 0xC0002000, 1234 << 8 | 2)
    assert ftrace_record(LE32_CPUIP3, 0xC0001000, 0xC0002000, 1234, 2) == struct.pack(
        "<IIQ", 0xC0001002, 0xC0002000, 1234)
    assert ftrace_record(BE32_CPUIP1, 0xC0001002, 0xC0002000, 7, 1) == struct.pack(
        ">IIQ", 0xC0001003, 0xC0002000, 7)
    assert ftrace_record(BE64, 0xFFFFFFFF81000010, 0xFFFFFFFF81000020, 5, 3) == struct.pack(
        ">QQQ", 0xFFFFFFFF81000010, 0xFFFFFFFF81000020, 5 << 8 | 3)
    assert ftrace_record(LE64, 1, 2, 1 << 60, 1) == struct.pack("<QQQ", 1, 2, 1)


def test_cpu_in_ip_text_prints_ip_as_stored() -> None:
    """`CPU:%d` is `ip & PSTORE_CPU_IN_IP`, `ts:%llu` the plain counter, `%08lx` and `%ps`
    take `rec->ip` with the CPU bits still in."""
    table = SymbolTable(["c0000000 T _stext", "c0001000 T do_work", "c0002000 T caller",
                         "c0003000 T _etext"])
    data = struct.pack("<IIQ", 0xC0001003, 0xC0002008, 1234)
    records = parse_records(LE32_CPUIP3, data)
    assert records == [FtraceRecord(0xC0001003, 0xC0002008, 3, 1234)]
    assert zone_text(LE32_CPUIP3, data, table) == (
        b"CPU:3 ts:1234 c0001003  c0002008  do_work <- caller+0x8/0x1000\n")
    assert zone_text(LE32_CPUIP1, data, NO_SYMBOLS) == (
        b"CPU:1 ts:1234 c0001003  c0002008  0xc0001003 <- 0xc0002008\n")
    assert zone_text(LE32, data, NO_SYMBOLS) == (
        b"CPU:210 ts:4 c0001003  c0002008  0xc0001003 <- 0xc0002008\n")


def test_big_endian_32_bit_ftrace_text() -> None:
    data = b"\x99" * 5 + struct.pack(">IIQ", 0xC0001000, 0xC0002000, 77 << 8 | 1)
    records = parse_records(BE32, data)
    assert records == [FtraceRecord(0xC0001000, 0xC0002000, 1, 77)]
    assert zone_text(BE32, data, NO_SYMBOLS) == (
        b"CPU:1 ts:77 c0001000  c0002000  0xc0001000 <- 0xc0002000\n")
    assert parse_records(BE32_CPUIP3, struct.pack(">IIQ", 0xC0001002, 0xC0002000, 77)) == [
        FtraceRecord(0xC0001002, 0xC0002000, 2, 77)]


# == detection ==============================================================================
def header(abi: Abi, *, sec: int = 1_700_000_000, nsec: int = 123_456_789, counter: int = 1,
           reason: int = 2) -> bytes:
    """The bytes after a dmesg zone's header: the dmesg header and some record text."""
    return kmsg_header_struct(abi).build({"magic": PSTORE_KMSG_HEADER_MAGIC, "tv_sec": sec,
                                          "tv_nsec": nsec, "compressed": 0,
                                          "counter": counter, "reason": reason}) + b"Oops#1"


def zones(abi: Abi, count: int = 24, cpus: tuple[int, ...] = (0, 1, 2, 3)) -> list[bytes]:
    """Each CPU's ftrace zone data, as `fpszs[smp_processor_id()]` gets it."""
    out = [b""] * (max(cpus) + 1)
    for cpu, ip, parent, stamp in calls(abi, count, cpus):
        out[cpu] += ftrace_record(abi, ip, parent, stamp, cpu)
    return out


@pytest.mark.parametrize(("abi", "note"), [
    (LE64, "le32, le32-cpuip3, le32-cpuip1 would show the same files: assuming abi=le64"),
    (I386, None),
    (BE64, None),
    (BE32, "be32-cpuip3, be32-cpuip1 would show the same files: assuming abi=be32"),
    (BE32A4, None),
], ids=lambda v: v.name if isinstance(v, Abi) else None)
def test_dmesg_headers_alone(abi: Abi, note: str | None) -> None:
    """LE: le64 and le32 read every dmesg header alike (the 4 bytes after a 4-byte
    tv_nsec are padding, 0). BE: a be32 tv_nsec read as be64's is shifted 32 bits."""
    heads = [header(abi, sec=1_700_000_000 + n, counter=n) for n in range(1, 4)]
    assert detect_abi(little_endian=abi.little_endian, kmsg_headers=heads,
                      ftrace_zones=[]) == (abi, note)


def test_big_endian_headers_with_zero_nanoseconds_are_the_same_for_be64_and_be32() -> None:
    abi, note = detect_abi(little_endian=False, kmsg_headers=[header(BE32, nsec=0)],
                           ftrace_zones=[])
    assert abi is BE64
    assert note == ("be32, be32-cpuip3, be32-cpuip1 would show the same files: "
                    "assuming abi=be64")


@pytest.mark.parametrize("abi", ALL, ids=lambda a: a.name)
def test_dmesg_and_ftrace_name_every_abi(abi: Abi) -> None:
    cpus = (0, 1) if abi.cpu_in_ip_mask == 0x1 else (0, 1, 2, 3)
    assert detect_abi(little_endian=abi.little_endian, kmsg_headers=[header(abi)],
                      ftrace_zones=zones(abi, cpus=cpus)) == (abi, None)


@pytest.mark.parametrize(("abi", "want", "note"), [
    (LE64, LE64, None),
    (I386, I386, "le32 would show the same files: assuming abi=i386"),
    (LE32, I386, "le32 would show the same files: assuming abi=i386"),
    (LE32_CPUIP3, LE32_CPUIP3, None),
    (LE32_CPUIP1, LE32_CPUIP1, None),
    (BE64, BE64, None),
    (BE32, BE32, "be32a4 would show the same files: assuming abi=be32"),
    (BE32_CPUIP3, BE32_CPUIP3, None),
], ids=lambda v: v.name if isinstance(v, Abi) else None)
def test_ftrace_alone(abi: Abi, want: Abi, note: str | None) -> None:
    """Without dmesg headers, i386 and le32 (be32 and be32a4) are the same 16-byte
    records: either shows the same file."""
    cpus = (0, 1) if abi.cpu_in_ip_mask == 0x1 else (0, 1, 2, 3)
    assert detect_abi(little_endian=abi.little_endian, kmsg_headers=[],
                      ftrace_zones=zones(abi, cpus=cpus)) == (want, note)


def test_cpu_in_ip_mask_3_against_1() -> None:
    """CPUs 2 and 3 set ip bit 1 in every record of their zones: only mask 3 has it. On
    CPUs 0 and 1 of ARM code both masks read the same: mask 3 is taken, with a note."""
    assert detect_abi(little_endian=True, kmsg_headers=[],
                      ftrace_zones=zones(LE32_CPUIP3, cpus=(0, 1, 2, 3))) == (LE32_CPUIP3, None)
    assert detect_abi(little_endian=True, kmsg_headers=[],
                      ftrace_zones=zones(LE32_CPUIP3, cpus=(0, 1))) == (
        LE32_CPUIP3, "le32-cpuip1 would show the same files: assuming abi=le32-cpuip3")
    assert detect_abi(little_endian=True, kmsg_headers=[],
                      ftrace_zones=zones(LE32_CPUIP1, cpus=(0, 1))) == (LE32_CPUIP1, None)


def test_shifted_ts_wins_over_an_always_aligned_ip() -> None:
    """With the CPU in `ts`, ARM's 4-byte aligned ip also reads as "CPU in ip": the
    constant low byte of ts over several records is what tells."""
    assert detect_abi(little_endian=True, kmsg_headers=[header(LE32)],
                      ftrace_zones=zones(LE32, cpus=(0,))) == (LE32, None)


def test_no_records_at_all() -> None:
    assert detect_abi(little_endian=True, kmsg_headers=[], ftrace_zones=[]) == (LE64, None)
    assert detect_abi(little_endian=False, kmsg_headers=[], ftrace_zones=[b"", b""]) == (
        BE64, None)


def test_headers_no_abi_reads_do_not_decide() -> None:
    bad = bytearray(header(LE64))
    bad[38] = 1  # tail padding: no kernel leaves it non-zero
    assert detect_abi(little_endian=True, kmsg_headers=[bytes(bad)], ftrace_zones=[]) == (
        LE64, "no dmesg header reads as any ABI's: assuming abi=le64")
    good = [header(LE64), bytes(bad)]
    assert detect_abi(little_endian=True, kmsg_headers=good, ftrace_zones=[])[0] is LE64


@pytest.mark.parametrize(("label", "little", "heads", "ftrace", "names"), [
    ("zero header: 28 or 40 bytes", True,
     [header(LE64, sec=0, nsec=0, counter=0, reason=0)], [], ["le64", "i386"]),
    ("zero header, big-endian", False,
     [header(BE64, sec=0, nsec=0, counter=0, reason=0)], [], ["be64", "be32a4"]),
    ("too few ftrace records for the record size", True,
     [header(LE64)], zones(LE64, count=2, cpus=(0,)), ["le64", "le32", "le32-cpuip3"]),
    ("one record per CPU: CPU in ts or in ip", True,
     [], zones(LE32, count=4), ["le64", "i386", "le32-cpuip3"]),
], ids=lambda v: v if isinstance(v, str) and " " in v else None)
def test_refused_only_where_the_files_would_differ(label: str, little: bool,
                                                   heads: list[bytes], ftrace: list[bytes],
                                                   names: list[str]) -> None:
    with pytest.raises(GeometryError) as exc:
        detect_abi(little_endian=little, kmsg_headers=heads, ftrace_zones=ftrace)
    message = str(exc.value)
    assert "\n" not in message
    for name in names:
        assert f"abi={name}" in message, label
