"""Which ABI wrote a partition, told from its records alone (no I/O).

A partition does not say which kernel wrote it, and zone.c writes its structs as they
are in memory. The records themselves tell most ABIs apart:

* the byte order of the zone signatures gives the writer's (the caller reads it);
* each dmesg header is read with every ABI of that byte order, and those that read it
  as the kernel writes it (`kmsg_layout_fits`) get its vote: this tells a 28-byte
  header (i386) from a 40-byte one;
* the ftrace records tell 24- from 16-byte records, and for 32-bit ARM where the kernel
  keeps the CPU: zone.c writes each record to the zone of the CPU it ran on
  (`fpszs[smp_processor_id()]`), so under the right decoding every zone holds one CPU
  number, and the timestamps, a global counter, rise.

What is left can be the same for the files shown (le64 and le32 read every LE dmesg
header alike): then the preferred ABI is taken, and a note says so. Only where the
remaining ABIs would show different files is the user asked to choose with `abi=`.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from pstorefs.errors import GeometryError
from pstorefs.format.abi import ABIS, Abi
from pstorefs.format.ftrace import FtraceRecord, merge_zones, parse_records
from pstorefs.format.zone import kmsg_layout_fits, parse_kmsg_header

RISING_SHARE = 0.9
"""pstore's ftrace timestamp is a plain, non-atomic `pstore_ftrace_stamp++`: racing CPUs
can step it back now and then, so nine pairs in ten rising is enough."""

MIN_PAIRS = 3
"""Fewer consecutive record pairs than this tell nothing about the record size."""


def detect_abi(*, little_endian: bool, kmsg_headers: Sequence[bytes],
               ftrace_zones: Sequence[bytes]) -> tuple[Abi, str | None]:
    """The writer's ABI, and a one-line note of what was assumed (None if nothing was).

    `kmsg_headers`: the bytes after the zone header of each dmesg zone whose zone
    header is valid (at least 40 bytes each). `ftrace_zones`: each ftrace zone's data
    in write order (empty for a zone without a record). Raises GeometryError, naming the
    `abi=` values that settle it, only where the candidates left would show different
    files for the records present; with no record at all, the byte order's preferred
    ABI is returned.
    """
    candidates = [abi for abi in ABIS.values() if abi.little_endian == little_endian]
    notes = []
    deciding: list[bytes] = []
    if kmsg_headers:
        votes = {abi: sum(kmsg_layout_fits(abi, h) for h in kmsg_headers) for abi in candidates}
        best = max(votes.values())
        if best:
            candidates = [abi for abi in candidates if votes[abi] == best]
            deciding = [h for h in kmsg_headers
                        if any(kmsg_layout_fits(abi, h) for abi in candidates)]
        else:
            notes.append("no dmesg header reads as any ABI's")
    zones = [z for z in ftrace_zones if z]
    if len(candidates) > 1 and (deciding or zones):
        records = {abi: [parse_records(abi, z) for z in zones] for abi in candidates}
        if zones:
            candidates = _ftrace_fitting(candidates, records) or candidates
        if len(candidates) > 1:
            groups: dict[object, list[Abi]] = {}
            for abi in candidates:
                groups.setdefault(_files_view(abi, deciding, records[abi]), []).append(abi)
            if len(groups) > 1:
                raise GeometryError(
                    "cannot tell the writer's ABI from its records: give "
                    + " or ".join(f"abi={same[0].name}" for same in groups.values()))
            notes.append(f"{', '.join(a.name for a in candidates[1:])} would show the same files")
    chosen = candidates[0]
    if notes:
        return chosen, "; ".join(notes) + f": assuming abi={chosen.name}"
    return chosen, None


def _files_view(abi: Abi, kmsg_headers: Sequence[bytes],
                zones: Sequence[Sequence[FtraceRecord]]) -> object:
    """What the files would show when read with `abi`: ABIs with equal views are the same
    for this partition. (The caller leaves out the headers no candidate reads as the
    kernel's: they are corrupt whoever wrote them.)"""
    kmsg = ((abi.kmsg_header_size, tuple(parse_kmsg_header(abi, h, 0) for h in kmsg_headers))
            if kmsg_headers else None)
    return kmsg, tuple(merge_zones(zones))


def _ftrace_fitting(candidates: Sequence[Abi],
                    records: dict[Abi, list[list[FtraceRecord]]]) -> list[Abi]:
    """The candidates under which the ftrace records read as the kernel wrote them:
    one CPU number per zone, and timestamps rising."""
    fitting = [abi for abi in candidates
               if all(len({r.cpu for r in zone}) <= 1 for zone in records[abi])
               and _rising(records[abi])]
    shifted = [abi for abi in fitting if not abi.cpu_in_ip_mask]
    if any(len(zone) >= 2 for abi in shifted for zone in records[abi]):
        # With the CPU in `ip`, the low byte of `ts` is the call counter and changes from
        # call to call; with it in `ts`, the low bits of `ip` are constant anyway (ARM
        # code is 4-byte aligned, Thumb-2 code 2-byte). A constant low byte of `ts` over
        # two records or more settles it.
        return shifted
    wide = [abi for abi in fitting if abi.cpu_in_ip_mask == 0x3]
    if wide and any(len(zone) >= 2 and zone[0].cpu & 0x2 for zone in records[wide[0]]):
        # A 0x1 kernel's ip bit 1 is 0 (ARM code) or an address bit that varies
        # (Thumb-2 code); set in every record of a zone, it is the CPU number's.
        return [abi for abi in fitting if abi.cpu_in_ip_mask != 0x1]
    return fitting


def _rising(zones: Sequence[Sequence[FtraceRecord]]) -> bool:
    pairs = rising = 0
    for zone in zones:
        pairs += max(len(zone) - 1, 0)
        rising += sum(a.timestamp <= b.timestamp for a, b in itertools.pairwise(zone))
    return pairs >= MIN_PAIRS and rising >= RISING_SHARE * pairs
