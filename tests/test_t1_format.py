"""The format layer: struct layouts per ABI, the kernel's constants, zone verdicts, the
ftrace text and kallsyms, checked against hand-computed bytes and the kernel's files."""

from __future__ import annotations

import gzip
import struct
from functools import cache

import pytest
from conftest import CASES, Case
from writer import kernel_sizes, layout

from pstorefs.errors import FormatError
from pstorefs.format.abi import (
    ABIS,
    BE64,
    I386,
    LE32,
    LE32_CPUIP3,
    X86_64,
    Abi,
    ftrace_record_struct,
    kmsg_header_struct,
    resolve_abi,
    zone_header_struct,
)
from pstorefs.format.consts import (
    PSTORE_KMSG_HEADER_MAGIC,
    PSZ_BUFFER_SIZE,
    PSZ_SIG,
    TS_CPU_SHIFT,
    KmsgDumpReason,
    PstoreType,
    ZoneFormat,
    kmsg_dump_reason_str,
    zone_sig,
)
from pstorefs.format.ftrace import FtraceRecord, merge_zones, parse_records, render_text
from pstorefs.format.kallsyms import NO_SYMBOLS, SymbolTable
from pstorefs.format.zone import (
    KmsgHeader,
    ZoneHeader,
    kmsg_layout_fits,
    kmsg_prefix,
    kmsg_zone_ok,
    parse_kmsg_header,
    parse_zone_header,
    ring_unwrap,
    ring_zone_ok,
)

KMSG_VALUES = {"magic": PSTORE_KMSG_HEADER_MAGIC, "tv_sec": 0x0102030405060708,
               "tv_nsec": 999_999_999, "compressed": 1, "counter": 0x80000001, "reason": 2}


# -- struct layouts ----------------------------------------------------------------------
def test_zone_header_is_12_bytes_on_every_abi() -> None:
    for abi in ABIS.values():
        assert zone_header_struct(abi).sizeof() == 12 == PSZ_BUFFER_SIZE


def test_zone_header_bytes() -> None:
    raw = zone_header_struct(X86_64).build({"sig": 0x43474246, "datalen": -5, "start": 7})
    assert raw == bytes.fromhex("46424743" "fbffffff" "07000000")
    assert parse_zone_header(X86_64, raw, 0) == ZoneHeader(0x43474246, -5, 7)
    assert parse_zone_header(I386, raw + b"trailing data", 0) == ZoneHeader(0x43474246, -5, 7)


def test_big_endian_zone_header_starts_with_dbgc() -> None:
    raw = zone_header_struct(BE64).build({"sig": zone_sig(PstoreType.DMESG), "datalen": 0x102,
                                         "start": 0})
    assert raw == b"CGBD" + bytes.fromhex("00000102 00000000")


@pytest.mark.parametrize(("abi", "size", "fields"), [
    (X86_64, 40, {"tv_sec": (8, "<q"), "tv_nsec": (16, "<q"), "compressed": (24, "<B"),
                  "counter": (28, "<I"), "reason": (32, "<i")}),
    (I386, 28, {"tv_sec": (4, "<q"), "tv_nsec": (12, "<i"), "compressed": (16, "<B"),
                "counter": (20, "<I"), "reason": (24, "<i")}),
    (LE32, 40, {"tv_sec": (8, "<q"), "tv_nsec": (16, "<i"), "compressed": (24, "<B"),
                "counter": (28, "<I"), "reason": (32, "<i")}),
], ids=lambda v: v.name if isinstance(v, Abi) else None)
def test_kmsg_header_layout(abi: Abi, size: int, fields: dict[str, tuple[int, str]]) -> None:
    s = kmsg_header_struct(abi)
    assert s.sizeof() == size == abi.kmsg_header_size
    raw = s.build(KMSG_VALUES)
    assert len(raw) == size
    rest = bytearray(raw)
    assert struct.unpack_from("<I", raw, 0)[0] == PSTORE_KMSG_HEADER_MAGIC
    rest[0:4] = bytes(4)
    for name, (offset, fmt) in fields.items():
        assert struct.unpack_from(fmt, raw, offset)[0] == KMSG_VALUES[name], name
        rest[offset:offset + struct.calcsize(fmt)] = bytes(struct.calcsize(fmt))
    assert not any(rest), "C padding must be zero-filled"


def test_kmsg_header_hand_computed_bytes() -> None:
    x86 = bytes.fromhex("e53afc4d 00000000 0807060504030201 ffc99a3b00000000"
                        "01000000 01000080 02000000 00000000")
    i386 = bytes.fromhex("e53afc4d 0807060504030201 ffc99a3b 01000000 01000080 02000000")
    assert kmsg_header_struct(X86_64).build(KMSG_VALUES) == x86
    assert kmsg_header_struct(I386).build(KMSG_VALUES) == i386
    want = KmsgHeader(PSTORE_KMSG_HEADER_MAGIC, 0x0102030405060708, 999_999_999, True,
                      0x80000001, 2)
    assert parse_kmsg_header(X86_64, x86 + b"record text", 12) == want
    assert parse_kmsg_header(I386, i386 + b"record text", 12) == want


@pytest.mark.parametrize(("abi", "size", "ts_at", "ptr"), [
    (X86_64, 24, 16, "<Q"), (I386, 16, 8, "<I"), (LE32, 16, 8, "<I"),
], ids=["x86_64", "i386", "arm"])
def test_ftrace_record_layout(abi: Abi, size: int, ts_at: int, ptr: str) -> None:
    s = ftrace_record_struct(abi)
    assert s.sizeof() == size == abi.ftrace_record_size
    raw = s.build({"ip": 0xC1000ABC, "parent_ip": 0xC2000DEF, "ts": 0x1122334455667788})
    assert len(raw) == size
    assert struct.unpack_from(ptr, raw, 0)[0] == 0xC1000ABC
    assert struct.unpack_from(ptr, raw, struct.calcsize(ptr))[0] == 0xC2000DEF
    assert struct.unpack_from("<Q", raw, ts_at)[0] == 0x1122334455667788


def test_short_zone_header_is_a_format_error() -> None:
    """`parse` promises a FormatError naming the struct and offset for bytes that do
    not parse."""
    with pytest.raises(FormatError) as exc:
        parse_zone_header(X86_64, b"\0" * 5, 0x40)
    assert exc.value.offset == 0x40
    assert str(exc.value) == "zone header at offset 0x40 is not valid"


def test_short_kmsg_header_is_a_format_error() -> None:
    with pytest.raises(FormatError) as exc:
        parse_kmsg_header(X86_64, b"\0" * 39, 0x1000C)
    assert exc.value.offset == 0x1000C
    assert parse_kmsg_header(I386, b"\0" * 28, 0).magic == 0


def test_kmsg_time_ns() -> None:
    def header(sec: int, nsec: int) -> KmsgHeader:
        return KmsgHeader(PSTORE_KMSG_HEADER_MAGIC, sec, nsec, False, 1, 2)

    assert header(0, 123).time_ns is None  # inode.c keeps the mount time
    assert header(1795395980, 892335000).time_ns == 1795395980892335000
    assert header(-1, 5).time_ns == -999_999_995
    assert header(1 << 62, 0).time_ns == (1 << 63) - 1
    assert header(-(1 << 62), 0).time_ns == -(1 << 63)


# -- constants -----------------------------------------------------------------------------
def test_kernel_constants() -> None:
    assert PSZ_SIG == 0x43474244
    assert PSTORE_KMSG_HEADER_MAGIC == 0x4DFC3AE5
    assert TS_CPU_SHIFT == 8
    assert struct.pack("<I", PSZ_SIG) == b"DBGC"
    assert zone_sig(PstoreType.DMESG) == 0x43474244
    assert zone_sig(PstoreType.CONSOLE) == 0x43474246
    assert zone_sig(PstoreType.FTRACE) == 0x43474247
    assert zone_sig(PstoreType.PMSG) == 0x43474243


def test_pstore_types_and_names() -> None:
    want = {0: "dmesg", 1: "mce", 2: "console", 3: "ftrace", 4: "rtas", 5: "powerpc-ofw",
            6: "powerpc-common", 7: "pmsg", 8: "powerpc-opal"}
    assert {int(t): t.file_prefix for t in PstoreType} == want


@pytest.mark.parametrize(("reason", "text"), [
    (0, "Unknown"), (1, "Panic"), (2, "Oops"), (3, "Emergency"), (4, "Shutdown"),
    (5, "Unknown"), (99, "Unknown"), (-1, "Unknown"),
])
def test_reason_strings(reason: int, text: str) -> None:
    assert kmsg_dump_reason_str(reason) == text


def test_reason_enum_is_the_58_one() -> None:
    assert [(r.name, int(r)) for r in KmsgDumpReason] == [
        ("UNDEF", 0), ("PANIC", 1), ("OOPS", 2), ("EMERG", 3), ("SHUTDOWN", 4)]


@pytest.mark.parametrize(("reason", "counter", "line"), [
    (2, 3, b"Oops: Total 3 times\n"),
    (1, 16, b"Panic: Total 16 times\n"),
    (4, 0, b"Shutdown: Total 0 times\n"),
    (3, 1, b"Emergency: Total 1 times\n"),
    (99, 7, b"Unknown: Total 7 times\n"),
    (2, (1 << 31) - 1, b"Oops: Total 2147483647 times\n"),
    (2, 1 << 31, b"Oops: Total -2147483648 times\n"),
    (1, (1 << 32) - 1, b"Panic: Total -1 times\n"),
])
def test_kmsg_prefix_prints_counter_as_signed(reason: int, counter: int, line: bytes) -> None:
    kmsg = KmsgHeader(PSTORE_KMSG_HEADER_MAGIC, 1, 0, False, counter, reason)
    assert kmsg_prefix(kmsg, ZoneFormat.ZONE, b"") == line


# -- verdicts and rings --------------------------------------------------------------------
CONSOLE_SIG = 0x43474246


@pytest.mark.parametrize(("sig", "datalen", "start", "ok"), [
    (CONSOLE_SIG, 10, 10, True),
    (CONSOLE_SIG, 100, 0, True),
    (CONSOLE_SIG, 100, 37, True),
    (CONSOLE_SIG, 100, 100, True),
    (0x43474244, 10, 10, False),     # a dmesg zone's signature
    (CONSOLE_SIG, 0, 0, False),      # erased
    (CONSOLE_SIG, 101, 0, False),    # overtop
    (CONSOLE_SIG, -1, 0, False),     # negative: overtop for the kernel's unsigned compare
    (CONSOLE_SIG, 100, 101, False),  # start overtop
    (CONSOLE_SIG, 100, -3, False),
    (CONSOLE_SIG, 10, 20, False),    # start past datalen: the kernel's recovery would fail
])
def test_ring_zone_verdict(sig: int, datalen: int, start: int, ok: bool) -> None:
    assert ring_zone_ok(ZoneHeader(sig, datalen, start), PstoreType.CONSOLE, 100) is ok


@pytest.mark.parametrize(("sig", "datalen", "magic", "ok"), [
    (0x43474244, 40, PSTORE_KMSG_HEADER_MAGIC, True),
    (0x43474244, 1000, PSTORE_KMSG_HEADER_MAGIC, True),
    (0x43474244, 39, PSTORE_KMSG_HEADER_MAGIC, False),
    (0x43474244, 1001, PSTORE_KMSG_HEADER_MAGIC, False),
    (0x43474244, 0, PSTORE_KMSG_HEADER_MAGIC, False),
    (0x43474244, -40, PSTORE_KMSG_HEADER_MAGIC, False),
    (0x43474244, 500, 0x12345678, False),
    (0x43474243, 500, PSTORE_KMSG_HEADER_MAGIC, False),
])
def test_kmsg_zone_verdict(sig: int, datalen: int, magic: int, ok: bool) -> None:
    assert kmsg_zone_ok(ZoneHeader(sig, datalen, 0), magic, X86_64, 1000) is ok


@pytest.mark.parametrize(("start", "datalen", "want"), [
    (3, 10, b"3456789012"),
    (4, 4, b"0123"),
    (10, 10, b"0123456789"),
    (0, 10, b"0123456789"),
    (9, 10, b"9012345678"),
])
def test_ring_unwrap(start: int, datalen: int, want: bytes) -> None:
    assert ring_unwrap(b"0123456789", ZoneHeader(CONSOLE_SIG, datalen, start)) == want


# -- kmsg_layout_fits on the kernel's own dmesg zones -----------------------------------
def dmesg_zone_heads(case: Case) -> list[bytes]:
    """The 52 bytes after the zone header of every written dmesg zone of a case."""
    image = case.image.read_bytes()
    heads = []
    for zone in layout(len(image), **kernel_sizes(case.meta["mount_options"])):
        raw = image[zone.offset:zone.offset + 64]
        sig, datalen = struct.unpack_from("<Ii", raw)
        if zone.type is PstoreType.DMESG and sig == PSZ_SIG and datalen > 0:
            heads.append(raw[PSZ_BUFFER_SIZE:])
    return heads


def test_kmsg_layout_fits_tells_i386_from_x86_64() -> None:
    checked = {"x86_64": 0, "i386": 0}
    for case in CASES:
        own = resolve_abi(case.meta["arch"])
        other = I386 if own is X86_64 else X86_64
        for head in dmesg_zone_heads(case):
            assert kmsg_layout_fits(own, head), case.id
            assert not kmsg_layout_fits(other, head), case.id
            checked[case.meta["arch"]] += 1
    assert checked["x86_64"] >= 10 and checked["i386"] >= 2


def test_fixture_dmesg_headers_carry_the_kernels_mtime() -> None:
    for case in CASES:
        abi = resolve_abi(case.meta["arch"])
        mtimes = sorted(f["mtime_ns"] for f in case.meta["files"]
                        if f["name"].startswith("dmesg-"))
        times = sorted(parse_kmsg_header(abi, head, 0).time_ns or 0
                       for head in dmesg_zone_heads(case))
        assert times == mtimes, case.id


def good_x86_head() -> bytes:
    return kmsg_header_struct(X86_64).build({**KMSG_VALUES, "tv_sec": 1795395980})


@pytest.mark.parametrize(("what", "offset", "value"), [
    ("padding after magic", 4, b"\1"),
    ("tail padding", 38, b"\1"),
    ("padding after compressed", 25, b"\1"),
    ("compressed neither 0 nor 1", 24, b"\2"),
    ("tv_nsec of a whole second", 16, struct.pack("<q", 1_000_000_000)),
    ("bad magic", 0, b"\0"),
])
def test_kmsg_layout_fits_rejects(what: str, offset: int, value: bytes) -> None:
    head = bytearray(good_x86_head())
    assert kmsg_layout_fits(X86_64, bytes(head))
    head[offset:offset + len(value)] = value
    assert not kmsg_layout_fits(X86_64, bytes(head)), what


def test_kmsg_layout_fits_needs_the_whole_header() -> None:
    assert not kmsg_layout_fits(X86_64, good_x86_head()[:39])


# -- ftrace --------------------------------------------------------------------------------
def x86_record(ip: int, parent: int, stamp: int, cpu: int) -> bytes:
    return struct.pack("<QQQ", ip, parent, stamp << 8 | cpu)


def test_parse_records_drops_the_partial_first_record() -> None:
    data = b"\xaa" * 5 + x86_record(0x10, 0x20, 7, 1) + x86_record(0x30, 0x40, 9, 0)
    assert parse_records(X86_64, data) == [FtraceRecord(0x10, 0x20, 1, 7),
                                           FtraceRecord(0x30, 0x40, 0, 9)]
    i386 = b"\xbb" * 3 + struct.pack("<IIQ", 0xC1000000, 0xC1000010, 5 << 8 | 2)
    assert parse_records(I386, i386) == [FtraceRecord(0xC1000000, 0xC1000010, 2, 5)]
    assert parse_records(X86_64, b"\0" * 23) == []


def test_parse_records_cpu_in_ip() -> None:
    data = struct.pack("<IIQ", 0xC0001002, 0xC0002000, 1234)
    assert parse_records(LE32_CPUIP3, data) == [FtraceRecord(0xC0001002, 0xC0002000, 2, 1234)]


def rec(cpu: int, stamp: int, ip: int = 0) -> FtraceRecord:
    return FtraceRecord(ip or 0x1000 + stamp, 0x2000, cpu, stamp)


def test_merge_later_zone_first_on_equal_timestamps() -> None:
    cpu0 = [rec(0, 1), rec(0, 3), rec(0, 5, 0xA), rec(0, 5, 0xB)]
    cpu1 = [rec(1, 2), rec(1, 3), rec(1, 5), rec(1, 6)]
    got = [(r.cpu, r.timestamp, r.ip) for r in merge_zones([cpu0, cpu1])]
    assert got == [(0, 1, 0x1001), (1, 2, 0x1002), (1, 3, 0x1003), (0, 3, 0x1003),
                   (1, 5, 0x1005), (0, 5, 0xA), (0, 5, 0xB), (1, 6, 0x1006)]
    three = merge_zones([[rec(0, 4)], [rec(1, 4)], [rec(2, 4)]])
    assert [r.cpu for r in three] == [2, 1, 0]
    assert merge_zones([]) == []
    assert merge_zones([[], cpu1]) == cpu1


def test_render_text_without_symbols() -> None:
    records = [FtraceRecord(0xC1000ABC, 0x1234, 0, 17),
               FtraceRecord(0xFFFFFFFF8106D63F, 0xFFFFFFFF81064E00, 3, 2486358)]
    assert render_text(records, NO_SYMBOLS) == (
        b"CPU:0 ts:17 c1000abc  00001234  0xc1000abc <- 0x1234\n"
        b"CPU:3 ts:2486358 ffffffff8106d63f  ffffffff81064e00  "
        b"0xffffffff8106d63f <- 0xffffffff81064e00\n")
    assert render_text([], NO_SYMBOLS) == b""


# -- the kernel's ftrace text, from the fixture's image and System.map ---------------------
FTRACE_CASES = [c for c in CASES if c.meta.get("system_map")]


@cache
def system_map(case_id: str) -> SymbolTable:
    case = next(c for c in FTRACE_CASES if c.id == case_id)
    with gzip.open(case.dir / case.meta["system_map"], "rt", encoding="ascii") as fh:
        return SymbolTable(fh)


def fixture_ftrace_records(case: Case) -> list[FtraceRecord]:
    """The merged ftrace records of image.bin, read with the format layer alone."""
    abi = resolve_abi(case.meta["arch"])
    image = case.image.read_bytes()
    zones = []
    for zone in layout(len(image), **kernel_sizes(case.meta["mount_options"])):
        if zone.type is not PstoreType.FTRACE:
            continue
        header = parse_zone_header(abi, image[zone.offset:], zone.offset)
        assert ring_zone_ok(header, PstoreType.FTRACE, zone.size - PSZ_BUFFER_SIZE)
        data = image[zone.offset + PSZ_BUFFER_SIZE:zone.offset + zone.size]
        zones.append(parse_records(abi, ring_unwrap(data, header)))
    return merge_zones(zones)


@pytest.mark.parametrize("case", FTRACE_CASES, ids=lambda c: c.id)
def test_ftrace_text_is_the_kernels(case: Case) -> None:
    kernel = case.files["ftrace-pstore_blk-0"]
    assert render_text(fixture_ftrace_records(case), system_map(case.id)) == kernel


@pytest.mark.parametrize("case", FTRACE_CASES, ids=lambda c: c.id)
def test_ftrace_text_without_symbols_falls_back_to_addresses(case: Case) -> None:
    kernel = case.files["ftrace-pstore_blk-0"].decode().splitlines()
    ours = render_text(fixture_ftrace_records(case), NO_SYMBOLS).decode().splitlines()
    assert len(ours) == len(kernel)
    for k, o in zip(kernel, ours, strict=True):
        fixed, _, _names = k.partition("  ")[2].partition("  ")
        head = k.partition("  ")[0] + "  " + fixed + "  "
        assert o.startswith(head)
        ip, parent = head.split()[2:4]
        assert o == f"{head}0x{int(ip, 16):x} <- 0x{int(parent, 16):x}"


def test_fixture_map_ranks_aliases_like_kallsyms() -> None:
    table = system_map("x86_64-all-fronts")
    # __lock_text_start (linker-provided) shares the address of _raw_spin_lock
    assert table.name(0xFFFFFFFF81253238) == "_raw_spin_lock"
    assert table.name_offset(0xFFFFFFFF8125323C) == "_raw_spin_lock+0x4/0xa"
    # _stext, _text and startup_64: fewest leading underscores
    assert table.name(0xFFFFFFFF81000000) == "startup_64"
    # _etext ends the text: addresses from there on have no name
    assert table.name(0xFFFFFFFF81600980) == "0xffffffff81600980"
    assert table.lookup(0xFFFFFFFF81600980) is None


# -- kallsyms on tiny maps -----------------------------------------------------------------
TINY_MAP = """\
ffffffff81000000 T _stext
ffffffff81000000 T _text
ffffffff81000000 T startup_64
ffffffff81000100 W weak_first
ffffffff81000100 T strong_second
ffffffff81000200 T __lock_text_start
ffffffff81000200 T _raw_spin_lock
ffffffff81000300 T __start_thing
ffffffff81000300 w weakling
ffffffff81000400 T ___three
ffffffff81000400 T __end_of_section
ffffffff81000500 t __two
ffffffff81000500 t _one
ffffffff81000600 T first_in_map
ffffffff81000600 T second_in_map
ffffffff81000700 T __irqentry_text_end
ffffffff81000700 t __x
ffffffff81000900 T last_text
ffffffff81000a00 T _etext
ffffffff81000a00 T __static_call_text_end
ffffffff82000000 T _sinittext
ffffffff82000000 T x86_64_start_kernel
ffffffff82000040 t init_tail
ffffffff82000080 T _einittext
ffffffff82000080 t after_init
garbage line
zzzz T not_hex
""".splitlines()


@pytest.fixture(scope="module")
def tiny() -> SymbolTable:
    return SymbolTable(TINY_MAP)


@pytest.mark.parametrize(("address", "name"), [
    (0xFFFFFFFF81000000, "startup_64"),     # fewer leading underscores than _stext, _text
    (0xFFFFFFFF81000100, "strong_second"),  # non-weak before weak, whatever the map order
    (0xFFFFFFFF81000200, "_raw_spin_lock"),  # not a linker-script name (__*_start)
    (0xFFFFFFFF81000300, "__start_thing"),  # weakness ranks before linker-provided
    (0xFFFFFFFF81000400, "___three"),       # linker-provided (__end_*) before underscores
    (0xFFFFFFFF81000500, "_one"),           # fewer underscores
    (0xFFFFFFFF81000600, "first_in_map"),   # all else equal: map order
    (0xFFFFFFFF81000700, "__x"),            # __x is too short to be a linker name
    (0xFFFFFFFF82000000, "x86_64_start_kernel"),
])
def test_alias_ranking(tiny: SymbolTable, address: int, name: str) -> None:
    assert tiny.name(address) == name


@pytest.mark.parametrize(("address", "text"), [
    (0xFFFFFFFF81000105, "strong_second+0x5/0x100"),
    (0xFFFFFFFF81000100, "strong_second+0x0/0x100"),
    (0xFFFFFFFF810009FF, "last_text+0xff/0x100"),        # the last symbol ends at _etext
    (0xFFFFFFFF82000050, "init_tail+0x10/0x40"),          # ... or at _einittext
    (0xFFFFFFFF810008FF, "__x+0x1ff/0x200"),              # the size runs to the next name
    (0xFFFFFFFF81000A00, "0xffffffff81000a00"),           # _etext itself is outside
    (0xFFFFFFFF80FFFFFF, "0xffffffff80ffffff"),           # below _stext
    (0xFFFFFFFF81800000, "0xffffffff81800000"),           # between text and inittext
    (0xFFFFFFFF82000080, "0xffffffff82000080"),           # _einittext and after_init
    (0xFFFFFFFFC0001234, "0xffffffffc0001234"),           # a module address
])
def test_name_offset(tiny: SymbolTable, address: int, text: str) -> None:
    assert tiny.name_offset(address) == text
    if text.startswith("0x"):
        assert tiny.name(address) == text
        assert tiny.lookup(address) is None


def test_symbol_sharing_the_end_address_is_dropped(tiny: SymbolTable) -> None:
    """`__static_call_text_end` sits at _etext: kallsyms keeps only the marker."""
    assert tiny.lookup(0xFFFFFFFF810009FF).size == 0x100  # type: ignore[union-attr]
    names = {tiny.name(a) for a in range(0xFFFFFFFF81000000, 0xFFFFFFFF81000A00, 0x80)}
    assert "__static_call_text_end" not in names and "after_init" not in names


def test_no_symbols_prints_addresses() -> None:
    assert len(NO_SYMBOLS) == 0
    assert NO_SYMBOLS.name(0xFFFFFFFF81000000) == "0xffffffff81000000"
    assert NO_SYMBOLS.name_offset(0xC1000000) == "0xc1000000"


def test_map_without_text_range_names_nothing() -> None:
    table = SymbolTable(["ffffffff81000000 T foo", "ffffffff81000100 T bar"])
    assert len(table) == 0
    assert table.name(0xFFFFFFFF81000010) == "0xffffffff81000010"
