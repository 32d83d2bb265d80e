"""Finding the zone headers on a source whose layout is not known (`scan`).

pstore/zone's headers are the only marks it leaves: a signature (`DBGC` XOR the zone's
type, in the writer's byte order) and `datalen`/`start`; a dmesg zone's dmesg header
(its `magic`) follows. The scan searches the bytes for the signatures, skipping the
data each header claims and the holes of a sparse image, and stops once what it found
can only fix the layout or be refused. It only reads.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from pstorefs.errors import PstoreError
from pstorefs.format.consts import MAX_CPUS, PstoreType, ZoneFormat
from pstorefs.format.zone import HEADER_PROBE, SIGNATURE, SIGNATURE_SIZE, parse_found_header
from pstorefs.store.device import NextData, no_holes

log = logging.getLogger(__name__)

Reader = Callable[[int, int], bytes]
"""`read(offset, length)`: the source's bytes (the Device's read)."""


Peek = Callable[[int], bytes]
"""`peek(offset)`: the first bytes at a would-be zone start (empty past the end)."""

_SCAN_CHUNK = 1 << 20
"""Bytes searched per read."""

DMESG_HITS_ENOUGH = 3
"""dmesg headers after which the scan stops: they fix the zone size, and the listing
that follows reads every zone start anyway."""

_FRONT_HITS_ENOUGH = 2 + MAX_CPUS
"""pmsg, console and ftrace headers after which the scan stops: one pmsg, one console
and one ftrace zone per CPU at most, so more can only be refused, and a partition full
of signature-like bytes must not cost more than that to refuse."""


@dataclass(frozen=True)
class Hit:
    """A zone header found on the source."""

    offset: int
    type: PstoreType
    datalen: int
    start: int
    header_size: int
    little_endian: bool

    @property
    def end(self) -> int:
        """Where the zone's data ends: the zone is at least this long."""
        return self.offset + self.header_size + self.datalen

    @property
    def wrapped(self) -> bool:
        """A ring that wrapped has `datalen == buffer_size`: its zone ends at `end`."""
        return self.type is not PstoreType.DMESG and self.start < self.datalen

    def describe(self) -> str:
        return f"{self.type.file_prefix} header at {self.offset:#x}"


def parse_hit(buf: bytes, at: int, offset: int, size: int) -> Hit | None:
    """The zone header whose signature starts at `buf[at]` (at `offset` of the source),
    if it is one zone.c could have written: `datalen` within the source, a ring's
    `start` within `datalen`, and a dmesg zone's `psz_kmsg_header` magic right after
    the header (of either format)."""
    found = parse_found_header(buf[at:at + HEADER_PROBE])
    if found is None:
        return None
    header, start = ZoneFormat.ZONE.header_size, found.start
    if found.type is PstoreType.DMESG:
        if found.kmsg_format is None:
            return None
        header = found.kmsg_format.header_size
        if found.kmsg_format is ZoneFormat.BLKOOPS:
            start = 0  # no `start` in the blkoops RFC's header
    elif not 0 <= start <= found.datalen:
        return None
    if not 0 <= found.datalen <= size - offset - header:
        return None
    return Hit(offset, found.type, found.datalen, start, header, found.little_endian)


def scan(read: Reader, size: int, next_data: NextData | None = None) -> list[Hit]:
    """Every zone header on the source up to `size`, in offset order.

    Zone starts need not be aligned (ftrace zones are `ftrace_size / nr_cpus` bytes), so
    the bytes are searched for the signatures, in large reads. The data a header claims
    is not searched (a record's bytes may hold anything), nor the holes `next_data`
    tells of (zeros hold no signature), and the scan stops once a few dmesg headers fix
    the zone size. The cost is the part of the partition no record covers, read once:
    at most the 128 MiB the kernel uses, for a nearly empty device; a sparse image's
    holes cost nothing.
    """
    runs = next_data or no_holes(size)
    hits: list[Hit] = []
    skip = pos = data_end = 0
    dmesg = 0
    while pos < size:
        if pos >= data_end:
            run = runs(pos)
            if run is None or run[0] >= size:
                break
            pos, data_end = max(pos, run[0]), run[1]
        length = min(_SCAN_CHUNK, size - pos)
        try:
            buf = read(pos, min(length + HEADER_PROBE, size - pos))
        except PstoreError as exc:  # a bad sector: what it hides is not found, and said
            log.warning("%s: skipped by the layout search", exc)
            pos += length
            continue
        for at in _signatures(buf, max(skip - pos, 0), length):
            if pos + at < skip:
                continue
            hit = parse_hit(buf, at, pos + at, size)
            if hit is None:
                continue
            hits.append(hit)
            skip = hit.end
            if hit.type is PstoreType.DMESG:
                dmesg += 1
                if dmesg >= DMESG_HITS_ENOUGH:
                    return hits
            elif (dmesg or len(hits) >= _FRONT_HITS_ENOUGH
                  or (hit.type is not PstoreType.FTRACE
                      and sum(h.type is hit.type for h in hits) > 1)):
                return hits  # a ring after dmesg, a second pmsg or console, or too many
        pos = max(pos + length, skip)
    return hits


def _signatures(buf: bytes, start: int, stop: int) -> Iterator[int]:
    """Where a signature starts in `buf[start:stop]`. A match that is no header resumes
    the search one byte on, not after it: bytes such as `CGBF` right before a zone's
    `FBGC` would otherwise hide the real header (the patterns overlap)."""
    at = start
    while at < stop:
        match = SIGNATURE.search(buf, at, stop + SIGNATURE_SIZE - 1)
        if match is None or match.start() >= stop:
            return
        yield match.start()
        at = match.start() + 1


def offsets(hits: Sequence[Hit]) -> str:
    """Where the headers are, for a message: the first few, and how many in all."""
    shown = ", ".join(hex(h.offset) for h in hits[:4])
    return shown if len(hits) <= 4 else f"{shown}, ... ({len(hits)} in all)"


def holds_data(head: bytes) -> bool:
    """Neither the zeros of a fresh partition or of a written zone's tail, nor erased
    flash (0xFF)."""
    return head.strip(b"\0") != b"" and head.strip(b"\xff") != b""


def peeker(read: Reader, size: int) -> Peek:
    """`peek` over the source: an unreadable spot reads as `b"?"`, which is no evidence
    of fill and so never rules a size out."""
    def peek(offset: int) -> bytes:
        try:
            return read(offset, min(HEADER_PROBE, size - offset)) if 0 <= offset < size else b""
        except PstoreError:
            return b"?"

    return peek
