"""The areas in front of the dmesg zones (pmsg at 0, console, then the per-CPU ftrace
zones), from the headers found in them (`front_areas`).

The ring zones force `datalen` to their buffer size once they wrap, which gives their
size exactly; every area is a 4 KiB multiple (blk.c rounds them); the ftrace area is
cut into equal per-CPU zones that may end off 4 KiB. What lies between the headers is
split accordingly; where the bytes leave a size open and every choice gives the same
files and erase offsets, the simplest is taken and a note says so. What is assumed is
never a zone larger than kmalloc gives (`KMALLOC_MAX_SIZE`): such a kernel would not
have registered it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from typing import NamedTuple

from pstorefs.errors import GeometryError
from pstorefs.format.consts import MAX_CPUS, PstoreType, ZoneFormat
from pstorefs.store.zone.layout import KMALLOC_MAX_SIZE, align_down, align_up, default_size
from pstorefs.store.zone.scan import Hit

Notes = tuple[str, ...]
"""What was assumed where the bytes do not tell, for the user (`Detection.assumed`)."""


class FrontAreas(NamedTuple):
    """pmsg, console and ftrace sizes in bytes, the CPU count, and what was assumed."""

    pmsg: int
    console: int
    ftrace: int
    nr_cpus: int
    notes: Notes


_MAX_BASES = 64
"""Ftrace area starts tried below the next header (256 KiB): every one that fits gives
the same files, so a few are enough to find one, and a refusal stays cheap."""


def front_areas(fronts: Sequence[Hit], end: int | None, total: int,
                nr_cpus: int | None) -> FrontAreas:
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
        pmsg, console, notes = _rings_alone(pmsg_hit, console_hit, total)
        return FrontAreas(pmsg, console, 0, nr_cpus or 1, notes)
    bound = ftrace_hits[0].offset if ftrace_hits else end
    assert bound is not None
    for base in itertools.islice(_ftrace_bases(pmsg_hit, console_hit, bound), _MAX_BASES):
        found = _ftrace_area(ftrace_hits, base, total if end is None else end, end is None,
                             nr_cpus)
        if found is None:
            continue
        ftrace, cpus, ftrace_notes = found
        rings = _ring_split(pmsg_hit, console_hit, base, ftrace)
        if rings is not None:
            pmsg, console, ring_notes = rings
            return FrontAreas(pmsg, console, ftrace, cpus, (*ring_notes, *ftrace_notes))
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


def _rings_alone(pmsg_hit: Hit | None, console_hit: Hit | None,
                 total: int) -> tuple[int, int, Notes]:
    """pmsg and console sizes where nothing follows them (no ftrace, no dmesg header)."""
    if console_hit:
        pmsg = console_hit.offset
        unused = (_unused_note("pmsg", 0, pmsg),) if pmsg_hit is None and pmsg else ()
        console, notes = _ring_size_alone(console_hit, total)
        return pmsg, console, (*unused, *notes)
    assert pmsg_hit is not None
    pmsg, notes = _ring_size_alone(pmsg_hit, total)
    return pmsg, 0, notes


def _ring_size_alone(hit: Hit, total: int) -> tuple[int, Notes]:
    """A pmsg or console zone's size with nothing after it: exact once it wrapped, else
    the default (or what is left of the `total` bytes, if less)."""
    if hit.wrapped:
        return hit.end - hit.offset, ()
    size = max(min(default_size(hit.end - hit.offset), align_down(total - hit.offset)),
               align_up(hit.end - hit.offset))
    return size, (f"nothing after the {hit.type.file_prefix} zone shows its end: "
                  f"{hit.type.file_prefix}_size={size // 1024} taken",)


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
        low = align_up(ring.end)
    yield from range(align_down(bound), low - 1, -4096)


def _ring_split(pmsg_hit: Hit | None, console_hit: Hit | None, base: int,
                ftrace: int) -> tuple[int, int, Notes] | None:
    """pmsg and console sizes when the ftrace area starts at `base` (and is `ftrace`
    bytes, 0 if there is none), with notes where the bytes leave a choice; None where
    that would take a ring the bytes do not size as larger than kmalloc gives."""
    if console_hit:
        pmsg = console_hit.offset
        notes = (_unused_note("pmsg", 0, pmsg),) if pmsg_hit is None and pmsg else ()
        console = base - pmsg
        if not console_hit.wrapped and console > KMALLOC_MAX_SIZE:
            return None
        if not console_hit.wrapped and not ftrace:
            notes += (f"the console ring has not wrapped: console_size={console // 1024} "
                      "taken, up to the dmesg zones (a smaller one and an unused ftrace "
                      "area give the same files)",)
        return pmsg, console, notes
    if pmsg_hit and pmsg_hit.wrapped:
        pmsg = pmsg_hit.end
        if base - pmsg > KMALLOC_MAX_SIZE:
            return None
        return pmsg, base - pmsg, ((_unused_note("console", pmsg, base - pmsg),)
                                   if base > pmsg else ())
    if pmsg_hit:  # up to the next area, or as far as kmalloc allows and unused console
        pmsg = min(base, max(KMALLOC_MAX_SIZE, align_up(pmsg_hit.end)))
        if base - pmsg > KMALLOC_MAX_SIZE:
            return None
        return pmsg, base - pmsg, (
            f"the pmsg ring has not wrapped: pmsg_size={pmsg // 1024} taken, up to the next "
            "area or the most kmalloc gives (a smaller one and an unused console area give "
            "the same files)", *([_unused_note("console", pmsg, base - pmsg)]
                                 if base > pmsg else []))
    if base > KMALLOC_MAX_SIZE:
        return None
    return base, 0, (_unused_note("pmsg", 0, base),) if base else ()


def _unused_note(area: str, offset: int, size: int) -> str:
    return (f"{size // 1024} KiB at {offset:#x} hold no record: taken as an unused {area} "
            f"area, {area}_size={size // 1024}")


def _ftrace_area(hits: Sequence[Hit], base: int, end: int, open_end: bool,
                 nr_cpus: int | None) -> tuple[int, int, Notes] | None:
    """ftrace_size and nr_cpus for an area from `base` whose zones end at `end` (the
    first dmesg zone; with `open_end`, there is none and `end` is the most they may
    take), or None if no split puts every header in `hits` at a zone start:
    `ftrace_size // nr_cpus`-byte zones, as many as fit in `ftrace_size`, which is a
    4 KiB multiple. CPUs whose zone holds no header are allowed anywhere (a CPU that
    traced nothing writes nothing)."""
    if open_end:
        return _ftrace_open(hits, base, end, nr_cpus)
    length = end - base
    if length < 0 or (length == 0 and hits):
        return None
    if length == 0:
        return 0, nr_cpus or 1, ()
    longest, exact = _ftrace_extent(hits)
    spacing = math.gcd(length, *(h.offset - base for h in hits))
    fits: list[tuple[int, int]] = []
    for per_cpu in _divisors_desc(spacing):
        if per_cpu < max(longest, ZoneFormat.ZONE.header_size + 1) or len(fits) > 1:
            break
        if per_cpu > max(KMALLOC_MAX_SIZE, longest):
            continue  # a zone kmalloc does not give, and no record needs
        cpus = _cpus_for(per_cpu, length, nr_cpus)
        if cpus and exact in (None, per_cpu):
            fits.append((per_cpu, cpus))
    if not fits:
        return None
    ftrace, cpus = align_up(length), fits[0][1]
    if not hits:
        return ftrace, cpus, (f"{length} bytes at {base:#x} hold no record: taken as an "
                              f"unused ftrace area, ftrace_size={ftrace // 1024} "
                              f"nr_cpus={cpus}",)
    if len(fits) > 1 and nr_cpus is None:
        return ftrace, cpus, (f"the ftrace headers do not show the CPU count: nr_cpus={cpus} "
                              f"taken (nr_cpus={fits[1][1]} gives the same ftrace file and "
                              "erase)",)
    return ftrace, cpus, ()


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
    ftrace = align_up(length)
    if ftrace // per_cpu != length // per_cpu:
        return None
    cpus = nr_cpus or ftrace // (per_cpu + 1) + 1
    return cpus if ftrace // cpus == per_cpu else None


def _ftrace_open(hits: Sequence[Hit], base: int, limit: int,
                 nr_cpus: int | None) -> tuple[int, int, Notes] | None:
    """ftrace_size and nr_cpus with nothing after the ftrace zones to show their end:
    the smallest split that holds the headers found (the file is the same for any),
    ending by `limit`."""
    longest, exact = _ftrace_extent(hits)
    spacing = math.gcd(*(h.offset - base for h in hits))
    if exact:
        sizes = [exact] if spacing % exact == 0 else []
    elif spacing:
        sizes = [d for d in _divisors_desc(spacing)
                 if max(longest, ZoneFormat.ZONE.header_size + 1) <= d
                 <= max(KMALLOC_MAX_SIZE, longest)]
    else:
        sizes = [max(min(default_size(longest), align_down(limit - base)), longest)]
    for per_cpu in sizes:
        last = (hits[-1].offset - base) // per_cpu
        for cpus in [nr_cpus] if nr_cpus else range(last + 1, last + MAX_CPUS + 2):
            ftrace = align_up(per_cpu * cpus)
            if base + ftrace > limit:
                break
            if cpus > last and ftrace // cpus == per_cpu and ftrace // per_cpu == cpus:
                return ftrace, cpus, (f"nothing after the ftrace zones shows where they end: "
                                      f"ftrace_size={ftrace // 1024} nr_cpus={cpus} taken "
                                      "(the ftrace file is the same for any that holds them)",)
    return None


def _divisors_desc(value: int) -> list[int]:
    """The divisors of `value` (> 0), largest first: the per-CPU zone sizes an ftrace
    area's spacing allows, fewest CPUs first."""
    small = [d for d in range(1, math.isqrt(value) + 1) if value % d == 0]
    return sorted({*small, *(value // d for d in small)}, reverse=True)
