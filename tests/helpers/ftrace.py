"""What the ftrace tests share: the kernel's merge written as fs/pstore/ftrace.c writes it
(the oracle for `pstorefs.format.ftrace.merge_zones` and the ranged text), and text
rendered from record objects through the format layer's columns."""

from __future__ import annotations

from collections.abc import Sequence

from helpers.zone_writer import ftrace_records
from pstorefs.format.abi import Abi, ftrace_record_format
from pstorefs.format.ftrace import FtraceRecord, Names, Records, render
from pstorefs.format.kallsyms import SymbolTable


def kernel_combine(zones: Sequence[Sequence[FtraceRecord]]) -> list[FtraceRecord]:
    """`pstore_ftrace_combine_log` called for each zone in turn, as psz_ftrace_read
    and ramoops_pstore_read do: each zone merged into what came before, comparing the
    heads only (`<`: on equal timestamps the zone merged in goes first)."""
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


def render_records(records: Sequence[FtraceRecord], symbols: SymbolTable, abi: Abi) -> bytes:
    """The ftrace lines of these records (as `abi` wrote them), in this order."""
    data = ftrace_records(abi, [(r.ip, r.parent_ip, r.timestamp, r.cpu) for r in records])
    return render(Records(abi, data), Names(symbols))


def zone_text(abi: Abi, data: bytes, symbols: SymbolTable) -> bytes:
    """One zone's ftrace text, its partly overwritten first record dropped."""
    size = ftrace_record_format(abi).size
    return render(Records(abi, data[len(data) % size:]), Names(symbols))
