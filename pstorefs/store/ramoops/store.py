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
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from itertools import islice

from pstorefs.codecs.compression import decompress
from pstorefs.codecs.reed_solomon import rs_codec
from pstorefs.errors import DeviceError
from pstorefs.format.abi import ABIS, Abi, resolve_abi
from pstorefs.format.abi_detect import FTRACE_SAMPLE, FTRACE_SAMPLE_ZONES
from pstorefs.format.consts import DUMP_HEADER, PstoreType, vote_little_endian
from pstorefs.format.ftrace import Names, parse_records
from pstorefs.format.kallsyms import NO_SYMBOLS, SymbolTable
from pstorefs.format.ramoops import (
    PERSISTENT_RAM_BUFFER_SIZE,
    EccGeometry,
    RamBuffer,
    build_buffer,
    ecc_geometry,
    ecc_notice,
    parse_buffer,
    parse_kmsg_hdr,
    ring_content,
    sig_matches,
    sig_word,
    zap_writes,
)
from pstorefs.store.base import (
    DEFAULT_CACHE_BUDGET,
    Decoded,
    Layout,
    Record,
    Store,
    Zone,
    partial_states,
)
from pstorefs.store.config import StoreConfig
from pstorefs.store.device import Device, data_slots
from pstorefs.store.ftrace import FtraceText, InMemory, ZoneData
from pstorefs.store.ramoops.detect import find_layout
from pstorefs.store.ramoops.layout import RamoopsGeometry

log = logging.getLogger(__name__)

OPTIONS = frozenset({"record_size", "console_size", "ftrace_size", "pmsg_size", "ecc",
                     "nr_cpus", "abi", "system_map"})
"""The options this back end reads (besides backend=, offset=, size=, name=, ro)."""

DEFAULT_NAME = "ramoops"
"""The kernel's back-end name (`oops_cxt.pstore.name`)."""

_PROBE_BATCH = 4096
"""Zones whose headers, then dmesg record heads, are corrected as one batch at open."""

_CORRECT_BLOCKS = 8192
"""ECC blocks read and corrected at a time (1 MiB of data): what a read holds beside
the record's own bytes."""

_DMESG_PROBE = 256
"""Bytes of a dmesg zone read to list it: its `====...` line (at most 36 bytes as the
kernel writes it) with room to spare; the whole record is read only if the line's
trailing white space runs past them."""


def open_store(device: Device, config: StoreConfig, symbols: SymbolTable) -> RamoopsStore:
    """The ramoops back end. With any of `console_size`, `ftrace_size`, `pmsg_size`
    given the layout is the options' (the module parameters' defaults for the others);
    with none, it is found from the region's zone headers."""
    layout, assumed = find_layout(device, config)
    return RamoopsStore(device, layout, name=config.name_or(DEFAULT_NAME),
                        abi=None if config.abi == "auto" else resolve_abi(config.abi),
                        symbols=symbols, assumed=assumed)


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
    head: bytes | None = None
    """A dmesg record's first bytes, corrected (`_DMESG_PROBE`), where the ring has
    not wrapped."""


class RamoopsStore(Store):
    """The records of a ramoops region.

    Opening reads each zone's header (and its parity) and the first bytes of each dmesg
    record; a body is read, corrected and decoded the first time its size or content
    is asked for, and kept in a fixed-budget cache.
    """

    def __init__(self, device: Device, layout: RamoopsGeometry, *, name: str,
                 abi: Abi | None = None, symbols: SymbolTable = NO_SYMBOLS,
                 cache_budget: int = DEFAULT_CACHE_BUDGET, assumed: Sequence[str] = ()) -> None:
        super().__init__(device, name, cache_budget)
        self.geometry = layout
        self.assumed = tuple(assumed)
        self.zones = layout.zones()
        self._codec = rs_codec(layout.ecc_size) if layout.ecc_size else None
        self._ecc_counts: dict[Record, tuple[int, int]] = {}
        self.little_endian = abi.little_endian if abi else self._little_endian()
        # with ECC, the parity at a zone's end may restore a header that reads as zeros
        probed = self.zones.dmesg_size if self._codec else PERSISTENT_RAM_BUFFER_SIZE
        self._przs = {prz.zone: prz for prz in self._probe_zones(self._zones_with_data(probed))}
        self.abi = abi or self._detect_abi()
        self.symbols = symbols.within(8 * self.abi.long_size)
        self._records = self._recover()
        self._keep_slots(len(self._records))

    def layout(self) -> Layout:
        g = self.geometry
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
        return (f"{self.device.path}: ramoops, {self.geometry.mount_options()}: "
                f"{len(self.zones)} zones, {len(self._records)} records")

    # -- listing ----------------------------------------------------------------
    def _zones_with_data(self, length: int) -> Iterator[Zone]:
        """The zones in order, but the dmesg zones whose first `length` bytes lie in a
        hole of a sparse image: zeros, no header, not read (an image of a large region
        has millions of zones)."""
        zones = self.zones
        yield from map(zones.dmesg, data_slots(self.device.next_data, zones.dmesg_count, 0,
                                               zones.dmesg_size, length))
        yield from zones.tail

    def _little_endian(self) -> bool:
        """The writer's byte order, from the signatures at the zone starts."""
        def words() -> Iterator[tuple[bytes, Callable[[int], bool]]]:
            for zone in self._zones_with_data(4):
                try:
                    header = self.device.read(zone.offset, PERSISTENT_RAM_BUFFER_SIZE)
                    yield sig_word(header), partial(sig_matches, zone.type)
                except DeviceError:
                    continue

        return vote_little_endian(words())

    def _snapshot(self, zone: Zone) -> bytes:
        """The bytes that identify what a zone holds, re-read before an erase: its
        header, the header's parity, and for dmesg the start of the record."""
        raw = self.device.read(zone.offset, PERSISTENT_RAM_BUFFER_SIZE)
        ecc = ecc_geometry(zone.size, self.geometry.ecc_size)
        if ecc.ecc_size:
            raw += self.device.read(zone.offset + ecc.par_header, ecc.ecc_size)
        if zone.type is PstoreType.DMESG:
            raw += self.device.read(zone.offset + PERSISTENT_RAM_BUFFER_SIZE,
                                    min(_DMESG_PROBE, ecc.buffer_size))
        return raw

    def _probe_zones(self, zones: Iterable[Zone]) -> Iterator[Prz]:
        """`_probe` of each zone; with ECC, the headers and then the dmesg record heads
        of `_PROBE_BATCH` zones at a time are corrected as one batch."""
        zones = iter(zones)
        while batch := list(islice(zones, _PROBE_BATCH)):
            read = [(zone, snapshot) for zone in batch
                    if (snapshot := self._read_snapshot(zone)) is not None]
            headers = self._decode_blocks([
                (snapshot[:PERSISTENT_RAM_BUFFER_SIZE],
                 snapshot[PERSISTENT_RAM_BUFFER_SIZE:][:self.geometry.ecc_size])
                for _, snapshot in read])
            przs = [prz for (zone, snapshot), header in zip(read, headers, strict=True)
                    if (prz := self._probe(zone, snapshot, header))]
            yield from self._with_heads(przs)

    def _read_snapshot(self, zone: Zone) -> bytes | None:
        try:
            return self._snapshot(zone)
        except DeviceError as exc:
            log.error("%s zone %d at %#x: %s: skipped", zone.type.file_prefix, zone.index,
                      zone.offset, exc)
            return None

    def _decode_blocks(self, blocks: list[tuple[bytes, bytes]]) -> list[tuple[bytes, int, int]]:
        """Each (data, parity) block as ECC leaves it: its data, symbols corrected and
        whether it is unrecoverable (kept as read); as read without ECC."""
        if not self._codec:
            return [(data, 0, 0) for data, _ in blocks]
        return [(data, 0, 1) if result is None else (result.data, result.corrected, 0)
                for (data, _), result in zip(blocks, self._codec.decode_many(blocks),
                                             strict=True)]

    def _probe(self, zone: Zone, snapshot: bytes, header: tuple[bytes, int, int]) -> Prz | None:
        """`persistent_ram_post_init` without its writes: the zone, if its header (after
        ECC) has the type's signature and describes data within the buffer."""
        ecc = ecc_geometry(zone.size, self.geometry.ecc_size)
        raw, corrected, bad = header
        buffer = parse_buffer(raw, zone.offset, little_endian=self.little_endian)
        if not sig_matches(zone.type, buffer.sig) or buffer.empty:
            return None
        if not buffer.valid(ecc.buffer_size):
            log.warning("%s zone %d at %#x: invalid header (size %d, start %d, buffer %d): "
                        "skipped", zone.type.file_prefix, zone.index, zone.offset,
                        buffer.size, buffer.start, ecc.buffer_size)
            return None
        return Prz(zone, ecc, buffer, snapshot, corrected, bad)

    def _with_heads(self, przs: list[Prz]) -> Iterator[Prz]:
        """The zones, each dmesg one whose ring has not wrapped with the first bytes of
        its record (`head`), corrected: all a listing reads of it."""
        wanted: list[Prz] = []
        blocks: list[tuple[bytes, bytes]] = []
        spans: list[tuple[int, int]] = []
        for prz in przs:
            if prz.zone.type is not PstoreType.DMESG or prz.buffer.start not in (
                    0, prz.buffer.size):
                continue
            ecc, length = prz.ecc, min(_DMESG_PROBE, prz.buffer.size)
            raw = prz.snapshot[PERSISTENT_RAM_BUFFER_SIZE + ecc.ecc_size:]
            if not self._codec:
                wanted.append(prz)
                spans.append((len(blocks), 1))
                blocks.append((raw[:length], b""))
                continue
            count = len(ecc.blocks(length))
            try:
                parity = self.device.read(prz.zone.offset + ecc.par_buffer, count * ecc.ecc_size)
            except DeviceError:
                continue  # no head: the record's own read fails and says so
            wanted.append(prz)
            spans.append((len(blocks), count))
            blocks += [(raw[at:at + size], parity[i * ecc.ecc_size:][:ecc.ecc_size])
                       for i in range(count) for at, size in [ecc.block(i)]]
        decoded = self._decode_blocks(blocks)
        heads = {prz.zone: b"".join(data for data, _, _ in decoded[at:at + count])[
            :min(_DMESG_PROBE, prz.buffer.size)] for prz, (at, count) in zip(wanted, spans,
                                                                             strict=True)}
        for prz in przs:
            yield dataclasses.replace(prz, head=heads[prz.zone]) if prz.zone in heads else prz

    def _detect_abi(self) -> Abi:
        """The writer's ABI, which only the ftrace records tell: ram.c writes each to
        the zone of the CPU it ran on (`fprzs[smp_processor_id()]`), so read with the
        right ABI (record size, and where 32-bit ARM keeps the CPU) every record of zone
        `i` names CPU `i`. Where several ABIs fit, or none, or there are no records,
        the byte order's first is taken, and a note says so."""
        candidates = [abi for abi in ABIS.values() if abi.little_endian == self.little_endian]
        zones = [(prz.zone.index, self._content(prz)[0][-FTRACE_SAMPLE:])
                 for prz in self._przs.values()
                 if prz.zone.type is PstoreType.FTRACE][:FTRACE_SAMPLE_ZONES]
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
        records = [record for zone, prz in self._przs.items() if zone.type is PstoreType.DMESG
                   and (record := self._dmesg_record(prz))]
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
            head = prz.head if prz.head is not None else self._content(prz)[0]
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
    def _content(self, prz: Prz) -> tuple[bytes, int, int]:
        """The zone's bytes in write order, corrected as `persistent_ram_ecc_old`
        corrects them, with the ECC counts (header included): bytes corrected, blocks
        unrecoverable."""
        data, corrected, bad = self._data(prz, prz.buffer.size)
        return ring_content(data, prz.buffer), corrected + prz.corrected, bad + prz.bad_blocks

    def _data(self, prz: Prz, length: int) -> tuple[bytes, int, int]:
        """The first `length` bytes of the zone's data, each ECC block they touch
        decoded in memory, `_CORRECT_BLOCKS` at a time; a block the code cannot correct
        is kept as read."""
        start = prz.zone.offset + PERSISTENT_RAM_BUFFER_SIZE
        ecc = prz.ecc
        if not self._codec:
            return self.device.read(start, length), 0, 0
        blocks = len(ecc.blocks(length))
        out = bytearray()
        corrected = bad = 0
        for first in range(0, blocks, _CORRECT_BLOCKS):
            count = min(_CORRECT_BLOCKS, blocks - first)
            at = first * ecc.block_size
            data = self.device.read(start + at, min(count * ecc.block_size, ecc.buffer_size - at))
            parity = self.device.read(prz.zone.offset + ecc.par_buffer + first * ecc.ecc_size,
                                      count * ecc.ecc_size)
            result = self._codec.decode_span(data, parity, ecc.block_size)
            out += result.data
            corrected += result.corrected
            bad += result.bad_blocks
        return bytes(out[:length]), corrected, bad

    # -- files --------------------------------------------------------------------
    def unsized(self, record: Record) -> str | None:
        """With ECC, a record's size waits for every block of its zones to be corrected
        (the notice at its end counts them), so a listing shows it before: all but a
        compressed dmesg record, whose name (`.enc.z` or not) only inflating tells."""
        if self._codec is None or record.compressed:
            return None
        return self._file_name(record)

    def _attributes(self, record: Record, wait: bool) -> dict[str, str] | None:
        """What the headers know and the kernel's files do not say."""
        body = self.read(record, wait=wait)
        if body is None:
            return None
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
            attrs["ecc_size"] = str(self.geometry.ecc_size)
            attrs["ecc_corrected_bytes"] = str(corrected)
            attrs["ecc_unrecoverable_blocks"] = str(bad)
        return attrs

    @property
    def decodes_elsewhere(self) -> bool:
        """Not with ECC: decoding learns each record's ECC counts (its attributes),
        which what another process sends back does not carry."""
        return super().decodes_elsewhere and self._codec is None

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
        first = self.zones.dmesg(0)
        return ecc_geometry(first.size, self.geometry.ecc_size).buffer_size

    def _ftrace_text(self, record: Record) -> tuple[bytes, int, int]:
        """The ftrace text whole (the ECC notice follows it), and the ECC counts."""
        zones: list[ZoneData] = []
        corrected = bad = 0
        for zone in record.zones:
            content, zone_corrected, zone_bad = self._content(self._przs[zone])
            zones.append(InMemory(content))
            corrected, bad = corrected + zone_corrected, bad + zone_bad
        text = FtraceText(self.abi, zones, Names(self.symbols))
        return text.read(0, text.size), corrected, bad

    # -- erase ----------------------------------------------------------------------
    def _unchanged(self, zone: Zone, snapshot: bytes) -> bool:
        """Its header, the header's parity and a dmesg record's start as listed, or as
        an erase of ours that failed part-way left them (a retried `rm` finishes it)."""
        now = self._snapshot(zone)
        if now == snapshot:
            return True
        header, rest = snapshot[:PERSISTENT_RAM_BUFFER_SIZE], snapshot[PERSISTENT_RAM_BUFFER_SIZE:]
        states = [state + rest for state in partial_states(header, zap_writes(
            little_endian=self.little_endian))]
        if self._codec:  # the zapped header with its new parity
            parity = self._zapped_parity(self._przs[zone])
            states.append(states[-1][:PERSISTENT_RAM_BUFFER_SIZE] + parity
                          + rest[len(parity):])
        return now in states

    def _zapped_parity(self, prz: Prz) -> bytes:
        """The parity `persistent_ram_zap` writes for the zapped header."""
        assert self._codec is not None
        return self._codec.encode(build_buffer(RamBuffer(prz.buffer.sig, 0, 0),
                                               little_endian=self.little_endian))

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
                self.device.write(zone.offset + prz.ecc.par_header, self._zapped_parity(prz))
