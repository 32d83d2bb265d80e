"""Where ramoops' zones are: `ramoops_probe`'s cut of the region, from the module
parameters (given as options, or found by `pstorefs.store.ramoops.detect`)."""

from __future__ import annotations

from dataclasses import dataclass

from pstorefs.errors import GeometryError
from pstorefs.format.consts import PstoreType
from pstorefs.format.ramoops import PERSISTENT_RAM_BUFFER_SIZE, ecc_geometry
from pstorefs.store.base import Zone


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

    def zones(self) -> list[Zone]:
        """Every zone in `ramoops_probe`'s order: dmesg x cnt, console, ftrace per CPU,
        pmsg. Raises GeometryError where the probe fails."""
        sizes = (self.record_size, self.console_size, self.ftrace_size, self.pmsg_size)
        if self.mem_size <= 0 or not any(sizes):
            raise GeometryError("ramoops needs a region and at least one of record_size, "
                                "console_size, ftrace_size, pmsg_size")
        if min(sizes) < 0 or self.nr_cpus < 1:
            raise GeometryError("ramoops sizes must not be negative, nr_cpus at least 1")
        zones: list[Zone] = []
        dump_mem_sz = self.mem_size - self.console_size - self.ftrace_size - self.pmsg_size
        if self.record_size and dump_mem_sz:
            zones += self._przs(PstoreType.DMESG, 0, dump_mem_sz,
                                _count(dump_mem_sz, self.record_size))
        offset = zones[-1].offset + zones[-1].size if zones else 0
        if self.console_size:
            zones.append(self._prz(PstoreType.CONSOLE, offset, self.console_size))
            offset += self.console_size
        if self.ftrace_size:
            ftrace = self._przs(PstoreType.FTRACE, offset, self.ftrace_size, self.nr_cpus)
            zones += ftrace
            offset = ftrace[-1].offset + ftrace[-1].size
        if self.pmsg_size:
            zones.append(self._prz(PstoreType.PMSG, offset, self.pmsg_size))
        for zone in zones:
            ecc_geometry(zone.size, self.ecc_size)
        return zones

    def _przs(self, ptype: PstoreType, offset: int, mem_sz: int, cnt: int) -> list[Zone]:
        """`ramoops_init_przs`: `cnt` zones of `ALIGN_DOWN(mem_sz / cnt, 2)` bytes."""
        self._check_room(ptype, offset, mem_sz)
        zone_sz = mem_sz // cnt // 2 * 2
        if not zone_sz:
            raise GeometryError(f"ramoops {ptype.file_prefix} zone size is 0 "
                                f"({mem_sz} bytes over {cnt} zones)")
        return [Zone(ptype, i, offset + i * zone_sz, zone_sz, PERSISTENT_RAM_BUFFER_SIZE)
                for i in range(cnt)]

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


def _count(mem_sz: int, record_size: int) -> int:
    cnt = mem_sz // record_size if mem_sz > 0 else 0
    if cnt == 0:
        raise GeometryError(f"record_size={record_size}: no dmesg zone fits in the "
                            f"{max(mem_sz, 0)} bytes left for dmesg")
    return cnt
