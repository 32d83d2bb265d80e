"""The writer's C ABI, and the pstore/zone structs laid out for it.

zone.c writes `struct psz_buffer`, `struct psz_kmsg_header` and
`struct pstore_ftrace_record` straight from memory, so their layout is the writing
kernel's: its byte order, the size of `long`, and how it aligns 64-bit fields.
Each struct is built once per `Abi` (as pyelftools builds ELF structs per class and
byte order), with the padding C would insert written out as `Padding`.

The C rules every layout below follows: each member sits at the next multiple of its
own alignment (`u32`, `int`, `enum`: 4; `bool`: 1; `long`: its size; `s64`/`u64`: the
ABI's `s64_align`); a struct is aligned to its most aligned member, and its `sizeof` is
rounded up to that alignment. The kernel's own types: `atomic_t` is an `int`,
`time64_t` an `s64`, `struct timespec64 { time64_t tv_sec; long tv_nsec; }`.

`ABIS` lists the ABIs by canonical name, each with its derivation; `ABI_ALIASES` maps
architecture names to them. The layouts were derived from these rules and checked
against each architecture's C ABI (`tests/format/test_abis.py` derives every layout
again by hand); only `le64` (as x86_64) and `i386` are also checked against
kernel-written images.
"""

from __future__ import annotations

import struct as python_struct
from dataclasses import dataclass
from functools import cache

from construct import (
    Construct,
    FormatField,
    Int8ul,
    Int32sb,
    Int32sl,
    Int32ub,
    Int32ul,
    Int64sb,
    Int64sl,
    Int64ub,
    Int64ul,
    Padded,
    Padding,
    Pass,
    Renamed,
    Struct,
)

from pstorefs.errors import UsageError


def _align(value: int, to: int) -> int:
    return (value + to - 1) // to * to


@dataclass(frozen=True)
class Abi:
    """What of a C ABI decides pstore's layouts.

    `cpu_in_ip_mask` is `PSTORE_CPU_IN_IP` (include/linux/pstore.h): 32-bit ARM kernels
    built for at most 4 CPUs keep the CPU in the low bits of `ip` and store `ts` unshifted.
    """

    name: str
    little_endian: bool
    long_size: int
    s64_align: int
    cpu_in_ip_mask: int = 0

    def __hash__(self) -> int:  # the layouts are cached by ABI, looked up per zone
        return hash(self.name)

    # -- C integer types, bound once per ABI -----------------------------------
    @property
    def u32(self) -> Construct:
        return Int32ul if self.little_endian else Int32ub

    @property
    def s32(self) -> Construct:
        return Int32sl if self.little_endian else Int32sb

    @property
    def s64(self) -> Construct:
        return Int64sl if self.little_endian else Int64sb

    @property
    def u64(self) -> Construct:
        return Int64ul if self.little_endian else Int64ub

    @property
    def long_(self) -> Construct:
        if self.long_size == 8:
            return self.s64
        return self.s32

    @property
    def ulong(self) -> Construct:
        if self.long_size == 8:
            return self.u64
        return self.u32

    # -- layouts ---------------------------------------------------------------
    @property
    def kmsg_header_size(self) -> int:
        """sizeof(struct psz_kmsg_header): where zone.c starts a dmesg record's bytes."""
        return kmsg_header_format(self).size

    @property
    def ftrace_record_size(self) -> int:
        """sizeof(struct pstore_ftrace_record)."""
        return ftrace_record_format(self).size


LE64 = Abi("le64", little_endian=True, long_size=8, s64_align=8)
"""LP64 little-endian: x86_64, arm64, riscv64, ppc64le.

dmesg header: magic u32 at 0; `timespec64` aligned to 8 (s64 and long both 8), so 4 bytes
of padding and tv_sec at 8, tv_nsec (8-byte long) at 16, timespec64 16 bytes; compressed
at 24; counter at 28 (4-aligned); reason at 32; end 36, rounded to 8: sizeof 40.
ftrace record: ip at 0, parent_ip at 8, ts at 16: sizeof 24.
Checked against the x86_64 kernel images (tests/data/fixtures)."""

BE64 = Abi("be64", little_endian=False, long_size=8, s64_align=8)
"""LP64 big-endian: s390x, ppc64, mips64 (n64). The layout of `le64`, every integer
big-endian, the zone header's too (a dmesg zone starts `43 47 42 44`)."""

I386 = Abi("i386", little_endian=True, long_size=4, s64_align=4)
"""ILP32 little-endian with 64-bit fields 4-aligned: i386; by QEMU's linux-user ABI table
(include/user/abitypes.h, `ABI_LLONG_ALIGNMENT` 4) also little-endian SuperH and
MicroBlaze.

dmesg header: magic at 0; timespec64 aligned to 4, so tv_sec at 4, tv_nsec (4-byte long)
at 12, timespec64 12 bytes; compressed at 16; counter at 20; reason at 24; end 28,
already a multiple of 4: sizeof 28. ftrace record: ip 0, parent_ip 4, ts 8: sizeof 16.
Checked against the i386 kernel image (tests/data/fixtures)."""

BE32A4 = Abi("be32a4", little_endian=False, long_size=4, s64_align=4)
"""ILP32 big-endian with 64-bit fields 4-aligned: the `i386` layout, big-endian.

Not checked against any kernel. QEMU's linux-user ABI table (include/user/abitypes.h)
gives `long long` an alignment of 4 on OpenRISC (big-endian only), MicroBlaze and SuperH,
of which OpenRISC, big-endian MicroBlaze and sh4eb are big-endian; every other 32-bit
ABI there aligns it to 8. m68k aligns `int` and `long long` to 2 and fits no ABI here."""

LE32 = Abi("le32", little_endian=True, long_size=4, s64_align=8)
"""ILP32 little-endian with 64-bit fields 8-aligned: arm EABI with more than 4 CPUs
(NR_CPUS > 4), riscv32, mips o32 (mipsel).

dmesg header: magic at 0; timespec64 aligned to 8 (its s64), so tv_sec at 8, tv_nsec
(4-byte long) at 16, then 4 bytes of padding: timespec64 is 16 bytes; compressed at 24;
counter at 28; reason at 32; end 36, rounded to 8: sizeof 40 — the `le64` offsets, with
tv_nsec 4 bytes wide. ftrace record: ip 0, parent_ip 4, ts 8 (already 8-aligned):
sizeof 16, the same bytes as `i386`'s."""

BE32 = Abi("be32", little_endian=False, long_size=4, s64_align=8)
"""ILP32 big-endian with 64-bit fields 8-aligned: ppc32, mips o32, armeb with more than
4 CPUs. The `le32` layout, every integer big-endian: tv_nsec is the 4 bytes at 16."""

LE32_CPUIP3 = Abi("le32-cpuip3", little_endian=True, long_size=4, s64_align=8,
                  cpu_in_ip_mask=0x3)
"""arm EABI little-endian built for 3 or 4 CPUs, or for 2 without CONFIG_ARM_THUMB
(`PSTORE_CPU_IN_IP` 0x3): the `le32` layout; ftrace keeps the CPU in `ip & 3` and `ts` as
the plain counter (`pstore_ftrace_encode_cpu`: `rec->ip |= cpu`)."""

LE32_CPUIP1 = Abi("le32-cpuip1", little_endian=True, long_size=4, s64_align=8,
                  cpu_in_ip_mask=0x1)
"""arm EABI little-endian built for at most 2 CPUs with CONFIG_ARM_THUMB
(`PSTORE_CPU_IN_IP` 0x1, which wins over 0x3): the `le32` layout, the CPU in `ip & 1`."""

BE32_CPUIP3 = Abi("be32-cpuip3", little_endian=False, long_size=4, s64_align=8,
                  cpu_in_ip_mask=0x3)
"""armeb EABI built for 3 or 4 CPUs (or 2 without CONFIG_ARM_THUMB): `be32`, CPU in `ip & 3`."""

BE32_CPUIP1 = Abi("be32-cpuip1", little_endian=False, long_size=4, s64_align=8,
                  cpu_in_ip_mask=0x1)
"""armeb EABI built for at most 2 CPUs with CONFIG_ARM_THUMB: `be32`, CPU in `ip & 1`."""

X86_64 = LE64
"""The ABI of the x86_64 kernel images: `le64`."""

ABIS: dict[str, Abi] = {abi.name: abi for abi in (
    LE64, I386, LE32, LE32_CPUIP3, LE32_CPUIP1,
    BE64, BE32, BE32A4, BE32_CPUIP3, BE32_CPUIP1,
)}
"""The ABIs pstorefs reads, by canonical name. Within a byte order this is the order of
preference when the records present read the same with several of them."""

ABI_ALIASES: dict[str, str] = {
    **dict.fromkeys(("x86_64", "amd64", "arm64", "aarch64", "riscv64", "ppc64le"), "le64"),
    **dict.fromkeys(("s390x", "ppc64", "mips64"), "be64"),
    **dict.fromkeys(("arm", "armhf", "armel", "riscv32", "mipsel"), "le32"),
    **dict.fromkeys(("ppc", "powerpc", "mips", "armeb"), "be32"),
    **dict.fromkeys(("openrisc", "or1k", "microblaze", "sh4eb"), "be32a4"),
    **dict.fromkeys(("i686", "sh4", "microblazeel"), "i386"),
}
"""Architecture names `abi=` also takes. A 32-bit ARM kernel built for at most 4 CPUs
keeps the CPU in `ip`: `arm` is `le32`, the NR_CPUS > 4 kernel; name `le32-cpuip3` or
`le32-cpuip1` for the others (or let auto-detection tell them from the ftrace records)."""


@cache
def byte_order_abi(little_endian: bool) -> Abi:
    """An ABI of that byte order, for structs that read the same on all of them (the
    zone header, the ramoops header)."""
    return next(abi for abi in ABIS.values() if abi.little_endian == little_endian)


ABI_NAMES: tuple[str, ...] = (*ABIS, *ABI_ALIASES)
"""Every name `resolve_abi` takes, canonical names first."""


def resolve_abi(name: str) -> Abi:
    """The ABI called `name`, a canonical name or an architecture alias."""
    abi = ABIS.get(ABI_ALIASES.get(name, name))
    if abi is None:
        raise UsageError(f"abi={name}: unknown ABI; valid: {', '.join(ABI_NAMES)}")
    return abi


@cache
def zone_header_struct(abi: Abi) -> Struct:
    """`struct psz_buffer` without its flexible `data[]`: 12 bytes on every ABI."""
    return Struct(
        "sig" / abi.u32,
        "datalen" / abi.s32,
        "start" / abi.s32,
    )


@cache
def kmsg_header_struct(abi: Abi) -> Struct:
    """`struct psz_kmsg_header` (zone.c) without `data[]`, C padding made explicit.

    `struct timespec64 { time64_t tv_sec; long tv_nsec; }` is aligned to the larger of
    the s64 and long alignments, and padded to a multiple of it; the whole struct is
    padded to its largest member alignment, which is what `sizeof` — and so the start
    of the record's bytes — includes.
    """
    ts_align = max(abi.s64_align, abi.long_size)
    tv_sec_at = _align(4, ts_align)
    ts_size = _align(8 + abi.long_size, ts_align)
    compressed_at = tv_sec_at + ts_size
    counter_at = _align(compressed_at + 1, 4)
    end = counter_at + 8
    size = _align(end, max(4, ts_align))
    return Struct(
        "magic" / abi.u32,
        Padding(tv_sec_at - 4),
        "tv_sec" / abi.s64,
        "tv_nsec" / abi.long_,
        Padding(ts_size - 8 - abi.long_size),
        "compressed" / Int8ul,
        Padding(counter_at - compressed_at - 1),
        "counter" / abi.u32,
        "reason" / abi.s32,
        Padding(size - end),
    )


def _ftrace_layout(abi: Abi) -> tuple[int, int]:
    """Where `ts` sits in `struct pstore_ftrace_record`, and its sizeof."""
    ts_at = _align(2 * abi.long_size, abi.s64_align)
    return ts_at, _align(ts_at + 8, max(abi.long_size, abi.s64_align))


@cache
def ftrace_record_struct(abi: Abi) -> Struct:
    """`struct pstore_ftrace_record { unsigned long ip, parent_ip; u64 ts; }`."""
    ts_at, size = _ftrace_layout(abi)
    return Struct(
        "ip" / abi.ulong,
        "parent_ip" / abi.ulong,
        Padding(ts_at - 2 * abi.long_size),
        "ts" / abi.u64,
        Padding(size - ts_at - 8),
    )


def offsetof(definition: Struct, name: str) -> int:
    """Where field `name` starts in a construct `Struct` of fixed-size members, as C's
    `offsetof`: the one way code outside the definitions finds a field."""
    at = 0
    for member in definition.subcons:
        if getattr(member, "name", None) == name:
            return at
        at += member.sizeof()
    raise KeyError(f"no field {name!r} in {definition!r}")


@cache
def field_span(definition: Struct, name: str) -> tuple[int, int]:
    """(offset, size) of field `name` in a fixed-size construct `Struct` (asked per
    zone while listing: kept, as the structs it is asked of are)."""
    member = next(m for m in definition.subcons if getattr(m, "name", None) == name)
    return offsetof(definition, name), member.sizeof()


def field_format(definition: Struct, name: str) -> python_struct.Struct:
    """Field `name` of a fixed-size construct `Struct` alone, as a `struct.Struct` (for
    `unpack_from(buf, offsetof(...))`)."""
    member = next(m for m in definition.subcons if getattr(m, "name", None) == name)
    if not (isinstance(member, Renamed) and isinstance(member.subcon, FormatField)):
        raise TypeError(f"{name!r} is not a fixed-size integer field")
    return python_struct.Struct(member.subcon.fmtstr)


def packed_format(definition: Struct) -> python_struct.Struct:
    """The layout of a construct `Struct` of fixed-size integers and padding, as a
    `struct.Struct` unpacking its fields in order.

    The construct definitions above are the one description of each layout; this is
    how they are read where there are thousands (a zone header and a dmesg header per
    zone, an ftrace area's records), which `struct` unpacks some fifty times faster
    than construct parses."""
    order, parts = "", []
    for member in definition.subcons:
        if isinstance(member, Renamed) and isinstance(member.subcon, FormatField):
            order = order or member.subcon.fmtstr[0]
            parts.append(member.subcon.fmtstr[1:])
        elif isinstance(member, Padded) and member.subcon is Pass:
            parts.append(f"{member.length}x")
        else:
            raise TypeError(f"not a fixed layout of integers: {member!r}")
    return python_struct.Struct(order + "".join(parts))


@cache
def zone_header_format(abi: Abi) -> python_struct.Struct:
    """`zone_header_struct` as a `struct.Struct` of (sig, datalen, start)."""
    return packed_format(zone_header_struct(abi))


@cache
def kmsg_header_format(abi: Abi) -> python_struct.Struct:
    """`kmsg_header_struct` as a `struct.Struct` of (magic, tv_sec, tv_nsec, compressed,
    counter, reason)."""
    return packed_format(kmsg_header_struct(abi))


@cache
def ftrace_record_format(abi: Abi) -> python_struct.Struct:
    """`ftrace_record_struct` as a `struct.Struct` of (ip, parent_ip, ts)."""
    return packed_format(ftrace_record_struct(abi))
