"""The layout that puts a zone start under every header found (`infer_layout`).

Two facts of zone.c settle what the headers alone would leave open. dmesg zones are
written round-robin from zone 0 on a fresh partition, and an erased zone keeps its
header: so the written zones are one run from zone 0, the first dmesg header found is
zone 0, and the zone size is the spacing of the headers (a gap in the run means stale
headers of another layout, and detection refuses rather than number records on a
guess). The areas in front of the dmesg zones are `fronts`' work.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

from pstorefs.errors import GeometryError
from pstorefs.format.consts import PstoreType, ZoneFormat
from pstorefs.store.zone.fronts import Notes, front_areas
from pstorefs.store.zone.layout import (
    DEFAULT_SIZE,
    KMALLOC_MAX_SIZE,
    SZ_128M,
    Geometry,
    align_down,
    align_up,
    default_size,
)
from pstorefs.store.zone.scan import Hit, Peek, holds_data, offsets, parse_hit


@dataclass(frozen=True)
class Detection:
    """The layout found, and what was assumed where the bytes do not tell."""

    geometry: Geometry
    assumed: tuple[str, ...] = ()
    found_nothing: bool = False
    """No zone header anywhere: nothing to read, and nothing to erase."""


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
        kmsg = min(DEFAULT_SIZE, align_down(total))
        return Detection(Geometry(kmsg_size=kmsg, format=fmt), (
            "no zone header found (an unused partition): "
            f"kmsg_size={kmsg // 1024} taken (the kernel's default, or what fits)",),
            found_nothing=True)
    notes: Notes = ()
    dmesg = [hit for hit in hits if hit.type is PstoreType.DMESG]
    fronts = [hit for hit in hits if hit.type is not PstoreType.DMESG]
    if erasesize is not None:
        if fronts or fmt is not ZoneFormat.ZONE:
            raise GeometryError(f"mtdpstore has dmesg zones only, but a "
                                f"{(fronts or dmesg)[0].describe()} was found: give the sizes")
        kmsg, notes = _flash_kmsg_size(dmesg, total, erasesize, peek)
        geometry = Geometry(kmsg_size=kmsg)
    elif fmt is ZoneFormat.BLKOOPS:
        if fronts:
            raise GeometryError(f"the blkoops format has dmesg zones only, but a "
                                f"{fronts[0].describe()} was found: give the sizes")
        if dmesg[0].offset != 0:
            raise GeometryError(f"the first blkoops dmesg zone found is at "
                                f"{dmesg[0].offset:#x}, not 0: give kmsg_size=")
        kmsg, notes = _kmsg_size(dmesg, total, peek)
        geometry = Geometry(kmsg_size=kmsg, format=fmt)
    else:
        if dmesg and fronts and fronts[-1].offset > dmesg[0].offset:
            raise GeometryError(f"a {fronts[-1].describe()} lies after the dmesg header at "
                                f"{dmesg[0].offset:#x}; the kernel puts pmsg, console and "
                                "ftrace first: give the sizes")
        start = dmesg[0].offset if dmesg else None
        try:
            areas = front_areas(fronts, start, total, nr_cpus)
        except GeometryError:
            if fronts or not dmesg:
                raise
            kmsg, notes = _kmsg_from_zero(dmesg, size, peek)
            geometry = Geometry(kmsg_size=kmsg, format=fmt)
            _check(geometry, hits, size)
            return Detection(geometry, notes)
        room = total - (areas.pmsg + areas.console + areas.ftrace)
        if dmesg:
            kmsg, kmsg_notes = _kmsg_size(dmesg, room, peek)
            _check_leading_gap(dmesg[0].offset, kmsg, fronts, peek)
        else:
            kmsg = min(DEFAULT_SIZE, align_down(max(room, 0)))
            kmsg_notes = (f"no dmesg header found: kmsg_size={kmsg // 1024} taken (the "
                          "kernel's default, or what fits; there is no dmesg record either "
                          "way)",)
        notes = (*areas.notes, *kmsg_notes)
        geometry = Geometry(kmsg_size=kmsg, pmsg_size=areas.pmsg, console_size=areas.console,
                            ftrace_size=areas.ftrace, nr_cpus=areas.nr_cpus, format=fmt)
    _check(geometry, hits, size)
    return Detection(geometry, notes)


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


def _kmsg_size(dmesg: Sequence[Hit], room: int, peek: Peek) -> tuple[int, Notes]:
    """The dmesg zone size: the spacing of the headers (the written zones are one run
    from zone 0), or with a single header the kernel's default (if `room`, the bytes
    the dmesg zones share, holds it)."""
    longest = max(hit.end - hit.offset for hit in dmesg)
    if len(dmesg) == 1:
        kmsg = min(default_size(longest), align_down(room))
        if kmsg < longest:
            raise GeometryError(f"the dmesg record at {dmesg[0].offset:#x} is {longest} "
                                f"bytes long, but only {room} bytes are left for dmesg "
                                "zones: give the sizes")
        return kmsg, (f"one dmesg record does not show the zone size: kmsg_size="
                      f"{kmsg // 1024} taken (the files and the erase are the same for any "
                      "size that holds it)",)
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
        if any(holds_data(peek(at)) for at in between):
            raise GeometryError(
                f"dmesg headers at {offsets(dmesg)} fit {spacing // 1024} KiB zones, or "
                f"{smaller // 1024} KiB zones with a zone between them whose header is "
                "damaged (bytes where it would start): give kmsg_size=")
    return spacing, ()


def _kmsg_from_zero(dmesg: Sequence[Hit], size: int, peek: Peek) -> tuple[int, Notes]:
    """The dmesg zone size where no ring header comes first and the space before the
    first dmesg header is more than an unused pmsg zone can be (`front_areas` found no
    split: kmalloc gives at most 4 MiB a zone, and a console area is written from boot
    on): that space is dmesg zones from 0 never written (a 5.8-5.10 writer that went
    on past 128 MiB, say). The size puts a zone start under every header, the headers
    one run of zones; a lone header needs a dmesg header at its next zone start (within
    the source, past the cap too) to tell the size."""
    first = dmesg[0].offset
    longest = max(hit.end - hit.offset for hit in dmesg)
    step = math.gcd(*(hit.offset for hit in dmesg))
    sizes = [k for k in range(max(4096, align_up(longest)), min(step, KMALLOC_MAX_SIZE) + 1,
                              4096) if step % k == 0]
    if len(dmesg) > 1:
        sizes = [k for k in sizes
                 if [hit.offset // k for hit in dmesg] == list(range(first // k,
                                                                     first // k + len(dmesg)))]
    else:  # the next zone's header, if one was written, tells the sizes apart
        sizes = [k for k in sizes if _dmesg_header_at(first + k, size, peek)] or sizes
    if len(sizes) != 1:
        fitting = (f"zones of {' or '.join(str(k // 1024) for k in sizes)} KiB fit the "
                   "headers and number them differently" if sizes else
                   "no zone size fits the headers")
        raise GeometryError(
            f"the {first // 1024} KiB before the first dmesg header ({first:#x}) hold no "
            f"header, more than an unused pmsg zone can be ({KMALLOC_MAX_SIZE >> 20} MiB, "
            f"what kmalloc gives with 4 KiB pages), so dmesg zones start at 0; {fitting}: "
            "give kmsg_size=")
    kmsg = sizes[0]
    return kmsg, (f"the {first // 1024} KiB before the first dmesg header hold no header, "
                  f"more than an unused pmsg zone can be ({KMALLOC_MAX_SIZE >> 20} MiB, what "
                  "kmalloc gives with 4 KiB pages): taken as dmesg zones from 0 never "
                  f"written, kmsg_size={kmsg // 1024}",)


def _dmesg_header_at(offset: int, size: int, peek: Peek) -> bool:
    hit = parse_hit(peek(offset), 0, offset, size)
    return hit is not None and hit.type is PstoreType.DMESG


def _flash_kmsg_size(dmesg: Sequence[Hit], room: int, erasesize: int,
                     peek: Peek) -> tuple[int, Notes]:
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

    sizes = [k for k in range(4096, min(erasesize, align_down(room)) + 1, 4096) if fits(k)]
    if not sizes:
        raise GeometryError(f"dmesg headers at {offsets(dmesg)} fit no mtdpstore zone size "
                            f"of at most the {erasesize}-byte erase block: give kmsg_size=")
    names = {tuple(o // k for o in sorted(headers)) for k in sizes}
    if len(names) == 1:
        kmsg = DEFAULT_SIZE if DEFAULT_SIZE in sizes else sizes[-1]
        if len(sizes) > 1:
            return kmsg, (f"the dmesg headers do not show the zone size: kmsg_size="
                          f"{kmsg // 1024} taken (the files are the same for any that fits)",)
        return kmsg, ()
    if DEFAULT_SIZE not in sizes:
        raise GeometryError(f"dmesg headers at {offsets(dmesg)} fit mtdpstore zones of "
                            + " or ".join(f"{k // 1024}" for k in sizes)
                            + " KiB, which number the records differently (an erased zone "
                            "looks unwritten on flash): give kmsg_size=")
    return DEFAULT_SIZE, ("the dmesg headers fit zones of " + " or ".join(
        f"{k // 1024}" for k in sizes) + " KiB (an erased zone looks unwritten on flash): "
        "the kernel's default kmsg_size=64 taken; if the writer used another, give it, as "
        "the records' numbers depend on it",)


def _check_leading_gap(start: int, kmsg: int, fronts: Sequence[Hit], peek: Peek) -> None:
    """The first dmesg header is taken as zone 0; a whole zone before it holding bytes
    (a zone 0 whose header is damaged) would make every name one off. Only where no
    ring header comes first: before those, the bytes may be an erased ring's."""
    if fronts:
        return  # the space is ring areas then, whose erased zones keep stale bytes
    for zone in range(start - kmsg, -1, -kmsg):
        if holds_data(peek(zone)):
            raise GeometryError(f"bytes at {zone:#x}, a dmesg zone's size before the first "
                                f"dmesg header ({start:#x}), may be a zone whose header is "
                                "damaged, which would change every record's number: give "
                                "the sizes")


def _check(geometry: Geometry, hits: Sequence[Hit], size: int) -> None:
    """Every header found sits at a zone start of its type, its data within the zone."""
    zones = geometry.zones(size)
    for hit in hits:
        zone = zones.at(hit.offset)
        if zone is None or zone.type is not hit.type or hit.end > zone.offset + zone.size:
            raise GeometryError(f"no layout of the kernel's puts a zone start under every "
                                f"header found (the {hit.describe()} does not fit "
                                f"{geometry.mount_options()}): give the sizes")
        if hit.wrapped and hit.end != zone.offset + zone.size:
            raise GeometryError(f"the wrapped {hit.describe()} does not fill its zone in "
                                f"{geometry.mount_options()}: give the sizes")
