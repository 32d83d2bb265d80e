"""The format layer's ftrace text and kallsyms: records parsed, merged across CPUs and
rendered as the kernel renders them, names from a System.map ranked as kallsyms ranks
them; checked against hand-computed text and the kernel's own ftrace files."""

from __future__ import annotations

import gzip
import struct
from functools import cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers.abis import ALL
from helpers.cases import CASES, Case
from helpers.ftrace import kernel_combine, render_records
from helpers.zone_writer import ftrace_record, kernel_sizes, layout
from pstorefs.format.abi import (
    I386,
    LE32,
    LE32_CPUIP3,
    X86_64,
    Abi,
    ftrace_record_format,
    resolve_abi,
)
from pstorefs.format.consts import PSZ_BUFFER_SIZE, PstoreType
from pstorefs.format.ftrace import (
    FtraceRecord,
    Names,
    Records,
    merge_zones,
    parse_records,
    render,
    text_length,
)
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
    assert render_records(records, NO_SYMBOLS, X86_64) == (
        b"CPU:0 ts:17 c1000abc  00001234  0xc1000abc <- 0x1234\n"
        b"CPU:3 ts:2486358 ffffffff8106d63f  ffffffff81064e00  "
        b"0xffffffff8106d63f <- 0xffffffff81064e00\n")
    assert render_records([], NO_SYMBOLS, X86_64) == b""


stamps = st.integers(0, 40)  # few values: equal timestamps, and blocks, are common


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(stamps, max_size=12), max_size=5))
def test_merge_is_the_kernels_on_any_order(zones: list[list[int]]) -> None:
    """Sorting by merge keys gives `pstore_ftrace_combine_log`'s order for zones whose
    timestamps are out of order too (racing CPUs step the counter back)."""
    records = [[FtraceRecord(0x1000 * cpu + i, 0, cpu, ts) for i, ts in enumerate(zone)]
               for cpu, zone in enumerate(zones)]
    assert merge_zones(records) == kernel_combine(records)


SYMBOLS = SymbolTable(["c0000000 T _stext", "c0001000 T do_work", "c0002000 T caller",
                       "ffffffff81000000 T startup_64", "ffffffff81000400 T fn",
                       "ffffffff81001000 T _etext"])


def addresses(abi: Abi) -> st.SearchStrategy[int]:
    top = (1 << 8 * abi.long_size) - 1
    return st.one_of(st.integers(0, top), st.integers(top - (1 << 26), top),
                     st.integers(0xC0000000, 0xC0003000), st.integers(0, 0xFFFF))


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_columns_render_and_count_as_records_do(data: st.DataObject) -> None:
    """`decode_columns` decodes as `parse_records`, `render` prints the kernel's line
    of each (the fixtures pin the line), and `text_length` counts exactly what
    `render` prints, for every ABI, with and without symbols."""
    abi = data.draw(st.sampled_from(ALL))
    calls = data.draw(st.lists(st.tuples(addresses(abi), addresses(abi),
                                         st.integers(0, (1 << 56) - 1), st.integers(0, 255)),
                               max_size=20))
    blob = b"".join(ftrace_record(abi, ip, parent, stamp, cpu & (abi.cpu_in_ip_mask or 255))
                    for ip, parent, stamp, cpu in calls)
    records = parse_records(abi, blob)
    columns = Records(abi, blob)
    assert list(columns.ips) == [r.ip for r in records]
    assert list(columns.cpus) == [r.cpu for r in records]
    assert list(columns.stamps) == [r.timestamp for r in records]
    for table in (NO_SYMBOLS, SYMBOLS):
        names = Names(table)
        text = render(columns, names)
        assert text_length(columns, names) == len(text)
        assert text.decode().splitlines() == [
            f"CPU:{r.cpu} ts:{r.timestamp} {r.ip:08x}  {r.parent_ip:08x}  "
            f"{table.name(r.ip)} <- {table.name_offset(r.parent_ip)}" for r in records]
    assert ftrace_record_format(abi).size * len(records) == len(blob)


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
    abi = resolve_abi(case.meta["arch"])
    assert render_records(fixture_ftrace_records(case), system_map(case.id), abi) == kernel


@pytest.mark.parametrize("case", FTRACE_CASES, ids=lambda c: c.id)
def test_ftrace_text_without_symbols_falls_back_to_addresses(case: Case) -> None:
    kernel = case.files["ftrace-pstore_blk-0"].decode().splitlines()
    abi = resolve_abi(case.meta["arch"])
    ours = render_records(fixture_ftrace_records(case), NO_SYMBOLS, abi).decode().splitlines()
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


# -- 32-bit writers: the map's digits do not decide, the writer's word does ---------------
MIPS32_MAP = """\
8f1c2a0b A __crc_raise_softirq
ffffffff80100000 T __split_text_end
ffffffff80100000 T __split_text_start
ffffffff80100000 T _stext
ffffffff80100000 T _text
ffffffff80100000 t run_init_process
ffffffff80100138 t try_to_run_init_process
ffffffff80129150 T raise_softirq_irqoff
ffffffff801291bc T raise_softirq
ffffffff80129210 T __raise_softirq_irqoff
ffffffff80129268 T open_softirq
ffffffff80173e20 T run_local_timers
ffffffff80173ed0 T update_process_times
ffffffff80173f68 t process_timeout
ffffffff80173f70 T schedule_timeout
ffffffff806d7f20 T _etext
ffffffff80760000 T __init_begin
ffffffff80760000 T _sinittext
ffffffff80760000 T start_kernel
ffffffff80798a2c T _einittext
ffffffff807a0000 D _sdata
ffffffff807e5c40 b softirq_vec
ffffffff808b1000 B _end
""".splitlines()
"""A 32-bit MIPS kernel's System.map: binutils keeps MIPS32 addresses sign-extended
(elf32-mips.c `elf_backend_sign_extend_vma`) and nm prints all 64 bits, as on the
RTL9300 (MIPS32) map quoted on linux-mips (2024-11)."""

ARM_MAP = """\
c0004000 A swapper_pg_dir
c0008000 T _text
c0008000 T stext
c0100000 T __exception_text_start
c0100000 T _stext
c0100000 T asm_do_IRQ
c012a050 T raise_softirq_irqoff
c012a0c8 T raise_softirq
c012a118 T __raise_softirq_irqoff
c01b6e70 T update_process_times
c01b6f00 t process_timeout
c01b6f08 T schedule_timeout
c0900000 T _etext
c0b00000 T __init_begin
c0b00000 T _sinittext
c0b3f1a0 T _einittext
c0c00000 D _sdata
""".splitlines()
"""A 32-bit arm kernel's System.map: 8 digits (elf32-arm does not sign-extend); i386's
(the fixture's) and ppc32's look the same."""


def test_sign_extended_mips32_map_names_32_bit_records() -> None:
    """The kernel printed `raise_softirq <- update_process_times+0x5c/0x98` for records
    holding `0x801291d4`, `0x80173f2c` (its `unsigned long`s)."""
    table = SymbolTable(MIPS32_MAP)
    records = [FtraceRecord(0x801291D4, 0x80173F2C, 0, 2486358),
               FtraceRecord(0x80760010, 0xC0001234, 1, 2486359)]  # init text; a module
    assert render_records(records, table.within(32), LE32) == (
        b"CPU:0 ts:2486358 801291d4  80173f2c  raise_softirq <- update_process_times+0x5c/0x98\n"
        b"CPU:1 ts:2486359 80760010  c0001234  start_kernel <- 0xc0001234\n")
    assert render_records(records, table, LE32) == (  # without the word size: what issue 17 saw
        b"CPU:0 ts:2486358 801291d4  80173f2c  0x801291d4 <- 0x80173f2c\n"
        b"CPU:1 ts:2486359 80760010  c0001234  0x80760010 <- 0xc0001234\n")
    assert table.within(64) is table
    narrow = table.within(32)
    assert len(narrow) == len(table)
    assert narrow.lookup(0x806D7F1F).name == "schedule_timeout"  # type: ignore[union-attr]
    assert narrow.lookup(0x806D7F20) is None  # _etext: outside, as before


def test_unextended_32_bit_map_is_kept_as_is() -> None:
    table = SymbolTable(ARM_MAP)
    assert table.within(32) is table
    records = [FtraceRecord(0xC012A0DC, 0xC01B6EA4, 0, 77)]
    assert render_records(records, table.within(32), LE32) == (
        b"CPU:0 ts:77 c012a0dc  c01b6ea4  raise_softirq <- update_process_times+0x34/0x90\n")
