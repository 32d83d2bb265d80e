"""Where ramoops' zones are: `ramoops_probe`'s cut of the region, from the module
parameters (given as options, or found by `pstorefs.store.ramoops.detect`)."""

from __future__ import annotations

from dataclasses import dataclass

from pstorefs.errors import GeometryError
from pstorefs.format.consts import PstoreType
from pstorefs.format.ramoops import PERSISTENT_RAM_BUFFER_SIZE, ecc_geometry
from pstorefs.store.base import Zone
from pstorefs.store.lazy import LazySequence


@dataclass(frozen=True)
class RamoopsGeometry:
    """The ramoops parameters in bytes as the kernel uses them (sizes already rounded
    down to powers of two), `mem_size` being the region's size and `nr_cpus` the
    writer's `nr_cpu_ids` (module parameters always set `RAMOOPS_FLAG_FTRACE_PER_CPU`)."""

    mem_size: int
    record_size: int
    console_size: int
    ftrace_size: int
    pmsg_size: int
    ecc_size: int = 0
    nr_cpus: int = 1

    def zones(self) -> RamoopsZones:
        """Every zone in `ramoops_probe`'s order: dmesg x cnt, console, ftrace per CPU,
        pmsg. Raises GeometryError where the probe fails."""
        sizes = (self.record_size, self.console_size, self.ftrace_size, self.pmsg_size)
        if self.mem_size <= 0 or not any(sizes):
            raise GeometryError("ramoops needs a region and at least one of record_size, "
                                "console_size, ftrace_size, pmsg_size")
        if min(sizes) < 0 or self.nr_cpus < 1:
            raise GeometryError("ramoops sizes must not be negative, nr_cpus at least 1")
        dmesg_size = dmesg_count = 0
        dump_mem_sz = self.mem_size - self.console_size - self.ftrace_size - self.pmsg_size
        if self.record_size and dump_mem_sz:
            dmesg_count = _count(dump_mem_sz, self.record_size)
            dmesg_size = self._zone_size(PstoreType.DMESG, 0, dump_mem_sz, dmesg_count)
        offset = dmesg_size * dmesg_count
        tail: list[Zone] = []
        if self.console_size:
            tail.append(self._prz(PstoreType.CONSOLE, offset, self.console_size))
            offset += self.console_size
        if self.ftrace_size:
            ftrace = self._przs(PstoreType.FTRACE, offset, self.ftrace_size, self.nr_cpus)
            tail += ftrace
            offset = ftrace[-1].offset + ftrace[-1].size
        if self.pmsg_size:
            tail.append(self._prz(PstoreType.PMSG, offset, self.pmsg_size))
        for size in dict.fromkeys([dmesg_size] * bool(dmesg_count) + [z.size for z in tail]):
            ecc_geometry(size, self.ecc_size)  # raises where a zone has no room for it
        return RamoopsZones(dmesg_size, dmesg_count, tail)

    def _przs(self, ptype: PstoreType, offset: int, mem_sz: int, cnt: int) -> list[Zone]:
        """`ramoops_init_przs`: `cnt` zones of `ALIGN_DOWN(mem_sz / cnt, 2)` bytes."""
        zone_sz = self._zone_size(ptype, offset, mem_sz, cnt)
        return [Zone(ptype, i, offset + i * zone_sz, zone_sz, PERSISTENT_RAM_BUFFER_SIZE)
                for i in range(cnt)]

    def _zone_size(self, ptype: PstoreType, offset: int, mem_sz: int, cnt: int) -> int:
        """The size of each of `ramoops_init_przs`' `cnt` zones in `mem_sz` bytes."""
        self._check_room(ptype, offset, mem_sz)
        zone_sz = mem_sz // cnt // 2 * 2
        if not zone_sz:
            raise GeometryError(f"ramoops {ptype.file_prefix} zone size is 0 "
                                f"({mem_sz} bytes over {cnt} zones)")
        return zone_sz

    def _prz(self, ptype: PstoreType, offset: int, size: int) -> Zone:
        """`ramoops_init_prz`: one zone of exactly `size` bytes."""
        self._check_room(ptype, offset, size)
        return Zone(ptype, 0, offset, size, PERSISTENT_RAM_BUFFER_SIZE)

    def _check_room(self, ptype: PstoreType, offset: int, size: int) -> None:
        if size < 0 or offset + size > self.mem_size:
            raise GeometryError(f"no room for the ramoops {ptype.file_prefix} area "
                                f"({size} bytes at {offset:#x}) in a {self.mem_size}-byte "
                                "region")

    def kernel_parameters(self) -> str:
        """The module parameters that give this layout, and only those (`mem_address` is
        the region's physical address, which an image does not tell; `nr_cpus`, the
        writer's CPU count, is none of them)."""
        return " ".join([f"ramoops.mem_size={self.mem_size}",
                         f"ramoops.record_size={self.record_size}",
                         f"ramoops.console_size={self.console_size}",
                         f"ramoops.ftrace_size={self.ftrace_size}",
                         f"ramoops.pmsg_size={self.pmsg_size}", f"ramoops.ecc={self.ecc_size}"])

    def mount_options(self) -> str:
        """The `-o` options that pin this layout (ramoops' names, sizes in bytes)."""
        return (f"backend=ramoops,record_size={self.record_size},"
                f"console_size={self.console_size},ftrace_size={self.ftrace_size},"
                f"pmsg_size={self.pmsg_size},ecc={self.ecc_size},nr_cpus={self.nr_cpus}")


class RamoopsZones(LazySequence[Zone]):
    """Every zone of a region, in `ramoops_probe`'s order: `dmesg_count` dmesg zones of
    one size from 0, each made when asked for (an image of a large region has
    millions), then the few of console, ftrace and pmsg (`tail`)."""

    def __init__(self, dmesg_size: int, dmesg_count: int, tail: list[Zone]) -> None:
        self.dmesg_size = dmesg_size
        self.dmesg_count = dmesg_count
        self.tail = tail

    def dmesg(self, index: int) -> Zone:
        """The dmesg zone of that index."""
        return Zone(PstoreType.DMESG, index, index * self.dmesg_size, self.dmesg_size,
                    PERSISTENT_RAM_BUFFER_SIZE)

    def __len__(self) -> int:
        return self.dmesg_count + len(self.tail)

    def _item(self, at: int) -> Zone:
        return self.dmesg(at) if at < self.dmesg_count else self.tail[at - self.dmesg_count]


def _count(mem_sz: int, record_size: int) -> int:
    cnt = mem_sz // record_size if mem_sz > 0 else 0
    if cnt == 0:
        raise GeometryError(f"record_size={record_size}: no dmesg zone fits in the "
                            f"{max(mem_sz, 0)} bytes left for dmesg")
    return cnt
