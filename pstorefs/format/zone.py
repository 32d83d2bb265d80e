"""Parsing pstore/zone headers and the kernel's verdict on each zone (fs/pstore/zone.c)."""

from __future__ import annotations

import re
import struct as python_struct
from collections.abc import Sequence
from functools import cache
from typing import NamedTuple

from construct import ConstructError, Struct

from pstorefs.errors import FormatError
from pstorefs.format.abi import (
    Abi,
    byte_order_abi,
    field_format,
    field_span,
    kmsg_header_format,
    kmsg_header_struct,
    offsetof,
    zone_header_format,
    zone_header_struct,
)
from pstorefs.format.consts import (
    BLKZ_BUFFER_SIZE,
    PSTORE_KMSG_HEADER_MAGIC,
    PSZ_BUFFER_SIZE,
    KmsgDumpReason,
    PstoreType,
    ZoneFormat,
    reason_name,
    timespec_ns,
    zone_sig,
)


def parse(struct: Struct, buf: bytes, offset: int, what: str) -> object:
    """The one entry point for parsing: a ConstructError (or, from a compiled struct,
    a struct.error on short input) becomes a FormatError naming the struct and offset."""
    if len(buf) < struct.sizeof():
        raise FormatError(what, offset)
    try:
        return struct.parse(buf)
    except (ConstructError, python_struct.error) as exc:
        raise FormatError(what, offset) from exc


class ZoneHeader(NamedTuple):
    """`struct psz_buffer` as read from a zone. (Named tuples here: one of each is read
    per zone, thousands of them.)"""

    sig: int
    datalen: int
    start: int


class KmsgHeader(NamedTuple):
    """`struct psz_kmsg_header` as read after a dmesg zone's header."""

    magic: int
    tv_sec: int
    tv_nsec: int
    compressed: bool
    counter: int
    reason: int

    @property
    def time_ns(self) -> int | None:
        return timespec_ns(self.tv_sec, self.tv_nsec)


RING_AND_DMESG_TYPES = (PstoreType.DMESG, PstoreType.CONSOLE, PstoreType.FTRACE,
                        PstoreType.PMSG)
"""The types pstore/zone writes zones of."""

SIGNATURE = re.compile(b"|".join(
    re.escape(zone_sig(ptype).to_bytes(4, order))
    for ptype in RING_AND_DMESG_TYPES for order in ("little", "big")))
"""Any zone's `sig` as the bytes a writer of either byte order leaves (`DBGC`...,
`CGBD`...)."""

SIGNATURE_SIZE = 4
"""Bytes of `sig`, which opens every zone header."""

_SIGNATURES = {ptype: frozenset(zone_sig(ptype).to_bytes(SIGNATURE_SIZE, order)
                                for order in ("little", "big"))
               for ptype in RING_AND_DMESG_TYPES}


def opens_with_signature(raw: bytes, ptype: PstoreType) -> bool:
    """Whether `raw` starts with the `sig` of a `ptype` zone, in either byte order: the
    first thing every verdict on a zone asks, before the byte order is known."""
    return raw[:SIGNATURE_SIZE] in _SIGNATURES[ptype]


_SIGNATURE_TYPES = {sig: ptype for ptype, sigs in _SIGNATURES.items() for sig in sigs}


def signature_type(raw: bytes) -> PstoreType | None:
    """The type of zone whose `sig` opens `raw` (either byte order), if any."""
    return _SIGNATURE_TYPES.get(raw[:SIGNATURE_SIZE])

HEADER_PROBE = PSZ_BUFFER_SIZE + 4
"""Bytes that show a zone header found anywhere for what it is: the header, and the
dmesg header's `magic` after either format's zone header (at +8 or +12)."""


def sig_word(raw: bytes) -> bytes:
    """The bytes of the `sig` that opens a zone header, in whatever byte order."""
    at, size = field_span(zone_header_struct(byte_order_abi(True)), "sig")
    return raw[at:at + size]


class FoundHeader(NamedTuple):
    """A zone header found by its signature, before anything says where zones are."""

    little_endian: bool
    type: PstoreType
    datalen: int
    start: int
    kmsg_format: ZoneFormat | None
    """For dmesg: the format whose zone header the dmesg `magic` follows (None: no
    magic after either, so not a record zone.c wrote)."""


def parse_found_header(raw: bytes) -> FoundHeader | None:
    """The zone header at the start of `raw` (`HEADER_PROBE` bytes), if its signature
    is one pstore/zone writes, in the byte order it shows."""
    if len(raw) < HEADER_PROBE or not SIGNATURE.fullmatch(raw[:SIGNATURE_SIZE]):
        return None
    little = raw[1:3] == b"BG"  # "DBGC" read little-endian; big-endian is "CGBD"
    abi = byte_order_abi(little)
    sig, datalen, start = zone_header_format(abi).unpack_from(raw)
    ptype = PstoreType(sig ^ zone_sig(PstoreType.DMESG))
    kmsg_format = None
    if ptype is PstoreType.DMESG:
        magic = field_format(kmsg_header_struct(abi), "magic")
        kmsg_format = next((fmt for fmt in (ZoneFormat.BLKOOPS, ZoneFormat.ZONE)
                            if magic.unpack_from(raw, fmt.header_size)[0]
                            == PSTORE_KMSG_HEADER_MAGIC), None)
    return FoundHeader(little, ptype, datalen, start, kmsg_format)


def parse_zone_header(abi: Abi, buf: bytes, offset: int,
                      fmt: ZoneFormat = ZoneFormat.ZONE) -> ZoneHeader:
    """`struct psz_buffer`, or the blkoops RFC's `struct blkz_buffer` (no `start`)."""
    if fmt is ZoneFormat.BLKOOPS:
        buf = buf[:BLKZ_BUFFER_SIZE] + bytes(PSZ_BUFFER_SIZE - BLKZ_BUFFER_SIZE)
    return ZoneHeader._make(_unpack(zone_header_format(abi), buf, offset, "zone header"))


def parse_kmsg_header(abi: Abi, buf: bytes, offset: int) -> KmsgHeader:
    magic, tv_sec, tv_nsec, compressed, counter, reason = _unpack(
        kmsg_header_format(abi), buf, offset, "dmesg header")
    return KmsgHeader(magic, tv_sec, tv_nsec, compressed != 0, counter, reason)


@cache
def dmesg_probe_format(abi: Abi, header_size: int) -> python_struct.Struct:
    """(`sig`, `datalen`, the dmesg header's `magic`) from a dmesg zone's first bytes,
    its zone header being `header_size` bytes: `sig` and `datalen` open the zone header
    of both formats. One unpack a zone, for the thousands a partition lists."""
    zone_header = zone_header_struct(abi)
    sig, datalen = (field_format(zone_header, name) for name in ("sig", "datalen"))
    magic = field_format(kmsg_header_struct(abi), "magic")
    gap = header_size - offsetof(zone_header, "datalen") - datalen.size
    return python_struct.Struct(sig.format + datalen.format[1:] + f"{gap}x"
                                + magic.format[1:])


def _unpack(fmt: python_struct.Struct, buf: bytes, offset: int, what: str) -> tuple[int, ...]:
    if len(buf) < fmt.size:
        raise FormatError(what, offset)
    return fmt.unpack_from(buf)


ERASED_FIELDS = {True: ("datalen", "start"), False: ("datalen",)}
"""The zone header fields zone.c's erase zeroes, in the order they are written, for a
ring zone (`psz_record_erase`) and a dmesg zone (`psz_kmsg_erase`): `datalen` first,
as a zone whose `datalen` is 0 is empty whatever else its header holds."""


@cache
def erase_writes(abi: Abi, *, ring: bool) -> tuple[tuple[int, bytes], ...]:
    """(offset in the zone, bytes) of each write of zone.c's erase, in order. The same
    in the blkoops RFC's header, whose `datalen` sits where `psz_buffer`'s does."""
    return tuple((at, bytes(size)) for at, size in
                 (field_span(zone_header_struct(abi), name) for name in ERASED_FIELDS[ring]))


def ring_zone_ok(header: ZoneHeader, ptype: PstoreType, buffer_size: int) -> bool:
    """`psz_recover_zone`'s verdict for a pmsg/console/ftrace zone: the signature is
    the type's, `datalen` and `start` are within the buffer (the kernel compares them
    as unsigned, so negatives are "overtop"), and the zone is not erased.

    The kernel does not check `start <= datalen` and fails its whole recovery on such
    a zone; here that zone alone is skipped.
    """
    return (header.sig == zone_sig(ptype)
            and 0 < header.datalen <= buffer_size
            and 0 <= header.start <= header.datalen)


def kmsg_zone_ok(header: ZoneHeader, magic: int, abi: Abi, buffer_size: int) -> bool:
    """`psz_kmsg_recover_meta`'s verdict for a dmesg zone holding a record, from its
    zone header and its dmesg header's `magic`.

    A `datalen` shorter than the dmesg header would make the kernel copy past its
    buffer; such a zone is treated as invalid.
    """
    return (header.sig == zone_sig(PstoreType.DMESG)
            and abi.kmsg_header_size <= header.datalen <= buffer_size
            and magic == PSTORE_KMSG_HEADER_MAGIC)


def ring_unwrap(data: bytes, header: ZoneHeader) -> bytes:
    """A ring zone's bytes in write order: `[start, datalen)` then `[0, start)`."""
    return data[header.start:header.datalen] + data[:header.start]


def kmsg_prefix(kmsg: KmsgHeader, fmt: ZoneFormat, text: bytes) -> bytes:
    """The line the kernel puts before an uncompressed record, `text`.

    `psz_kmsg_read`: `"%s: Total %d times\\n"` with the reason's name (`reason_name`:
    the pre-5.8 names where the record shows them). The blkoops RFC's `blkz_dmesg_read`:
    `"blkoops: %s: Total %d times\\n"`, "Oops" for an oops and "Panic" for anything
    else. `%d` in both, so the u32 counter prints signed."""
    counter = kmsg.counter - (1 << 32) if kmsg.counter >= 1 << 31 else kmsg.counter
    if fmt is ZoneFormat.BLKOOPS:
        why = "Oops" if kmsg.reason == KmsgDumpReason.OOPS else "Panic"
        return f"blkoops: {why}: Total {counter} times\n".encode()
    return f"{reason_name(kmsg.reason, text)}: Total {counter} times\n".encode()


def kmsg_layout_fits(abi: Abi, buf: bytes) -> bool:
    """Whether the bytes after a dmesg zone's header read as this ABI's
    `psz_kmsg_header` written by a kernel: the magic, a `tv_nsec` below one second,
    `compressed` 0 or 1, padding all zeros (zone.c kzallocs the buffer it fills) or all
    0xFF (the blkoops RFC fills its zone buffers with 0xFF first), and a `tv_sec` before
    the year 2242 (read with the wrong ABI, a 64-bit header's seconds land in the high
    word). This is what tells a 28-byte i386 header from a 40-byte 64-bit one."""
    s = kmsg_header_format(abi)
    raw = bytes(buf[:s.size])
    if len(raw) < s.size:
        return False
    fields = s.unpack(raw)
    magic, tv_sec, tv_nsec, compressed, _, _ = fields
    if not (magic == PSTORE_KMSG_HEADER_MAGIC and 0 <= tv_nsec < 1_000_000_000
            and 0 <= tv_sec < 1 << 33 and compressed in (0, 1)):
        return False
    rebuilt = s.pack(*fields)  # the same bytes with the padding zeroed
    return raw == rebuilt or raw == _fill_padding(abi, rebuilt)


def kmsg_layouts_fit(abi: Abi, bufs: Sequence[bytes]) -> list[bool]:
    """`kmsg_layout_fits(abi, buf)` of each of `bufs` (a partition has a dmesg header
    per zone, thousands), in one pass: the fields unpacked from the headers joined, and
    the padding checked a byte column at a time. Only where some padding is not zero
    (the blkoops RFC's 0xFF) is each header looked at on its own."""
    fmt = kmsg_header_format(abi)
    if any(len(buf) < fmt.size for buf in bufs):
        return [kmsg_layout_fits(abi, buf) for buf in bufs]
    joined = b"".join(buf[:fmt.size] for buf in bufs)
    fits = [magic == PSTORE_KMSG_HEADER_MAGIC and 0 <= tv_nsec < 1_000_000_000
            and 0 <= tv_sec < 1 << 33 and compressed in (0, 1)
            for magic, tv_sec, tv_nsec, compressed, _, _ in fmt.iter_unpack(joined)]
    padding = _padding(abi).to_bytes(fmt.size, "big")
    if all(joined[at::fmt.size].count(0) == len(bufs)
           for at, byte in enumerate(padding) if byte):
        return fits  # then kmsg_layout_fits is the field checks alone
    return [fit and kmsg_layout_fits(abi, buf) for fit, buf in zip(fits, bufs, strict=True)]


def _fill_padding(abi: Abi, raw: bytes) -> bytes:
    """`raw` with every padding byte of the ABI's `psz_kmsg_header` 0xFF."""
    return (int.from_bytes(raw, "big") | _padding(abi)).to_bytes(len(raw), "big")


@cache
def _padding(abi: Abi) -> int:
    """The padding bytes of the ABI's `psz_kmsg_header` as a mask: 0xFF at each, 0
    elsewhere (what stays zero when every field is packed all-ones)."""
    ones = kmsg_header_format(abi).pack(0xFFFFFFFF, -1, -1, 0xFF, 0xFFFFFFFF, -1)
    return int.from_bytes(bytes(0 if b else 0xFF for b in ones), "big")
