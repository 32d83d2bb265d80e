"""Constants of the pstore ABI, with the kernel's names and values."""

import re
from collections.abc import Callable, Iterable
from enum import Enum, IntEnum

PSZ_SIG = 0x43474244
"""`PSZ_SIG` in fs/pstore/zone.c ("DBGC"); a zone's `sig` is this XOR its pstore type."""

PSTORE_KMSG_HEADER_MAGIC = 0x4DFC3AE5
"""Magic of `struct psz_kmsg_header`, the dmesg sub-header."""

PSZ_BUFFER_SIZE = 12
"""sizeof(struct psz_buffer): sig, datalen, start — 12 bytes on every ABI."""

BLKZ_BUFFER_SIZE = 8
"""sizeof(struct blkz_buffer) of the "blkoops" RFC (2019-2020): sig and datalen, no start."""

MAX_CPUS = 4096
"""The most CPUs a kernel of a pstore/zone era is built for (`CONFIG_NR_CPUS`' bound on
x86_64): the most per-CPU ftrace zones a partition holds."""

TS_CPU_SHIFT = 8
"""ftrace records keep the CPU in the low 8 bits of `ts` (fs/pstore/ftrace.c)."""


class PstoreType(IntEnum):
    """`enum pstore_type_id` (include/linux/pstore.h, 5.8+): "kind of an ABI"."""

    DMESG = 0
    MCE = 1
    CONSOLE = 2
    FTRACE = 3
    PPC_RTAS = 4
    PPC_OF = 5
    PPC_COMMON = 6
    PMSG = 7
    PPC_OPAL = 8

    @property
    def file_prefix(self) -> str:
        """The name `pstore_type_to_name` gives this type in /sys/fs/pstore."""
        return _TYPE_NAMES[self]


_TYPE_NAMES = {
    PstoreType.DMESG: "dmesg",
    PstoreType.MCE: "mce",
    PstoreType.CONSOLE: "console",
    PstoreType.FTRACE: "ftrace",
    PstoreType.PPC_RTAS: "rtas",
    PstoreType.PPC_OF: "powerpc-ofw",
    PstoreType.PPC_COMMON: "powerpc-common",
    PstoreType.PMSG: "pmsg",
    PstoreType.PPC_OPAL: "powerpc-opal",
}


class ZoneFormat(Enum):
    """Which writer cut the partition into zones: mainline pstore/zone (Linux 5.8+), or
    the "blkoops" RFC it grew from (dmesg zones only, an 8-byte zone header)."""

    ZONE = "zone"
    BLKOOPS = "blkoops"

    @property
    def header_size(self) -> int:
        return PSZ_BUFFER_SIZE if self is ZoneFormat.ZONE else BLKZ_BUFFER_SIZE


class KmsgDumpReason(IntEnum):
    """`enum kmsg_dump_reason` as collapsed in Linux 5.8, the first pstore/zone kernel."""

    UNDEF = 0
    PANIC = 1
    OOPS = 2
    EMERG = 3
    SHUTDOWN = 4


_REASON_STR = {
    KmsgDumpReason.PANIC: "Panic",
    KmsgDumpReason.OOPS: "Oops",
    KmsgDumpReason.EMERG: "Emergency",
    KmsgDumpReason.SHUTDOWN: "Shutdown",
}


def kmsg_dump_reason_str(reason: int) -> str:
    """What kernel/printk/printk.c `kmsg_dump_reason_str` prints for `reason`."""
    try:
        return _REASON_STR[KmsgDumpReason(reason)]
    except (ValueError, KeyError):
        return "Unknown"


_PRE_5_8_REASONS = {4: "Restart", 5: "Halt", 6: "Poweroff"}
"""Before Linux 5.8 the enum went on RESTART=4, HALT=5, POWEROFF=6 (platform.c
`get_reason_str` printed these); 5.8 merged them into SHUTDOWN=4."""


def reason_name(reason: int, text: bytes = b"") -> str:
    """The reason's name for a record of any kernel era.

    5 and 6 exist only in the pre-5.8 enum. 4 is Shutdown from 5.8 on and Restart
    before; the record's own text decides, since platform.c starts every dump with
    `"%s#%d Part%u\n"` naming the reason in the writer's words (`Restart#1 Part1`).
    Everything else is the 5.8+ `kmsg_dump_reason_str`.
    """
    restart = reason == KmsgDumpReason.SHUTDOWN and text.startswith(b"Restart#")
    if restart or (reason in _PRE_5_8_REASONS and reason != KmsgDumpReason.SHUTDOWN):
        return _PRE_5_8_REASONS[reason]
    return kmsg_dump_reason_str(reason)


def timespec_ns(tv_sec: int, tv_nsec: int) -> int | None:
    """A record's time as a file's mtime in ns (clamped to what st_mtime holds), or
    None where inode.c keeps the mount time (`tv_sec == 0`)."""
    if tv_sec == 0:
        return None
    return max(-(1 << 63), min(tv_sec * 1_000_000_000 + tv_nsec, (1 << 63) - 1))


def zone_sig(ptype: PstoreType) -> int:
    """The `sig` a zone of this type carries."""
    return PSZ_SIG ^ int(ptype)


DUMP_HEADER = re.compile(
    rb"(Oops|Panic|Emergency|Shutdown|Restart|Halt|Poweroff|Unknown)#(-?\d+) Part\d+\n")
"""platform.c's first line of every dump, `"%s#%d Part%u\\n"`, with the reason names
of every kernel era: the reason and counter (ramoops keeps them nowhere else), and
what tells a compressor's output is the text it compressed."""


def vote_little_endian(words: Iterable[tuple[bytes, Callable[[int], bool]]]) -> bool:
    """The writer's byte order, from 4-byte words whose value each `expected` knows (a
    header's signature or magic): the order under which more of them are what they
    should be, little-endian on a tie. Every pstore struct is in the writer's order,
    and no header says which that is."""
    votes = 0
    for word, expected in words:
        if len(word) == 4:
            votes += (expected(int.from_bytes(word, "little"))
                      - expected(int.from_bytes(word, "big")))
    return votes >= 0
