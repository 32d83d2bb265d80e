"""pstore/zone (pstore/blk, mtdpstore): find records from the zone headers, decode
them when asked, erase them as zone.c does."""

from __future__ import annotations

import dataclasses
import logging
import struct
import threading
from collections.abc import Sequence

from pstorefs.errors import DeviceError, ReadOnlyError, ZoneChangedError
from pstorefs.format.abi import ABIS, Abi, resolve_abi
from pstorefs.format.abi_detect import detect_abi
from pstorefs.format.consts import (
    PSTORE_KMSG_HEADER_MAGIC,
    PSZ_BUFFER_SIZE,
    PstoreType,
    ZoneFormat,
    reason_name,
    zone_sig,
)
from pstorefs.format.ftrace import merge_zones, parse_records, render_text
from pstorefs.format.kallsyms import NO_SYMBOLS, SymbolTable
from pstorefs.format.zone import (
    KmsgHeader,
    ZoneHeader,
    kmsg_prefix,
    kmsg_zone_ok,
    parse_kmsg_header,
    parse_zone_header,
    ring_unwrap,
    ring_zone_ok,
)
from pstorefs.store.base import Entry, Record, Store
from pstorefs.store.cache import BodyCache
from pstorefs.store.config import StoreConfig
from pstorefs.store.decompress import decompress
from pstorefs.store.detect import Detection, detect, uncap, zone_format_at_start
from pstorefs.store.device import SECTOR_SIZE, Device
from pstorefs.store.flash import erase_block_size, erase_keeping
from pstorefs.store.geometry import Geometry, Zone

log = logging.getLogger(__name__)

_KMSG_PROBE = PSZ_BUFFER_SIZE + max(abi.kmsg_header_size for abi in ABIS.values())
"""Bytes read from each dmesg zone to list it: its header and the largest dmesg header."""

_RING_TYPES = (PstoreType.FTRACE, PstoreType.PMSG, PstoreType.CONSOLE)
"""After the dmesg zones, the kernel reads ftrace, then pmsg, then console."""

_FILL = b"\x00\xff"
"""What a zone holds where nothing was written: zeros of a fresh partition, or the 0xFF
zone.c fills its buffers with before flushing them whole."""

DEFAULT_CACHE_BUDGET = 16 << 20

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
        geometry = config.geometry()
        if config.zone_format is None:
            found = zone_format_at_start(device.read, device.size)
            geometry = dataclasses.replace(geometry, format=found or ZoneFormat.ZONE)
        return uncap(device.read, Detection(geometry), device.size)
    found = detect(device.read, device.size, nr_cpus=config.nr_cpus,
                   format=config.zone_format, erasesize=erasesize)
    log.info("%s: layout detected: %s", device.path, found.geometry.mount_options())
    for note in found.assumed:
        log.warning("%s: %s", device.path, note)
    return found


def open_store(device: Device, config: StoreConfig, symbols: SymbolTable) -> ZoneStore:
    """The pstore/zone back end (pstore/blk, mtdpstore, the blkoops RFC)."""
    erasesize = erase_block_size(device, config.erasesize)
    layout = find_layout(device, config, erasesize=erasesize)
    return ZoneStore(device, layout.geometry, name=config.name_or(DEFAULT_NAME),
                     abi=None if config.abi == "auto" else resolve_abi(config.abi),
                     symbols=symbols, assumed=layout.assumed,
                     show_erased=config.show_erased, erasesize=erasesize)


class ZoneStore(Store):
    """The records of a pstore/zone area.

    Opening reads the zone headers only; a body is read and decoded the first time its
    size or content is asked for, and kept in a fixed-budget cache.
    `show_erased` also lists the records `rm` erased whose bytes are still on disk.
    """

    def __init__(self, device: Device, geometry: Geometry, *, name: str,
                 abi: Abi | None = None, symbols: SymbolTable = NO_SYMBOLS,
                 cache_budget: int = DEFAULT_CACHE_BUDGET, assumed: Sequence[str] = (),
                 show_erased: bool = False, erasesize: int | None = None) -> None:
        self.device = device
        self.erasesize = erasesize
        self.geometry = geometry
        self.name = name
        self.symbols = symbols
        self.assumed = tuple(assumed)
        self.zones = geometry.zones(device.size)
        self._lock = threading.Lock()
        self._cache = BodyCache(cache_budget)
        self._entries: dict[Record, Entry] = {}
        self._codecs: dict[Record, str] = {}
        probes = self._read_headers()
        self._order = abi if abi else _order_abi(self._little_endian(probes))
        if abi is None:
            abi, note = self._detect_abi(probes)
            if note:
                log.debug("%s: %s", device.path, note)
                self.assumed += (note,)
        self.abi = abi
        self._records = self._recover(probes)
        self._erased = self._recover_erased(probes) if show_erased else []

    @property
    def erased(self) -> Sequence[Record]:
        return self._erased

    def layout(self) -> dict[str, object]:
        g = self.geometry
        return {
            "backend": "zone",
            "format": g.format.value,
            "abi": self.abi.name,
            "little_endian": self.abi.little_endian,
            "kmsg_size": g.kmsg_size // 1024,
            "pmsg_size": g.pmsg_size // 1024,
            "console_size": g.console_size // 1024,
            "ftrace_size": g.ftrace_size // 1024,
            "nr_cpus": g.nr_cpus,
            "capped": g.capped,
            "zones": len(self.zones),
            "records": len(self._records),
            "kernel_parameters": g.kernel_parameters(),
            "mount_options": f"{g.mount_options()},abi={self.abi.name}",
            "assumed": list(self.assumed),
        }

    def describe(self) -> str:
        g = self.geometry
        cap = "" if g.capped else ", past the 128 MiB cap"
        return (f"{self.device.path}: {g.format.value} format, abi {self.abi.name}, "
                f"{g.mount_options()}{cap}: {len(self.zones)} zones, "
                f"{len(self._records)} records")

    # -- listing ----------------------------------------------------------------
    def _read_headers(self) -> dict[Zone, bytes]:
        """Each zone's header bytes; a zone whose header cannot be read is skipped."""
        probes: dict[Zone, bytes] = {}
        for zone in self.zones:
            length = _KMSG_PROBE if zone.type is PstoreType.DMESG else PSZ_BUFFER_SIZE
            try:
                probes[zone] = self.device.read(zone.offset, min(length, zone.size))
            except DeviceError as exc:
                log.error("%s zone %d at %#x: %s: skipped", zone.type.file_prefix,
                          zone.index, zone.offset, exc)
        return probes

    @staticmethod
    def _little_endian(probes: dict[Zone, bytes]) -> bool:
        """The writer's byte order, from the signatures at the zone starts (all zone.c
        structs are host-endian, the zone header included)."""
        big = sum(raw[:4] == zone_sig(zone.type).to_bytes(4, "big")
                  for zone, raw in probes.items())
        little = sum(raw[:4] == zone_sig(zone.type).to_bytes(4, "little")
                     for zone, raw in probes.items())
        return big <= little

    def _detect_abi(self, probes: dict[Zone, bytes]) -> tuple[Abi, str | None]:
        """The writer's ABI, from its dmesg headers and ftrace records."""
        kmsg_headers = []
        for zone, raw in probes.items():
            if zone.type is not PstoreType.DMESG:
                continue
            header = self._header(zone, raw)
            if (header.sig == zone_sig(PstoreType.DMESG)
                    and 0 < header.datalen <= zone.buffer_size):
                kmsg_headers.append(raw[zone.header_size:])
        ftrace_zones = [self._ring_data(zone, self._header(zone, probes[zone]))
                        for zone in self.zones if zone.type is PstoreType.FTRACE
                        and zone in probes]
        return detect_abi(little_endian=self._order.little_endian, kmsg_headers=kmsg_headers,
                          ftrace_zones=[data for data in ftrace_zones if data])

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

    def _recover(self, probes: dict[Zone, bytes]) -> list[Record]:
        """The records, as `psz_recovery` + `psz_pstore_read` find them."""
        records: list[Record] = []
        for zone in self.zones:
            if zone.type is PstoreType.DMESG and zone in probes:
                if (self.geometry.format is ZoneFormat.BLKOOPS
                        and self._header(zone, probes[zone]).sig != zone_sig(zone.type)):
                    break  # blkz_recover_dmesg_meta: zones are used in order, none after
                record = self._kmsg_record(zone, probes[zone])
                if record:
                    records.append(record)
        for ptype in _RING_TYPES:
            zones = [z for z in self.zones if z.type is ptype and z in probes
                     and ring_zone_ok(self._header(z, probes[z]), ptype, z.buffer_size)]
            if zones:
                records.append(Record(ptype, 0, tuple(zones),
                                      snapshot=tuple(probes[z] for z in zones)))
        return records

    def _recover_erased(self, probes: dict[Zone, bytes]) -> list[Record]:
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
        return parse_zone_header(self._order, raw, zone.offset, self.geometry.format)

    def _kmsg_header(self, zone: Zone, raw: bytes) -> KmsgHeader:
        return parse_kmsg_header(self.abi, raw[zone.header_size:],
                                 zone.offset + zone.header_size)

    def _kmsg_record(self, zone: Zone, raw: bytes) -> Record | None:
        header = self._header(zone, raw)
        kmsg = self._kmsg_header(zone, raw)
        if not kmsg_zone_ok(header, kmsg, self.abi, zone.buffer_size):
            return None
        return Record(PstoreType.DMESG, zone.index, (zone,), time_ns=kmsg.time_ns,
                      compressed=kmsg.compressed, reason=kmsg.reason, counter=kmsg.counter,
                      snapshot=(raw[:zone.header_size + self.abi.kmsg_header_size],))

    # -- files --------------------------------------------------------------------
    def entry(self, record: Record) -> Entry:
        known = self._entries.get(record)
        if known is None:
            self._body(record)
            known = self._entries[record]
        return known

    def cached_entry(self, record: Record) -> Entry | None:
        return self._entries.get(record)

    def find(self, name: str) -> Record | None:
        """The record called `name`, reading the device only to tell whether an
        undecoded compressed record is `.enc.z` when that is the name asked for (a
        lookup must not wait on the device: see fs.Operations._attrs)."""
        prefix, _, rest = name.partition(f"-{self.name}-")
        index = rest.removesuffix(".enc.z")
        for record in self._records:
            if record.type.file_prefix == prefix and str(record.id) == index:
                plain = name == f"{prefix}-{self.name}-{index}"
                known = self._entries.get(record)
                if known is not None:
                    return record if known.name == name else None
                if not record.compressed or plain:
                    return record if plain else None
                return record if self.entry(record).name == name else None
        return None

    def read(self, record: Record) -> bytes:
        return self._body(record)

    def attributes(self, record: Record) -> dict[str, str]:
        """What the headers know and the kernel's files do not show."""
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
            body = self._body(record)
            attrs["reason"] = reason_name(record.reason, self._dump_text(record, body))
            attrs["reason_code"] = str(record.reason)
            attrs["counter"] = str(record.counter)
            attrs["compressed"] = "1" if record.compressed else "0"
            if record.compressed:
                attrs["compressor"] = self._codecs.get(record, "unknown")
        if record.erased:
            attrs["erased"] = "1"
        return attrs

    def _dump_text(self, record: Record, body: bytes) -> bytes:
        """The record's own text (platform.c's dump header first), without the
        "Total N times" line zone.c prepends to an uncompressed one."""
        if record.compressed:
            return body if record in self._codecs else b""
        return body.partition(b"\n")[2]

    def _body(self, record: Record) -> bytes:
        body = self._cache.get(record)
        if body is not None:
            return body
        if record.type is PstoreType.DMESG:
            body, undecodable = self._kmsg_body(record)
        elif record.type is PstoreType.FTRACE:
            body, undecodable = self._ftrace_text(record), False
        else:
            body, undecodable = self._ring_body(record), False
        name = f"{record.type.file_prefix}-{self.name}-{record.id}"
        self._entries[record] = Entry(name + (".enc.z" if undecodable else ""), len(body),
                                      record.time_ns)
        self._cache.put(record, body)
        return body

    def _kmsg_body(self, record: Record) -> tuple[bytes, bool]:
        """The file of a dmesg record, and whether it stays compressed (`.enc.z`)."""
        zone, = record.zones
        raw = record.snapshot[0]
        hlen = self.abi.kmsg_header_size
        start = zone.offset + zone.header_size + hlen
        if record.erased:
            payload = self.device.read(start, zone.buffer_size - hlen).rstrip(b"\0")
        else:
            payload = self.device.read(start, self._header(zone, raw).datalen - hlen)
        if not record.compressed:
            return kmsg_prefix(self._kmsg_header(zone, raw), self.geometry.format,
                               payload) + payload, False
        limit = self._decompressed_limit(zone)
        decoded = (decompress(payload, limit) if not record.erased
                   else _decompress_trimmed(payload, limit))
        if decoded is None:
            log.warning("%s: dmesg zone %d: compressed record does not decompress: shown "
                        "raw as .enc.z", self.device.path, zone.index)
            return payload, True
        text, self._codecs[record] = decoded
        return text, False

    def _decompressed_limit(self, zone: Zone) -> int:
        """Linux 6.6+ inflates into 3 times the record buffer (`psinfo->bufsize`)."""
        return 3 * (zone.buffer_size - self.abi.kmsg_header_size)

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

    def _ftrace_text(self, record: Record) -> bytes:
        per_cpu = []
        for zone, raw in zip(record.zones, record.snapshot, strict=True):
            if record.erased:
                data = self._erased_ring(zone)  # the last record may end in zeros:
                size = self.abi.ftrace_record_size
                data = data.ljust(min(-(-len(data) // size) * size, zone.buffer_size), b"\0")
            else:
                data = self._ring_data(zone, self._header(zone, raw))
            if data is None:
                raise DeviceError(f"{self.device.path}: ftrace zone {zone.index} unreadable")
            per_cpu.append(parse_records(self.abi, data))
        return render_text(merge_zones(per_cpu), self.symbols)

    # -- erase ----------------------------------------------------------------------
    def erase(self, record: Record) -> None:
        """Write what zone.c's erase writes, after checking each zone still holds what
        was listed.

        dmesg: `datalen` = 0 (`psz_kmsg_erase`, FLUSH_META). pmsg/console/ftrace:
        `datalen` and `start` = 0 (`psz_record_erase`); for ftrace in every CPU zone of
        the file, so that it stays removed (the kernel erases CPU 0's alone).

        Power-cut safety: `datalen` is written first, and a zone whose `datalen` is 0
        is empty whatever else its header holds. Each write covers at most the 8 bytes
        of `datalen` and `start`; when both lie in one 512-byte sector (always, unless a
        zone starts 504 bytes into a sector) they go in a single write that a device
        commits whole; when they straddle a sector boundary, `datalen` is written and
        synced before `start`. Either way a cut leaves the zone as it was, or erased.
        """
        if record.erased:
            raise ReadOnlyError(f"{self.device.path}: an erased record cannot be erased")
        with self._lock:
            if self.device.read_only:
                raise ReadOnlyError(f"{self.device.path}: mounted read-only")
            for zone, snap in zip(record.zones, record.snapshot, strict=True):
                now = self.device.read(zone.offset, len(snap))
                if now != snap and now not in self._partly_erased(snap):
                    raise ZoneChangedError(
                        f"{self.device.path}: {zone.type.file_prefix} zone {zone.index} at "
                        f"{zone.offset:#x} changed since it was listed: nothing written")
            for zone in record.zones:
                if self.erasesize:  # mtdpstore: the zone's erase block, as mtd_erase
                    erase_keeping(self.device, zone.offset, zone.size, self.erasesize)
                else:
                    self._erase_zone(zone, ring=record.type is not PstoreType.DMESG)
            self.device.sync()
            self._cache.drop(record)
        log.info("%s: erased %s (zone at %#x)", self.device.path,
                 self._entries.get(record, Entry(record.type.file_prefix, 0, None)).name,
                 record.zones[0].offset)

    def _partly_erased(self, snap: bytes) -> tuple[bytes, ...]:
        """What an erase of ours that failed part-way (an EIO on fdatasync, a cut
        between two writes) leaves of the listed header: the record is still ours, and
        a retried `rm` finishes the erase."""
        if self.erasesize:
            return (b"\xff" * len(snap),)
        head = bytearray(snap)
        head[4:8] = bytes(4)
        datalen_only = bytes(head)
        head[8:12] = bytes(4)
        return (datalen_only, bytes(head))

    def _erase_zone(self, zone: Zone, *, ring: bool) -> None:
        datalen_at = zone.offset + 4
        zero = struct.pack("<i", 0)
        on_disk = self.device.base + datalen_at  # sectors are the device's, not the region's
        if not ring:
            self.device.write(datalen_at, zero)
        elif on_disk // SECTOR_SIZE == (on_disk + 7) // SECTOR_SIZE:
            self.device.write(datalen_at, zero * 2)
        else:
            self.device.write(datalen_at, zero)
            self.device.sync()
            self.device.write(datalen_at + 4, zero)


def _order_abi(little_endian: bool) -> Abi:
    """An ABI of that byte order: the zone header reads the same on all of them."""
    return next(abi for abi in ABIS.values() if abi.little_endian == little_endian)


def _decompress_trimmed(payload: bytes, limit: int) -> tuple[bytes, str] | None:
    """An erased record's stream, whose length went with `datalen`: the zone was written
    whole with zeros after the stream, which was cut at the last non-zero byte, so put
    back the few zero bytes a stream can end with."""
    for pad in range(8):
        decoded = decompress(payload + bytes(pad), limit)
        if decoded is not None:
            return decoded
    return None
