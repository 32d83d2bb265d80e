"""pstore/zone (pstore/blk, mtdpstore): find records from the zone headers, decode
them when asked, erase them as zone.c does."""

from __future__ import annotations

import itertools
import logging
import struct
import threading
from collections.abc import Sequence

from pstorefs.errors import DeviceError, GeometryError, ReadOnlyError, ZoneChangedError
from pstorefs.format.abi import ABIS, X86_64, Abi
from pstorefs.format.consts import PSZ_BUFFER_SIZE, PstoreType, zone_sig
from pstorefs.format.ftrace import merge_zones, parse_records, render_text
from pstorefs.format.kallsyms import NO_SYMBOLS, SymbolTable
from pstorefs.format.zone import (
    ZoneHeader,
    kmsg_layout_fits,
    kmsg_prefix,
    kmsg_zone_ok,
    parse_kmsg_header,
    parse_zone_header,
    ring_unwrap,
    ring_zone_ok,
)
from pstorefs.store.base import Entry, Record, Store
from pstorefs.store.cache import BodyCache
from pstorefs.store.decompress import inflate_raw
from pstorefs.store.device import SECTOR_SIZE, Device
from pstorefs.store.geometry import Geometry, Zone

log = logging.getLogger(__name__)

_KMSG_PROBE = PSZ_BUFFER_SIZE + max(abi.kmsg_header_size for abi in ABIS.values())
"""Bytes read from each dmesg zone to list it: its header and the largest dmesg header."""

_RING_TYPES = (PstoreType.FTRACE, PstoreType.PMSG, PstoreType.CONSOLE)
"""After the dmesg zones, the kernel reads ftrace, then pmsg, then console."""

DEFAULT_CACHE_BUDGET = 16 << 20


class ZoneStore(Store):
    """The records of a pstore/zone area.

    Opening reads the zone headers only; a body is read and decoded the first time its
    size or content is asked for, and kept in a fixed-budget cache.
    """

    def __init__(self, device: Device, geometry: Geometry, *, name: str,
                 abi: Abi | None = None, symbols: SymbolTable = NO_SYMBOLS,
                 cache_budget: int = DEFAULT_CACHE_BUDGET) -> None:
        self.device = device
        self.geometry = geometry
        self.name = name
        self.symbols = symbols
        self.zones = geometry.zones(device.size)
        self._lock = threading.Lock()
        self._cache = BodyCache(cache_budget)
        self._entries: dict[Record, Entry] = {}
        probes = self._read_headers()
        self.abi = abi or self._detect_abi(probes)
        self._records = self._recover(probes)

    @property
    def read_only(self) -> bool:  # type: ignore[override]
        return self.device.read_only

    @property
    def records(self) -> Sequence[Record]:
        return self._records

    def describe(self) -> str:
        g = self.geometry
        return (f"{self.device.path}: pstore/zone, abi {self.abi.name}, "
                f"kmsg_size={g.kmsg_size // 1024} pmsg_size={g.pmsg_size // 1024} "
                f"console_size={g.console_size // 1024} ftrace_size={g.ftrace_size // 1024} "
                f"nr_cpus={g.nr_cpus}: {len(self.zones)} zones, {len(self._records)} records")

    def close(self) -> None:
        self.device.close()

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

    def _detect_abi(self, probes: dict[Zone, bytes]) -> Abi:
        """The writer's ABI, voted by the dmesg headers (or, without any, by the ftrace
        records). Refuses only where records exist and the ABIs cannot be told apart.

        The zone header is the same 12 little-endian bytes on every ABI read here, so
        it is parsed before the ABI is known."""
        votes = {abi: 0 for abi in ABIS.values()}
        candidates = 0
        for zone, raw in probes.items():
            if zone.type is not PstoreType.DMESG:
                continue
            header = parse_zone_header(X86_64, raw, zone.offset)
            if (header.sig != zone_sig(PstoreType.DMESG)
                    or not 0 < header.datalen <= zone.buffer_size):
                continue
            candidates += 1
            for abi in votes:
                votes[abi] += kmsg_layout_fits(abi, raw[PSZ_BUFFER_SIZE:])
        if candidates:
            ranked = sorted(votes.items(), key=lambda kv: kv[1], reverse=True)
            if ranked[0][1] > ranked[1][1]:
                return ranked[0][0]
            if ranked[0][1] == 0:
                log.warning("%s: no dmesg header reads as a known ABI; assuming %s",
                            self.device.path, X86_64.name)
                return X86_64
            raise GeometryError("the dmesg headers fit more than one ABI: give abi="
                                + " or abi=".join(a.name for a, n in ranked if n == ranked[0][1]))
        return self._detect_abi_from_ftrace(probes)

    def _detect_abi_from_ftrace(self, probes: dict[Zone, bytes]) -> Abi:
        """pstore's ftrace timestamps count up record by record: only the right record
        size reads them as (almost always) increasing."""
        datas = [self._ring_data(zone, parse_zone_header(X86_64, probes[zone], zone.offset))
                 for zone in self.zones if zone.type is PstoreType.FTRACE and zone in probes]
        datas = [d for d in datas if d]
        if not datas:
            return X86_64
        fitting = []
        for abi in ABIS.values():
            pairs = rising = 0
            for data in datas:
                ts = [r.timestamp for r in parse_records(abi, data)]
                pairs += max(len(ts) - 1, 0)
                rising += sum(a <= b for a, b in itertools.pairwise(ts))
            if pairs >= 3 and rising >= 0.9 * pairs:
                fitting.append(abi)
        if len(fitting) == 1:
            return fitting[0]
        raise GeometryError("cannot tell the writer's ABI from its ftrace records: give "
                            + " or ".join(f"abi={a}" for a in ABIS))

    def _ring_data(self, zone: Zone, header: ZoneHeader) -> bytes | None:
        """A ring zone's bytes in write order, or None if it holds no record."""
        if not ring_zone_ok(header, zone.type, zone.buffer_size):
            return None
        try:
            data = self.device.read(zone.offset + PSZ_BUFFER_SIZE, header.datalen)
        except DeviceError as exc:
            log.error("%s zone %d: %s", zone.type.file_prefix, zone.index, exc)
            return None
        return ring_unwrap(data, header)

    def _recover(self, probes: dict[Zone, bytes]) -> list[Record]:
        """The records, as `psz_recovery` + `psz_pstore_read` find them."""
        records: list[Record] = []
        for zone in self.zones:
            if zone.type is PstoreType.DMESG and zone in probes:
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

    def _header(self, zone: Zone, raw: bytes) -> ZoneHeader:
        return parse_zone_header(self.abi, raw, zone.offset)

    def _kmsg_record(self, zone: Zone, raw: bytes) -> Record | None:
        header = self._header(zone, raw)
        hlen = self.abi.kmsg_header_size
        kmsg = parse_kmsg_header(self.abi, raw[PSZ_BUFFER_SIZE:], zone.offset + PSZ_BUFFER_SIZE)
        if not kmsg_zone_ok(header, kmsg, self.abi, zone.buffer_size):
            return None
        return Record(PstoreType.DMESG, zone.index, (zone,), time_ns=kmsg.time_ns,
                      compressed=kmsg.compressed, reason=kmsg.reason, counter=kmsg.counter,
                      snapshot=(raw[:PSZ_BUFFER_SIZE + hlen],))

    # -- files --------------------------------------------------------------------
    def entry(self, record: Record) -> Entry:
        known = self._entries.get(record)
        if known is None:
            self._body(record)
            known = self._entries[record]
        return known

    def find(self, name: str) -> Record | None:
        """Only the record the name points at is decoded, not the whole partition."""
        prefix, _, rest = name.partition(f"-{self.name}-")
        index = rest.removesuffix(".enc.z")
        for record in self._records:
            if record.type.file_prefix == prefix and str(record.id) == index:
                if not record.compressed:  # the name is known without reading the body
                    return record if name == f"{prefix}-{self.name}-{index}" else None
                return record if self.entry(record).name == name else None
        return None

    def read(self, record: Record) -> bytes:
        return self._body(record)

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
        header = self._header(zone, raw)
        hlen = self.abi.kmsg_header_size
        payload = self.device.read(zone.offset + PSZ_BUFFER_SIZE + hlen, header.datalen - hlen)
        kmsg = parse_kmsg_header(self.abi, raw[PSZ_BUFFER_SIZE:], zone.offset + PSZ_BUFFER_SIZE)
        if not kmsg.compressed:
            return kmsg_prefix(kmsg) + payload, False
        text = inflate_raw(payload, self._decompressed_limit(zone))
        if text is None:
            log.warning("%s: dmesg zone %d: compressed record does not decompress: shown "
                        "raw as .enc.z", self.device.path, zone.index)
            return payload, True
        return text, False

    def _decompressed_limit(self, zone: Zone) -> int:
        """Linux 6.6+ inflates into 3 times the record buffer (`psinfo->bufsize`)."""
        return 3 * (zone.buffer_size - self.abi.kmsg_header_size)

    def _ring_body(self, record: Record) -> bytes:
        zone, = record.zones
        data = self._ring_data(zone, self._header(zone, record.snapshot[0]))
        if data is None:
            raise DeviceError(f"{self.device.path}: {zone.type.file_prefix} zone unreadable")
        return data

    def _ftrace_text(self, record: Record) -> bytes:
        per_cpu = []
        for zone, raw in zip(record.zones, record.snapshot, strict=True):
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
        with self._lock:
            if self.device.read_only:
                raise ReadOnlyError(f"{self.device.path}: mounted read-only")
            for zone, snap in zip(record.zones, record.snapshot, strict=True):
                now = self.device.read(zone.offset, len(snap))
                if now != snap:
                    raise ZoneChangedError(
                        f"{self.device.path}: {zone.type.file_prefix} zone {zone.index} at "
                        f"{zone.offset:#x} changed since it was listed: nothing written")
            for zone in record.zones:
                self._erase_zone(zone, ring=record.type is not PstoreType.DMESG)
            self.device.sync()
            self._cache.drop(record)
        log.info("%s: erased %s (zone at %#x)", self.device.path,
                 self._entries.get(record, Entry(record.type.file_prefix, 0, None)).name,
                 record.zones[0].offset)

    def _erase_zone(self, zone: Zone, *, ring: bool) -> None:
        datalen_at = zone.offset + 4
        zero = struct.pack("<i", 0)
        if not ring:
            self.device.write(datalen_at, zero)
        elif datalen_at // SECTOR_SIZE == (datalen_at + 7) // SECTOR_SIZE:
            self.device.write(datalen_at, zero * 2)
        else:
            self.device.write(datalen_at, zero)
            self.device.sync()
            self.device.write(datalen_at + 4, zero)
