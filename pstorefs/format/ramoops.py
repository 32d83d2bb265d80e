"""The ramoops region (fs/pstore/ram.c, ram_core.c): where its zones are, their header,
the dmesg record header, and the ECC geometry and notice. Pure: no I/O.

Each zone ("persistent RAM zone") starts with `struct persistent_ram_buffer` — `sig`,
`start`, `size`, in the writer's byte order — followed by `buffer_size` bytes of ring
data; with ECC the zone ends in the Reed-Solomon parity of each data block and of the
header. Unlike pstore/zone, the fields are `start` then `size`, dmesg, console and pmsg
zones share one signature (DBGC), and the ftrace zones carry DBGC XOR the writer's
`LINUX_VERSION_CODE`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from construct import Int32ub, Int32ul, Struct

from pstorefs.errors import GeometryError
from pstorefs.format.abi import field_span
from pstorefs.format.consts import PSZ_SIG, PstoreType, timespec_ns
from pstorefs.format.zone import parse

PERSISTENT_RAM_SIG = PSZ_SIG
"""`PERSISTENT_RAM_SIG` ("DBGC"): the `sig` of dmesg, console and pmsg zones."""

PERSISTENT_RAM_BUFFER_SIZE = 12
"""sizeof(struct persistent_ram_buffer): `u32 sig`, `atomic_t start`, `atomic_t size`."""

RAMOOPS_KERNMSG_HDR = b"===="
"""What every dmesg record starts with (`RAMOOPS_KERNMSG_HDR`)."""

MIN_MEM_SIZE = 4096
"""ram.c's default for `record_size`, `console_size`, `ftrace_size` and `pmsg_size`."""

ECC_BLOCK_SIZE = 128
"""`ecc_info.block_size` when the platform gives none (module parameters never do)."""

MAX_ECC_SIZE = 255 - ECC_BLOCK_SIZE
"""The largest `ecc_size` whose 128-byte blocks still fit one RS(255) codeword: beyond
it `decode_rs8` hits its BUG_ON, so no kernel ever read such a region."""

VERSION_CODE_BITS = 24
"""`LINUX_VERSION_CODE` is `KERNEL_VERSION(a, b, c)` = a << 16 | b << 8 | min(c, 255)."""

_SPACES = frozenset(b" \t\n\v\f\r\xa0")
"""What the kernel's `isspace` takes (lib/ctype.c counts 0xA0, NBSP, as space too)."""


@dataclass(frozen=True)
class RamBuffer:
    """`struct persistent_ram_buffer` without its data."""

    sig: int
    start: int
    size: int

    @property
    def empty(self) -> bool:
        return self.start == 0 and self.size == 0

    def valid(self, buffer_size: int) -> bool:
        """`persistent_ram_post_init`'s test once the signature matched: a header with
        `size` past the buffer or `start` past `size` is zapped, never read."""
        return self.size <= buffer_size and self.start <= self.size


_BUFFER = {True: Struct("sig" / Int32ul, "start" / Int32ul, "size" / Int32ul),
           False: Struct("sig" / Int32ub, "start" / Int32ub, "size" / Int32ub)}
"""`struct persistent_ram_buffer` without `data[]`, in each byte order."""
_BUFFER_COMPILED = {little: definition.compile() for little, definition in _BUFFER.items()}


ZAPPED_FIELDS = ("size", "start")
"""The header fields `persistent_ram_zap` zeroes, in the order pstorefs writes them:
`size` first, so that a cut between the two leaves `start > size`, which the kernel
never reads as a record."""


def sig_word(raw: bytes) -> bytes:
    """The bytes of the `sig` that opens a zone's header, in whatever byte order."""
    at, size = field_span(_BUFFER[True], "sig")
    return raw[at:at + size]


@cache
def zap_writes(*, little_endian: bool) -> tuple[tuple[int, bytes], ...]:
    """(offset in the zone, bytes) of each header write of `persistent_ram_zap`."""
    definition = _BUFFER[little_endian]
    return tuple((at, bytes(size)) for at, size in
                 (field_span(definition, name) for name in ZAPPED_FIELDS))


def parse_buffer(raw: bytes, offset: int, *, little_endian: bool) -> RamBuffer:
    """The zone header at the start of `raw` (read at device `offset`)."""
    h = parse(_BUFFER_COMPILED[little_endian], raw[:PERSISTENT_RAM_BUFFER_SIZE], offset,
              "ramoops zone header")
    return RamBuffer(h.sig, h.start, h.size)


def build_buffer(buffer: RamBuffer, *, little_endian: bool) -> bytes:
    return _BUFFER_COMPILED[little_endian].build({"sig": buffer.sig, "start": buffer.start,
                                         "size": buffer.size})


def sig_matches(ptype: PstoreType, sig: int) -> bool:
    """Whether `sig` is what a zone of this type carries. ftrace zones are signed with
    the writer's `LINUX_VERSION_CODE`, which a reader cannot know: any version code."""
    if ptype is PstoreType.FTRACE:
        return (sig ^ PERSISTENT_RAM_SIG) >> VERSION_CODE_BITS == 0
    return sig == PERSISTENT_RAM_SIG


def ring_content(data: bytes, buffer: RamBuffer) -> bytes:
    """A zone's bytes in write order, as `persistent_ram_save_old` copies them:
    `[start, size)` then `[0, start)`."""
    return data[buffer.start:buffer.size] + data[:buffer.start]


@dataclass(frozen=True)
class EccGeometry:
    """Where `persistent_ram_init_ecc` puts the data and the parity in one zone.

    `buffer_size` is the data capacity (`prz->buffer_size`, after the parity); the
    parity of data block `i` is at `par_buffer + i * ecc_size`, the header's at
    `par_header`; offsets are from the zone start. `ecc_size` 0: no ECC."""

    zone_size: int
    ecc_size: int
    buffer_size: int
    ecc_blocks: int = 0
    block_size: int = ECC_BLOCK_SIZE

    @property
    def par_buffer(self) -> int:
        return PERSISTENT_RAM_BUFFER_SIZE + self.buffer_size

    @property
    def par_header(self) -> int:
        return self.par_buffer + self.ecc_blocks * self.ecc_size

    def blocks(self, size: int) -> range:
        """The data blocks `persistent_ram_ecc_old` checks: those below `size`."""
        return range(-(-size // self.block_size))

    def block(self, index: int) -> tuple[int, int]:
        """Data block `index`: its offset in the data and its length (the last is short)."""
        start = index * self.block_size
        return start, min(self.block_size, self.buffer_size - start)


def ecc_geometry(zone_size: int, ecc_size: int) -> EccGeometry:
    """The zone's layout for `ecc_size` parity bytes; GeometryError where the kernel's
    `persistent_ram_new` fails (and with it the whole ramoops probe)."""
    buffer_size = zone_size - PERSISTENT_RAM_BUFFER_SIZE
    if buffer_size <= 0:
        raise GeometryError(f"a {zone_size}-byte ramoops zone has no room for data")
    if not ecc_size:
        return EccGeometry(zone_size, 0, buffer_size)
    if not 0 < ecc_size <= MAX_ECC_SIZE:
        raise GeometryError(f"ecc={ecc_size}: must be 1 to {MAX_ECC_SIZE} parity bytes")
    blocks = max(0, -(-(buffer_size - ecc_size) // (ECC_BLOCK_SIZE + ecc_size)))
    total = (blocks + 1) * ecc_size
    if total >= buffer_size:
        raise GeometryError(f"ecc={ecc_size}: invalid for a {zone_size}-byte zone (total "
                            f"{total}, buffer size {buffer_size})")
    return EccGeometry(zone_size, ecc_size, buffer_size - total, blocks)


def ecc_notice(corrected: int, bad_blocks: int) -> bytes:
    """`persistent_ram_ecc_string`: what the kernel appends to every record of an ECC
    region."""
    if corrected or bad_blocks:
        return f"\nECC: {corrected} Corrected bytes, {bad_blocks} unrecoverable blocks\n".encode()
    return b"\nECC: No errors detected\n"


def rounddown_pow_of_two(size: int) -> int:
    """What `ramoops_probe` makes of a size that is not a power of two."""
    return 1 << (size.bit_length() - 1) if size > 0 else size


@dataclass(frozen=True)
class RecordHeader:
    """What `ramoops_read_kmsg_hdr` makes of a dmesg record's first line: `length` 0
    means no header (the kernel zaps such a zone and shows nothing)."""

    tv_sec: int
    tv_nsec: int
    compressed: bool
    length: int

    @property
    def time_ns(self) -> int | None:
        return timespec_ns(self.tv_sec, self.tv_nsec)


def parse_kmsg_hdr(content: bytes) -> RecordHeader:
    """`ramoops_read_kmsg_hdr`: `"====%lld.%lu-%c\\n%n"`, else the older
    `"====%lld.%lu\\n%n"` (uncompressed), with the kernel's sscanf rules: numbers may
    follow white space, `\\n` matches any run of white space, the fraction is
    microseconds of any width. `content` ends where the record does."""
    for fmt, conversions in (("====%lld.%lu-%c\n%n", 3), ("====%lld.%lu\n%n", 2)):
        values, length = _sscanf(content, fmt)
        if len(values) == conversions and length is not None:
            compressed = conversions == 3 and values[2] == ord("C")
            return RecordHeader(_s64(values[0]), _s64(values[1] * 1000), compressed, length)
    return RecordHeader(0, 0, False, 0)


def _s64(value: int) -> int:
    """`value` as the kernel's 64-bit signed arithmetic leaves it."""
    value &= (1 << 64) - 1
    return value - (1 << 64) if value >> 63 else value


def _sscanf(buf: bytes, fmt: str) -> tuple[list[int], int | None]:
    """The kernel's `vsscanf` for the conversions ramoops uses (%lld, %lu, %c, %n) over
    `buf` as a C string (it ends at its end or at a NUL byte): the values converted
    before the first mismatch, and where `%n` was reached (None if it was not)."""
    nul = buf.find(b"\0")
    text = buf if nul < 0 else buf[:nul]
    pos, i = 0, 0
    values: list[int] = []
    while i < len(fmt):
        if fmt[i].isspace():
            while i < len(fmt) and fmt[i].isspace():
                i += 1
            pos = _skip_spaces(text, pos)
        elif fmt[i] != "%":
            if pos >= len(text) or text[pos] != ord(fmt[i]):
                break
            pos, i = pos + 1, i + 1
        else:
            i += 1
            while fmt[i] == "l":  # the length modifiers: every value is 64-bit here
                i += 1
            spec, i = fmt[i], i + 1
            if spec == "n":
                return values, pos
            if pos >= len(text):
                break
            if spec == "c":
                values.append(text[pos])
                pos += 1
                continue
            number = _strtoull(text, _skip_spaces(text, pos), signed=spec == "d")
            if number is None:
                break
            value, pos = number
            values.append(value)
    return values, None


def _skip_spaces(text: bytes, pos: int) -> int:
    while pos < len(text) and text[pos] in _SPACES:
        pos += 1
    return pos


def _strtoull(text: bytes, pos: int, *, signed: bool) -> tuple[int, int] | None:
    """`simple_strntoull` (or `simple_strntoll`, which takes a leading `-`) in base 10:
    the value, wrapped to 64 bits as the kernel's is, and where the digits end; None
    where no digit follows."""
    negative = signed and text[pos:pos + 1] == b"-"
    start = stop = pos + negative
    while stop < len(text) and 0x30 <= text[stop] <= 0x39:
        stop += 1
    if stop == start:
        return None
    value = int(text[start:stop]) & ((1 << 64) - 1)
    return (-value if negative else value), stop
