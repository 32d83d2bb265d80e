"""The writer's C ABI, and the pstore/zone structs laid out for it.

zone.c writes `struct psz_buffer`, `struct psz_kmsg_header` and
`struct pstore_ftrace_record` straight from memory, so their layout is the writing
kernel's: its byte order, the size of `long`, and how it aligns 64-bit fields.
Each struct is built once per `Abi` (as pyelftools builds ELF structs per class and
byte order), with the padding C would insert written out as `Padding`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from construct import (
    Construct,
    Int8ul,
    Int32sb,
    Int32sl,
    Int32ub,
    Int32ul,
    Int64sb,
    Int64sl,
    Int64ub,
    Int64ul,
    Padding,
    Struct,
)


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
        return kmsg_header_struct(self).sizeof()

    @property
    def ftrace_record_size(self) -> int:
        """sizeof(struct pstore_ftrace_record)."""
        return ftrace_record_struct(self).sizeof()


X86_64 = Abi("x86_64", little_endian=True, long_size=8, s64_align=8)
I386 = Abi("i386", little_endian=True, long_size=4, s64_align=4)

ABIS: dict[str, Abi] = {abi.name: abi for abi in (X86_64, I386)}
"""The ABIs pstorefs reads, by the name `abi=` takes."""


@cache
def zone_header_struct(abi: Abi) -> Struct:
    """`struct psz_buffer` without its flexible `data[]`: 12 bytes on every ABI."""
    return Struct(
        "sig" / abi.u32,
        "datalen" / abi.s32,
        "start" / abi.s32,
    ).compile()


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
    ).compile()


@cache
def ftrace_record_struct(abi: Abi) -> Struct:
    """`struct pstore_ftrace_record { unsigned long ip, parent_ip; u64 ts; }`."""
    ts_at = _align(2 * abi.long_size, abi.s64_align)
    end = ts_at + 8
    return Struct(
        "ip" / abi.ulong,
        "parent_ip" / abi.ulong,
        Padding(ts_at - 2 * abi.long_size),
        "ts" / abi.u64,
        Padding(_align(end, max(abi.long_size, abi.s64_align)) - end),
    ).compile()
