"""The format layer's ftrace text and kallsyms: records parsed, merged across CPUs and
rendered as the kernel renders them, names from a System.map ranked as kallsyms ranks
them; checked against hand-computed text and the kernel's own ftrace files."""

from __future__ import annotations

import gzip
import struct
from functools import cache

import pytest

from helpers.cases import CASES, Case
from helpers.zone_writer import kernel_sizes, layout
from pstorefs.format.abi import I386, LE32_CPUIP3, X86_64, resolve_abi
from pstorefs.format.consts import PSZ_BUFFER_SIZE, PstoreType
from pstorefs.format.ftrace import FtraceRecord, merge_zones, parse_records, render_text
from pstorefs.format.kallsyms import NO_SYMBOLS, SymbolTable
from pstorefs.format.zone import parse_zone_header, ring_unwrap, ring_zone_ok


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
    for zone in layout(len(image), capped=case.capped,
                       **kernel_sizes(case.meta["mount_options"])):
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
