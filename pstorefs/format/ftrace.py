"""ftrace records: merging the per-CPU zones and the text the kernel shows for them."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from pstorefs.format.abi import Abi, ftrace_record_format
from pstorefs.format.consts import TS_CPU_SHIFT
from pstorefs.format.kallsyms import SymbolTable

_TS_CPU_MASK = (1 << TS_CPU_SHIFT) - 1
"""`TS_CPU_MASK` (include/linux/pstore.h)."""


@dataclass(frozen=True)
class FtraceRecord:
    """One `struct pstore_ftrace_record`, with the kernel's decoded CPU and time."""

    ip: int
    parent_ip: int
    cpu: int
    timestamp: int


def parse_records(abi: Abi, data: bytes) -> list[FtraceRecord]:
    """The records of one CPU zone's unwrapped bytes, decoded as include/linux/pstore.h
    does for the ABI: the CPU in the low bits of `ip` (`PSTORE_CPU_IN_IP`, `ts` as is),
    or in the low `TS_CPU_SHIFT` bits of `ts`. `ip` is kept as stored, CPU bits and all:
    that is what the kernel prints.

    Like `pstore_ftrace_combine_log`, the first `len % sizeof(record)` bytes are a
    partly overwritten record and are dropped.
    """
    fmt = ftrace_record_format(abi)
    records = fmt.iter_unpack(data[len(data) % fmt.size:])
    mask = abi.cpu_in_ip_mask
    if mask:
        return [FtraceRecord(ip, parent, ip & mask, ts) for ip, parent, ts in records]
    return [FtraceRecord(ip, parent, ts & _TS_CPU_MASK, ts >> TS_CPU_SHIFT)
            for ip, parent, ts in records]


def merge_zones(zones: Iterable[Sequence[FtraceRecord]]) -> list[FtraceRecord]:
    """Merge CPU zones in zone order exactly as `pstore_ftrace_combine_log` does:
    each zone is merged into what came before, and on equal timestamps the record of
    the zone being merged in goes first."""
    merged: list[FtraceRecord] = []
    for src in zones:
        out: list[FtraceRecord] = []
        i = j = 0
        while i < len(merged) and j < len(src):
            if merged[i].timestamp < src[j].timestamp:
                out.append(merged[i])
                i += 1
            else:
                out.append(src[j])
                j += 1
        out.extend(merged[i:])
        out.extend(src[j:])
        merged = out
    return merged


def render_text(records: Iterable[FtraceRecord], symbols: SymbolTable) -> bytes:
    """The ftrace file's text: fs/pstore/inode.c `pstore_ftrace_seq_show`, one line each:
    `CPU:%d ts:%llu %08lx  %08lx  %ps <- %pS`."""
    return "".join(
        f"CPU:{r.cpu} ts:{r.timestamp} {r.ip:08x}  {r.parent_ip:08x}  "
        f"{symbols.name(r.ip)} <- {symbols.name_offset(r.parent_ip)}\n"
        for r in records
    ).encode()
