"""Parsing pstore/zone headers and the kernel's verdict on each zone (fs/pstore/zone.c)."""

from __future__ import annotations

import struct as python_struct
from dataclasses import dataclass
from functools import cache

from construct import ConstructError, Struct

from pstorefs.errors import FormatError
from pstorefs.format.abi import Abi, kmsg_header_struct, zone_header_struct
from pstorefs.format.consts import (
    BLKZ_BUFFER_SIZE,
    PSTORE_KMSG_HEADER_MAGIC,
    PSZ_BUFFER_SIZE,
    KmsgDumpReason,
    PstoreType,
    ZoneFormat,
    reason_name,
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


@dataclass(frozen=True)
class ZoneHeader:
    """`struct psz_buffer` as read from a zone."""

    sig: int
    datalen: int
    start: int


@dataclass(frozen=True)
class KmsgHeader:
    """`struct psz_kmsg_header` as read after a dmesg zone's header."""

    magic: int
    tv_sec: int
    tv_nsec: int
    compressed: bool
    counter: int
    reason: int

    @property
    def time_ns(self) -> int | None:
        """The record time in ns, or None where inode.c keeps the mount time
        (`tv_sec == 0`)."""
        if self.tv_sec == 0:
            return None
        ns = self.tv_sec * 1_000_000_000 + self.tv_nsec
        return max(-(1 << 63), min(ns, (1 << 63) - 1))


def parse_zone_header(abi: Abi, buf: bytes, offset: int,
                      fmt: ZoneFormat = ZoneFormat.ZONE) -> ZoneHeader:
    """`struct psz_buffer`, or the blkoops RFC's `struct blkz_buffer` (no `start`)."""
    if fmt is ZoneFormat.BLKOOPS:
        buf = buf[:BLKZ_BUFFER_SIZE] + bytes(PSZ_BUFFER_SIZE - BLKZ_BUFFER_SIZE)
    h = parse(zone_header_struct(abi), buf[:PSZ_BUFFER_SIZE], offset, "zone header")
    return ZoneHeader(h.sig, h.datalen, h.start)


def parse_kmsg_header(abi: Abi, buf: bytes, offset: int) -> KmsgHeader:
    s = kmsg_header_struct(abi)
    h = parse(s, buf[:s.sizeof()], offset, "dmesg header")
    return KmsgHeader(h.magic, h.tv_sec, h.tv_nsec, h.compressed != 0, h.counter, h.reason)


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


def kmsg_zone_ok(header: ZoneHeader, kmsg: KmsgHeader, abi: Abi, buffer_size: int) -> bool:
    """`psz_kmsg_recover_meta`'s verdict for a dmesg zone holding a record.

    A `datalen` shorter than the dmesg header would make the kernel copy past its
    buffer; such a zone is treated as invalid.
    """
    return (header.sig == zone_sig(PstoreType.DMESG)
            and abi.kmsg_header_size <= header.datalen <= buffer_size
            and kmsg.magic == PSTORE_KMSG_HEADER_MAGIC)


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
    s = kmsg_header_struct(abi)
    raw = buf[:s.sizeof()]
    if len(raw) < s.sizeof():
        return False
    h = s.parse(raw)
    rebuilt = s.build(h)
    return (h.magic == PSTORE_KMSG_HEADER_MAGIC
            and 0 <= h.tv_nsec < 1_000_000_000
            and 0 <= h.tv_sec < 1 << 33
            and h.compressed in (0, 1)
            and raw in (rebuilt, bytes(r | m for r, m in zip(rebuilt, _padding(abi),
                                                                strict=True))))


@cache
def _padding(abi: Abi) -> bytes:
    """0xFF at each padding byte of the ABI's `psz_kmsg_header`, 0 elsewhere: what stays
    zero when every field is built all-ones."""
    ones = kmsg_header_struct(abi).build({
        "magic": 0xFFFFFFFF, "tv_sec": -1, "tv_nsec": -1, "compressed": 0xFF,
        "counter": 0xFFFFFFFF, "reason": -1})
    return bytes(0 if b else 0xFF for b in ones)
