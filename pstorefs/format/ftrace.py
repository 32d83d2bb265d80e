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


def merge_keys(stamps: list[int], before: int = -1) -> list[int]:
    """Each record's merge key: the largest timestamp of its zone up to it (`before`:
    the largest of the records before these). Timestamps that rise are their own keys:
    a sort of what is sorted already is one C pass."""
    ordered = sorted(stamps)
    if ordered == stamps and (not ordered or ordered[0] >= before):
        return ordered
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
    order = merge_order([merge_keys([r.timestamp for r in zone]) for zone in zones])
    return [joined[at] for at in order]


@dataclass(frozen=True)
class _Layout:
    """Where an ABI's record keeps what the columns are made of."""

    size: int
    one: str
    """The struct format of one record, without its byte order."""
    order: str
    width: int
    """Bytes of an address (`unsigned long`)."""
    ip_at: int
    parent_at: int
    ts_at: int
    cpu_in_ip_mask: int
    little_endian: bool

    def byte(self, field_at: int, size: int, significance: int) -> int:
        """Where the byte of a field of `size` bytes sits that is `significance` bytes
        from its least significant one."""
        return field_at + (significance if self.little_endian else size - 1 - significance)


@cache
def _layout(abi: Abi) -> _Layout:
    fmt = ftrace_record_format(abi)
    definition = ftrace_record_struct(abi)
    ip_at, width = field_span(definition, "ip")
    return _Layout(fmt.size, fmt.format[1:], fmt.format[0], width, ip_at,
                   field_span(definition, "parent_ip")[0], field_span(definition, "ts")[0],
                   abi.cpu_in_ip_mask, abi.little_endian)


class Records:
    """A batch of one zone's whole records (`data`, in write order), decoded field by
    field when asked, each field of all of them in one C loop: `ips`, `parents`,
    `cpus` and `stamps` as `parse_records` decodes them."""

    __slots__ = ("_flat", "_stamps", "data", "layout")

    def __init__(self, abi: Abi | _Layout, data: bytes,
                 stamps: list[int] | None = None) -> None:
        self.layout = abi if isinstance(abi, _Layout) else _layout(abi)
        self.data = data[:len(data) // self.layout.size * self.layout.size]
        self._flat: tuple[int, ...] | None = None
        self._stamps = stamps

    def __len__(self) -> int:
        return len(self.data) // self.layout.size

    def __add__(self, more: Records) -> Records:
        stamps = (self._stamps + more._stamps
                  if self._stamps is not None and more._stamps is not None else None)
        return Records(self.layout, self.data + more.data, stamps)

    def cut(self, start: int, stop: int) -> Records:
        """Records `start` to `stop` (the timestamps kept, if decoded)."""
        size = self.layout.size
        return Records(self.layout, self.data[start * size:stop * size],
                       None if self._stamps is None else self._stamps[start:stop])

    @property
    def width(self) -> int:
        return self.layout.width

    def _fields(self) -> tuple[int, ...]:
        if self._flat is None:
            layout = self.layout
            self._flat = struct.unpack(layout.order + layout.one * len(self), self.data)
        return self._flat

    @property
    def ips(self) -> Sequence[int]:
        return self._fields()[0::3]

    @property
    def parents(self) -> Sequence[int]:
        return self._fields()[1::3]

    @property
    def cpus(self) -> bytes:
        """`ip & PSTORE_CPU_IN_IP`, or `ts & TS_CPU_MASK`: a byte each."""
        layout = self.layout
        if layout.cpu_in_ip_mask:
            low = self.column(layout.byte(layout.ip_at, layout.width, 0))
            return low.translate(bytes(b & layout.cpu_in_ip_mask for b in range(256)))
        return self.column(layout.byte(layout.ts_at, 8, 0))

    @property
    def stamps(self) -> list[int]:
        """The kernel's timestamps (`pstore_ftrace_read_timestamp`), what the merge
        compares: `ts`, or `ts >> TS_CPU_SHIFT`, made by moving the stamp's 7 bytes
        into 8 with a zero on top rather than by a shift each."""
        if self._stamps is None:
            layout, count = self.layout, len(self)
            if layout.cpu_in_ip_mask:
                self._stamps = list(self._fields()[2::3])
            else:
                moved = bytearray(8 * count)
                for k in range(7):  # significance k of the stamp: k + 1 of ts
                    to = k if layout.little_endian else 7 - k
                    moved[to::8] = self.column(layout.byte(layout.ts_at, 8, k + 1))
                self._stamps = list(struct.unpack(f"{layout.order}{count}Q", moved))
        return self._stamps

    def hex_digits(self, field_at: int) -> list[bytes] | None:
        """`%08lx` of the address at `field_at` of each record, where every one has
        all its `2 * width` hex digits, as kernel addresses do: the hex of its bytes in
        big-endian order, moved there in a C loop a byte at a time. None where one is
        shorter."""
        layout, count = self.layout, len(self)
        width = layout.width
        if count and min(self.column(layout.byte(field_at, width, width - 1))) < 0x10:
            return None
        big = bytearray(width * count)
        for k in range(width):  # significance k: byte width - 1 - k of big-endian
            big[width - 1 - k::width] = self.column(layout.byte(field_at, width, k))
        return big.hex(" ", width).encode().split()

    def column(self, at: int) -> bytes:
        """Byte `at` of every record."""
        return self.data[at::self.layout.size]


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


def render(records: Records, names: Names) -> bytes:
    """The ftrace file's lines for these records, in their order."""
    count = len(records)
    values: list[object] = [None] * (6 * count)
    values[0::6] = records.cpus
    values[1::6] = records.stamps
    layout = records.layout
    ips = records.hex_digits(layout.ip_at)
    parents = records.hex_digits(layout.parent_at) if ips is not None else None
    hexed = parents is not None
    values[2::6] = ips if hexed else records.ips
    values[3::6] = parents if hexed else records.parents
    if names.bare:
        values[4::6] = values[2::6]
        values[5::6] = values[3::6]
        line = _LINE_BARE_HEXED if hexed else _LINE_BARE
    else:
        values[4::6] = names.names(records.ips)
        values[5::6] = names.offsets(records.parents)
        line = _LINE_HEXED if hexed else LINE
    return (line * count) % tuple(values)


def text_length(records: Records, names: Names) -> int:
    """`len(render(records, names))`, counted without rendering."""
    count = len(records)
    if not count:
        return 0
    total = _LINE_FIXED * count + sum(records.cpus.translate(_DECIMAL))
    ordered = sorted(records.stamps)  # rising already, or nearly: a linear sort
    total += count + sum(count - bisect_left(ordered, power) for power in _POWERS_OF_TEN
                         if power <= ordered[-1])
    layout = records.layout
    widths = _HEX8_BARE if names.bare else _HEX8
    for field_at, values in ((layout.ip_at, "ips"), (layout.parent_at, "parents")):
        top = records.column(layout.byte(field_at, layout.width, layout.width - 1))
        if min(top) >= 0x10:  # every one has all its digits
            total += count * widths[8 * layout.width]
        else:
            bits = bytes(map(int.bit_length, getattr(records, values)))
            total += sum(bits.translate(widths))
    if names.bare:
        return total
    return total + sum(map(len, names.names(records.ips))) + sum(
        map(len, names.offsets(records.parents)))
