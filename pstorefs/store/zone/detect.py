"""The layout of a partition, found from the partition itself.

pstore/zone writes no superblock: the layout lives only in the writing kernel's module
parameters. What the partition does hold is a header at the start of every zone the
kernel ever wrote, and the kernel never writes anywhere else. So the headers are found
first (`scan.scan`), then the one set of parameters that puts a zone start under each
of them is worked out (`infer.infer_layout`, with `fronts.front_areas` for the areas
before the dmesg zones), and that set is checked against every header found. Last, a
partition larger than 128 MiB is checked for records past the 5.11 cap (`uncap`).

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
  between the headers is split accordingly (`fronts.front_areas`).

Where the bytes leave a size open and every choice gives the same files and the same
erase offsets (an unused area, a ring that has not wrapped, the CPU count of an ftrace
area, a single dmesg record), the kernel's default or the simplest split is taken and
said so; `Detection.assumed` carries the notes. Detection only reads.
"""

from __future__ import annotations

import dataclasses
import itertools

from pstorefs.errors import GeometryError, PstoreError
from pstorefs.format.abi import Abi
from pstorefs.format.consts import PstoreType, ZoneFormat
from pstorefs.format.zone import HEADER_PROBE, signature_type
from pstorefs.store.device import NextData
from pstorefs.store.zone.infer import Detection, infer_layout
from pstorefs.store.zone.layout import SZ_128M, Geometry
from pstorefs.store.zone.recovery import Probes
from pstorefs.store.zone.scan import DMESG_HITS_ENOUGH, Hit, Reader, parse_hit, peeker, scan


def detect(read: Reader, size: int, *, nr_cpus: int | None = None,
           format: ZoneFormat | None = None, erasesize: int | None = None,
           next_data: NextData | None = None) -> Detection:
    """The layout of a source given no size option: scan (skipping the holes `next_data`
    tells of), infer, and the 128 MiB cap."""
    found = infer_layout(scan(read, min(size, SZ_128M), next_data), size, nr_cpus=nr_cpus,
                         format=format, peek=peeker(read, size), erasesize=erasesize)
    return uncap(read, found, size)


def zone_format_at_start(read: Reader, size: int) -> ZoneFormat | None:
    """The format of a dmesg header at offset 0, if there is one: what options that give
    the sizes but no `format=` still leave to the bytes."""
    try:
        hit = parse_hit(read(0, HEADER_PROBE), 0, 0, size) if size >= HEADER_PROBE else None
    except PstoreError:
        return None  # unreadable: the listing skips that zone and says so
    if hit is None or hit.type is not PstoreType.DMESG:
        return None
    return ZoneFormat.BLKOOPS if hit.header_size == ZoneFormat.BLKOOPS.header_size else None


def records_beyond_cap(read: Reader, geometry: Geometry, size: int) -> bool:
    """Whether a 5.8-5.10 kernel wrote dmesg zones past the 128 MiB that 5.11 and later
    use: then the first zone past the cap holds a header (the zones are written in
    order, so a record further on implies one there). One read, whatever the size: the
    blkoops RFC had no cap to lift."""
    if (not geometry.capped or geometry.format is ZoneFormat.BLKOOPS or size <= SZ_128M
            or not geometry.kmsg_size):
        return False
    zones = geometry.zones(size)
    last = zones.dmesg(zones.dmesg_count - 1)
    first = last.offset + last.size
    if first + geometry.kmsg_size > size:
        return False
    try:
        hit = parse_hit(read(first, HEADER_PROBE), 0, first, size)
    except PstoreError:
        return False
    return hit is not None and hit.type is PstoreType.DMESG


def uncap(read: Reader, found: Detection, size: int) -> Detection:
    """`found` with the cap lifted where a 5.8-5.10 kernel wrote past it."""
    if not records_beyond_cap(read, found.geometry, size):
        return found
    note = (f"dmesg zones past 128 MiB hold records (a Linux 5.8-5.10 writer): the whole "
            f"{size >> 20} MiB are used")
    return Detection(dataclasses.replace(found.geometry, capped=False), (*found.assumed, note))


def disagreements(read: Reader, geometry: Geometry, probes: Probes, order: Abi, size: int,
                  *, flash: bool) -> str | None:
    """Where the layout given contradicts the headers its listing read, one line naming
    the layout those headers show; None where nothing contradicts it.

    No scan (its cost would follow the source, not the records): only what recovery
    read at the given zone starts, and a header's bytes where a ring zone opens with a
    dmesg signature. The signs: a zone start holding another type's header (a shifted
    front area), dmesg headers that are no one run (the kernel's round-robin leaves no
    unwritten zone between written ones, though the run may start past zone 0, as a
    5.8-5.10 writer's past 128 MiB does, and wrap; not on flash, where an erased zone
    has no header), a header claiming more than its zone holds, and a wrapped ring that
    does not fill its zone. A given size larger than the writer's shows none of these
    when its zone starts fall on the writer's: that is not caught."""
    signs: list[str] = []
    hits: list[Hit] = []
    for zone, raw in probes.rings.items():
        found = signature_type(raw)
        if found is None:
            continue
        where = f"the {zone.type.file_prefix} zone's start ({zone.offset:#x})"
        if found is not zone.type:
            signs.append(f"a {found.file_prefix} header at {where}")
        head = _header_at(read, zone.offset, size) if found is PstoreType.DMESG else raw
        hit = parse_hit(head.ljust(HEADER_PROBE, b"\0"), 0, zone.offset, size)
        if hit is None:
            continue
        hits.append(hit)
        end = zone.offset + zone.size
        if found is zone.type and (hit.end > end or (hit.wrapped and hit.end != end)):
            signs.append(f"the {found.file_prefix} header at {where} claims "
                         f"{hit.datalen} bytes, its zone {zone.buffer_size}")
    for zone, raw in probes.foreign:
        found = signature_type(raw)
        assert found is not None
        signs.append(f"a {found.file_prefix} header at dmesg zone {zone.index}'s start "
                     f"({zone.offset:#x})")
        hit = parse_hit(raw.ljust(HEADER_PROBE, b"\0"), 0, zone.offset, size)
        hits += [hit] if hit else []
    written = list(probes.dmesg)
    breaks = [k for k in range(1, len(written)) if written[k] != written[k - 1] + 1]
    wrapped = bool(written) and written[0] == 0 and written[-1] == probes.zones.dmesg_count - 1
    if not flash and len(breaks) > wrapped:
        gap = written[breaks[0] - 1] + 1
        signs.append(f"dmesg zone {gap} has no header between written ones (the kernel "
                     "writes them in turn)")
    if written:
        room = probes.zones.dmesg(0).buffer_size
        over = next(((index, datalen) for index, _sig, datalen, _magic, _raw
                     in probes.dmesg_fields(order) if datalen > room), None)
        if over:
            signs.append(f"the dmesg header of zone {over[0]} claims {over[1]} bytes, its "
                         f"zone {room}")
    if not signs:
        return None
    for zone, raw in itertools.islice(probes.dmesg_items(), DMESG_HITS_ENOUGH):
        hits += [hit] if (hit := parse_hit(raw, 0, zone.offset, size)) else []
    try:
        shown = infer_layout(sorted(hits, key=lambda hit: hit.offset), size,
                             format=geometry.format).geometry
    except GeometryError:
        shown = None
    more = f" (and {len(signs) - 1} more)" if len(signs) > 1 else ""
    verdict = ("the headers read fit no one layout: pstorectl probe without sizes searches "
               "the partition" if shown is None else
               f"detection finds {shown.mount_options()}" if dataclasses.replace(
                   shown, capped=geometry.capped) != geometry else
               "detection finds these sizes all the same (a damaged or stale header?)")
    return (f"the sizes given ({geometry.mount_options()}) contradict the headers: "
            f"{signs[0]}{more}; {verdict}")


def _header_at(read: Reader, offset: int, size: int) -> bytes:
    try:
        return read(offset, min(HEADER_PROBE, size - offset))
    except PstoreError:
        return b""
