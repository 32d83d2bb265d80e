"""mtdoops pages (drivers/mtd/mtdoops.c): `struct mtdoops_hdr`, which pages are
records, their text and their order.

mtdoops is not pstore: the MTD partition is an array of `record_size`-byte pages, page
N at `N * record_size`. `mtdoops_write` fills a page with a header, the newest kernel
log lines that fit (`kmsg_dump_get_buffer`, syslog form `<prio>[time] text`) and
leaves the rest of its buffer as it was memset, 0xFF. The header is `__packed` and
host-endian:

    struct mtdoops_hdr { u32 seq; u32 magic; ktime_t timestamp; } __packed;

v1 (`MTDOOPS_KERNMSG_MAGIC_v1`, the original, `MTDOOPS_HEADER_SIZE` 8) has `seq` and
`magic` only, and the text right after them; v2 (2022) adds `timestamp`,
`ktime_get_real()` in ns. There is no length and no reason field.
"""

from __future__ import annotations

from dataclasses import dataclass

from construct import Int32ub, Int32ul, Int64sb, Int64sl, Struct

from pstorefs.format.abi import field_span
from pstorefs.format.zone import parse

MTDOOPS_KERNMSG_MAGIC_v1 = 0x5D005D00
"""The original header: `seq`, `magic`, the text at +8."""

MTDOOPS_KERNMSG_MAGIC_v2 = 0x5D005E00
"""Adds the timestamp: the text at +16."""

MTDOOPS_HEADER_SIZE = {MTDOOPS_KERNMSG_MAGIC_v1: 8, MTDOOPS_KERNMSG_MAGIC_v2: 16}
"""Where each version's text starts (`sizeof(struct mtdoops_hdr)` of its kernel)."""

HEADER_PROBE = 16
"""Bytes read from each page to list it: the larger header."""

ERASED_WORD = 0xFFFFFFFF
"""`seq` of an erased page; mtdoops never writes it (`nextcount` wraps to 0 first)."""

SEQ_SPACE = 0xFFFFFFFF
"""`nextcount` runs 0 .. 0xfffffffe and wraps: sequence numbers count modulo this."""

_HEADER = {
    True: Struct("seq" / Int32ul, "magic" / Int32ul, "timestamp" / Int64sl),
    False: Struct("seq" / Int32ub, "magic" / Int32ub, "timestamp" / Int64sb),
}
"""`struct mtdoops_hdr` (v2 layout) by byte order (True: little-endian)."""


@dataclass(frozen=True)
class PageHeader:
    """`struct mtdoops_hdr` of a page that holds a record."""

    seq: int
    magic: int
    timestamp: int | None

    @property
    def version(self) -> int:
        return 2 if self.magic == MTDOOPS_KERNMSG_MAGIC_v2 else 1

    @property
    def size(self) -> int:
        """Where the text starts."""
        return MTDOOPS_HEADER_SIZE[self.magic]

    @property
    def time_ns(self) -> int | None:
        """The record's time in ns since the epoch; None (the mount time) for v1, or for a
        timestamp no clock set after 1970 gives."""
        return self.timestamp if self.timestamp is not None and self.timestamp > 0 else None


def magic_word(raw: bytes) -> bytes:
    """The bytes of a page's header where the magic is (either byte order's)."""
    at, size = field_span(_HEADER[True], "magic")
    return raw[at:at + size]


def is_magic(value: int) -> bool:
    """Whether `value` is one of mtdoops' header magics (v1, v2)."""
    return value in MTDOOPS_HEADER_SIZE


def has_magic(raw: bytes) -> bool:
    """Whether a page's first bytes hold one of the magics in either byte order: a page
    without one is no record, whatever the writer's byte order."""
    word = magic_word(raw)
    return len(word) == 4 and (is_magic(int.from_bytes(word, "little"))
                               or is_magic(int.from_bytes(word, "big")))


def parse_page_header(raw: bytes, offset: int, little_endian: bool) -> PageHeader | None:
    """The header of the page whose first `HEADER_PROBE` bytes are `raw`, or None where
    `find_next_position` skips the page: erased (`seq` 0xffffffff) or no known magic.
    (A v1 page's bytes 8..15 are text, parsed as a timestamp and dropped.)"""
    h = parse(_HEADER[little_endian], raw[:HEADER_PROBE], offset, "mtdoops header")
    if h.seq == ERASED_WORD or h.magic not in MTDOOPS_HEADER_SIZE:
        return None
    timestamp = h.timestamp if h.magic == MTDOOPS_KERNMSG_MAGIC_v2 else None
    return PageHeader(h.seq, h.magic, timestamp)


def page_text(body: bytes) -> bytes:
    """The text of a page from its bytes after the header: up to the NUL that
    `kmsg_dump_get_buffer` ends it with (5.10 and later). Older kernels wrote no NUL
    into the 0xFF-filled buffer: there the text ends where the 0xFF fill begins."""
    end = body.find(b"\0")
    return body[:end] if end >= 0 else body.rstrip(b"\xff")


def newer(seq: int, than: int) -> bool:
    """Whether `find_next_position` takes `seq` over `than` as the newest: the larger
    one, except across the wrap (below 0x40000000 beats above 0xc0000000)."""
    return ((seq < 0x40000000 and than > 0xC0000000)
            or than < seq < 0xC0000000
            or (seq > than and seq > 0xC0000000 and than > 0x80000000))


def newest_seq(seqs: list[int]) -> int | None:
    """The `maxcount` `find_next_position` ends with, over `seqs` in page order."""
    newest: int | None = None
    for seq in seqs:
        if newest is None or newer(seq, newest):
            newest = seq
    return newest


def age(seq: int, newest: int) -> int:
    """How many writes before the newest one `seq` was (wrap included)."""
    return (newest - seq) % SEQ_SPACE
