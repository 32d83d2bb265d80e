"""The format layer of pstore/zone: struct layouts per ABI, the kernel's constants,
zone verdicts and rings, checked against hand-computed bytes and the kernel's files."""

from __future__ import annotations

import struct

import pytest

from helpers.cases import CASES, Case
from helpers.zone_writer import kernel_sizes, layout
from pstorefs.errors import FormatError
from pstorefs.format.abi import (
    ABIS,
    BE64,
    I386,
    LE32,
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
    for zone in layout(len(image), capped=case.capped,
                       **kernel_sizes(case.meta["mount_options"])):
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
