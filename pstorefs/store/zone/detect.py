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

from pstorefs.errors import PstoreError
from pstorefs.format.consts import PstoreType, ZoneFormat
from pstorefs.format.zone import HEADER_PROBE
from pstorefs.store.device import NextData
from pstorefs.store.zone.infer import Detection, infer_layout
from pstorefs.store.zone.layout import SZ_128M, Geometry
from pstorefs.store.zone.scan import Reader, parse_hit, peeker, scan


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
