"""What `psz_recovery` works from: the bytes at every zone's start (`Probes`), read once
while a store opens, and the records found, kept compact (`Listing`)."""

from __future__ import annotations

import bisect
import dataclasses
import functools
import logging
from array import array
from collections.abc import Callable, Iterator

from pstorefs.errors import DeviceError
from pstorefs.format.abi import ABIS, Abi
from pstorefs.format.consts import PSZ_BUFFER_SIZE, PstoreType, vote_little_endian, zone_sig
from pstorefs.format.zone import (
    dmesg_probe_format,
    opens_with_signature,
    sig_word,
    signature_type,
)
from pstorefs.store.base import Record, Zone
from pstorefs.store.device import Device, data_slots
from pstorefs.store.lazy import LazySequence
from pstorefs.store.zone.layout import ZoneList

log = logging.getLogger(__name__)

_KMSG_PROBE = PSZ_BUFFER_SIZE + max(abi.kmsg_header_size for abi in ABIS.values())
"""Bytes read from each dmesg zone to list it: its header and the largest dmesg header."""

_FOREIGN_KEPT = 4
"""dmesg zone starts holding a ring's header that are kept: evidence that the layout is
not the writer's (`ZoneStore` warns), which a few show as well as all."""


@dataclasses.dataclass
class Probes:
    """What opening read at each zone's start: the ring zones' by zone, and the dmesg
    zones' by index where they open with a dmesg signature (either byte order), which
    every verdict on a dmesg zone asks for first: zeros, erased flash and unreadable
    zones are not kept, as a whole disk without the cap has millions. `foreign`: the
    first few dmesg zones that open with a ring's signature instead. Kept only while
    the store opens."""

    zones: ZoneList
    rings: dict[Zone, bytes]
    dmesg: dict[int, bytes]
    foreign: list[tuple[Zone, bytes]] = dataclasses.field(default_factory=list)

    def dmesg_items(self) -> Iterator[tuple[Zone, bytes]]:
        return ((self.zones.dmesg(index), raw) for index, raw in self.dmesg.items())

    @classmethod
    def read(cls, device: Device, zones: ZoneList, *, until_unsigned: bool = False) -> Probes:
        """The first bytes of every zone (`_KMSG_PROBE` of a dmesg zone, the header of
        the others); a zone that cannot be read is skipped, and said. A dmesg zone in a
        hole of a sparse image is zeros, and is not read. `until_unsigned`: the dmesg
        zones end at the first one without a signature, as the blkoops RFC's recovery
        ends (its zones are used in order from 0)."""
        def probe(prefix: str, index: int, offset: int, length: int) -> bytes | None:
            try:
                return device.read(offset, length)
            except DeviceError as exc:
                log.error("%s zone %d at %#x: %s: skipped", prefix, index, offset, exc)
                return None

        rings = {zone: raw for zone in zones.rings
                 if (raw := probe(zone.type.file_prefix, zone.index, zone.offset,
                                  min(PSZ_BUFFER_SIZE, zone.size))) is not None}
        dmesg: dict[int, bytes] = {}
        foreign: list[tuple[Zone, bytes]] = []
        if not zones.dmesg_count:
            return cls(zones, rings, dmesg)
        first = zones.dmesg(0)
        length = min(_KMSG_PROBE, first.size)
        slots = data_slots(device.next_data, zones.dmesg_count, first.offset, first.size,
                           length)
        for expected, index in enumerate(slots):
            if until_unsigned and index != expected:
                break  # the zone before lies in a hole: zeros, no signature
            # by offset: a zone object for each of thousands would cost more than its read
            raw = probe("dmesg", index, first.offset + index * first.size, length)
            if raw is None:
                continue
            if opens_with_signature(raw, PstoreType.DMESG):
                dmesg[index] = raw
            elif until_unsigned:
                break
            elif len(foreign) < _FOREIGN_KEPT and signature_type(raw) is not None:
                foreign.append((zones.dmesg(index), raw))
        return cls(zones, rings, dmesg, foreign)

    def little_endian(self) -> bool:
        """The writer's byte order, from the signatures at the zone starts (all zone.c
        structs are host-endian, the zone header included)."""
        dmesg = zone_sig(PstoreType.DMESG).__eq__
        return vote_little_endian([*((sig_word(raw), dmesg) for raw in self.dmesg.values()),
                                   *((sig_word(raw), zone_sig(zone.type).__eq__)
                                     for zone, raw in self.rings.items())])

    def dmesg_fields(self, order: Abi) -> Iterator[tuple[int, int, int, int, bytes]]:
        """(zone index, `sig`, `datalen`, the dmesg header's `magic`, the bytes) of each
        dmesg zone read, without a zone object or a header object each."""
        fields = dmesg_probe_format(order, self.zones.dmesg(0).header_size)
        return ((index, *fields.unpack_from(raw), raw) for index, raw in self.dmesg.items()
                if len(raw) >= fields.size)

    def items(self) -> Iterator[tuple[Zone, bytes]]:
        yield from self.rings.items()
        yield from self.dmesg_items()


class Listing(LazySequence[Record]):
    """The records found, in the kernel's read order: the live dmesg records, then the
    ring records.

    A 128 MiB partition lists 16,384 dmesg records. Each is kept as its zone index and
    the header bytes listed (its `snapshot`, which erase compares): some 70 bytes, where
    a record's objects take some 500. It is made again when asked for, equal to the one
    made before, so it finds what was kept for it. The last `RECENT` made are kept,
    as the requests for one file (lookup, open, read-ahead) each ask for its record."""

    RECENT = 64

    def __init__(self, make: Callable[[int, bytes], Record], ids: array[int], heads: bytes,
                 width: int, rings: list[Record]) -> None:
        self._make = make
        self._made = functools.lru_cache(maxsize=self.RECENT)(self._dmesg)
        self._ids = ids
        self._heads = heads
        self._width = width
        self._rings = rings

    def __len__(self) -> int:
        return len(self._ids) + len(self._rings)

    def _item(self, at: int) -> Record:
        if at >= len(self._ids):
            return self._rings[at - len(self._ids)]
        return self._made(at)

    def _dmesg(self, at: int) -> Record:
        return self._make(self._ids[at], self._head(at))

    def __contains__(self, record: object) -> bool:
        return isinstance(record, Record) and self.position(record) is not None

    def index(self, record: object, start: int = 0, stop: int | None = None) -> int:
        at = self.position(record) if isinstance(record, Record) else None
        if at is None or not start <= at < (len(self) if stop is None else stop):
            raise ValueError("not a record of this listing")
        return at

    def position(self, record: Record) -> int | None:
        """Where `record` is in the listing, or None if it is not in it."""
        if record.type is PstoreType.DMESG and not record.erased:
            at = self._at_id(record.id)
            return at if at is not None and record.snapshot == (self._head(at),) else None
        return next((len(self._ids) + k for k, ring in enumerate(self._rings)
                     if ring == record), None)

    def by_id(self, prefix: str, record_id: int) -> Record | None:
        """The record whose file name starts `<prefix>-<name>-<record_id>`."""
        if prefix == PstoreType.DMESG.file_prefix:
            at = self._at_id(record_id)
            return None if at is None else self[at]
        return next((ring for ring in self._rings
                     if ring.type.file_prefix == prefix and ring.id == record_id), None)

    def _at_id(self, zone_index: int) -> int | None:
        at = bisect.bisect_left(self._ids, zone_index)
        return at if at < len(self._ids) and self._ids[at] == zone_index else None

    def _head(self, at: int) -> bytes:
        return self._heads[at * self._width:(at + 1) * self._width]
