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
from collections.abc import Iterator, Sequence

from pstorefs.errors import GeometryError
from pstorefs.format.abi import ABIS, Abi, kmsg_header_format
from pstorefs.format.ftrace import FtraceRecord, merge_zones, parse_records
from pstorefs.format.zone import kmsg_layouts_fit

RISING_SHARE = 0.9
"""pstore's ftrace timestamp is a plain, non-atomic `pstore_ftrace_stamp++`: racing CPUs
can step it back now and then, so nine pairs in ten rising is enough."""

MIN_PAIRS = 3
"""Fewer consecutive record pairs than this tell nothing about the record size."""

FTRACE_SAMPLE = 3 << 10
FTRACE_SAMPLE_ZONES = 16
"""What detection reads of the ftrace records: the newest `FTRACE_SAMPLE` bytes (a
multiple of both record sizes, 16 and 24: 128 or 192 records, so that the zone's end
stays a record's end) of at most `FTRACE_SAMPLE_ZONES` zones, whatever their size."""


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
        fits = _fits(candidates, kmsg_headers)
        votes = {abi: sum(fits[_kmsg_layout(abi)]) for abi in candidates}
        best = max(votes.values())
        if best:
            candidates = [abi for abi in candidates if votes[abi] == best]
            kept = [fits[layout] for layout in {_kmsg_layout(abi) for abi in candidates}]
            deciding = [h for h, *fit in zip(kmsg_headers, *kept, strict=True) if any(fit)]
        else:
            notes.append("no dmesg header reads as any ABI's")
    zones = [z for z in ftrace_zones if z]
    if len(candidates) > 1 and (deciding or zones):
        records = {abi: [parse_records(abi, z) for z in zones] for abi in candidates}
        if zones:
            candidates = _ftrace_fitting(candidates, records) or candidates
        if len(candidates) > 1:
            groups = _same_files(candidates, deciding, records)
            if len(groups) > 1:
                raise GeometryError(
                    "cannot tell the writer's ABI from its records: give "
                    + " or ".join(f"abi={same[0].name}" for same in groups))
            notes.append(f"{', '.join(a.name for a in candidates[1:])} would show the same files")
    chosen = candidates[0]
    if notes:
        return chosen, "; ".join(notes) + f": assuming abi={chosen.name}"
    return chosen, None


def _kmsg_layout(abi: Abi) -> str:
    """The ABI's `psz_kmsg_header` layout: ABIs of one layout (le32 and its cpuip
    variants) read every dmesg header alike, so each layout reads them once."""
    return kmsg_header_format(abi).format


def _kmsg_rows(abi: Abi, kmsg_headers: Sequence[bytes]) -> Iterator[tuple[int, ...]]:
    """Each header's fields read with `abi`, in one pass over them joined (a header
    shorter than the ABI's, which callers do not pass, reads as zero-filled)."""
    fmt = kmsg_header_format(abi)
    return fmt.iter_unpack(b"".join(h[:fmt.size].ljust(fmt.size, b"\0") for h in kmsg_headers))


def _same_header(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    """Whether two readings of a dmesg header show the same (`parse_kmsg_header` reads
    `compressed` as a truth value)."""
    return a[:3] == b[:3] and (a[3] != 0) == (b[3] != 0) and a[4:] == b[4:]


def _fits(candidates: Sequence[Abi], kmsg_headers: Sequence[bytes]) -> dict[str, list[bool]]:
    """`kmsg_layout_fits` of every header, by layout."""
    fits: dict[str, list[bool]] = {}
    for abi in candidates:
        if _kmsg_layout(abi) not in fits:
            fits[_kmsg_layout(abi)] = kmsg_layouts_fit(abi, kmsg_headers)
    return fits


def _same_files(candidates: Sequence[Abi], kmsg_headers: Sequence[bytes],
                records: dict[Abi, list[list[FtraceRecord]]]) -> list[list[Abi]]:
    """The candidates grouped by the files they would show: each compared with the
    first of every group, header by header (nothing of a partition's thousands of
    headers is kept). The caller leaves out the headers no candidate reads as the
    kernel's: they are corrupt whoever wrote them."""
    ftrace = {abi: merge_zones(records[abi]) for abi in candidates}
    kmsg_alike: dict[tuple[str, str], bool] = {}

    def alike(a: Abi, b: Abi) -> bool:
        layouts = (_kmsg_layout(a), _kmsg_layout(b))
        if layouts not in kmsg_alike:
            kmsg_alike[layouts] = layouts[0] == layouts[1] or not kmsg_headers or (
                a.kmsg_header_size == b.kmsg_header_size
                and all(map(_same_header, _kmsg_rows(a, kmsg_headers),
                                _kmsg_rows(b, kmsg_headers))))
        return ftrace[a] == ftrace[b] and kmsg_alike[layouts]

    groups: list[list[Abi]] = []
    for abi in candidates:
        same = next((group for group in groups if alike(group[0], abi)), None)
        if same is None:
            groups.append([abi])
        else:
            same.append(abi)
    return groups


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
