"""blockconsole (Joern Engel's patches, never merged): the console log a kernel wrote to a
partition, shown as one file, `console-<name>-0`, in write order (pstorefs.format.
blockconsole has the format).

The log has no records to tell apart — it is the console's byte stream, cut into tiles
— and no time, so it is one file with the mount time, as pstore shows a console ring.
Listing reads what `bcon_find_end_of_log` reads (tile 0 and log2(tiles) headers) and the
first kilobyte of each of the newest tiles; the text is read when the file is first read.

`rm` is refused (EPERM): the writer defines no erase. Its kernel frees space itself by
overwriting the oldest tile, and the only thing that clears a log is the series'
mkblockconsole, which re-formats the device under a new uuid — not something to do
behind a running writer, which holds the device without O_EXCL and keeps its uuid and
position in memory.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from pstorefs.errors import (
    DeviceError,
    FormatError,
    GeometryError,
)
from pstorefs.format.blockconsole import (
    BCON_HEADERSIZE,
    BCON_LONG_HEADERSIZE,
    CACHE_SIZE,
    SECTOR_SIZE,
    VERSION,
    TileHeader,
    find_end_of_log,
    magic_present,
    next_write_offset,
    parse_tile_header,
    read_order,
    tile_count,
    tile_text,
)
from pstorefs.format.consts import PstoreType
from pstorefs.format.kallsyms import SymbolTable
from pstorefs.store.base import Decoded, Layout, Record, Store, Zone
from pstorefs.store.config import StoreConfig
from pstorefs.store.device import Device, NextData, in_hole

log = logging.getLogger(__name__)

OPTIONS: frozenset[str] = frozenset()
"""The options this back end reads (besides backend=, offset=, size=, name=, ro)."""

LOG_CACHE_BUDGET = 16 << 20
"""Its one body is the whole log (1 MiB tiles): kept for `ls` then `cat` while it is at
most this large; a larger one is read again."""

DEFAULT_NAME = "blockconsole"

MAX_TILES = 128
"""The file is built in memory, so it holds at most the newest 128 tiles (128 MiB, the
size pstore/zone caps its partitions at); older ones are left unread, and said so."""

_PROBE = 2 * SECTOR_SIZE
"""Bytes read from each tile to list it: the header and the first sectors. The writer
fills a tile's sectors in order, so a tile with no text in them has none of its own (a
freshly formatted tile 0 holds only its header and padding)."""


def recognizes(read: Callable[[int, int], bytes], size: int,
               next_data: NextData | None = None) -> bool:
    """A tile header at the start: what the partition scan attaches a device for
    (`bcon_add` -> `bcon_find_end_of_log` -> `bcon_magic_present`). A hole at 0
    (`next_data`) is no header."""
    if size < BCON_LONG_HEADERSIZE or (
            next_data is not None and in_hole(next_data, 0, BCON_LONG_HEADERSIZE)):
        return False
    return magic_present(read(0, BCON_LONG_HEADERSIZE))


def open_store(device: Device, config: StoreConfig, symbols: SymbolTable) -> BlockConsoleStore:
    """The blockconsole back end (`symbols` has no use: there is no ftrace here)."""
    return BlockConsoleStore(device, name=config.name_or(DEFAULT_NAME))


class BlockConsoleStore(Store):
    """A blockconsole device: its log, found from the tile headers."""

    erase_refused = ("blockconsole defines no erase: its writer overwrites the oldest tile "
                     "itself (mkblockconsole starts a new log)")

    def __init__(self, device: Device, *, name: str,
                 cache_budget: int = LOG_CACHE_BUDGET) -> None:
        super().__init__(device, name, cache_budget)
        self.tiles = tile_count(device.size)
        if self.tiles == 0:
            raise GeometryError(f"{device.path}: {device.size} bytes: a blockconsole device "
                                f"holds at least one {CACHE_SIZE}-byte tile")
        self.reference = parse_tile_header(device.read(0, BCON_LONG_HEADERSIZE), 0)
        self.end = find_end_of_log(self._prefix, self.tiles)
        self.assumed: tuple[str, ...] = ()
        if self.tiles > MAX_TILES:
            self.assumed = (f"only the newest {MAX_TILES} of {self.tiles} tiles are read",)
            log.warning("%s: %s", device.path, self.assumed[0])
        self._records = self._recover()
        self._keep_slots(len(self._records))

    def layout(self) -> Layout:
        return Layout(backend="blockconsole", format=f"blockconsole-{VERSION}", abi="text",
                      parameters={"uuid": f"{self.reference.uuid:08x}",
                                  "round": self.reference.round,
                                  "tiles_read": min(self.tiles, MAX_TILES),
                                  "write_offset": next_write_offset(self.end, self.tiles)},
                      zones=self.tiles, records=len(self._records), kernel_parameters="",
                      mount_options="backend=blockconsole", assumed=self.assumed)

    def describe(self) -> str:
        return (f"{self.device.path}: blockconsole {VERSION}, uuid "
                f"{self.reference.uuid:08x}, round {self.reference.round}, {self.tiles} "
                f"tiles, next write at {next_write_offset(self.end, self.tiles):#x}: "
                f"{len(self._records)} records")

    # -- listing ----------------------------------------------------------------------
    def _prefix(self, tile: int) -> bytes:
        return self.device.read(tile * CACHE_SIZE, BCON_HEADERSIZE)

    def _recover(self) -> list[Record]:
        """The log's tiles that hold text, among the newest `MAX_TILES` before the write
        position: one record, if there are any."""
        window = [(self.end - 1 - i) % self.tiles for i in range(min(self.tiles, MAX_TILES))]
        probes = {tile: raw for tile in window if (raw := self._probe(tile)) is not None}
        headers = [(tile, h) for tile, raw in probes.items()
                   if (h := _header(raw, tile)) is not None]
        order = [tile for tile in read_order(headers, self.reference)
                 if tile_text(probes[tile])]
        if not order:
            return []
        zones = tuple(Zone(PstoreType.CONSOLE, tile, tile * CACHE_SIZE, CACHE_SIZE,
                           BCON_LONG_HEADERSIZE) for tile in order)
        return [Record(PstoreType.CONSOLE, 0, zones,
                       snapshot=tuple(probes[tile][:BCON_LONG_HEADERSIZE] for tile in order))]

    def _probe(self, tile: int) -> bytes | None:
        """A tile's first bytes; a tile that cannot be read is left out."""
        try:
            return self.device.read(tile * CACHE_SIZE, _PROBE)
        except DeviceError as exc:
            log.error("%s: tile %d: %s: left out", self.device.path, tile, exc)
            return None

    # -- files ------------------------------------------------------------------------
    def _attributes(self, record: Record, wait: bool) -> dict[str, str]:
        """Where the text came from and where the writer goes on."""
        return {
            "zone_offset": ",".join(str(zone.offset) for zone in record.zones),
            "zone_size": str(CACHE_SIZE),
            "format": f"blockconsole-{VERSION}",
            "uuid": f"{self.reference.uuid:08x}",
            "round": str(self.reference.round),
            "write_offset": str(next_write_offset(self.end, self.tiles)),
        }

    def _decode(self, record: Record) -> Decoded:
        return Decoded(b"".join(self._tile_text(zone, header) for zone, header
                                in zip(record.zones, record.snapshot, strict=True)))

    def _tile_text(self, zone: Zone, header: bytes) -> bytes:
        """A tile's text, if it still holds the header it was listed with (a writer that
        moved on since would give the text of another round)."""
        try:
            raw = self.device.read(zone.offset, zone.size)
        except DeviceError as exc:
            log.error("%s: tile %d: %s: left out", self.device.path, zone.index, exc)
            return b""
        if raw[:BCON_LONG_HEADERSIZE] != header:
            log.warning("%s: tile %d at %#x changed since it was listed: left out",
                        self.device.path, zone.index, zone.offset)
            return b""
        return tile_text(raw)

    # -- erase ------------------------------------------------------------------------


def _header(raw: bytes, tile: int) -> TileHeader | None:
    """A tile's header, or None for a tile the log has not reached."""
    try:
        return parse_tile_header(raw, tile * CACHE_SIZE)
    except FormatError:
        return None
