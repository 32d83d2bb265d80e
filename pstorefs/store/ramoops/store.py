"""ramoops (fs/pstore/ram.c, ram_core.c): a RAM region, or an image of one, read as the
kernel reads it at probe, and erased as `ramoops_pstore_erase` erases.

Files, in the kernel's read order: `dmesg-<name>-<zone>` for each dmesg zone holding a
record (its `====sec.usec-C|D` line gone, inflated when compressed, `.enc.z` with the
raw payload when that fails), then `console-<name>-0`, `pmsg-<name>-0`, and
`ftrace-<name>-0`, the per-CPU zones merged as `pstore_ftrace_combine_log` merges them
and shown as inode.c's text. With ECC every file ends in the kernel's `ECC: ...`
notice, counting what was corrected in that zone's header and data blocks.

The layout is the module parameters' (`record_size`, `console_size`, `ftrace_size`,
`pmsg_size`, `ecc`, in bytes; `nr_cpus`, the writer's `nr_cpu_ids`), the region being
the source (or its `offset=`/`size=` part); with none of the area sizes given it is
found from the zone headers (`detect_layout`).

The kernel writes when it reads (it zaps console and pmsg after copying them, zaps a
dmesg zone without a record header, rewrites a zone whose signature is wrong, and
corrects RAM in place under ECC); pstorefs corrects in memory only and writes nothing
but an erase: `start` and `size` to 0 and, with ECC, the header's new parity.

Deliberate differences, as for pstore/zone: `rm` of the ftrace file erases every CPU's
zone (the kernel erases CPU 0's), and its `st_size` is the text's length. With ECC the
kernel appends the notice to the binary ftrace log, which misaligns every record it
then prints; pstorefs prints the records and puts the notice after them.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pstorefs.codecs.compression import decompress
from pstorefs.codecs.reed_solomon import rs_codec
from pstorefs.errors import DeviceError
from pstorefs.format.abi import ABIS, Abi, resolve_abi
from pstorefs.format.consts import DUMP_HEADER, PSTORE_KMSG_HEADER_MAGIC, PstoreType
from pstorefs.format.ftrace import merge_zones, parse_records, render_text
from pstorefs.format.kallsyms import NO_SYMBOLS, SymbolTable
from pstorefs.format.ramoops import (
    MIN_MEM_SIZE,
    PERSISTENT_RAM_BUFFER_SIZE,
    PERSISTENT_RAM_SIG,
    RAMOOPS_KERNMSG_HDR,
    EccGeometry,
    RamBuffer,
    RamoopsLayout,
    build_buffer,
    ecc_geometry,
    ecc_notice,
    parse_buffer,
    parse_kmsg_hdr,
    ring_content,
    rounddown_pow_of_two,
    sig_matches,
    zap_writes,
)
from pstorefs.store.base import DEFAULT_CACHE_BUDGET, Decoded, Layout, Record, Store, Zone
from pstorefs.store.config import StoreConfig
from pstorefs.store.device import Device

log = logging.getLogger(__name__)

OPTIONS = frozenset({"record_size", "console_size", "ftrace_size", "pmsg_size", "ecc",
                     "nr_cpus", "abi", "system_map"})
"""The options this back end reads (besides backend=, offset=, size=, name=, ro)."""

DEFAULT_NAME = "ramoops"
"""The kernel's back-end name (`oops_cxt.pstore.name`)."""

_DMESG_PROBE = 256
"""Bytes of a dmesg zone read to list it: its `====...` line (at most 36 bytes as the
kernel writes it) with room to spare; the whole record is read only if the line's
trailing white space runs past them."""

_MIN_FTRACE_VERSION = 0x30000
"""`KERNEL_VERSION(3, 0, 0)`: detection takes an ftrace signature for one only when it
holds a version code that old or newer."""

def recognizes(read: Callable[[int, int], bytes], size: int) -> bool:
    """Whether the source starts as a ramoops region: zone 0's header (a dmesg zone,
    or console or pmsg where there is none) is DBGC in either byte order with
    `start <= size` within the region, and no pstore/zone dmesg header follows it. A
    pstore/zone partition starting with DBGC has the dmesg magic at +12 (+8 in the
    blkoops RFC format), or a `start` of 0 below a `datalen`: read as ramoops,
    `start > size`. (A region of ftrace zones alone starts with DBGC XOR a version
    code, which the other byte order's pstore/zone signatures can look like: not
    recognized, `backend=ramoops` reads it.)"""
    if size < 2 * PERSISTENT_RAM_BUFFER_SIZE:
        return False
    try:
        head = read(0, 2 * PERSISTENT_RAM_BUFFER_SIZE)
    except DeviceError:
        return False
    for little in (True, False):
        buffer = parse_buffer(head, 0, little_endian=little)
        magic = PSTORE_KMSG_HEADER_MAGIC.to_bytes(4, "little" if little else "big")
        if (buffer.sig == PERSISTENT_RAM_SIG
                and buffer.valid(size - PERSISTENT_RAM_BUFFER_SIZE)
                and magic not in (head[8:12], head[12:16])):
            return True
    return False


def open_store(device: Device, config: StoreConfig, symbols: SymbolTable) -> RamoopsStore:
    """The ramoops back end. With any of `console_size`, `ftrace_size`, `pmsg_size`
    given the layout is the options' (the module parameters' defaults for the others);
    with none, it is found from the region's zone headers."""
    layout, assumed = find_layout(device, config)
    return RamoopsStore(device, layout, name=config.name_or(DEFAULT_NAME),
                        abi=None if config.abi == "auto" else resolve_abi(config.abi),
                        symbols=symbols, assumed=assumed)


def find_layout(device: Device, config: StoreConfig) -> tuple[RamoopsLayout, list[str]]:
    """The options' layout if they give one, else the one detected, else (an empty or
    never probed region) the module parameters' defaults."""
    if config.layout_given:
        return layout_from_options(config, device.size)
    record_size = rounddown_pow_of_two(config.record_size) if config.record_size else None
    found = detect_layout(device.read, device.size, record_size=record_size,
                          ecc=config.ecc, nr_cpus=config.nr_cpus)
    if found is None:
        layout, notes = layout_from_options(config, device.size)
        notes.append("no ramoops layout fits the zone headers: the module parameters' "
                     "defaults assumed")
        log.warning("%s: %s", device.path, notes[-1])
        return layout, notes
    log.info("%s: layout detected: %s", device.path, found.mount_options())
    return found, []


def layout_from_options(config: StoreConfig, mem_size: int) -> tuple[RamoopsLayout, list[str]]:
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

    layout = RamoopsLayout(mem_size=mem_size, record_size=size("record_size"),
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

    layout: RamoopsLayout
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
                  nr_cpus: int | None = None) -> RamoopsLayout | None:
    """The layout that puts a ramoops header under every zone start it has, found by
    trying the sizes (powers of two) `ramoops_probe` could have used.

    Every zone the kernel set up carries a header (its probe signs and zaps every zone
    whose signature is wrong), and data never looks like one, so a wrong layout puts a
    zone start in the middle of data; of the layouts left, the one with the most zones
    is the writer's (a coarser one skips headers). Where two explain the same headers
    (a last empty dmesg zone or a console; a console or a pmsg), `_Candidate.score`
    decides, which changes no file shown. `ecc` is found from the header parity at the
    zone ends. None when no layout fits (no DBGC header at the start)."""
    headers = _HeaderReader(read, mem_size)
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
    for record, (rest, splits) in itertools.product(records, areas.items()):
        dmesg = headers.dmesg_zones(mem_size - rest, record)
        if dmesg is None:
            continue
        end = dmesg[-1][0] + dmesg[-1][1] if dmesg else 0
        fit = sum(headers.dmesg_fit(offset) for offset, _ in dmesg)
        for console, ftrace, pmsg in splits:
            for cpu_count in cpus if ftrace else [1]:
                zones = headers.areas(end, console, ftrace, pmsg, cpu_count)
                if zones is None or (not dmesg and not zones):
                    continue
                layout = RamoopsLayout(mem_size, record if dmesg else 0, console, ftrace,
                                       pmsg, nr_cpus=cpu_count)
                found = _Candidate(layout, len(dmesg) + zones, fit,
                                   (console > 0) + (ftrace > 0) + (pmsg > 0))
                if best is None or found.score > best.score:
                    best = found
    if best is None:
        return None
    ecc_size = (16 if ecc == 1 else ecc) if ecc is not None else headers.ecc(best.layout)
    return dataclasses.replace(best.layout, ecc_size=ecc_size)


class _HeaderReader:
    """Zone headers of the region, each read once."""

    def __init__(self, read: Callable[[int, int], bytes], mem_size: int) -> None:
        self._read = read
        self.mem_size = mem_size
        self._cache: dict[int, RamBuffer | None] = {}
        head = self._raw(0, 4)
        self.little_endian = head != PERSISTENT_RAM_SIG.to_bytes(4, "big")

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
                offset + PERSISTENT_RAM_BUFFER_SIZE <= self.mem_size) else b""
            buffer = parse_buffer(raw, offset, little_endian=self.little_endian) if len(
                raw) == PERSISTENT_RAM_BUFFER_SIZE else None
            self._cache[offset] = buffer if buffer and buffer.valid(self.mem_size) and (
                sig_matches(PstoreType.FTRACE, buffer.sig)) else None
        return self._cache[offset]

    def fits(self, offset: int, size: int, ptype: PstoreType) -> bool:
        """Whether a zone of `ptype` and `size` at `offset` has its header. An ftrace
        signature must hold a real version code (3.0 on), not plain DBGC."""
        buffer = self.get(offset)
        if buffer is None or buffer.size > size - PERSISTENT_RAM_BUFFER_SIZE:
            return False
        version = buffer.sig ^ PERSISTENT_RAM_SIG
        if ptype is PstoreType.FTRACE:
            return sig_matches(ptype, buffer.sig) and version >= _MIN_FTRACE_VERSION
        return version == 0

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
        head = self._raw(offset + PERSISTENT_RAM_BUFFER_SIZE, 4)
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

    def ecc(self, layout: RamoopsLayout) -> int:
        """The `ecc_size` whose parity of each zone's header is at the zone's end: the
        kernel writes it whenever it writes a header (0 if none fits)."""
        spans = layout.zones()
        for ecc_size in _DETECT_ECC_SIZES:
            codec = rs_codec(ecc_size)
            if all(codec.encode(self._raw(span.offset, PERSISTENT_RAM_BUFFER_SIZE))
                   == self._raw(span.offset + span.size - ecc_size, ecc_size)
                   for span in spans):
                return ecc_size
        return 0


@dataclass(frozen=True)
class Prz:
    """One zone as the probe leaves it (`struct persistent_ram_zone`): its place, its
    ECC geometry, its header after ECC, what correcting the header counted, and the
    bytes that identify it (`RamoopsStore._snapshot`)."""

    zone: Zone
    ecc: EccGeometry
    buffer: RamBuffer
    snapshot: bytes
    corrected: int = 0
    bad_blocks: int = 0


class RamoopsStore(Store):
    """The records of a ramoops region.

    Opening reads each zone's header (and its parity) and the first bytes of each dmesg
    record; a body is read, corrected and decoded the first time its size or content
    is asked for, and kept in a fixed-budget cache.
    """

    def __init__(self, device: Device, layout: RamoopsLayout, *, name: str,
                 abi: Abi | None = None, symbols: SymbolTable = NO_SYMBOLS,
                 cache_budget: int = DEFAULT_CACHE_BUDGET, assumed: Sequence[str] = ()) -> None:
        super().__init__(device, name, cache_budget)
        self.parameters = layout
        self.symbols = symbols
        self.assumed = tuple(assumed)
        self.zones = [Zone(span.type, span.index, span.offset, span.size,
                           PERSISTENT_RAM_BUFFER_SIZE) for span in layout.zones()]
        self._codec = rs_codec(layout.ecc_size) if layout.ecc_size else None
        self._ecc_counts: dict[Record, tuple[int, int]] = {}
        self.little_endian = abi.little_endian if abi else self._little_endian()
        self._przs = {zone: prz for zone in self.zones if (prz := self._probe(zone))}
        self.abi = abi or self._detect_abi()
        self._records = self._recover()
        self._keep_slots(len(self._records))

    def layout(self) -> Layout:
        g = self.parameters
        return Layout(
            backend="ramoops", format="ramoops", abi=self.abi.name,
            little_endian=self.little_endian,
            parameters={"mem_size": g.mem_size, "record_size": g.record_size,
                        "console_size": g.console_size, "ftrace_size": g.ftrace_size,
                        "pmsg_size": g.pmsg_size, "ecc": g.ecc_size, "nr_cpus": g.nr_cpus},
            zones=len(self.zones), records=len(self._records),
            kernel_parameters=g.kernel_parameters(),
            mount_options=f"{g.mount_options()},abi={self.abi.name}", assumed=self.assumed)

    def describe(self) -> str:
        return (f"{self.device.path}: ramoops, {self.parameters.mount_options()}: "
                f"{len(self.zones)} zones, {len(self._records)} records")

    # -- listing ----------------------------------------------------------------
    def _little_endian(self) -> bool:
        """The writer's byte order, from the signatures at the zone starts."""
        votes = {True: 0, False: 0}
        for zone in self.zones:
            try:
                raw = self.device.read(zone.offset, 4)
            except DeviceError:
                continue
            for little in votes:
                votes[little] += sig_matches(zone.type, int.from_bytes(
                    raw, "little" if little else "big"))
        return votes[True] >= votes[False]

    def _snapshot(self, zone: Zone) -> bytes:
        """The bytes that identify what a zone holds, re-read before an erase: its
        header, the header's parity, and for dmesg the start of the record."""
        raw = self.device.read(zone.offset, PERSISTENT_RAM_BUFFER_SIZE)
        ecc = ecc_geometry(zone.size, self.parameters.ecc_size)
        if ecc.ecc_size:
            raw += self.device.read(zone.offset + ecc.par_header, ecc.ecc_size)
        if zone.type is PstoreType.DMESG:
            raw += self.device.read(zone.offset + PERSISTENT_RAM_BUFFER_SIZE,
                                    min(_DMESG_PROBE, ecc.buffer_size))
        return raw

    def _probe(self, zone: Zone) -> Prz | None:
        """`persistent_ram_post_init` without its writes: the zone, if its header (after
        ECC) has the type's signature and describes data within the buffer."""
        try:
            snapshot = self._snapshot(zone)
        except DeviceError as exc:
            log.error("%s zone %d at %#x: %s: skipped", zone.type.file_prefix, zone.index,
                      zone.offset, exc)
            return None
        ecc = ecc_geometry(zone.size, self.parameters.ecc_size)
        header = snapshot[:PERSISTENT_RAM_BUFFER_SIZE]
        corrected = bad = 0
        if self._codec:
            parity = snapshot[PERSISTENT_RAM_BUFFER_SIZE:PERSISTENT_RAM_BUFFER_SIZE
                              + ecc.ecc_size]
            result = self._codec.decode(header, parity)
            if result is None:
                bad = 1
            else:
                header, corrected = result.data, result.corrected
        buffer = parse_buffer(header, zone.offset, little_endian=self.little_endian)
        if not sig_matches(zone.type, buffer.sig) or buffer.empty:
            return None
        if not buffer.valid(ecc.buffer_size):
            log.warning("%s zone %d at %#x: invalid header (size %d, start %d, buffer %d): "
                        "skipped", zone.type.file_prefix, zone.index, zone.offset,
                        buffer.size, buffer.start, ecc.buffer_size)
            return None
        return Prz(zone, ecc, buffer, snapshot, corrected, bad)

    def _detect_abi(self) -> Abi:
        """The writer's ABI, which only the ftrace records tell: ram.c writes each to
        the zone of the CPU it ran on (`fprzs[smp_processor_id()]`), so read with the
        right ABI (record size, and where 32-bit ARM keeps the CPU) every record of zone
        `i` names CPU `i`. Where several ABIs fit, or none, or there are no records,
        the byte order's first is taken, and a note says so."""
        candidates = [abi for abi in ABIS.values() if abi.little_endian == self.little_endian]
        zones = [(prz.zone.index, self._content(prz)[0]) for prz in self._przs.values()
                 if prz.zone.type is PstoreType.FTRACE]
        if not zones:
            return candidates[0]
        fitting = [abi for abi in candidates
                   if all(record.cpu == cpu for cpu, data in zones
                          for record in parse_records(abi, data))]
        if len(fitting) != 1:
            chosen = (fitting or candidates)[0]
            note = (f"the ftrace records read alike as {', '.join(a.name for a in fitting)}"
                    if fitting else "the ftrace records fit no ABI")
            self.assumed += (f"{note}: assuming abi={chosen.name}",)
            log.debug("%s: %s", self.device.path, self.assumed[-1])
            return chosen
        return fitting[0]

    def _recover(self) -> list[Record]:
        """The records in `ramoops_pstore_read`'s order: dmesg zones, console, pmsg,
        then ftrace (its per-CPU zones as one record)."""
        records = [record for zone in self.zones if zone.type is PstoreType.DMESG
                   and zone in self._przs and (record := self._dmesg_record(self._przs[zone]))]
        for ptype in (PstoreType.CONSOLE, PstoreType.PMSG, PstoreType.FTRACE):
            przs = [prz for prz in self._przs.values() if prz.zone.type is ptype]
            if przs:
                records.append(Record(ptype, 0, tuple(prz.zone for prz in przs),
                                      snapshot=tuple(prz.snapshot for prz in przs)))
        return records

    def _dmesg_record(self, prz: Prz) -> Record | None:
        """A dmesg zone's record, if its data starts with a record header (the kernel
        zaps the zone otherwise)."""
        zone = prz.zone
        try:
            head, _, _ = self._content(prz, _DMESG_PROBE)
            header = parse_kmsg_hdr(head)
            if header.length >= len(head) and prz.buffer.size > len(head):
                header = parse_kmsg_hdr(self._content(prz)[0])  # white space ran on
        except DeviceError as exc:
            log.error("dmesg zone %d at %#x: %s: skipped", zone.index, zone.offset, exc)
            return None
        if not header.length:
            log.info("dmesg zone %d at %#x: no record header: skipped (the kernel zaps "
                     "it)", zone.index, zone.offset)
            return None
        return Record(PstoreType.DMESG, zone.index, (zone,), time_ns=header.time_ns,
                      compressed=header.compressed, snapshot=(prz.snapshot,))

    # -- reading a zone -------------------------------------------------------------
    def _content(self, prz: Prz, limit: int | None = None) -> tuple[bytes, int, int]:
        """The zone's bytes in write order, corrected as `persistent_ram_ecc_old`
        corrects them, with the ECC counts (header included): bytes corrected, blocks
        unrecoverable. `limit`: only the first bytes are wanted (their counts are
        partial), read alone where the ring has not wrapped."""
        buffer = prz.buffer
        if limit is not None and buffer.start in (0, buffer.size):
            data, corrected, bad = self._data(prz, min(limit, buffer.size))
            return data, corrected, bad
        data, corrected, bad = self._data(prz, buffer.size)
        return ring_content(data, buffer), corrected + prz.corrected, bad + prz.bad_blocks

    def _data(self, prz: Prz, length: int) -> tuple[bytes, int, int]:
        """The first `length` bytes of the zone's data, each ECC block they touch
        decoded in memory; a block the code cannot correct is kept as read."""
        start = prz.zone.offset + PERSISTENT_RAM_BUFFER_SIZE
        ecc = prz.ecc
        if not self._codec:
            return self.device.read(start, length), 0, 0
        blocks = ecc.blocks(length)
        data = bytearray(self.device.read(start, min(len(blocks) * ecc.block_size,
                                                     ecc.buffer_size)))
        parity = self.device.read(prz.zone.offset + ecc.par_buffer, len(blocks) * ecc.ecc_size)
        corrected = bad = 0
        for index in blocks:
            at, size = ecc.block(index)
            result = self._codec.decode(bytes(data[at:at + size]),
                                        parity[index * ecc.ecc_size:][:ecc.ecc_size])
            if result is None:
                bad += 1
            elif result.corrected:
                corrected += result.corrected
                data[at:at + size] = result.data
        return bytes(data[:length]), corrected, bad

    # -- files --------------------------------------------------------------------
    def attributes(self, record: Record) -> dict[str, str]:
        """What the headers know and the kernel's files do not say."""
        body = self.read(record)
        attrs = {
            "zone_offset": ",".join(str(z.offset) for z in record.zones),
            "zone_size": str(record.zones[0].size),
            "abi": self.abi.name,
            "format": "ramoops",
        }
        if record.time_ns is not None:
            attrs["time_ns"] = str(record.time_ns)
        if record.type is PstoreType.DMESG:
            attrs["compressed"] = "1" if record.compressed else "0"
            if record.compressed:
                attrs["compressor"] = self.compressor(record) or "unknown"
            decoded = not record.compressed or self.compressor(record) is not None
            dump = DUMP_HEADER.match(body) if decoded else None
            if dump:
                attrs["reason"] = dump[1].decode()
                attrs["counter"] = dump[2].decode()
        if self._codec:
            corrected, bad = self._ecc_counts[record]
            attrs["ecc_size"] = str(self.parameters.ecc_size)
            attrs["ecc_corrected_bytes"] = str(corrected)
            attrs["ecc_unrecoverable_blocks"] = str(bad)
        return attrs

    def _decode(self, record: Record) -> Decoded:
        if record.type is PstoreType.DMESG:
            decoded, corrected, bad = self._dmesg_body(record)
            body = decoded.body
        elif record.type is PstoreType.FTRACE:
            body, corrected, bad = self._ftrace_text(record)
        else:
            body, corrected, bad = self._content(self._przs[record.zones[0]])
        if record.type is not PstoreType.DMESG:
            decoded = Decoded(body)
        if self._codec:
            self._ecc_counts[record] = corrected, bad
            decoded = dataclasses.replace(decoded, body=body + ecc_notice(corrected, bad))
        return decoded

    def _dmesg_body(self, record: Record) -> tuple[Decoded, int, int]:
        """The text of a dmesg record (`.enc.z` if it does not decompress), and its ECC
        counts."""
        prz = self._przs[record.zones[0]]
        content, corrected, bad = self._content(prz)
        payload = content[parse_kmsg_hdr(content).length:]
        if not record.compressed:
            return Decoded(payload), corrected, bad
        limit = 3 * self._bufsize()
        decoded = decompress(payload, limit)
        if decoded is None:
            log.warning("%s: dmesg zone %d: compressed record does not decompress: shown "
                        "raw as .enc.z", self.device.path, prz.zone.index)
            return Decoded(payload, undecodable=True), corrected, bad
        text, compressor = decoded
        return Decoded(text, compressor), corrected, bad

    def _bufsize(self) -> int:
        """`psinfo->bufsize`, the first dmesg zone's data capacity: Linux 6.6+ inflates
        into three times it."""
        first = next(z for z in self.zones if z.type is PstoreType.DMESG)
        return ecc_geometry(first.size, self.parameters.ecc_size).buffer_size

    def _ftrace_text(self, record: Record) -> tuple[bytes, int, int]:
        per_cpu, corrected, bad = [], 0, 0
        for zone in record.zones:
            content, zone_corrected, zone_bad = self._content(self._przs[zone])
            per_cpu.append(parse_records(self.abi, content))
            corrected, bad = corrected + zone_corrected, bad + zone_bad
        return render_text(merge_zones(per_cpu), self.symbols), corrected, bad

    # -- erase ----------------------------------------------------------------------
    def _unchanged(self, zone: Zone, snapshot: bytes) -> bool:
        """Its header, the header's parity and a dmesg record's start as listed."""
        return self._snapshot(zone) == snapshot

    def _erase_zones(self, record: Record) -> None:
        """`persistent_ram_zap` of each zone of the record: `start` and `size` to 0
        (`Device.write_fields`: one write where they share a sector; else `size` first,
        so that a cut leaves `start > size`, which the kernel never reads) and, with
        ECC, the parity of the header so zapped. A cut before the parity is written
        leaves a header that the old parity corrects back: the record stays whole
        until the erase is."""
        for zone in record.zones:
            self.device.write_fields(zone.offset, zap_writes(little_endian=self.little_endian))
            if self._codec:
                prz = self._przs[zone]
                header = build_buffer(RamBuffer(prz.buffer.sig, 0, 0),
                                      little_endian=self.little_endian)
                self.device.write(zone.offset + prz.ecc.par_header, self._codec.encode(header))
