"""Whether a source is a ramoops region, and its layout when no size is given.

ramoops writes no superblock either: the layout is the module parameters'. Every zone
starts with a `persistent_ram_buffer` header whose signature is DBGC (or, for ftrace,
DBGC XOR a kernel version code), so the candidates of `ramoops_probe`'s cut that put
a valid header under the most zone starts are tried, smallest first (`detect_layout`).
Detection only reads.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass

from pstorefs.codecs.reed_solomon import rs_codec
from pstorefs.errors import DeviceError, GeometryError
from pstorefs.format.consts import PstoreType, vote_little_endian
from pstorefs.format.ramoops import (
    MIN_MEM_SIZE,
    PERSISTENT_RAM_BUFFER_SIZE,
    PERSISTENT_RAM_SIG,
    RAMOOPS_KERNMSG_HDR,
    RamBuffer,
    ecc_geometry,
    parse_buffer,
    rounddown_pow_of_two,
    sig_matches,
    sig_word,
)
from pstorefs.format.zone import HEADER_PROBE, SIGNATURE_SIZE, parse_found_header
from pstorefs.store.config import StoreConfig
from pstorefs.store.device import Device, NextData, in_hole
from pstorefs.store.ramoops.layout import RamoopsGeometry

log = logging.getLogger(__name__)

_MIN_FTRACE_VERSION = 0x30000
"""`KERNEL_VERSION(3, 0, 0)`: detection takes an ftrace signature for one only when it
holds a version code that old or newer."""


def recognizes(read: Callable[[int, int], bytes], size: int,
               next_data: NextData | None = None) -> bool:
    """Whether the source starts as a ramoops region: zone 0's header (a dmesg zone,
    or console or pmsg where there is none) is DBGC in either byte order with
    `start <= size` within the region, and no pstore/zone dmesg header follows it. A
    pstore/zone partition starting with DBGC has the dmesg magic at +12 (+8 in the
    blkoops RFC format), or a `start` of 0 below a `datalen`: read as ramoops,
    `start > size`. (A region of ftrace zones alone starts with DBGC XOR a version
    code, which the other byte order's pstore/zone signatures can look like: not
    recognized, `backend=ramoops` reads it.) A hole at 0 (`next_data`) is no header."""
    if size < 2 * PERSISTENT_RAM_BUFFER_SIZE or (
            next_data is not None and in_hole(next_data, 0, 2 * PERSISTENT_RAM_BUFFER_SIZE)):
        return False
    try:
        head = read(0, 2 * PERSISTENT_RAM_BUFFER_SIZE)
    except DeviceError:
        return False
    found = parse_found_header(head[:HEADER_PROBE])
    if found is not None and found.kmsg_format is not None:
        return False  # a pstore/zone dmesg header (its sig is ramoops' DBGC)
    return any(buffer.sig == PERSISTENT_RAM_SIG
               and buffer.valid(size - PERSISTENT_RAM_BUFFER_SIZE)
               for buffer in (parse_buffer(head, 0, little_endian=little)
                              for little in (True, False)))


def find_layout(device: Device, config: StoreConfig) -> tuple[RamoopsGeometry, list[str]]:
    """The options' layout if they give one, else the one detected, else (an empty or
    never probed region) the module parameters' defaults."""
    if config.layout_given:
        return layout_from_options(config, device.size)
    if config.nr_cpus is not None and config.nr_cpus < 1:
        raise GeometryError("nr_cpus must be at least 1")
    record_size = rounddown_pow_of_two(config.record_size) if config.record_size else None
    found = detect_layout(device.read, device.size, record_size=record_size,
                          ecc=config.ecc, nr_cpus=config.nr_cpus, next_data=device.next_data)
    if found is None:
        layout, notes = layout_from_options(config, device.size)
        notes.append("no ramoops layout fits the zone headers: the module parameters' "
                     "defaults assumed")
        log.warning("%s: %s", device.path, notes[-1])
        return layout, notes
    log.info("%s: layout detected: %s", device.path, found.mount_options())
    return found, []


def layout_from_options(config: StoreConfig, mem_size: int) -> tuple[RamoopsGeometry, list[str]]:
    """The layout `ramoops_probe` makes of the options as module parameters: a size not
    given is ram.c's default (4096), one not a power of two is rounded down, a size
    <= 0 turns its area off, and `ecc=1` means 16."""
    notes: list[str] = []

    def size(key: str) -> int:
        given = getattr(config, key)
        value = MIN_MEM_SIZE if given is None else max(given, 0)
        rounded = rounddown_pow_of_two(value)
        if rounded != value:
            notes.append(f"{key}={value} is not a power of two: the kernel uses {rounded}")
        return rounded

    layout = RamoopsGeometry(mem_size=mem_size, record_size=size("record_size"),
                           console_size=size("console_size"), ftrace_size=size("ftrace_size"),
                           pmsg_size=size("pmsg_size"),
                           ecc_size=16 if config.ecc == 1 else config.ecc or 0,
                           nr_cpus=config.nr_cpus or 1)
    for note in notes:
        log.warning("%s, and so does pstorefs", note)
    return layout, notes


_DETECT_MIN_SIZE = 512
"""The smallest area size detection tries (sizes are powers of two, see
`rounddown_pow_of_two`)."""

_DETECT_MAX_CPUS = 64
"""The most per-CPU ftrace zones detection tries when `nr_cpus=` is not given."""

_DETECT_ECC_SIZES = (16, 32, 64, 8, 4, 2)
"""The `ecc=` values detection tries (1 means 16); any other must be given."""


@dataclass(frozen=True)
class _Candidate:
    """A layout whose every zone start holds a header of its type, and how well the
    zones' contents fit their types."""

    layout: RamoopsGeometry
    zones: int
    dmesg_fit: int
    areas: int

    @property
    def score(self) -> tuple[int, int, int, int]:
        """More zones explained first; then dmesg zones that hold `====` records; then
        the module parameters' habit of having every area; then console over pmsg."""
        return (self.zones, self.dmesg_fit, self.areas, self.layout.console_size > 0)


def detect_layout(read: Callable[[int, int], bytes], mem_size: int, *,
                  record_size: int | None = None, ecc: int | None = None,
                  nr_cpus: int | None = None,
                  next_data: NextData | None = None) -> RamoopsGeometry | None:
    """The layout that puts a ramoops header under every zone start it has, found by
    trying the sizes (powers of two) `ramoops_probe` could have used.

    Every zone the kernel set up carries a header (its probe signs and zaps every zone
    whose signature is wrong), and data never looks like one, so a wrong layout puts a
    zone start in the middle of data; of the layouts left, the one with the most zones
    is the writer's (a coarser one skips headers). Where two explain the same headers
    (a last empty dmesg zone or a console; a console or a pmsg), `_Candidate.score`
    decides, which changes no file shown. `ecc` is found from the header parity at the
    zone ends. None when no layout fits (no DBGC header at the start).

    A layout is dropped as soon as one zone start it needs has no header, before its
    other sizes are tried: the area after the dmesg zones starts where they end, and a
    second dmesg zone (or that area) starts within `[record_size, 2 * record_size)`, so
    a sparse image's holes (`next_data`) rule out most record sizes unread."""
    headers = _HeaderReader(read, mem_size, next_data)
    if headers.get(0) is None:
        return None
    sizes = [0] + [1 << k for k in range(_DETECT_MIN_SIZE.bit_length() - 1,
                                         mem_size.bit_length()) if 1 << k < mem_size]
    records = [record_size] if record_size else sizes
    cpus = [nr_cpus] if nr_cpus else list(range(1, _DETECT_MAX_CPUS + 1))
    areas: dict[int, list[tuple[int, int, int]]] = {}
    for console, ftrace, pmsg in itertools.product(sizes, repeat=3):
        if console + ftrace + pmsg < mem_size:
            areas.setdefault(console + ftrace + pmsg, []).append((console, ftrace, pmsg))
    best: _Candidate | None = None
    for record in records:
        # a dmesg zone is `mem / cnt` made even: `record - 1` to `2 * record - 1` bytes, so
        # the second one, or the area after a single one, starts there; with no header
        # in that range, only the whole region as one dmesg zone can fit
        alone = bool(record) and headers.none_from(record - 1, 2 * record)
        for rest, splits in areas.items():
            if alone and rest:
                continue
            dmesg = headers.dmesg_zones(mem_size - rest, record)
            if dmesg is None:
                continue
            end = dmesg[-1][0] + dmesg[-1][1] if dmesg else 0
            if rest and headers.get(end) is None:
                continue  # whichever area comes first starts at `end`
            fit = sum(headers.dmesg_fit(offset) for offset, _ in dmesg)
            for console, ftrace, pmsg in splits:
                if ftrace and not headers.signed(end + console, PstoreType.FTRACE):
                    continue  # CPU 0's ftrace zone starts there, whatever the count
                for cpu_count in cpus if ftrace else [1]:
                    zones = headers.areas(end, console, ftrace, pmsg, cpu_count)
                    if zones is None or (not dmesg and not zones):
                        continue
                    layout = RamoopsGeometry(mem_size, record if dmesg else 0, console,
                                             ftrace, pmsg, nr_cpus=cpu_count)
                    found = _Candidate(layout, len(dmesg) + zones, fit,
                                       (console > 0) + (ftrace > 0) + (pmsg > 0))
                    if best is None or found.score > best.score:
                        best = found
    if best is None:
        return None
    ecc_size = (16 if ecc == 1 else ecc) if ecc is not None else headers.ecc(best.layout)
    return dataclasses.replace(best.layout, ecc_size=ecc_size)


class _HeaderReader:
    """Zone headers of the region, each read once; none read in a hole (`next_data`)."""

    def __init__(self, read: Callable[[int, int], bytes], mem_size: int,
                 next_data: NextData | None = None) -> None:
        self._read = read
        self.mem_size = mem_size
        self._next_data = next_data
        self._cache: dict[int, RamBuffer | None] = {}
        head = sig_word(self._raw(0, PERSISTENT_RAM_BUFFER_SIZE))
        self.little_endian = vote_little_endian([(head, PERSISTENT_RAM_SIG.__eq__)])

    def _raw(self, offset: int, length: int) -> bytes:
        try:
            return self._read(offset, length)
        except DeviceError:
            return b""

    def get(self, offset: int) -> RamBuffer | None:
        """The header at `offset` if it reads as a ramoops one (DBGC, or DBGC XOR a
        version code) with `start <= size` within the region."""
        if offset not in self._cache:
            raw = self._raw(offset, PERSISTENT_RAM_BUFFER_SIZE) if (
                offset + PERSISTENT_RAM_BUFFER_SIZE <= self.mem_size
                and not self.none_from(offset, offset + 1)) else b""
            buffer = parse_buffer(raw, offset, little_endian=self.little_endian) if len(
                raw) == PERSISTENT_RAM_BUFFER_SIZE else None
            self._cache[offset] = buffer if buffer and buffer.valid(self.mem_size) and (
                sig_matches(PstoreType.FTRACE, buffer.sig)) else None
        return self._cache[offset]

    def none_from(self, start: int, stop: int) -> bool:
        """Whether no header can start in `[start, stop)`: its signature, never all
        zeros, would lie in a hole (False where the holes are not known)."""
        return self._next_data is not None and in_hole(
            self._next_data, start, stop - start + SIGNATURE_SIZE - 1)

    def signed(self, offset: int, ptype: PstoreType) -> bool:
        """Whether the header at `offset` has the signature of a `ptype` zone. An ftrace
        signature must hold a real version code (3.0 on), not plain DBGC."""
        buffer = self.get(offset)
        if buffer is None:
            return False
        version = buffer.sig ^ PERSISTENT_RAM_SIG
        if ptype is PstoreType.FTRACE:
            return sig_matches(ptype, buffer.sig) and version >= _MIN_FTRACE_VERSION
        return version == 0

    def fits(self, offset: int, size: int, ptype: PstoreType) -> bool:
        """Whether a zone of `ptype` and `size` at `offset` has its header."""
        buffer = self.get(offset)
        return (buffer is not None and buffer.size <= size - PERSISTENT_RAM_BUFFER_SIZE
                and self.signed(offset, ptype))

    def dmesg_zones(self, dump_mem_sz: int, record_size: int) -> list[tuple[int, int]] | None:
        """The dmesg zones `ramoops_init_przs` cuts, if each has its header."""
        if not record_size:
            return []
        if dump_mem_sz < record_size:
            return None
        cnt = dump_mem_sz // record_size
        zone_sz = dump_mem_sz // cnt // 2 * 2
        if zone_sz <= PERSISTENT_RAM_BUFFER_SIZE or not all(
                self.fits(i * zone_sz, zone_sz, PstoreType.DMESG) for i in range(cnt)):
            return None
        return [(i * zone_sz, zone_sz) for i in range(cnt)]

    def dmesg_fit(self, offset: int) -> int:
        """+1 for a dmesg zone holding a `====` record, -1 for one holding anything
        else (the kernel would zap it), 0 for an empty one."""
        buffer = self.get(offset)
        if buffer is None or buffer.size == 0:
            return 0
        head = self._raw(offset + PERSISTENT_RAM_BUFFER_SIZE, len(RAMOOPS_KERNMSG_HDR))
        return 1 if head == RAMOOPS_KERNMSG_HDR else -1

    def areas(self, offset: int, console: int, ftrace: int, pmsg: int,
              cpus: int) -> int | None:
        """How many zones the console, ftrace and pmsg areas after the dmesg zones
        have, if each has its header; None if one does not."""
        if console and not self.fits(offset, console, PstoreType.CONSOLE):
            return None
        offset += console
        zone_sz = ftrace // cpus // 2 * 2
        if ftrace and (zone_sz <= PERSISTENT_RAM_BUFFER_SIZE or not all(
                self.fits(offset + i * zone_sz, zone_sz, PstoreType.FTRACE)
                for i in range(cpus))):
            return None
        offset += cpus * zone_sz if ftrace else 0
        if pmsg and not self.fits(offset, pmsg, PstoreType.PMSG):
            return None
        return (console > 0) + (cpus if ftrace else 0) + (pmsg > 0)

    def ecc(self, layout: RamoopsGeometry) -> int:
        """The `ecc_size` whose parity of each zone's header is at the zone's end: the
        kernel writes it whenever it writes a header (0 if none fits). A header the
        parity no longer matches is what ECC is there for: failing an exact fit, the
        size under which most headers match and every other one corrects wins."""
        spans = layout.zones()
        near: list[tuple[int, list[tuple[bytes, bytes]]]] = []
        for ecc_size in _DETECT_ECC_SIZES:
            pairs = [(self._raw(span.offset, PERSISTENT_RAM_BUFFER_SIZE),
                      self._raw(span.offset + ecc_geometry(span.size, ecc_size).par_header,
                                ecc_size)) for span in spans]
            exact = sum(rs_codec(ecc_size).encode(header) == parity for header, parity in pairs)
            if exact == len(pairs):
                return ecc_size
            if 2 * exact > len(pairs):
                near.append((ecc_size, pairs))
        for ecc_size, pairs in near:
            if None not in rs_codec(ecc_size).decode_many(pairs):
                return ecc_size
        return 0
