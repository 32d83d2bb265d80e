"""ftrace records: merging the per-CPU zones and the text the kernel shows for them.

Two forms of the same rules. `parse_records` and `merge_zones` make a record object
each, for the few records ABI detection samples. `RecordColumns`, `render` and
`text_length` work on a batch of records field by field, in C loops (struct, slices,
bytes formatting), so that a file of millions of records is sized and rendered by
ranges at tens of MB/s without an object per record (`pstorefs.store.ftrace`).

The kernel's merge (`pstore_ftrace_combine_log`, each zone merged into what came before,
on equal timestamps the zone merged in first) is, for any input, ordered or not, a sort
by `merge_keys`: each record's key is the largest timestamp of its zone up to it, ties
going to the later zone, then to zone order. (A merge step moves a record and those
after it that are no larger than it as one block: a block starts where a zone's running
maximum rises, and blocks meet in the order of those maxima.)
"""

from __future__ import annotations

import struct
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from itertools import accumulate
from typing import NamedTuple

from pstorefs.format.abi import Abi, field_span, ftrace_record_format, ftrace_record_struct
from pstorefs.format.consts import TS_CPU_SHIFT
from pstorefs.format.kallsyms import SymbolTable

_TS_CPU_MASK = (1 << TS_CPU_SHIFT) - 1
"""`TS_CPU_MASK` (include/linux/pstore.h)."""

LINE = b"CPU:%d ts:%d %08x  %08x  %s <- %s\n"
"""`pstore_ftrace_seq_show` (fs/pstore/inode.c): `CPU:%d ts:%llu %08lx  %08lx  %ps <- %pS`."""
_LINE_BARE = b"CPU:%d ts:%d %08x  %08x  0x%x <- 0x%x\n"
"""`LINE` where no symbol is known: `%ps` and `%pS` print `0x%lx`."""
_LINE_HEXED = LINE.replace(b"%08x", b"%s")
_LINE_BARE_HEXED = _LINE_BARE.replace(b"%08x", b"%s").replace(b"%x", b"%s")
"""The lines with the addresses' digits given (`_full_width_hex`)."""
_LINE_FIXED = len(LINE.replace(b"%08x", b"").replace(b"%d", b"").replace(b"%s", b""))
"""The bytes of a line that are not a conversion."""

_DECIMAL = bytes(len(str(n)) for n in range(256))
"""Digits of `%d` of a byte value."""
_HEX = bytes(max(1, -(-bits // 4)) for bits in range(65)).ljust(256, b"\0")
"""Digits of `%x` of a value of each bit length (0 to 64)."""
_HEX8 = bytes(max(8, n) for n in _HEX)
"""Digits of `%08x`, by bit length."""
_HEX8_BARE = bytes(a + 2 + b for a, b in zip(_HEX8, _HEX, strict=True))
"""`%08x` and `0x%x` of one value, by bit length."""
_POWERS_OF_TEN = [10 ** k for k in range(1, 21)]


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


def merge_keys(stamps: Iterable[int], before: int = -1) -> list[int]:
    """Each record's merge key: the largest timestamp of its zone up to it (`before`:
    the largest of the records before these)."""
    return list(accumulate(stamps, max, initial=before))[1:]


def merge_order(keys: Sequence[Sequence[int]]) -> list[int]:
    """Where each record goes in the kernel's merge of these zones (`keys`: each zone's
    `merge_keys`, in zone order): indexes into the zones' records joined in reverse
    zone order, in merged order. A stable sort: the later zone's records come first
    on equal keys, and a zone's own keep their order."""
    joined: list[int] = []
    for zone in reversed(keys):
        joined += zone
    return sorted(range(len(joined)), key=joined.__getitem__)


def merge_zones(zones: Sequence[Sequence[FtraceRecord]]) -> list[FtraceRecord]:
    """Merge CPU zones in zone order exactly as `pstore_ftrace_combine_log` does."""
    joined = [record for zone in reversed(zones) for record in zone]
    order = merge_order([merge_keys(r.timestamp for r in zone) for zone in zones])
    return [joined[at] for at in order]


class RecordColumns(NamedTuple):
    """A batch of one zone's records, field by field."""

    ips: Sequence[int]
    parents: Sequence[int]
    cpus: bytes
    stamps: Sequence[int]
    """The kernel's timestamps (`pstore_ftrace_read_timestamp`), what the merge compares."""
    width: int
    """Bytes of an address (`unsigned long`)."""

    def __len__(self) -> int:  # type: ignore[override]
        return len(self.cpus)

    def cut(self, start: int, stop: int) -> RecordColumns:
        return RecordColumns(self.ips[start:stop], self.parents[start:stop],
                             self.cpus[start:stop], self.stamps[start:stop], self.width)


@cache
def _decoding(abi: Abi) -> tuple[int, str, int, int, int, bytes]:
    """(record size, struct format of one record, where `ts` and the low byte of `ip`
    are, the size of `ip`, the `cpu_in_ip_mask` table) for `decode_columns`."""
    fmt = ftrace_record_format(abi)
    definition = ftrace_record_struct(abi)
    ts_at = field_span(definition, "ts")[0]
    ip_at, ip_size = field_span(definition, "ip")
    low_ip = ip_at if abi.little_endian else ip_at + ip_size - 1
    mask = bytes(b & abi.cpu_in_ip_mask for b in range(256))
    return fmt.size, fmt.format[1:], ts_at, low_ip, ip_size, mask


def decode_columns(abi: Abi, data: bytes) -> RecordColumns:
    """The records `data` holds (whole records, in write order) as columns, as
    `parse_records` decodes them."""
    size, one, ts_at, low_ip, width, mask = _decoding(abi)
    count = len(data) // size
    order = "<" if abi.little_endian else ">"
    flat = struct.unpack(order + one * count, data[:count * size])
    ips, parents = flat[0::3], flat[1::3]
    if abi.cpu_in_ip_mask:
        return RecordColumns(ips, parents, data[low_ip:count * size:size].translate(mask),
                             flat[2::3], width)
    # ts >> 8 and ts & 0xff, by moving bytes: the stamp's 7 bytes into 8 with a zero on top
    stamps = bytearray(8 * count)
    if abi.little_endian:
        cpus = data[ts_at:count * size:size]
        for k in range(7):
            stamps[k::8] = data[ts_at + 1 + k:count * size:size]
    else:
        cpus = data[ts_at + 7:count * size:size]
        for k in range(7):
            stamps[k + 1::8] = data[ts_at + k:count * size:size]
    return RecordColumns(ips, parents, cpus, struct.unpack(f"{order}{count}Q", stamps), width)


class Names:
    """`%ps` and `%pS` of addresses from a System.map, remembered (a trace calls the
    same few thousand functions over and over) up to `MEMO` addresses each."""

    MEMO = 1 << 15

    def __init__(self, symbols: SymbolTable) -> None:
        self.symbols = symbols
        self.bare = len(symbols) == 0
        """No symbol at all: every address prints as `0x%lx`."""
        self._names = _Memo(lambda ip: symbols.name(ip).encode(), self.MEMO)
        self._offsets = _Memo(lambda ip: symbols.name_offset(ip).encode(), self.MEMO)

    def names(self, ips: Iterable[int]) -> Iterable[bytes]:
        return map(self._names.__getitem__, ips)

    def offsets(self, parents: Iterable[int]) -> Iterable[bytes]:
        return map(self._offsets.__getitem__, parents)


class _Memo(dict[int, bytes]):
    """A dict that computes what it lacks, emptied when it holds `limit` entries (a map
    over its `__getitem__` stays a C loop for what it holds)."""

    def __init__(self, compute: Callable[[int], bytes], limit: int) -> None:
        super().__init__()
        self._compute = compute
        self._limit = limit

    def __missing__(self, key: int) -> bytes:
        if len(self) >= self._limit:
            self.clear()
        value = self[key] = self._compute(key)
        return value


def render(columns: RecordColumns, names: Names) -> bytes:
    """The ftrace file's lines for these records, in their order."""
    count = len(columns)
    values: list[object] = [None] * (6 * count)
    values[0::6] = columns.cpus
    values[1::6] = columns.stamps
    ips = _full_width_hex(columns.ips, columns.width)
    parents = _full_width_hex(columns.parents, columns.width)
    hexed = ips is not None and parents is not None
    values[2::6] = ips if hexed else columns.ips
    values[3::6] = parents if hexed else columns.parents
    if names.bare:
        values[4::6] = values[2::6]
        values[5::6] = values[3::6]
        line = _LINE_BARE_HEXED if hexed else _LINE_BARE
    else:
        values[4::6] = names.names(columns.ips)
        values[5::6] = names.offsets(columns.parents)
        line = _LINE_HEXED if hexed else LINE
    return (line * count) % tuple(values)


def _full_width_hex(values: Sequence[int], width: int) -> list[bytes] | None:
    """`%08lx` of each value, where every one has all its `2 * width` hex digits (as
    kernel addresses do): the digits of their big-endian bytes, in one C call rather
    than a conversion each. None where one is shorter."""
    if not values or min(values) < 1 << (8 * width - 4):
        return None
    packed = struct.pack(f">{len(values)}{'Q' if width == 8 else 'I'}", *values)
    return packed.hex(" ", width).encode().split()


def text_length(columns: RecordColumns, names: Names) -> int:
    """`len(render(columns, names))`, counted without rendering."""
    count = len(columns)
    if not count:
        return 0
    total = _LINE_FIXED * count + sum(columns.cpus.translate(_DECIMAL))
    ordered = sorted(columns.stamps)  # rising already, or nearly: a linear sort
    total += count + sum(count - bisect_left(ordered, power) for power in _POWERS_OF_TEN
                         if power <= ordered[-1])
    if names.bare:
        for values in (columns.ips, columns.parents):
            total += sum(bytes(map(int.bit_length, values)).translate(_HEX8_BARE))
        return total
    for values in (columns.ips, columns.parents):
        total += sum(bytes(map(int.bit_length, values)).translate(_HEX8))
    return total + sum(map(len, names.names(columns.ips))) + sum(
        map(len, names.offsets(columns.parents)))

