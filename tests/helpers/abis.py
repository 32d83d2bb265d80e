"""What the ABI tests share: traced calls as a kernel of each ABI records them, and the
arch names `abi=` takes."""

from __future__ import annotations

from pstorefs.format.abi import ABIS, Abi

ALL = list(ABIS.values())


WANT_ALIASES = {
    "x86_64": "le64", "amd64": "le64", "arm64": "le64", "aarch64": "le64", "riscv64": "le64",
    "ppc64le": "le64", "s390x": "be64", "ppc64": "be64", "mips64": "be64", "arm": "le32",
    "armhf": "le32", "armel": "le32", "riscv32": "le32", "mipsel": "le32", "ppc": "be32",
    "powerpc": "be32", "mips": "be32", "armeb": "be32", "i686": "i386", "sh4": "i386",
    "microblazeel": "i386", "openrisc": "be32a4", "or1k": "be32a4", "microblaze": "be32a4",
    "sh4eb": "be32a4",
}


TEXT64 = 0xFFFFFFFF81000000
TEXT32 = 0xC0008000


def calls(abi: Abi, count: int, cpus: tuple[int, ...]) -> list[tuple[int, int, int, int]]:
    """(cpu, ip, parent_ip, stamp) of `count` traced calls; `stamp` is the kernel's global
    counter. A 0x1 kernel runs Thumb-2 code (ip 2-byte aligned), the others ARM code."""
    text = TEXT64 if abi.long_size == 8 else TEXT32
    thumb = abi.cpu_in_ip_mask == 0x1
    return [(cpus[i % len(cpus)], text + 0x40 * i + (2 * (i % 3 == 0) if thumb else 0),
             text + 0x8000 + 4 * i, 100 + i) for i in range(count)]
