"""pstore/zone (pstore/blk, mtdpstore): find records from the zone headers, decode
them when asked, erase them as zone.c does."""

from __future__ import annotations

import dataclasses
import logging
from array import array
from collections.abc import Sequence

from pstorefs.codecs.compression import decompress
from pstorefs.errors import DeviceError
from pstorefs.format.abi import Abi, byte_order_abi, resolve_abi
from pstorefs.format.abi_detect import FTRACE_SAMPLE, FTRACE_SAMPLE_ZONES, detect_abi
from pstorefs.format.consts import (
    PSTORE_KMSG_HEADER_MAGIC,
    KmsgDumpReason,
    PstoreType,
    ZoneFormat,
    reason_name,
    zone_sig,
)
from pstorefs.format.ftrace import Names
from pstorefs.format.kallsyms import NO_SYMBOLS, SymbolTable
from pstorefs.format.zone import (
    KmsgHeader,
    ZoneHeader,
    erase_writes,
    kmsg_prefix,
    kmsg_zone_ok,
    parse_kmsg_header,
    parse_zone_header,
    ring_unwrap,
    ring_zone_ok,
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
from pstorefs.store.device import Device
from pstorefs.store.flash import erase_block_size, erase_keeping
from pstorefs.store.ftrace import ErasedRing, FtraceText, RingData, ZoneData
from pstorefs.store.zone.detect import (
    Detection,
    detect,
    disagreements,
    uncap,
    zone_format_at_start,
)
from pstorefs.store.zone.layout import Geometry, check_source_size, geometry_from_options
from pstorefs.store.zone.recovery import Listing, Probes

log = logging.getLogger(__name__)


_RING_TYPES = (PstoreType.FTRACE, PstoreType.PMSG, PstoreType.CONSOLE)
"""After the dmesg zones, the kernel reads ftrace, then pmsg, then console."""

_FILL = b"\x00\xff"
"""What a zone holds where nothing was written: zeros of a fresh partition, or the 0xFF
zone.c fills its buffers with before flushing them whole."""

OPTIONS = frozenset({"kmsg_size", "pmsg_size", "console_size", "ftrace_size", "nr_cpus",
                     "abi", "format", "erasesize", "system_map", "show_erased"})
"""The options this back end reads (besides backend=, offset=, size=, name=, ro)."""

DEFAULT_NAME = "blkoops"
"""File names' back-end part unless `name=` says otherwise (the kernel's is pstore_blk)."""


def find_layout(device: Device, config: StoreConfig, *,
                erasesize: int | None = None) -> Detection:
    """The options' layout if they give one, else the one detected on the source. Given
    sizes but no `format=`, the format is still the one zone 0's header shows."""
    if config.layout_given:
        geometry = geometry_from_options(config)
        if config.zone_format is None:
            found = zone_format_at_start(device.read, device.size)
            geometry = dataclasses.replace(geometry, format=found or ZoneFormat.ZONE)
        return uncap(device.read, Detection(geometry), device.size)
    found = detect(device.read, device.size, nr_cpus=config.nr_cpus,
                   format=config.zone_format, erasesize=erasesize,
                   next_data=device.next_data)
    log.info("%s: layout detected: %s", device.path, found.geometry.mount_options())
    for note in found.assumed:
        log.warning("%s: %s", device.path, note)
    return found


def open_store(device: Device, config: StoreConfig, symbols: SymbolTable) -> ZoneStore:
    """The pstore/zone back end (pstore/blk, mtdpstore, the blkoops RFC)."""
    check_source_size(device.size, device.path)
    erasesize = erase_block_size(device, config.erasesize)
    layout = find_layout(device, config, erasesize=erasesize)
    if layout.found_nothing and not device.read_only:
        log.warning("%s: no pstore header anywhere: nothing to erase, so opened read-only",
                    device.path)
        device.read_only = True
    return ZoneStore(device, layout.geometry, name=config.name_or(DEFAULT_NAME),
                     abi=None if config.abi == "auto" else resolve_abi(config.abi),
                     symbols=symbols, assumed=layout.assumed,
                     show_erased=config.show_erased, erasesize=erasesize,
                     given=config.layout_given)


class ZoneStore(Store):
    """The records of a pstore/zone area.

    Opening reads the zone headers only; a body is read and decoded the first time its
    size or content is asked for, and kept in a fixed-budget cache.
    `show_erased` also lists the records `rm` erased whose bytes are still on disk.
    `given`: the layout is the options', checked against the headers the listing reads
    (`warnings`, as is a zone no kernel with 4 KiB pages registers).
    """

    def __init__(self, device: Device, geometry: Geometry, *, name: str,
                 abi: Abi | None = None, symbols: SymbolTable = NO_SYMBOLS,
                 cache_budget: int = DEFAULT_CACHE_BUDGET, assumed: Sequence[str] = (),
                 show_erased: bool = False, erasesize: int | None = None,
                 given: bool = False) -> None:
        super().__init__(device, name, cache_budget)
        self.erasesize = erasesize
        if geometry.format is ZoneFormat.ZONE:  # the RFC's own name was the default
            self.kernel_name = "pstore_blk" if erasesize is None else "mtdpstore"
        self.erases_reach_other_records = erasesize is not None  # mtdpstore: a block
        self.geometry = geometry
        self.assumed = tuple(assumed)
        self.zones = geometry.zones(device.size)
        probes = Probes.read(device, self.zones,
                             until_unsigned=geometry.format is ZoneFormat.BLKOOPS)
        self._byte_order = abi or byte_order_abi(probes.little_endian())
        if abi is None:
            abi, note = self._detect_abi(probes)
            if note:
                log.debug("%s: %s", device.path, note)
                self.assumed += (note,)
        self.abi = abi
        self.symbols = symbols.within(8 * abi.long_size)
        self._names = Names(self.symbols)
        self._kmsg_header_size = abi.kmsg_header_size
        self._records = self._recover(probes)
        contradiction = disagreements(device.read, geometry, probes, self._byte_order,
                                      device.size, flash=erasesize is not None) if given else None
        self.warnings = geometry.impossible_zones() + ((contradiction,) if contradiction else ())
        for warning in self.warnings:
            log.warning("%s: %s", device.path, warning)
        self._erased = self._recover_erased(probes) if show_erased else []
        self._erased_slots = {record: len(self._records) + i
                              for i, record in enumerate(self._erased)}
        self._keep_slots(len(self._records) + len(self._erased))

    @property
    def erased(self) -> Sequence[Record]:
        return self._erased

    def layout(self) -> Layout:
        g = self.geometry
        return Layout(
            backend="zone", format=g.format.value, abi=self.abi.name,
            little_endian=self.abi.little_endian,
            parameters={"kmsg_size": g.kmsg_size // 1024, "pmsg_size": g.pmsg_size // 1024,
                        "console_size": g.console_size // 1024,
                        "ftrace_size": g.ftrace_size // 1024, "nr_cpus": g.nr_cpus,
                        "capped": g.capped},
            zones=len(self.zones), records=len(self._records),
            kernel_parameters=g.kernel_parameters(),
            mount_options=f"{g.mount_options()},abi={self.abi.name}",
            assumed=self.assumed, warnings=self.warnings)

    def describe(self) -> str:
        g = self.geometry
        cap = "" if g.capped else ", past the 128 MiB cap"
        return (f"{self.device.path}: {g.format.value} format, abi {self.abi.name}, "
                f"{g.mount_options()}{cap}: {len(self.zones)} zones, "
                f"{len(self._records)} records")

    # -- recovery: psz_recovery ------------------------------------------------------
    def _detect_abi(self, probes: Probes) -> tuple[Abi, str | None]:
        """The writer's ABI, from its dmesg headers and ftrace records."""
        first = self.zones.dmesg(0)  # every dmesg zone has its header size and room
        dmesg, skip, room = zone_sig(PstoreType.DMESG), first.header_size, first.buffer_size
        kmsg_headers = [raw[skip:] for _, sig, datalen, _, raw
                        in probes.dmesg_fields(self._byte_order)
                        if sig == dmesg and 0 < datalen <= room]
        ftrace_zones = []
        for zone, raw in probes.rings.items():
            header = self._header(zone, raw)
            if (zone.type is PstoreType.FTRACE and len(ftrace_zones) < FTRACE_SAMPLE_ZONES
                    and ring_zone_ok(header, zone.type, zone.buffer_size)):
                ring = self._ring(zone, header)
                length = min(ring.size, FTRACE_SAMPLE)  # the newest records: whole ones
                try:
                    ftrace_zones.append(ring.read(ring.size - length, length))
                except DeviceError as exc:
                    log.error("%s zone %d: %s", zone.type.file_prefix, zone.index, exc)
        return detect_abi(little_endian=self._byte_order.little_endian, kmsg_headers=kmsg_headers,
                          ftrace_zones=ftrace_zones)

    def _ring(self, zone: Zone, header: ZoneHeader) -> RingData:
        """A ring zone's bytes in write order, read by ranges (header as `ring_zone_ok`)."""
        return RingData(self._read_between_erases, zone.offset + zone.header_size,
                        header.start, header.datalen)

    def _ring_data(self, zone: Zone, header: ZoneHeader) -> bytes | None:
        """A ring zone's bytes in write order, or None if it holds no record."""
        if not ring_zone_ok(header, zone.type, zone.buffer_size):
            return None
        try:
            data = self.device.read(zone.offset + zone.header_size, header.datalen)
        except DeviceError as exc:
            log.error("%s zone %d: %s", zone.type.file_prefix, zone.index, exc)
            return None
        return ring_unwrap(data, header)

    def _recover(self, probes: Probes) -> Listing:
        """The records, as `psz_recovery` + `psz_pstore_read` find them."""
        first = self.zones.dmesg(0)  # every dmesg zone has its header size and room
        width = first.header_size + self._kmsg_header_size
        dmesg, room = zone_sig(PstoreType.DMESG), first.buffer_size
        blkoops = self.geometry.format is ZoneFormat.BLKOOPS
        ids, heads = array("q"), bytearray()
        for index, sig, datalen, magic, raw in probes.dmesg_fields(self._byte_order):
            if blkoops and sig != dmesg:
                break  # blkz_recover_dmesg_meta: zones are used in order, none after
            if kmsg_zone_ok(ZoneHeader(sig, datalen, 0), magic, self.abi, room):
                ids.append(index)
                heads += raw[:width]
        rings = []
        for ptype in _RING_TYPES:
            zones = [z for z, raw in probes.rings.items() if z.type is ptype
                     and ring_zone_ok(self._header(z, raw), ptype, z.buffer_size)]
            if zones:
                rings.append(Record(ptype, 0, tuple(zones),
                                    snapshot=tuple(probes.rings[z] for z in zones)))
        return Listing(self._dmesg_record, ids, bytes(heads), width, rings)

    def _dmesg_record(self, index: int, head: bytes) -> Record:
        """A live dmesg record, from its zone index and the header bytes listed."""
        zone = self.zones.dmesg(index)
        kmsg = self._kmsg_header(zone, head)
        return Record(PstoreType.DMESG, index, (zone,), time_ns=kmsg.time_ns,
                      compressed=kmsg.compressed, reason=kmsg.reason, counter=kmsg.counter,
                      snapshot=(head,))

    def _recover_erased(self, probes: Probes) -> list[Record]:
        """Zones `rm` erased (`datalen` 0, the signature kept) whose bytes remain: a
        dmesg zone with its dmesg header intact, a ring zone with data after the header.
        Each CPU's ftrace zone is its own record here, as their order is lost.

        Not for the blkoops format: its writes stop at `datalen`, so an older, longer
        record's tail follows each record and where it ended is lost. Not on flash
        either, where mtdpstore's erase clears the zone."""
        if self.geometry.format is ZoneFormat.BLKOOPS or self.erasesize:
            return []
        erased: list[Record] = []
        for zone, raw in probes.items():
            header = self._header(zone, raw)
            if header.sig != zone_sig(zone.type) or header.datalen != 0:
                continue
            if zone.type is PstoreType.DMESG:
                kmsg = self._kmsg_header(zone, raw)
                if kmsg.magic == PSTORE_KMSG_HEADER_MAGIC:
                    erased.append(Record(PstoreType.DMESG, zone.index, (zone,),
                                         time_ns=kmsg.time_ns, compressed=kmsg.compressed,
                                         reason=kmsg.reason, counter=kmsg.counter,
                                         snapshot=(raw,), erased=True))
            elif zone.type in _RING_TYPES and self._erased_ring(zone):
                erased.append(Record(zone.type, zone.index, (zone,), snapshot=(raw,),
                                     erased=True))
        return erased

    def _header(self, zone: Zone, raw: bytes) -> ZoneHeader:
        return parse_zone_header(self._byte_order, raw, zone.offset, self.geometry.format)

    def _kmsg_header(self, zone: Zone, raw: bytes) -> KmsgHeader:
        return parse_kmsg_header(self.abi, raw[zone.header_size:],
                                 zone.offset + zone.header_size)

    # -- read: psz_pstore_read --------------------------------------------------------
    def _slot(self, record: Record) -> int | None:
        """Its place in `records`, then in `erased` (see `Store._slot`)."""
        if record.erased:
            return self._erased_slots.get(record)
        return self._records.position(record)

    def _by_id(self, prefix: str, record_id: int) -> Record | None:
        return self._records.by_id(prefix, record_id)

    def _attributes(self, record: Record, wait: bool) -> dict[str, str] | None:
        """What the headers know and the kernel's files do not show. The body is read
        only where the headers leave the reason's name open (4: Restart before 5.8,
        Shutdown after, as the record's text says) or a compressed record was never
        decoded (its compressor)."""
        zone = record.zones[0]
        attrs = {
            "zone_offset": ",".join(str(z.offset) for z in record.zones),
            "zone_size": str(zone.size),
            "abi": self.abi.name,
            "format": self.geometry.format.value,
        }
        if record.time_ns is not None:
            attrs["time_ns"] = str(record.time_ns)
        if record.reason is not None:
            text = b""
            if (record.reason == KmsgDumpReason.SHUTDOWN  # Restart before 5.8
                    or (record.compressed and self.entry(record, wait=False) is None)):
                body = self.read(record, wait=wait)
                if body is None:
                    return None
                text = self._dump_text(record, body)
            attrs["reason"] = reason_name(record.reason, text)
            attrs["reason_code"] = str(record.reason)
            attrs["counter"] = str(record.counter)
            attrs["compressed"] = "1" if record.compressed else "0"
            if record.compressed:
                attrs["compressor"] = self.compressor(record) or "unknown"
        if record.erased:
            attrs["erased"] = "1"
        return attrs

    def _dump_text(self, record: Record, body: bytes) -> bytes:
        """The record's own text (platform.c's dump header first), without the
        "Total N times" line zone.c prepends to an uncompressed one."""
        if record.compressed:
            return body if self.compressor(record) else b""
        return body.partition(b"\n")[2]

    def _decode(self, record: Record) -> Decoded:
        if record.type is PstoreType.DMESG:
            return self._kmsg_body(record)
        if record.type is PstoreType.FTRACE:
            return Decoded(self._ftrace_text(record))
        return Decoded(self._ring_body(record))

    def _kmsg_body(self, record: Record) -> Decoded:
        """The file of a dmesg record (`psz_kmsg_read`), inflated if compressed."""
        zone, = record.zones
        raw = record.snapshot[0]
        hlen = self._kmsg_header_size
        start = zone.offset + zone.header_size + hlen
        if record.erased:
            payload = self.device.read(start, zone.buffer_size - hlen).rstrip(b"\0")
        else:
            payload = self.device.read(start, self._header(zone, raw).datalen - hlen)
        if not record.compressed:
            return Decoded(kmsg_prefix(self._kmsg_header(zone, raw), self.geometry.format,
                                       payload) + payload)
        limit = self._decompressed_limit(zone)
        decoded = (decompress(payload, limit) if not record.erased
                   else _decompress_trimmed(payload, limit))
        if decoded is None:
            log.warning("%s: dmesg zone %d: compressed record does not decompress: shown "
                        "raw as .enc.z", self.device.path, zone.index)
            return Decoded(payload, undecodable=True)
        text, compressor = decoded
        return Decoded(text, compressor)

    def _decompressed_limit(self, zone: Zone) -> int:
        """Linux 6.6+ inflates into 3 times the record buffer (`psinfo->bufsize`)."""
        return 3 * (zone.buffer_size - self._kmsg_header_size)

    def _ring_body(self, record: Record) -> bytes:
        zone, = record.zones
        if record.erased:
            return self._erased_ring(zone)
        data = self._ring_data(zone, self._header(zone, record.snapshot[0]))
        if data is None:
            raise DeviceError(f"{self.device.path}: {zone.type.file_prefix} zone unreadable")
        return data

    def _erased_ring(self, zone: Zone) -> bytes:
        """An erased ring's buffer up to its last written byte: `start` was zeroed with
        `datalen`, so where the ring began is lost and the bytes come in buffer order."""
        data = self.device.read(zone.offset + zone.header_size, zone.buffer_size)
        return data.rstrip(_FILL)

    def _ftrace_text(self, record: Record) -> FtraceText:
        """The ftrace file, rendered by ranges as it is read. An erased zone's last
        record may end in zeros, which erasing stripped: put back."""
        zones: list[ZoneData] = []
        for zone, raw in zip(record.zones, record.snapshot, strict=True):
            if record.erased:
                zones.append(ErasedRing(self._read_between_erases,
                                        zone.offset + zone.header_size, zone.buffer_size,
                                        self.abi.ftrace_record_size, _FILL))
            else:
                zones.append(self._ring(zone, self._header(zone, raw)))
        return FtraceText(self.abi, zones, self._names)

    # -- erase: psz_pstore_erase -------------------------------------------------------
    def _unchanged(self, zone: Zone, snapshot: bytes) -> bool:
        """As listed, or as an erase of ours that failed part-way left it (an EIO on
        fdatasync, a cut between two writes): the record is still ours, and a retried
        `rm` finishes the erase."""
        now = self.device.read(zone.offset, len(snapshot))
        if now == snapshot:
            return True
        if self.erasesize:
            return now == b"\xff" * len(snapshot)
        ring = zone.type is not PstoreType.DMESG
        return now in partial_states(snapshot, erase_writes(self._byte_order, ring=ring))

    def _erase_zones(self, record: Record) -> None:
        """What zone.c's erase writes. dmesg: `datalen` = 0 (`psz_kmsg_erase`,
        FLUSH_META). pmsg/console/ftrace: `datalen` and `start` = 0
        (`psz_record_erase`); for ftrace in every CPU zone of the file, so that it
        stays removed (the kernel erases CPU 0's alone). On mtdpstore, the zone's erase
        block, as `mtd_erase`.

        Power-cut safety: `datalen` is written first, and a zone whose `datalen` is 0
        is empty whatever else its header holds; `Device.write_fields` puts `datalen`
        and `start` in one write where they share a sector and syncs between them
        where they do not. Either way a cut leaves the zone as it was, or erased.
        """
        for zone in record.zones:
            if self.erasesize:
                erase_keeping(self.device, zone.offset, zone.size, self.erasesize)
                continue
            ring = record.type is not PstoreType.DMESG
            self.device.write_fields(zone.offset, erase_writes(self._byte_order, ring=ring))


def _decompress_trimmed(payload: bytes, limit: int) -> tuple[bytes, str] | None:
    """An erased record's stream, whose length went with `datalen`: the zone was written
    whole with zeros after the stream, which was cut at the last non-zero byte, so put
    back the few zero bytes a stream can end with."""
    for pad in range(8):
        decoded = decompress(payload + bytes(pad), limit)
        if decoded is not None:
            return decoded
    return None
