"""Constants of the pstore ABI, with the kernel's names and values."""

from enum import IntEnum

PSZ_SIG = 0x43474244
"""`PSZ_SIG` in fs/pstore/zone.c ("DBGC"); a zone's `sig` is this XOR its pstore type."""

PSTORE_KMSG_HEADER_MAGIC = 0x4DFC3AE5
"""Magic of `struct psz_kmsg_header`, the dmesg sub-header."""

PSZ_BUFFER_SIZE = 12
"""sizeof(struct psz_buffer): sig, datalen, start — 12 bytes on every ABI."""

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


def zone_sig(ptype: PstoreType) -> int:
    """The `sig` a zone of this type carries."""
    return PSZ_SIG ^ int(ptype)
