"""The layout of a partition, found from the partition itself.

pstore/zone writes no superblock: the layout lives only in the writing kernel's module
parameters. What the partition does hold is a header at the start of every zone the
kernel ever wrote, and the kernel never writes anywhere else. So the headers are found
first (`scan`), then the one set of parameters that puts a zone start under each of
them is worked out (`infer_layout`), and that set is checked against every header found.

Two facts of zone.c settle what the headers alone would leave open:

* dmesg zones are written round-robin from zone 0 on a fresh partition, and an erased
  zone keeps its header. So the written zones are one run from zone 0: the first dmesg
  header found is zone 0, and the zone size is the spacing of the headers. A gap in the
  run (a zone between two written ones that was never written) means stale headers of
  another layout, and detection refuses rather than number the records on a guess.
* The ring zones (pmsg, console, ftrace) force `datalen` to the buffer size once they
  wrap, which gives their size exactly. The areas come in the kernel's order (pmsg at 0,
  console, ftrace, dmesg), every area size is a 4 KiB multiple (blk.c rounds them), and
  the ftrace area is cut into equal per-CPU zones that may end off 4 KiB: what lies
  between the headers is split accordingly (`_front_areas`).

Where the bytes leave a size open and every choice gives the same files and the same
erase offsets (an unused area, a ring that has not wrapped, the CPU count of an ftrace
area, a single dmesg record), the kernel's default or the simplest split is taken and
said so; `Detection.assumed` carries the notes. Detection only reads.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import re
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from pstorefs.errors import GeometryError, PstoreError
from pstorefs.format.consts import (
    PSTORE_KMSG_HEADER_MAGIC,
    PSZ_SIG,
    PstoreType,
    ZoneFormat,
)
from pstorefs.store.zone.layout import SZ_128M, Geometry

log = logging.getLogger(__name__)

Reader = Callable[[int, int], bytes]
"""`read(offset, length)`: the source's bytes (the Device's read)."""

Peek = Callable[[int], bytes]
"""`peek(offset)`: the first bytes at a would-be zone start (empty past the end)."""


def _holds_data(head: bytes) -> bool:
    """Neither the zeros of a fresh partition or of a written zone's tail, nor erased
    flash (0xFF)."""
    return head.strip(b"\0") != b"" and head.strip(b"\xff") != b""

DEFAULT_SIZE = 64 << 10
"""The kernel's default for every area (CONFIG_PSTORE_BLK_*_SIZE, blkoops' dmesg_size)."""

_SIG = re.compile(rb"[CDFG]BGC|CGB[CDFG]")
"""`PSZ_SIG ^ type` for dmesg (0), console (2), ftrace (3) and pmsg (7), as the bytes a
little-endian (`DBGC`…) or big-endian (`CGBD`…) writer leaves."""

_SCAN_CHUNK = 1 << 20
_LOOKAHEAD = 16
"""A zone header and the dmesg magic after it."""

_DMESG_HITS_ENOUGH = 3

_FRONT_HITS_ENOUGH = 2 + 4096
"""pmsg, console and ftrace headers after which the scan stops: one pmsg, one console
and one ftrace zone per CPU at most, so more can only be refused, and a partition full
of signature-like bytes must not cost more than that to refuse."""
"""dmesg headers after which the scan stops: they fix the zone size, and the listing
that follows reads every zone start anyway."""


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


@dataclass(frozen=True)
class Detection:
    """The layout found, and what was assumed where the bytes do not tell."""

    geometry: Geometry
    assumed: tuple[str, ...] = ()


def _parse_hit(buf: bytes, at: int, offset: int, size: int) -> Hit | None:
    """The zone header whose signature starts at `buf[at]`, if it is one zone.c could
    have written: `datalen` within the source, a ring's `start` within `datalen`, and a
    dmesg zone's `psz_kmsg_header` magic right after the header (at +12, or at +8 in
    the blkoops format)."""
    raw = buf[at:at + _LOOKAHEAD]
    if len(raw) < _LOOKAHEAD or not _SIG.fullmatch(raw[:4]):
        return None
    little = raw[1:3] == b"BG"  # "DBGC" read little-endian; big-endian is "CGBD"
    order = "<" if little else ">"
    sig, datalen, start = struct.unpack(order + "Iii", raw[:12])
    ptype = PstoreType(sig ^ PSZ_SIG)
    header = ZoneFormat.ZONE.header_size
    if ptype is PstoreType.DMESG:
        magic_at_8, magic_at_12 = struct.unpack(order + "II", raw[8:16])
        if magic_at_8 == PSTORE_KMSG_HEADER_MAGIC:
            header, start = ZoneFormat.BLKOOPS.header_size, 0
        elif magic_at_12 != PSTORE_KMSG_HEADER_MAGIC:
            return None
    elif not 0 <= start <= datalen:
        return None
    if not 0 <= datalen <= size - offset - header:
        return None
    return Hit(offset, ptype, datalen, start, header, little)


def scan(read: Reader, size: int) -> list[Hit]:
    """Every zone header on the source up to `size`, in offset order.

    Zone starts need not be aligned (ftrace zones are `ftrace_size / nr_cpus` bytes), so
    the bytes are searched for the signatures, in large reads. The data a header claims
    is not searched (a record's bytes may hold anything), and the scan stops once a few
    dmesg headers fix the zone size. The cost is the part of the partition no record
    covers, read once: at most the 128 MiB the kernel uses, for a nearly empty one.
    """
    hits: list[Hit] = []
    skip = pos = 0
    dmesg = 0
    while pos < size:
        length = min(_SCAN_CHUNK, size - pos)
        try:
            buf = read(pos, min(length + _LOOKAHEAD, size - pos))
        except PstoreError as exc:  # a bad sector: what it hides is not found, and said
            log.warning("%s: skipped by the layout search", exc)
            pos += length
            continue
        for at in _signatures(buf, max(skip - pos, 0), length):
            if pos + at < skip:
                continue
            hit = _parse_hit(buf, at, pos + at, size)
            if hit is None:
                continue
            hits.append(hit)
            skip = hit.end
            if hit.type is PstoreType.DMESG:
                dmesg += 1
                if dmesg >= _DMESG_HITS_ENOUGH:
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
        match = _SIG.search(buf, at, stop + 3)
        if match is None or match.start() >= stop:
            return
        yield match.start()
        at = match.start() + 1


def offsets(hits: Sequence[Hit]) -> str:
    """Where the headers are, for a message: the first few, and how many in all."""
    shown = ", ".join(hex(h.offset) for h in hits[:4])
    return shown if len(hits) <= 4 else f"{shown}, ... ({len(hits)} in all)"


def default_size(extent: int) -> int:
    """The size assumed for an area whose end the bytes do not show: the kernel's
    default, or the smallest power of two (in 4 KiB) that holds what was found."""
    size = DEFAULT_SIZE
    if extent > size:
        size = 4096
        while size < extent:
            size *= 2
    return size


def _align_up(value: int, to: int = 4096) -> int:
    return -(-value // to) * to


def _align_down(value: int, to: int = 4096) -> int:
    return value // to * to


def _divisors_desc(value: int) -> list[int]:
    """The divisors of `value` (> 0), largest first: the per-CPU zone sizes an ftrace
    area's spacing allows, fewest CPUs first."""
    small = [d for d in range(1, math.isqrt(value) + 1) if value % d == 0]
    return sorted({*small, *(value // d for d in small)}, reverse=True)


def infer_layout(hits: Sequence[Hit], size: int, *, nr_cpus: int | None = None,
                 format: ZoneFormat | None = None, peek: Peek = lambda _: b"",
                 erasesize: int | None = None) -> Detection:
    """The parameters that put a zone start under every header in `hits` (from `scan`).

    `peek(offset)` shows the bytes where a smaller zone size, or a dmesg area starting
    before the first header, would put a zone start that has no header: data there is a
    zone whose header is damaged, and then the numbering is not certain.

    With `erasesize` the source is flash (mtdpstore: dmesg zones only, from 0, each at
    most an erase block), where an erased zone is all 0xFF like one never written, so
    the kernel's write order proves nothing: `_flash_kmsg_size` decides instead.

    Raises GeometryError, naming the options that would settle it, where no layout of
    the kernel's fits the headers, or where the layouts that fit would number the
    records differently."""
    fmt = _format(hits, format)
    total = size if fmt is ZoneFormat.BLKOOPS else min(size, SZ_128M)
    if not hits:
        kmsg = min(DEFAULT_SIZE, _align_down(total))
        return Detection(Geometry(kmsg_size=kmsg, format=fmt), (
            "no zone header found (an unused partition): "
            f"kmsg_size={kmsg // 1024} taken (the kernel's default, or what fits)",))
    assumed: list[str] = []
    dmesg = [hit for hit in hits if hit.type is PstoreType.DMESG]
    fronts = [hit for hit in hits if hit.type is not PstoreType.DMESG]
    if erasesize is not None:
        if fronts or fmt is not ZoneFormat.ZONE:
            raise GeometryError(f"mtdpstore has dmesg zones only, but a "
                                f"{(fronts or dmesg)[0].describe()} was found: give the sizes")
        kmsg = _flash_kmsg_size(dmesg, total, erasesize, peek, assumed)
        geometry = Geometry(kmsg_size=kmsg)
    elif fmt is ZoneFormat.BLKOOPS:
        if fronts:
            raise GeometryError(f"the blkoops format has dmesg zones only, but a "
                                f"{fronts[0].describe()} was found: give the sizes")
        if dmesg[0].offset != 0:
            raise GeometryError(f"the first blkoops dmesg zone found is at "
                                f"{dmesg[0].offset:#x}, not 0: give kmsg_size=")
        kmsg = _kmsg_size(dmesg, total, assumed, peek)
        geometry = Geometry(kmsg_size=kmsg, format=fmt)
    else:
        if dmesg and fronts and fronts[-1].offset > dmesg[0].offset:
            raise GeometryError(f"a {fronts[-1].describe()} lies after the dmesg header at "
                                f"{dmesg[0].offset:#x}; the kernel puts pmsg, console and "
                                "ftrace first: give the sizes")
        start = dmesg[0].offset if dmesg else None
        pmsg, console, ftrace, cpus = _front_areas(fronts, start, total, nr_cpus, assumed)
        room = total - (pmsg + console + ftrace)
        if dmesg:
            kmsg = _kmsg_size(dmesg, room, assumed, peek)
            _check_leading_gap(dmesg[0].offset, kmsg, fronts, peek)
        else:
            kmsg = min(DEFAULT_SIZE, _align_down(max(room, 0)))
            assumed.append(f"no dmesg header found: kmsg_size={kmsg // 1024} taken "
                           "(the kernel's default, or what fits; there is no dmesg record "
                           "either way)")
        geometry = Geometry(kmsg_size=kmsg, pmsg_size=pmsg, console_size=console,
                            ftrace_size=ftrace, nr_cpus=cpus, format=fmt)
    _check(geometry, hits, size)
    return Detection(geometry, tuple(assumed))


def _format(hits: Sequence[Hit], given: ZoneFormat | None) -> ZoneFormat:
    """The one byte order and zone format of the headers (and of `format=`, if given)."""
    orders = {hit.little_endian for hit in hits}
    if len(orders) > 1:
        raise GeometryError("zone headers of both byte orders found ("
                            + ", ".join(f"{h.describe()}" for h in hits[:4])
                            + "): give the layout options and abi=")
    found = {ZoneFormat.BLKOOPS if hit.header_size == ZoneFormat.BLKOOPS.header_size
             else ZoneFormat.ZONE for hit in hits}
    if len(found) > 1:
        raise GeometryError("headers of both the pstore/zone and the blkoops format found: "
                            "give format=zone or format=blkoops and the sizes")
    if given is not None and found and found != {given}:
        raise GeometryError(f"format={given.value} given, but the headers found are of the "
                            f"{found.pop().value} format: give the right format= and the "
                            "sizes")
    return given or (found.pop() if found else ZoneFormat.ZONE)


def _kmsg_size(dmesg: Sequence[Hit], room: int, assumed: list[str], peek: Peek) -> int:
    """The dmesg zone size: the spacing of the headers (the written zones are one run
    from zone 0), or with a single header the kernel's default (if `room`, the bytes
    the dmesg zones share, holds it)."""
    longest = max(hit.end - hit.offset for hit in dmesg)
    if len(dmesg) == 1:
        kmsg = min(default_size(longest), _align_down(room))
        if kmsg < longest:
            raise GeometryError(f"the dmesg record at {dmesg[0].offset:#x} is {longest} "
                                f"bytes long, but only {room} bytes are left for dmesg "
                                "zones: give the sizes")
        assumed.append(f"one dmesg record does not show the zone size: kmsg_size="
                       f"{kmsg // 1024} taken (the files and the erase are the same for "
                       "any size that holds it)")
        return kmsg
    starts = [hit.offset for hit in dmesg]
    spacing = math.gcd(*(b - a for a, b in itertools.pairwise(starts)))
    indexes = [(o - starts[0]) // spacing for o in starts]
    # blk.c rounds every size to 4 KiB, and so did the blkoops module (verify_size)
    if spacing < longest or spacing % 4096:
        raise GeometryError(
            f"dmesg headers at {offsets(dmesg)} are {spacing} bytes apart, but a record "
            f"there is {longest} bytes long or the zones would not be 4 KiB multiples: "
            "headers of another layout are left on the partition; give kmsg_size=")
    if indexes != list(range(len(indexes))):
        raise GeometryError(
            f"dmesg headers at {offsets(dmesg)} leave unwritten {spacing // 1024} KiB zones "
            "between written ones, which the kernel's round-robin never does: give "
            "kmsg_size=")
    for smaller in (spacing // n for n in range(2, spacing // 4096 + 1)
                    if spacing % n == 0 and spacing // n % 4096 == 0
                    and spacing // n >= longest):
        # an erased zone keeps its old bytes past `datalen`: no evidence there
        between = [hit.offset + k * smaller for hit in dmesg[:-1] if hit.datalen
                   for k in range(1, spacing // smaller)]
        if any(_holds_data(peek(at)) for at in between):
            raise GeometryError(
                f"dmesg headers at {offsets(dmesg)} fit {spacing // 1024} KiB zones, or "
                f"{smaller // 1024} KiB zones with a zone between them whose header is "
                "damaged (bytes where it would start): give kmsg_size=")
    return spacing


def _flash_kmsg_size(dmesg: Sequence[Hit], room: int, erasesize: int, peek: Peek,
                     assumed: list[str]) -> int:
    """mtdpstore's zone size: a 4 KiB multiple no larger than the erase block
    (mtdpstore_notify_add refuses larger) that puts a zone start under every header.

    A zone start without a header is erased or never written, so it holds 0xFF; zeros
    there are the tail of a zone mtdpstore wrote whole, which rules that size out.
    Where several sizes remain they name the records differently (an erased zone looks
    unwritten on flash), and the kernel's default of 64 KiB is taken if it is one of
    them, and said; the erase is safe either way, as it writes only the removed
    record's zone, whose other bytes no header claims."""
    longest = max(hit.end - hit.offset for hit in dmesg)
    last = dmesg[-1].offset
    headers = {hit.offset for hit in dmesg}

    def fits(kmsg: int) -> bool:
        return (kmsg >= longest and all(o % kmsg == 0 for o in headers)
                and not any(peek(z).strip(b"\0") == b"" for z in range(0, last + 1, kmsg)
                            if z not in headers))

    sizes = [k for k in range(4096, min(erasesize, _align_down(room)) + 1, 4096) if fits(k)]
    if not sizes:
        raise GeometryError(f"dmesg headers at {offsets(dmesg)} fit no mtdpstore zone size "
                            f"of at most the {erasesize}-byte erase block: give kmsg_size=")
    names = {tuple(o // k for o in sorted(headers)) for k in sizes}
    if len(names) == 1:
        kmsg = DEFAULT_SIZE if DEFAULT_SIZE in sizes else sizes[-1]
        if len(sizes) > 1:
            assumed.append(f"the dmesg headers do not show the zone size: kmsg_size="
                           f"{kmsg // 1024} taken (the files are the same for any that fits)")
        return kmsg
    if DEFAULT_SIZE not in sizes:
        raise GeometryError(f"dmesg headers at {offsets(dmesg)} fit mtdpstore zones of "
                            + " or ".join(f"{k // 1024}" for k in sizes)
                            + " KiB, which number the records differently (an erased zone "
                            "looks unwritten on flash): give kmsg_size=")
    assumed.append("the dmesg headers fit zones of " + " or ".join(
        f"{k // 1024}" for k in sizes) + " KiB (an erased zone looks unwritten on flash): "
        "the kernel's default kmsg_size=64 taken; if the writer used another, give it, as "
        "the records' numbers depend on it")
    return DEFAULT_SIZE


def _check_leading_gap(start: int, kmsg: int, fronts: Sequence[Hit], peek: Peek) -> None:
    """The first dmesg header is taken as zone 0; a whole zone before it holding bytes
    (a zone 0 whose header is damaged) would make every name one off. Only where no
    ring header comes first: before those, the bytes may be an erased ring's."""
    if fronts:
        return  # the space is ring areas then, whose erased zones keep stale bytes
    for zone in range(start - kmsg, -1, -kmsg):
        if _holds_data(peek(zone)):
            raise GeometryError(f"bytes at {zone:#x}, a dmesg zone's size before the first "
                                f"dmesg header ({start:#x}), may be a zone whose header is "
                                "damaged, which would change every record's number: give "
                                "the sizes")


_MAX_BASES = 64
"""Ftrace area starts tried below the next header (256 KiB): every one that fits gives
the same files, so a few are enough to find one, and a refusal stays cheap."""


def _front_areas(fronts: Sequence[Hit], end: int | None, total: int, nr_cpus: int | None,
                 assumed: list[str]) -> tuple[int, int, int, int]:
    """pmsg, console and ftrace sizes and the CPU count: the areas before `end` (the
    first dmesg zone, or None if there is none) that put each header at its zone's start,
    within the `total` bytes the kernel uses.

    pmsg starts at 0 and console where its header is; ring sizes are 4 KiB multiples.
    A ring that wrapped ends exactly where its data does; one that did not reaches up to
    the 4 KiB boundary before the next area (a non-full ring's end is not on the disk:
    any end gives the same files). What is left before `end` is the ftrace area, its
    headers at the starts of equal per-CPU zones and its real end at `end`; space no
    header explains becomes an unused area, and the notes say so."""
    pmsg_hit, console_hit, ftrace_hits = _front_hits(fronts)
    if end is None and not ftrace_hits:
        pmsg, console = _rings_alone(pmsg_hit, console_hit, total, assumed)
        return pmsg, console, 0, nr_cpus or 1
    bound = ftrace_hits[0].offset if ftrace_hits else end
    assert bound is not None
    for base in itertools.islice(_ftrace_bases(pmsg_hit, console_hit, bound), _MAX_BASES):
        notes: list[str] = []
        found = _ftrace_area(ftrace_hits, base, total if end is None else end, end is None,
                             nr_cpus, notes)
        if found is not None:
            pmsg, console = _ring_split(pmsg_hit, console_hit, base, found[0], assumed)
            assumed.extend(notes)
            return pmsg, console, *found
    if ftrace_hits:
        raise GeometryError(f"ftrace headers at {', '.join(hex(h.offset) for h in ftrace_hits)}"
                            " fit no split of an ftrace area into per-CPU zones: give "
                            "ftrace_size= and nr_cpus=")
    raise GeometryError(f"the {bound} bytes before the first dmesg zone fit no pmsg, console "
                        "and ftrace areas of the kernel's: give the sizes")


def _front_hits(fronts: Sequence[Hit]) -> tuple[Hit | None, Hit | None, list[Hit]]:
    """The pmsg header, the console header and the ftrace headers, after checking they
    lie in the kernel's order: one pmsg zone at 0, one console zone at a 4 KiB
    boundary after it, the ftrace zones after that."""
    by_type: dict[PstoreType, list[Hit]] = {}
    for hit in fronts:
        by_type.setdefault(hit.type, []).append(hit)
    for ptype in (PstoreType.PMSG, PstoreType.CONSOLE):
        if len(by_type.get(ptype, [])) > 1:
            found = ", ".join(hex(h.offset) for h in by_type[ptype])
            raise GeometryError(f"{ptype.file_prefix} headers at {found}: the kernel has "
                                f"one {ptype.file_prefix} zone; give the sizes")
    pmsg_hit = by_type.get(PstoreType.PMSG, [None])[0]
    console_hit = by_type.get(PstoreType.CONSOLE, [None])[0]
    ftrace_hits = by_type.get(PstoreType.FTRACE, [])
    if pmsg_hit and pmsg_hit.offset != 0:
        raise GeometryError(f"a {pmsg_hit.describe()}: the kernel's pmsg zone is at 0; "
                            "give the sizes")
    if console_hit and console_hit.offset % 4096:
        raise GeometryError(f"a {console_hit.describe()}: the console zone follows a "
                            "pmsg area of whole 4 KiB; give the sizes")
    if pmsg_hit and console_hit and pmsg_hit.wrapped and pmsg_hit.end != console_hit.offset:
        raise GeometryError(f"the wrapped pmsg zone ends at {pmsg_hit.end:#x}, but the "
                            f"{console_hit.describe()}: give the sizes")
    if console_hit and ftrace_hits and ftrace_hits[0].offset < console_hit.offset:
        raise GeometryError(f"a {ftrace_hits[0].describe()} lies before the "
                            f"{console_hit.describe()}: give the sizes")
    return pmsg_hit, console_hit, ftrace_hits


def _rings_alone(pmsg_hit: Hit | None, console_hit: Hit | None, total: int,
                 assumed: list[str]) -> tuple[int, int]:
    """pmsg and console sizes where nothing follows them (no ftrace, no dmesg header)."""
    if console_hit:
        pmsg = console_hit.offset
        if pmsg_hit is None and pmsg:
            assumed.append(_unused_note("pmsg", 0, pmsg))
        return pmsg, _ring_size_alone(console_hit, total, assumed)
    assert pmsg_hit is not None
    return _ring_size_alone(pmsg_hit, total, assumed), 0


def _ring_size_alone(hit: Hit, total: int, assumed: list[str]) -> int:
    """A pmsg or console zone's size with nothing after it: exact once it wrapped, else
    the default (or what is left of the `total` bytes, if less)."""
    if hit.wrapped:
        return hit.end - hit.offset
    size = max(min(default_size(hit.end - hit.offset), _align_down(total - hit.offset)),
               _align_up(hit.end - hit.offset))
    assumed.append(f"nothing after the {hit.type.file_prefix} zone shows its end: "
                   f"{hit.type.file_prefix}_size={size // 1024} taken")
    return size


def _ftrace_bases(pmsg_hit: Hit | None, console_hit: Hit | None, bound: int) -> Iterator[int]:
    """Where the ftrace area may start, the likeliest first: the 4 KiB boundary at or
    before `bound` (the first ftrace header, or the dmesg zones), then earlier ones.

    It starts at or after the last ring's data, right at its end if that ring is the
    console and wrapped; after a wrapped pmsg ring, an unused console area may lie
    between."""
    ring = console_hit or pmsg_hit
    if ring is None:
        low = 0
    elif ring.wrapped:
        if ring.end % 4096:
            return
        if ring is console_hit:
            if ring.end <= bound:
                yield ring.end
            return
        low = ring.end
    else:
        low = _align_up(ring.end)
    yield from range(_align_down(bound), low - 1, -4096)


def _ring_split(pmsg_hit: Hit | None, console_hit: Hit | None, base: int, ftrace: int,
                assumed: list[str]) -> tuple[int, int]:
    """pmsg and console sizes when the ftrace area starts at `base` (and is `ftrace`
    bytes, 0 if there is none): the notes say where the bytes leave a choice."""
    if console_hit:
        pmsg = console_hit.offset
        if pmsg_hit is None and pmsg:
            assumed.append(_unused_note("pmsg", 0, pmsg))
        console = base - pmsg
        if not console_hit.wrapped and not ftrace:
            assumed.append(f"the console ring has not wrapped: console_size="
                           f"{console // 1024} taken, up to the dmesg zones (a smaller one "
                           "and an unused ftrace area give the same files)")
        return pmsg, console
    if pmsg_hit and pmsg_hit.wrapped:
        pmsg = pmsg_hit.end
        if base > pmsg:
            assumed.append(_unused_note("console", pmsg, base - pmsg))
        return pmsg, base - pmsg
    if pmsg_hit:
        assumed.append(f"the pmsg ring has not wrapped: pmsg_size={base // 1024} taken, up "
                       "to the next area (a smaller one and an unused console area give "
                       "the same files)")
    elif base:
        assumed.append(_unused_note("pmsg", 0, base))
    return base, 0


def _unused_note(area: str, offset: int, size: int) -> str:
    return (f"{size // 1024} KiB at {offset:#x} hold no record: taken as an unused {area} "
            f"area, {area}_size={size // 1024}")


def _ftrace_area(hits: Sequence[Hit], base: int, end: int, open_end: bool,
                 nr_cpus: int | None, notes: list[str]) -> tuple[int, int] | None:
    """ftrace_size and nr_cpus for an area from `base` whose zones end at `end` (the
    first dmesg zone; with `open_end`, there is none and `end` is the most they may
    take), or None if no split puts every header in `hits` at a zone start:
    `ftrace_size // nr_cpus`-byte zones, as many as fit in `ftrace_size`, which is a
    4 KiB multiple. CPUs whose zone holds no header are allowed anywhere (a CPU that
    traced nothing writes nothing)."""
    if open_end:
        return _ftrace_open(hits, base, end, nr_cpus, notes)
    length = end - base
    if length < 0 or (length == 0 and hits):
        return None
    if length == 0:
        return 0, nr_cpus or 1
    longest, exact = _ftrace_extent(hits)
    spacing = math.gcd(length, *(h.offset - base for h in hits))
    fits: list[tuple[int, int]] = []
    for per_cpu in _divisors_desc(spacing):
        if per_cpu < max(longest, ZoneFormat.ZONE.header_size + 1) or len(fits) > 1:
            break
        cpus = _cpus_for(per_cpu, length, nr_cpus)
        if cpus and exact in (None, per_cpu):
            fits.append((per_cpu, cpus))
    if not fits:
        return None
    ftrace, cpus = _align_up(length), fits[0][1]
    if not hits:
        notes.append(f"{length} bytes at {base:#x} hold no record: taken as an unused "
                     f"ftrace area, ftrace_size={ftrace // 1024} nr_cpus={cpus}")
    elif len(fits) > 1 and nr_cpus is None:
        notes.append(f"the ftrace headers do not show the CPU count: nr_cpus={cpus} taken "
                     f"(nr_cpus={fits[1][1]} gives the same ftrace file and erase)")
    return ftrace, cpus


def _ftrace_extent(hits: Sequence[Hit]) -> tuple[int, int | None]:
    """The longest ftrace zone the headers need, and its exact size if one wrapped."""
    longest = max((h.end - h.offset for h in hits), default=0)
    wrapped = {h.end - h.offset for h in hits if h.wrapped}
    if len(wrapped) > 1:
        raise GeometryError("wrapped ftrace zones of different sizes: give ftrace_size= "
                            "and nr_cpus=")
    return longest, (wrapped.pop() if wrapped else None)


def _cpus_for(per_cpu: int, length: int, nr_cpus: int | None) -> int | None:
    """The CPU count that makes `ftrace_size // nr_cpus == per_cpu`, with the zones
    ending `length` bytes after the first (`ftrace_size` the next 4 KiB multiple):
    the smallest, or `nr_cpus` if given and it fits."""
    if length % per_cpu:
        return None
    ftrace = _align_up(length)
    if ftrace // per_cpu != length // per_cpu:
        return None
    cpus = nr_cpus or ftrace // (per_cpu + 1) + 1
    return cpus if ftrace // cpus == per_cpu else None


def _ftrace_open(hits: Sequence[Hit], base: int, limit: int, nr_cpus: int | None,
                 notes: list[str]) -> tuple[int, int] | None:
    """ftrace_size and nr_cpus with nothing after the ftrace zones to show their end:
    the smallest split that holds the headers found (the file is the same for any),
    ending by `limit`."""
    longest, exact = _ftrace_extent(hits)
    spacing = math.gcd(*(h.offset - base for h in hits))
    if exact:
        sizes = [exact] if spacing % exact == 0 else []
    elif spacing:
        sizes = [d for d in _divisors_desc(spacing)
                 if d >= max(longest, ZoneFormat.ZONE.header_size + 1)]
    else:
        sizes = [max(min(default_size(longest), _align_down(limit - base)), longest)]
    for per_cpu in sizes:
        last = (hits[-1].offset - base) // per_cpu
        for cpus in [nr_cpus] if nr_cpus else range(last + 1, last + 4098):
            ftrace = _align_up(per_cpu * cpus)
            if base + ftrace > limit:
                break
            if cpus > last and ftrace // cpus == per_cpu and ftrace // per_cpu == cpus:
                notes.append(f"nothing after the ftrace zones shows where they end: "
                             f"ftrace_size={ftrace // 1024} nr_cpus={cpus} taken (the "
                             "ftrace file is the same for any that holds them)")
                return ftrace, cpus
    return None


def _check(geometry: Geometry, hits: Sequence[Hit], size: int) -> None:
    """Every header found sits at a zone start of its type, its data within the zone."""
    zones = {zone.offset: zone for zone in geometry.zones(size)}
    for hit in hits:
        zone = zones.get(hit.offset)
        if zone is None or zone.type is not hit.type or hit.end > zone.offset + zone.size:
            raise GeometryError(f"no layout of the kernel's puts a zone start under every "
                                f"header found (the {hit.describe()} does not fit "
                                f"{geometry.mount_options()}): give the sizes")
        if hit.wrapped and hit.end != zone.offset + zone.size:
            raise GeometryError(f"the wrapped {hit.describe()} does not fill its zone in "
                                f"{geometry.mount_options()}: give the sizes")


def records_beyond_cap(read: Reader, geometry: Geometry, size: int) -> bool:
    """Whether a 5.8-5.10 kernel wrote dmesg zones past the 128 MiB that 5.11 and later
    use: then the first zone past the cap holds a header (the zones are written in
    order, so a record further on implies one there)."""
    if not geometry.capped or size <= SZ_128M or not geometry.kmsg_size:
        return False
    capped = [z for z in geometry.zones(size) if z.type is PstoreType.DMESG]
    first = (capped[-1].offset + capped[-1].size) if capped else SZ_128M
    if first + geometry.kmsg_size > size:
        return False
    try:
        hit = _parse_hit(read(first, _LOOKAHEAD), 0, first, size)
    except PstoreError:
        return False
    return hit is not None and hit.type is PstoreType.DMESG


def detect(read: Reader, size: int, *, nr_cpus: int | None = None,
           format: ZoneFormat | None = None, erasesize: int | None = None) -> Detection:
    """The layout of a source given no size option: scan, infer, and the 128 MiB cap."""
    def peek(offset: int) -> bytes:
        try:
            return read(offset, min(_LOOKAHEAD, size - offset)) if 0 <= offset < size else b""
        except PstoreError:
            return b"?"  # unreadable is not evidence of fill: never rules a size out

    found = infer_layout(scan(read, min(size, SZ_128M)), size, nr_cpus=nr_cpus, format=format,
                         peek=peek, erasesize=erasesize)
    return uncap(read, found, size)


def zone_format_at_start(read: Reader, size: int) -> ZoneFormat | None:
    """The format of a dmesg header at offset 0, if there is one: what options that give
    the sizes but no `format=` still leave to the bytes."""
    try:
        hit = _parse_hit(read(0, _LOOKAHEAD), 0, 0, size) if size >= _LOOKAHEAD else None
    except PstoreError:
        return None  # unreadable: the listing skips that zone and says so
    if hit is None or hit.type is not PstoreType.DMESG:
        return None
    return ZoneFormat.BLKOOPS if hit.header_size == ZoneFormat.BLKOOPS.header_size else None


def uncap(read: Reader, found: Detection, size: int) -> Detection:
    """`found` with the cap lifted where a 5.8-5.10 kernel wrote past it."""
    if not records_beyond_cap(read, found.geometry, size):
        return found
    note = (f"dmesg zones past 128 MiB hold records (a Linux 5.8-5.10 writer): the whole "
            f"{size >> 20} MiB are read")
    return Detection(dataclasses.replace(found.geometry, capped=False), (*found.assumed, note))
