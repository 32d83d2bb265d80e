"""Where each back end's zones are and what its erase may write, worked out from the
kernel's code (zone.c, ram.c and ram_core.c, mtdoops.c, blockconsole.c, mtdpstore.c)
and the options alone: the fuzz harness's oracle, which shares nothing with
`pstorefs.store` (its layouts, its erase writes, its Reed-Solomon codec), so that a
read or a write the store gets wrong is not also what the check expects.

`oracle_for(backend, config, region)` answers for a layout the options pin; where they
leave it to detection it is None and the harness checks the source's bounds alone.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

KIB = 1024
MIB = 1 << 20
ZONE_HEADER = 12
"""`struct psz_buffer` (pstore/zone) and `struct persistent_ram_buffer` (ramoops): a
u32 signature and two 4-byte counters."""


@dataclass(frozen=True)
class Span:
    """A zone (or page, or tile) as the format places it: type prefix, offset, size."""

    type: str
    offset: int
    size: int

    @property
    def end(self) -> int:
        return self.offset + self.size


@dataclass(frozen=True)
class Change:
    """Bytes an erase may change: `[start, end)` (region offsets), each to `fill`, or
    (`fill` None) to the bytes of `exact`."""

    start: int
    end: int
    fill: int | None = None
    exact: bytes | None = None
    """None with `fill` None: any value (parity over a header that was corrupt)."""

    def allows(self, offset: int, new: bytes) -> bool:
        """Whether `new`, written at `offset`, is (part of) this change."""
        if not self.start <= offset <= offset + len(new) <= self.end:
            return False
        if self.fill is not None:
            return new.count(self.fill) == len(new)
        return self.exact is None or self.exact[offset - self.start:][:len(new)] == new

    def holds(self, now: bytes) -> bool:
        """Whether `now`, the bytes of `[start, end)`, are what this change leaves."""
        if self.fill is not None:
            return now == bytes([self.fill]) * len(now)
        return self.exact is None or now == self.exact


@dataclass
class EraseSpec:
    """What an erase of one record may write (`may`) and must have written once it
    reports success (`must`: ranges that end up exactly as their `Change` says)."""

    may: list[Change] = field(default_factory=list)
    must: list[Change] = field(default_factory=list)
    refused: bool = False
    """The writer defines no erase: nothing may change and erase must fail."""

    def allows(self, offset: int, new: bytes) -> bool:
        """Whether writing `new` at `offset` is what the erase may do: one change covers
        it, or, byte by byte, some change covers each."""
        return (any(c.allows(offset, new) for c in self.may)
                or all(any(c.allows(offset + i, new[i:i + 1]) for c in self.may)
                       for i in range(len(new))))


class Oracle:
    """The zones one back end places in a region, for a layout the options pin."""

    backend = ""

    def holds(self, ptype: str, offset: int, size: int) -> bool:
        """Whether the format places a zone of that type exactly there."""
        raise NotImplementedError

    def inside(self, offset: int, length: int) -> bool:
        """Whether `length` bytes at `offset` lie within one zone the format places."""
        raise NotImplementedError

    def spans(self, limit: int = 4096) -> list[Span]:
        """The first `limit` zones (what mutations aim at)."""
        raise NotImplementedError

    def erase(self, zones: list[Span], read: Callable[[int, int], bytes]) -> EraseSpec:
        """What erasing a record whose zones are `zones` may write; `read(offset, n)`
        gives the bytes as they were (the ECC parity covers the header)."""
        raise NotImplementedError


# -- pstore/zone: psz_alloc_zones ------------------------------------------------------------
class ZoneOracle(Oracle):
    """pstore/blk and mtdpstore (fs/pstore/zone.c `psz_alloc_zones`): pmsg, console,
    ftrace (`ftrace_size / nr_cpu_ids` a zone), then dmesg zones of `kmsg_size` to the
    end. dmesg zones are accepted on the grid that follows the rings and, for the
    blkoops RFC (dmesg only, no rings), on the grid from 0; whether the 128 MiB cap
    applies is the store's to decide, so the grid is not cut."""

    backend = "zone"

    def __init__(self, config, region: int) -> None:
        def kib(key: str, default: int) -> int:
            """blk.c's `check_size` (Linux 5.8): KiB to bytes; one not a multiple of 4 KiB
            is `ALIGN(name, 4096)` of the KiB value itself (later kernels refuse it)."""
            value = getattr(config, key)
            value = max(default if value is None else value, 0)
            return value * KIB if value * KIB % 4096 == 0 else -(-value // 4096) * 4096

        self.region = region
        self.erasesize = config.erasesize
        self.kmsg = kib("kmsg_size", 64)
        cpus = config.nr_cpus if config.nr_cpus is not None else 1
        rings: list[Span] = []
        off = 0
        for kind in ("pmsg", "console"):
            size = kib(f"{kind}_size", 0)
            if size:
                rings.append(Span(kind, off, size))
                off += size
        ftrace = kib("ftrace_size", 0)
        if ftrace and cpus > 0 and ftrace // cpus:
            per_cpu = ftrace // cpus
            for _ in range(ftrace // per_cpu):
                rings.append(Span("ftrace", off, per_cpu))
                off += per_cpu
        self.rings = rings
        self.grids = sorted({off, sum(r.size for r in rings)}
                            | ({0} if config.format in ("auto", "blkoops") else set()))

    def holds(self, ptype: str, offset: int, size: int) -> bool:
        if ptype == "dmesg":
            return (size == self.kmsg > 0 and offset + size <= self.region
                    and any(offset >= s and (offset - s) % size == 0 for s in self.grids))
        return Span(ptype, offset, size) in self.rings

    def inside(self, offset: int, length: int) -> bool:
        for ring in self.rings:
            if ring.offset <= offset and offset + length <= ring.end:
                return True
        for start in self.grids:
            if self.kmsg and offset >= start:
                at = start + (offset - start) // self.kmsg * self.kmsg
                if offset + length <= min(at + self.kmsg, self.region):
                    return True
        return False

    def spans(self, limit: int = 4096) -> list[Span]:
        out = list(self.rings)
        start = self.grids[-1]
        while self.kmsg and start + self.kmsg <= self.region and len(out) < limit:
            out.append(Span("dmesg", start, self.kmsg))
            start += self.kmsg
        return out

    def erase(self, zones: list[Span], read: Callable[[int, int], bytes]) -> EraseSpec:
        spec = EraseSpec()
        for z in zones:
            if self.erasesize:  # mtdpstore: flash erases whole blocks to 0xFF
                spec.may += erase_blocks(z, self.erasesize, self.region)
                spec.must.append(Change(z.offset, z.end, 0xFF))
                continue
            # psz_kmsg_erase zeroes datalen; psz_record_erase datalen and start
            words = 2 if z.type != "dmesg" else 1
            change = Change(z.offset + 4, z.offset + 4 + 4 * words, 0)
            spec.may.append(change)
            spec.must.append(Change(z.offset + 4, z.offset + 8, 0))
        return spec


def erase_blocks(zone: Span, erasesize: int, region: int) -> list[Change]:
    """The erase blocks a zone touches, going to 0xFF (as `mtd_erase` leaves them)."""
    first = zone.offset // erasesize * erasesize
    end = min(-(-zone.end // erasesize) * erasesize, region)
    return [Change(first, end, 0xFF)]


# -- ramoops: ramoops_probe, persistent_ram_init_ecc ------------------------------------------
def rounddown_pow2(value: int) -> int:
    return 1 << (value.bit_length() - 1) if value > 0 else value


class RamoopsOracle(Oracle):
    """`ramoops_probe` with module parameters: sizes not powers of two rounded down,
    `record_size` zones over what console, ftrace and pmsg leave (`ramoops_init_przs`,
    each `ALIGN_DOWN(mem / cnt, 2)`), then console, ftrace per CPU, pmsg; `ecc=1`
    means 16. The ECC layout is `persistent_ram_init_ecc`'s."""

    backend = "ramoops"

    def __init__(self, config, region: int) -> None:
        def size(key: str) -> int:
            value = getattr(config, key)
            return rounddown_pow2(max(4096 if value is None else value, 0))

        self.region = region
        self.ecc = 16 if config.ecc == 1 else max(config.ecc or 0, 0)
        record, console = size("record_size"), size("console_size")
        ftrace, pmsg = size("ftrace_size"), size("pmsg_size")
        cpus = config.nr_cpus or 1
        self.dmesg_size = self.dmesg_count = 0
        dump = region - console - ftrace - pmsg
        if record and dump > 0 and dump // record:
            self.dmesg_count = dump // record
            self.dmesg_size = dump // self.dmesg_count // 2 * 2
        off = self.dmesg_size * self.dmesg_count
        tail: list[Span] = []
        if console:
            tail.append(Span("console", off, console))
            off += console
        if ftrace and ftrace // cpus // 2 * 2:
            zsz = ftrace // cpus // 2 * 2
            for _ in range(cpus):
                tail.append(Span("ftrace", off, zsz))
                off += zsz
        if pmsg:
            tail.append(Span("pmsg", off, pmsg))
        self.tail = tail

    def _dmesg(self, index: int) -> Span:
        return Span("dmesg", index * self.dmesg_size, self.dmesg_size)

    def holds(self, ptype: str, offset: int, size: int) -> bool:
        if ptype == "dmesg":
            return (size == self.dmesg_size > 0 and offset % size == 0
                    and offset // size < self.dmesg_count)
        return Span(ptype, offset, size) in self.tail

    def inside(self, offset: int, length: int) -> bool:
        if self.dmesg_size and offset < self.dmesg_size * self.dmesg_count:
            return offset + length <= (offset // self.dmesg_size + 1) * self.dmesg_size
        return any(t.offset <= offset and offset + length <= t.end for t in self.tail)

    def spans(self, limit: int = 4096) -> list[Span]:
        return [self._dmesg(i) for i in range(min(self.dmesg_count, limit))] + self.tail

    def par_header(self, size: int) -> int | None:
        """`persistent_ram_init_ecc`: the header parity's offset in a zone of `size`."""
        if not self.ecc:
            return None
        buffer = size - ZONE_HEADER
        blocks = -(-(buffer - self.ecc) // (128 + self.ecc))
        total = (blocks + 1) * self.ecc
        if total >= buffer:
            return None
        return ZONE_HEADER + (buffer - total) + blocks * self.ecc

    def erase(self, zones: list[Span], read: Callable[[int, int], bytes]) -> EraseSpec:
        """`persistent_ram_zap`: `start` and `size` to 0, then
        `persistent_ram_update_header_ecc`: the parity of the header so zapped. Of a
        header that did not match its parity, the kernel zaps what the correction
        made of it, which this oracle does not compute: any parity then."""
        spec = EraseSpec()
        for z in zones:
            zap = Change(z.offset + 4, z.offset + ZONE_HEADER, 0)
            spec.may.append(zap)
            spec.must.append(zap)
            par = self.par_header(z.size)
            if par is not None:
                header = read(z.offset, ZONE_HEADER)
                clean = read(z.offset + par, self.ecc) == rs_encode(header, self.ecc)
                parity = rs_encode(header[:4] + bytes(8), self.ecc) if clean else None
                change = Change(z.offset + par, z.offset + par + self.ecc, exact=parity)
                spec.may.append(change)
                spec.must.append(change)
        return spec


# -- mtdoops: pages of record_size; blockconsole: 1 MiB tiles ---------------------------------
class MtdoopsOracle(Oracle):
    """mtdoops.c: `mtd->size / record_size` pages from 0; an erase takes the page's
    erase block to 0xFF (`mtdoops_erase_block`)."""

    backend = "mtdoops"

    def __init__(self, config, region: int) -> None:
        self.page = config.record_size if config.record_size is not None else 4096
        self.count = region // self.page if self.page > 0 else 0
        self.erasesize = config.erasesize
        self.region = region

    def holds(self, ptype: str, offset: int, size: int) -> bool:
        return (ptype == "dmesg" and size == self.page and offset % self.page == 0
                and offset // self.page < self.count)

    def inside(self, offset: int, length: int) -> bool:
        if self.page <= 0 or offset // self.page >= self.count:
            return False
        return offset + length <= (offset // self.page + 1) * self.page

    def spans(self, limit: int = 4096) -> list[Span]:
        return [Span("dmesg", i * self.page, self.page) for i in range(min(self.count, limit))]

    def erase(self, zones: list[Span], read: Callable[[int, int], bytes]) -> EraseSpec:
        spec = EraseSpec()
        for z in zones:
            spec.may += erase_blocks(z, self.erasesize or z.size, self.region)
            spec.must.append(Change(z.offset, z.end, 0xFF))
        return spec


class BlockconsoleOracle(Oracle):
    """blockconsole.c: `i_size & ~CACHE_MASK` bytes of 1 MiB tiles; it defines no erase."""

    backend = "blockconsole"

    def __init__(self, config, region: int) -> None:
        self.end = region // MIB * MIB

    def holds(self, ptype: str, offset: int, size: int) -> bool:
        return ptype == "console" and 0 <= offset and offset + size <= self.end

    def inside(self, offset: int, length: int) -> bool:
        return 0 <= offset and offset + length <= self.end

    def spans(self, limit: int = 4096) -> list[Span]:
        return [Span("console", at, MIB) for at in range(0, self.end, MIB)][:limit]

    def erase(self, zones: list[Span], read: Callable[[int, int], bytes]) -> EraseSpec:
        return EraseSpec(refused=True)


def oracle_for(backend: str, config, region: int) -> Oracle | None:
    """The oracle of `backend` for the layout the options pin, None where they leave it
    to detection (pstore/zone and ramoops without a size; mtdoops and blockconsole have
    nothing to detect)."""
    if backend == "zone":
        sizes = ("kmsg_size", "pmsg_size", "console_size", "ftrace_size")
        return ZoneOracle(config, region) if any(getattr(config, k) is not None
                                                for k in sizes) else None
    if backend == "ramoops":
        sizes = ("pmsg_size", "console_size", "ftrace_size")
        return RamoopsOracle(config, region) if any(getattr(config, k) is not None
                                                   for k in sizes) else None
    if backend == "mtdoops":
        return MtdoopsOracle(config, region)
    if backend == "blockconsole":
        return BlockconsoleOracle(config, region)
    return None


# -- Reed-Solomon parity, as lib/reed_solomon's encode_rs8 computes it ------------------------
@functools.cache
def _gf() -> tuple[list[int], list[int]]:
    """exp and log tables of GF(2^8) over x^8 + x^4 + x^3 + x^2 + 1 (0x11d)."""
    exp, log = [0] * 512, [0] * 256
    x = 1
    for i in range(255):
        exp[i] = x
        log[x] = i
        x <<= 1
        if x & 0x100:
            x ^= 0x11D
    for i in range(255, 512):
        exp[i] = exp[i - 255]
    return exp, log


def _mul(a: int, b: int) -> int:
    exp, log = _gf()
    return 0 if a == 0 or b == 0 else exp[log[a] + log[b]]


@functools.cache
def _generator(nroots: int) -> tuple[int, ...]:
    """prod (x - alpha^i), i = 0 .. nroots-1 (`init_rs` with fcr 0, prim 1), highest
    power first."""
    exp, _ = _gf()
    g = [1]
    for i in range(nroots):
        root = exp[i]
        g = [a ^ _mul(b, root) for a, b in zip([*g, 0], [0, *g], strict=True)]
    return tuple(g)


def rs_encode(data: bytes, nroots: int) -> bytes:
    """The `nroots` parity bytes of `data`: the remainder of data(x) * x^nroots by the
    generator, highest power first (`par[0]` in Karn's order)."""
    g = _generator(nroots)
    rem = list(data) + [0] * nroots
    for i in range(len(data)):
        coef = rem[i]
        if coef:
            for j in range(1, nroots + 1):
                rem[i + j] ^= _mul(g[j], coef)
    return bytes(rem[len(data):])
