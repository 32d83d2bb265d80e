"""What every back end's store offers the layers above, and what the back ends share.

The contract (`Store`), as the FUSE adapter and `pstorectl` use it:

* `records` (and `erased`): what listing found, from the headers alone;
* `entry(record)` and `body(record)`: the record's file, decoded on first asking and
  kept within a fixed budget; with `wait=False` they answer only from what is known
  already, never touching the device (`None` otherwise). A body is bytes, or for a
  file too large to hold whole (the ftrace text) a `RangedBody`: its size, and any
  range read when asked, one object shared by all readers. `read(record)` is the
  content whole, as bytes;
* `locate(name)` finds from the headers alone the record that holds a file of that
  name if the record decodes as its headers say; `find(name)` is exact;
* `erase(record)` erases as the kernel would, durably, after checking the zones still
  hold what was listed;
* `layout()`, `describe()`, `attributes(record)`, `close()`.

A back end implements only what differs: how to list (its constructor sets
`_records`), `_decode` (a record's file), `_erase_zones` (the writes of its kernel's
erase), and how to tell a zone is still as listed (`_unchanged`). The cache, the file
names, the erase steps (lock, compare, write, sync, drop, log) and the retry of a read
that an erase overlapped are written once, here.
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from array import array
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, NamedTuple, TypeAlias, overload

from pstorefs.codecs.compression import CODECS
from pstorefs.errors import EraseUnsupportedError, PstoreError, ReadOnlyError, ZoneChangedError
from pstorefs.format.consts import PSZ_BUFFER_SIZE, PstoreType
from pstorefs.store.cache import BodyCache
from pstorefs.store.device import Device

log = logging.getLogger(__name__)

DEFAULT_CACHE_BUDGET = 2 << 20
"""Decoded bodies kept for the next `entry`, `read` or `attributes` of the same record
(a lookup, then its open): a few at a time is enough, as an open file keeps its body
until released and the kernel's page cache keeps what was read (`keep_cache`)."""

UNDECODABLE_SUFFIX = ".enc.z"
"""The kernel's name suffix for a compressed record nothing decodes (inode.c)."""

_READ_RETRIES = 8
"""How often a read is tried again when erases on flash keep rewriting its erase
block while it runs, before it waits for them."""

_UNDECODABLE = 255
_CODES: dict[str | None, int] = {None: 0, **{name: 1 + i for i, name in enumerate(CODECS)}}
"""A decoded record's compressor as `Store._codes` keeps it, a byte each (0: none)."""


class Zone(NamedTuple):
    """One zone: its type, its index among the zones of that type, and its extent.
    `header_size` bytes of header come first (`zone->buffer_size` is the rest). A named
    tuple: a partition has thousands."""

    type: PstoreType
    index: int
    offset: int
    size: int
    header_size: int = PSZ_BUFFER_SIZE

    @property
    def buffer_size(self) -> int:
        """Bytes after the zone header (`zone->buffer_size`)."""
        return self.size - self.header_size


class Record(NamedTuple):
    """One record as found from the zone headers, before any body is read.

    `snapshot` holds the header bytes of each zone as they were when listed: erase
    writes only if the disk still holds exactly these. An `erased` record is one `rm`
    already erased, recovered from the bytes it left (`show_erased`). A named tuple:
    a partition lists thousands, made in a fraction of a dataclass's time and memory.
    """

    type: PstoreType
    id: int
    zones: tuple[Zone, ...]
    time_ns: int | None = None
    compressed: bool = False
    reason: int | None = None
    counter: int | None = None
    snapshot: tuple[bytes, ...] = ()
    erased: bool = False

    def __repr__(self) -> str:  # without the snapshot's bytes
        return (f"Record({self.type.name}, {self.id}, zones at "
                f"{[zone.offset for zone in self.zones]}{', erased' if self.erased else ''})")


UNSIZED = -1
"""An `Entry`'s size where a listing shows an `unsized` record before decoding it."""


@dataclass(frozen=True, slots=True)
class Entry:
    """How a record appears as a file: its name, size (`UNSIZED`: not known yet) and
    time (None: mount time)."""

    name: str
    size: int
    time_ns: int | None


class RangedBody(ABC):
    """A file served by ranges because it is too large to hold whole, as the kernel's
    seq_file serves the ftrace log: its size, then any range, rendered when read.
    Thread-safe; a store keeps one per record, shared by every reader."""

    CHUNK = 1 << 20
    """What `chunks` reads at a time."""

    @property
    @abstractmethod
    def size(self) -> int:
        """The file's size (the first asking may take one pass over the record)."""

    @abstractmethod
    def read(self, offset: int, length: int) -> bytes:
        """Up to `length` bytes at `offset` (fewer only at the end)."""

    def chunks(self) -> Iterator[bytes]:
        """The whole file, `CHUNK` bytes at a time."""
        for offset in range(0, self.size, self.CHUNK):
            yield self.read(offset, self.CHUNK)


Body: TypeAlias = bytes | RangedBody
"""A record's file: its bytes, or a `RangedBody`."""


def body_size(body: Body) -> int:
    return len(body) if isinstance(body, bytes) else body.size


def body_chunks(body: Body) -> Iterable[bytes]:
    """The whole file, a piece at a time: what writing it out reads."""
    return (body,) if isinstance(body, bytes) else body.chunks()


@dataclass(frozen=True, slots=True)
class Decoded:
    """A record's file as decoding gives it, and what decoding learnt on the way."""

    body: Body
    compressor: str | None = None
    """The compressor that decoded a compressed record."""
    undecodable: bool = False
    """A compressed record nothing decodes: shown raw, as `<name>.enc.z`."""


@dataclass(frozen=True)
class Layout:
    """The parameters a store reads its source with, and how they were found
    (`pstorectl probe`). `parameters` are the back end's own, in its kernel's units
    and names; `kernel_parameters` and `mount_options` give the same layout to the
    kernel and to pstorefs."""

    backend: str
    format: str
    abi: str
    zones: int
    records: int
    kernel_parameters: str
    mount_options: str
    little_endian: bool | None = None
    parameters: Mapping[str, object] = field(default_factory=dict)
    assumed: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    """What of the layout no writer of the bytes can have used (options that contradict
    the headers, a zone kmalloc does not give): logged too, never a refusal."""

    def as_dict(self) -> dict[str, object]:
        """Flat, for JSON: the fields, with the back end's parameters among them."""
        head: dict[str, object] = {"backend": self.backend, "format": self.format,
                                   "abi": self.abi}
        if self.little_endian is not None:
            head["little_endian"] = self.little_endian
        return {**head, **self.parameters, "zones": self.zones, "records": self.records,
                "kernel_parameters": self.kernel_parameters,
                "mount_options": self.mount_options, "assumed": list(self.assumed),
                "warnings": list(self.warnings)}


def partial_states(header: bytes, writes: Sequence[tuple[int, bytes]]) -> list[bytes]:
    """What `header` is after each prefix of an erase's `writes` ((offset, bytes) each,
    in the order written), the last being the erased header: an erase cut part-way (a
    power cut, an EIO on the sync) leaves one of these, and a retried `rm` must still
    take the record for its own."""
    head, states = bytearray(header), []
    for at, data in writes:
        head[at:at + len(data)] = data
        states.append(bytes(head))
    return states


def file_name(ptype: PstoreType, backend_name: str, record_id: int, *,
              undecodable: bool = False) -> str:
    """The kernel's file name for a record (inode.c `pstore_mkfile`)."""
    name = f"{ptype.file_prefix}-{backend_name}-{record_id}"
    return name + UNDECODABLE_SUFFIX if undecodable else name


def parse_file_name(name: str, backend_name: str) -> tuple[str, int] | None:
    """The type prefix and record id a file name of `file_name`'s form carries."""
    prefix, sep, rest = name.partition(f"-{backend_name}-")
    index = rest.removesuffix(UNDECODABLE_SUFFIX)
    if not sep or not (index.isascii() and index.isdecimal()) or str(int(index)) != index:
        return None
    return prefix, int(index)


class Store(ABC):
    """A source opened by one back end. Thread-safe: the FUSE layer calls it from
    worker threads. See the module's docstring for the contract."""

    device: Device
    name: str
    """The back-end part of the file names (`name=`)."""

    _records: Sequence[Record]

    erase_refused: str | None = None
    """Why this back end's writer defines no erase (then `rm` is EPERM), if it does not."""

    erases_reach_other_records = False
    """Whether an erase may rewrite bytes of other records (flash: a whole erase
    block), so that a read running beside it must be done again."""

    kernel_name: str | None = None
    """The back-end part of the names the writer's kernel showed in /sys/fs/pstore,
    where it is not the default `name=` (pstore/zone's blkoops); None elsewhere."""

    def __init__(self, device: Device, name: str,
                 cache_budget: int = DEFAULT_CACHE_BUDGET) -> None:
        self.device = device
        self.name = name
        self._lock = threading.Lock()
        self._erases = 0
        """Erases begun and ended: odd while one writes (a seqlock, see `_decoded`)."""
        self._cache = BodyCache(cache_budget)
        self._sizes = array("q")
        """Each record's file size once decoded (-1 before), by `_slot`."""
        self._codes = bytearray()
        """Each record's compressor once decoded (`_CODES`, `_UNDECODABLE`), by `_slot`."""
        self._gone = bytearray()
        """1 for each record erased: what decoding learns of it is not kept."""
        self._ranged: dict[int, RangedBody] = {}
        """The ranged bodies made, by slot: each kept once made (its memory is bounded
        by its own budget), so that every reader shares its one pass and index."""
        self._positions: dict[Record, int] | None = None
        self._ids: dict[tuple[str, int], Record] | None = None

    def _keep_slots(self, count: int) -> None:
        """Room for what decoding learns of `count` records (see `_slot`)."""
        self._sizes = array("q", [-1]) * count
        self._codes = bytearray(count)
        self._gone = bytearray(count)

    # -- what the layers above use --------------------------------------------------
    @property
    def read_only(self) -> bool:
        """Whether erasing is refused: the source could only be opened read-only."""
        return self.device.read_only

    @property
    def write_refused(self) -> str | None:
        """Why a source asked for writing was opened read-only; None if it was not."""
        return self.device.write_refused

    @property
    def records(self) -> Sequence[Record]:
        """Every record found, in the kernel's read order."""
        return self._records

    @property
    def erased(self) -> Sequence[Record]:
        """Erased records whose bytes survive, where the back end can recover them."""
        return ()

    @overload
    def entry(self, record: Record, *, wait: Literal[True] = ...) -> Entry: ...
    @overload
    def entry(self, record: Record, *, wait: bool) -> Entry | None: ...

    def entry(self, record: Record, *, wait: bool = True) -> Entry | None:
        """The file for `record` (decoding it if its name or size is not known yet);
        with `wait=False`, None unless known without touching the device."""
        slot = self._slot(record)
        if slot is not None and self._sizes[slot] >= 0:
            return Entry(self._file_name(record, self._codes[slot] == _UNDECODABLE),
                         self._sizes[slot], record.time_ns)
        if not wait:
            return None
        decoded = self._decoded(record, slot)
        return Entry(self._file_name(record, decoded.undecodable), body_size(decoded.body),
                     record.time_ns)

    @overload
    def body(self, record: Record, *, wait: Literal[True] = ...) -> Body: ...
    @overload
    def body(self, record: Record, *, wait: bool) -> Body | None: ...

    def body(self, record: Record, *, wait: bool = True) -> Body | None:
        """The file, what `cat` shows, to be read whole or (a `RangedBody`) by ranges;
        with `wait=False`, None unless it is at hand without touching the device."""
        slot = self._slot(record)
        if slot is not None:
            ranged = self._ranged.get(slot)
            if ranged is not None and (wait or self._sizes[slot] >= 0):
                return ranged
            cached = self._cache.get(slot)
            if cached is not None:
                return cached
        return self._decoded(record, slot).body if wait else None

    @overload
    def read(self, record: Record, *, wait: Literal[True] = ...) -> bytes: ...
    @overload
    def read(self, record: Record, *, wait: bool) -> bytes | None: ...

    def read(self, record: Record, *, wait: bool = True) -> bytes | None:
        """The file's content whole (a ranged body rendered whole: memory as its size;
        what serves files uses `body`); with `wait=False`, None unless at hand."""
        body = self.body(record, wait=wait)
        if isinstance(body, RangedBody):
            return body.read(0, body.size) if wait else None
        return body

    def locate(self, name: str) -> Record | None:
        """From the headers alone, never the device, so that a lookup is answered at
        once: the record holding a file of that name, if it decodes as its headers
        say. A compressed record not decoded yet is located under both the names it
        may have; `find` is the exact answer."""
        parsed = parse_file_name(name, self.name)
        record = self._by_id(*parsed) if parsed else None
        if record is None:
            return None
        known = self.entry(record, wait=False)
        if known is not None:
            return record if known.name == name else None
        plain = file_name(record.type, self.name, record.id)
        return record if name == plain or record.compressed else None

    def unsized(self, record: Record) -> str | None:
        """The file name of a record that a listing shows at once, size unknown, rather
        than decode it: one whose size only a long decode gives (ramoops' ECC corrects
        every block of the record first) and whose name the headers alone give. None
        (the default): the listing waits for the size, within its patience."""
        return None

    def find(self, name: str) -> Record | None:
        """The record whose file is called `name`; may decode it to know."""
        record = self.locate(name)
        if record is None:
            return None
        known = self.entry(record)
        return record if known is not None and known.name == name else None

    def compressor(self, record: Record) -> str | None:
        """The compressor that decoded `record`: None if none did, or not yet."""
        slot = self._slot(record)
        code = self._codes[slot] if slot is not None else 0
        return CODECS[code - 1] if 0 < code <= len(CODECS) else None

    def erase(self, record: Record) -> None:
        """Erase `record` on the device exactly as its kernel would, durably: only if
        each of its zones still holds what was listed (else ZoneChangedError and
        nothing written), then the back end's writes, then one sync before returning."""
        if self.device.read_only:
            raise ReadOnlyError(f"{self.device.path}: opened read-only")
        if self.erase_refused:
            raise EraseUnsupportedError(f"{self.device.path}: {self.erase_refused}")
        if record.erased:
            raise EraseUnsupportedError(f"{self.device.path}: an erased record cannot be "
                                        "erased again")
        slot = self._slot(record)
        if slot is None:
            raise PstoreError(f"{self.device.path}: {record!r} is not a record of this store")
        with self._lock:
            for zone, snap in zip(record.zones, record.snapshot, strict=True):
                if not self._unchanged(zone, snap):
                    raise ZoneChangedError(
                        f"{self.device.path}: {zone.type.file_prefix} zone {zone.index} at "
                        f"{zone.offset:#x} changed since it was listed: nothing written")
            self._erases += 1  # odd while writing: see _decoded
            try:
                self._erase_zones(record)
                self.device.sync()
            finally:
                self._erases += 1
            known = self.entry(record, wait=False)
            self._cache.drop(slot)
            self._ranged.pop(slot, None)
            self._sizes[slot], self._codes[slot], self._gone[slot] = -1, 0, 1
        log.info("%s: erased %s (zone at %#x)", self.device.path,
                 known.name if known else file_name(record.type, self.name, record.id),
                 record.zones[0].offset)

    def close(self) -> None:
        """Release the source."""
        self.device.close()

    @overload
    def attributes(self, record: Record, *, wait: Literal[True] = ...) -> dict[str, str]: ...
    @overload
    def attributes(self, record: Record, *, wait: bool) -> dict[str, str] | None: ...

    def attributes(self, record: Record, *, wait: bool = True) -> dict[str, str] | None:
        """What the back end knows of `record` beyond its file (extended attributes);
        with `wait=False`, None unless known without touching the device."""
        return self._attributes(record, wait)

    @abstractmethod
    def layout(self) -> Layout:
        """The back end's parameters in use and how they were found."""

    @abstractmethod
    def describe(self) -> str:
        """One line naming the source and the layout in use, for logs."""

    # -- what a back end implements ---------------------------------------------------
    @abstractmethod
    def _attributes(self, record: Record, wait: bool) -> dict[str, str] | None:
        """`attributes`: None only where `wait` is False and the device would be read."""

    @abstractmethod
    def _decode(self, record: Record) -> Decoded:
        """The record's file, read from the device."""

    def _erase_zones(self, record: Record) -> None:
        """The writes of the kernel's erase of `record` (validated just before; the
        sync follows): what every back end whose writer defines an erase implements."""
        raise EraseUnsupportedError(f"{self.device.path}: this back end defines no erase")

    def _unchanged(self, zone: Zone, snapshot: bytes) -> bool:
        """Whether `zone` still holds what listing read there."""
        return self.device.read(zone.offset, len(snapshot)) == snapshot

    def _by_id(self, prefix: str, record_id: int) -> Record | None:
        """The record whose file name is `<prefix>-<name>-<record_id>`."""
        if self._ids is None:
            self._ids = {(r.type.file_prefix, r.id): r for r in self._records}
        return self._ids.get((prefix, record_id))

    def _slot(self, record: Record) -> int | None:
        """Where what decoding learnt of `record` is kept: its place in `records`;
        None for a record not of this store."""
        if self._positions is None:
            self._positions = {r: at for at, r in enumerate(self._records)}
        return self._positions.get(record)

    def _file_name(self, record: Record, undecodable: bool = False) -> str:
        return file_name(record.type, self.name, record.id, undecodable=undecodable)

    def decode(self, record: Record) -> Decoded:
        """Decode `record` and keep nothing: for a process that decodes for another,
        which `adopt`s the result (`pstorefs.fs.decoder`)."""
        return (self._decode_between_erases(record) if self.erases_reach_other_records
                else self._decode(record))

    @property
    def decodes_elsewhere(self) -> bool:
        """Whether another process may decode for this store (`decode`, `adopt`): not
        where an erase rewrites other records (that process would not see it happen)."""
        return not self.erases_reach_other_records

    def adopt(self, record: Record, decoded: Decoded) -> bool:
        """Keep what another process decoded of `record` (`decode`; a body, not a
        ranged one), as if decoded here: its name, size and compressor, and its body
        within the cache's budget. Never waits: while an erase holds the store (a slow
        device), nothing is kept and the record is decoded here when asked for.
        Whether it was kept."""
        slot = self._slot(record)
        if slot is None or not isinstance(decoded.body, bytes):
            return False
        if not self._lock.acquire(blocking=False):
            return False
        try:
            self._learnt(slot, decoded, len(decoded.body))
        finally:
            self._lock.release()
        return True

    def _decoded(self, record: Record, slot: int | None) -> Decoded:
        """Decode `record` and keep what was learnt (`slot` its `_slot`)."""
        return self._remember(slot, self.decode(record))

    def _remember(self, slot: int | None, decoded: Decoded) -> Decoded:
        """Keep what decoding learnt of the record at `slot`, unless it was erased
        meanwhile; the decoded record, its ranged body the one every reader shares."""
        if slot is None:
            return decoded
        body = decoded.body
        if isinstance(body, RangedBody):  # the one made first, for every reader
            with self._lock:
                body = self._ranged.setdefault(slot, body)
            decoded = Decoded(body, decoded.compressor, decoded.undecodable)
        size = body_size(body)  # a ranged body's pass: outside the lock
        with self._lock:
            self._learnt(slot, decoded, size)
        return decoded

    def _learnt(self, slot: int, decoded: Decoded, size: int) -> None:
        """Keep, under `_lock`, what decoding learnt of the record at `slot` (by slot: a
        small int, not the record's objects), unless it was erased meanwhile."""
        if self._gone[slot]:
            self._ranged.pop(slot, None)
            return
        self._codes[slot] = (_UNDECODABLE if decoded.undecodable
                             else _CODES.get(decoded.compressor, 0))
        self._sizes[slot] = size
        if isinstance(decoded.body, bytes):
            self._cache.put(slot, decoded.body)

    def _read_between_erases(self, offset: int, length: int) -> bytes:
        """`device.read`, done again where an erase wrote meanwhile (see
        `_decode_between_erases`): what a ranged body reads with, long after decoding."""
        if not self.erases_reach_other_records:
            return self.device.read(offset, length)
        for _ in range(_READ_RETRIES):
            erases = self._erases
            if erases % 2:
                with self._lock:
                    continue
            data = self.device.read(offset, length)
            if self._erases == erases:
                return data
        with self._lock:
            return self.device.read(offset, length)

    def _decode_between_erases(self, record: Record) -> Decoded:
        """`_decode`, done again where an erase wrote while it read (a seqlock): on flash
        an erase rewrites its whole erase block, the zones it shares with this one
        included. After `_READ_RETRIES`, once more with erases held off."""
        for _ in range(_READ_RETRIES):
            erases = self._erases
            if erases % 2:  # an erase is writing: wait for it to end
                with self._lock:
                    continue
            decoded = self._decode(record)
            if self._erases == erases:
                return decoded
        with self._lock:
            return self._decode(record)
