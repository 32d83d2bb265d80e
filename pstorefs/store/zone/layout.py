"""Where the zones are: the kernel's `psz_alloc_zones`, from the module parameters
(given as options, `geometry_from_options`, or detected, `pstorefs.store.zone.detect`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pstorefs.errors import GeometryError
from pstorefs.format.consts import PSZ_BUFFER_SIZE, PstoreType, ZoneFormat
from pstorefs.store.base import Zone
from pstorefs.store.config import StoreConfig
from pstorefs.store.lazy import LazySequence

log = logging.getLogger(__name__)

SZ_128M = 128 << 20
"""pstore/zone caps the area it uses at 128 MiB since Linux 5.11."""

DEFAULT_SIZE = 64 << 10
"""The kernel's default for every area (CONFIG_PSTORE_BLK_*_SIZE, blkoops' dmesg_size)."""


KMALLOC_MAX_SIZE = 4 << 20
"""The largest zone a kernel with 4 KiB pages registers: `psz_init_zone` kmallocs every
zone whole (dmesg, pmsg, console, each CPU's ftrace zone), and kmalloc refuses more than
KMALLOC_MAX_SIZE, `1 << (MAX_ORDER + PAGE_SHIFT - 1)` (include/linux/slab.h; since 6.4
`MAX_PAGE_ORDER + PAGE_SHIFT`): 4 MiB with 4 KiB pages and every architecture's default
order. Only larger pages or a raised order (arm64, ppc64 with 64 KiB pages) allow more.
Detection never assumes a zone larger than this where the bytes leave the size open."""


MIN_SOURCE_SIZE = 4096
"""The least pstore/zone can use: one 4 KiB zone."""


def check_source_size(source_size: int, source: str = "the source") -> None:
    """GeometryError for a source too small for any layout: said before a layout is
    searched for, so that no layout is detected on it first."""
    if source_size < MIN_SOURCE_SIZE:
        raise GeometryError(f"{source} holds {source_size} bytes; pstore/zone needs at "
                            f"least {MIN_SOURCE_SIZE}")


def default_size(extent: int) -> int:
    """The size assumed for an area whose end the bytes do not show: the kernel's
    default, or the smallest power of two (in 4 KiB) that holds what was found, but
    never more than a zone kmalloc gives (`KMALLOC_MAX_SIZE`) unless the data is."""
    size = DEFAULT_SIZE
    if extent > size:
        size = 4096
        while size < extent:
            size *= 2
    return max(min(size, KMALLOC_MAX_SIZE), align_up(extent))


def align_up(value: int, to: int = 4096) -> int:
    return -(-value // to) * to


def align_down(value: int, to: int = 4096) -> int:
    return value // to * to


class ZoneList(LazySequence[Zone]):
    """Every zone, in the kernel's order: the few of pmsg, console and ftrace as they
    are, then the dmesg zones, all of one size one after the other and as many as
    16,384 on a 128 MiB partition (more past the cap), each made when asked for."""

    def __init__(self, rings: list[Zone], dmesg_offset: int, dmesg_size: int,
                 dmesg_count: int, header_size: int = PSZ_BUFFER_SIZE) -> None:
        self.rings = rings
        self.dmesg_count = dmesg_count
        self._dmesg = (dmesg_offset, dmesg_size, header_size)

    def dmesg(self, index: int) -> Zone:
        """The dmesg zone of that index."""
        offset, size, header_size = self._dmesg
        return Zone(PstoreType.DMESG, index, offset + index * size, size, header_size)

    def at(self, offset: int) -> Zone | None:
        """The zone that starts at `offset`, if one does: worked out, not searched for
        among the millions of zones of a whole disk without the cap."""
        for zone in self.rings:
            if zone.offset == offset:
                return zone
        start, size, _ = self._dmesg
        if not size or offset < start or (offset - start) % size:
            return None
        index = (offset - start) // size
        return self.dmesg(index) if index < self.dmesg_count else None

    def __len__(self) -> int:
        return len(self.rings) + self.dmesg_count

    def _item(self, at: int) -> Zone:
        return self.rings[at] if at < len(self.rings) else self.dmesg(at - len(self.rings))


def kib_to_bytes(name: str, kib: int) -> int:
    """A size parameter as pstore/blk's `check_size` turns it into bytes: ≤ 0 turns the
    area off; a value that is not a multiple of 4 KiB becomes `ALIGN(kib, 4096)` —
    the kernel aligns the KiB number, not the byte count, and we read what it wrote."""
    if kib <= 0:
        return 0
    size = kib * 1024
    if size % 4096:
        aligned = (kib + 4095) // 4096 * 4096
        log.warning("%s=%d is not a multiple of 4 KiB: the kernel uses %d bytes, and so do we",
                    name, kib, aligned)
        return aligned
    return size


@dataclass(frozen=True)
class Geometry:
    """The writer's pstore/blk parameters, in bytes (`nr_cpus` is its `nr_cpu_ids`).

    `capped`: the area ends at 128 MiB, as since Linux 5.11; 5.8-5.10 and the blkoops
    RFC used the whole partition.
    """

    kmsg_size: int
    pmsg_size: int = 0
    console_size: int = 0
    ftrace_size: int = 0
    nr_cpus: int = 1
    format: ZoneFormat = ZoneFormat.ZONE
    capped: bool = True

    def kernel_parameters(self) -> str:
        """The writer's module parameters that give this layout, as a kernel command line
        would carry them: only those. `nr_cpus` is the writer's CPU count, not one of
        them (`nr_cpus=` on a command line is the boot parameter that limits the CPUs)."""
        if self.format is ZoneFormat.BLKOOPS:
            return f"blkoops.dmesg_size={self.kmsg_size // 1024}"
        params = [f"pstore_blk.{key}={value // 1024}" for key, value in (
            ("kmsg_size", self.kmsg_size), ("pmsg_size", self.pmsg_size),
            ("console_size", self.console_size), ("ftrace_size", self.ftrace_size))]
        return " ".join(params)

    def impossible_zones(self) -> tuple[str, ...]:
        """What of this layout no kernel with 4 KiB pages registers: a zone larger than
        kmalloc gives (`KMALLOC_MAX_SIZE`), one line each, for `pstorectl probe`."""
        per_cpu = self.ftrace_size // self.nr_cpus if self.nr_cpus > 0 else 0
        return tuple(
            f"{what} of {size // 1024} KiB: more than the {KMALLOC_MAX_SIZE >> 20} MiB "
            "kmalloc gives a zone with 4 KiB pages (psz_init_zone would fail): only a "
            "writer with larger pages registers this layout; check the sizes"
            for what, size in (("dmesg zones", self.kmsg_size), ("a pmsg zone", self.pmsg_size),
                               ("a console zone", self.console_size),
                               ("ftrace zones", per_cpu))
            if size > KMALLOC_MAX_SIZE)

    def mount_options(self) -> str:
        """The `-o` options that pin this layout (pstorefs' names, sizes in KiB)."""
        opts = [f"kmsg_size={self.kmsg_size // 1024}", f"pmsg_size={self.pmsg_size // 1024}",
                f"console_size={self.console_size // 1024}",
                f"ftrace_size={self.ftrace_size // 1024}", f"nr_cpus={self.nr_cpus}"]
        if self.format is not ZoneFormat.ZONE:
            opts.append(f"format={self.format.value}")
        return ",".join(opts)

    def zones(self, source_size: int) -> ZoneList:
        """Every zone, in the kernel's order: pmsg, console, ftrace per CPU, dmesg.

        Raises GeometryError where the kernel's `register_pstore_zone` would refuse.
        """
        check_source_size(source_size)
        if self.format is ZoneFormat.BLKOOPS:
            return self._blkoops_zones(source_size)
        total = min(source_size, SZ_128M) if self.capped else source_size
        if not (self.kmsg_size or self.pmsg_size or self.console_size or self.ftrace_size):
            raise GeometryError("every zone size is 0: at least one of kmsg_size, pmsg_size, "
                                "console_size, ftrace_size must be set")
        if self.nr_cpus < 1:
            raise GeometryError("nr_cpus must be at least 1")
        zones: list[Zone] = []
        offset = 0
        for ptype, size in ((PstoreType.PMSG, self.pmsg_size),
                            (PstoreType.CONSOLE, self.console_size)):
            if size:
                self._check_room(ptype, offset, size, total)
                zones.append(Zone(ptype, 0, offset, size))
                offset += size
        if self.ftrace_size:
            self._check_room(PstoreType.FTRACE, offset, self.ftrace_size, total)
            per_cpu = self.ftrace_size // self.nr_cpus
            if per_cpu <= PSZ_BUFFER_SIZE:
                raise GeometryError(f"ftrace_size={self.ftrace_size // 1024} KiB split over "
                                    f"{self.nr_cpus} CPUs leaves no room for records")
            for cpu in range(self.ftrace_size // per_cpu):
                zones.append(Zone(PstoreType.FTRACE, cpu, offset, per_cpu))
                offset += per_cpu
        if self.kmsg_size:
            room = total - (self.pmsg_size + self.console_size + self.ftrace_size)
            count = room // self.kmsg_size if room > 0 else 0
            if count == 0:
                raise GeometryError(f"kmsg_size={self.kmsg_size // 1024} KiB: no dmesg zone "
                                    f"fits in the {total} bytes of the source")
            return ZoneList(zones, offset, self.kmsg_size, count)
        return ZoneList(zones, offset, 0, 0)

    def _blkoops_zones(self, source_size: int) -> ZoneList:
        """`blkz_cut_zones` of the RFC: dmesg zones from offset 0 over the whole partition."""
        if self.pmsg_size or self.console_size or self.ftrace_size:
            raise GeometryError("the blkoops format has dmesg zones only: pmsg_size, "
                                "console_size and ftrace_size must be 0")
        if self.kmsg_size <= 0 or self.kmsg_size > source_size:
            raise GeometryError(f"kmsg_size={self.kmsg_size // 1024} KiB: no dmesg zone fits "
                                f"in the {source_size} bytes of the source")
        return ZoneList([], 0, self.kmsg_size, source_size // self.kmsg_size,
                        ZoneFormat.BLKOOPS.header_size)

    @staticmethod
    def _check_room(ptype: PstoreType, offset: int, size: int, total: int) -> None:
        if offset + size > total:
            raise GeometryError(f"no room for the {ptype.file_prefix} zone "
                                f"({size} bytes at {offset:#x}) in a {total}-byte source")


def geometry_from_options(config: StoreConfig) -> Geometry:
    """The layout the given options describe: sizes in KiB as the kernel's parameters,
    a size not given taking the kernel's value for "not set" (kmsg 64, the rest off)."""
    return Geometry(kmsg_size=kib_to_bytes("kmsg_size", 64 if config.kmsg_size is None
                                           else config.kmsg_size),
                    pmsg_size=kib_to_bytes("pmsg_size", config.pmsg_size or 0),
                    console_size=kib_to_bytes("console_size", config.console_size or 0),
                    ftrace_size=kib_to_bytes("ftrace_size", config.ftrace_size or 0),
                    nr_cpus=1 if config.nr_cpus is None else config.nr_cpus,
                    format=config.zone_format or ZoneFormat.ZONE)
