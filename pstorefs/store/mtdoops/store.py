"""mtdoops (drivers/mtd/mtdoops.c): one file per page holding a record, erased as flash
is erased.

The kernel has no reader for mtdoops; the files follow pstore's names:
`dmesg-<name>-<page index>` (name `mtdoops` unless `name=` says otherwise), the page's
text as content, the v2 header's timestamp as mtime. Records are listed in the order
they were written (by `seq`, with `find_next_position`'s wrap rule).

`rm` erases the page's erase block, as mtdoops erases before it reuses a page, and
writes back the other pages of that block (pstorefs.store.flash), so the only page that
changes is the one removed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from pstorefs.errors import DeviceError, GeometryError, UsageError
from pstorefs.format.consts import PstoreType, vote_little_endian
from pstorefs.format.kallsyms import SymbolTable
from pstorefs.format.mtdoops import (
    HEADER_PROBE,
    PageHeader,
    age,
    has_magic,
    is_magic,
    magic_word,
    newest_seq,
    page_text,
    parse_page_header,
)
from pstorefs.store.base import Decoded, Layout, Record, Store, Zone
from pstorefs.store.config import StoreConfig
from pstorefs.store.device import Device, NextData, data_slots, no_holes
from pstorefs.store.flash import ERASED, erase_block_size, erase_keeping

log = logging.getLogger(__name__)

OPTIONS = frozenset({"record_size", "erasesize"})
"""The options this back end reads (besides backend=, offset=, size=, name=, ro)."""

DEFAULT_NAME = "mtdoops"
DEFAULT_RECORD_SIZE = 4096
"""mtdoops' `record_size` default; the kernel takes only multiples of 4096."""


RECOGNIZE_SPAN = 1 << 20
"""How far `recognizes` looks for a page. mtdoops erases the block after the last
written page ahead of time, so page 0 may be blank: any two consecutive erase blocks
(up to 512 KiB each here) hold a page if the device holds any."""

_PAGE_ALIGN = 4096
"""Every page starts at a multiple of 4096 (`record_size` is one)."""


def recognizes(read: Callable[[int, int], bytes], size: int,
               next_data: NextData | None = None) -> bool:
    """Whether a page of the source's first MiB looks as `mtdoops_write` leaves one:
    an mtdoops header (either byte order) and, after the text, only the NUL and the
    0xFF fill. Pages in a hole (`next_data`) are zeros, no page: they are not read."""
    span = min(size, RECOGNIZE_SPAN)
    count = (span - HEADER_PROBE) // _PAGE_ALIGN + 1 if span >= HEADER_PROBE else 0
    for page in data_slots(next_data or no_holes(size), count, 0, _PAGE_ALIGN, HEADER_PROBE):
        offset = page * _PAGE_ALIGN
        try:
            head = read(offset, HEADER_PROBE)
            if not has_magic(head):  # no record: not worth a parse (most pages of most sources)
                continue
            headers = [h for h in (parse_page_header(head, offset, little)
                                   for little in (True, False)) if h is not None]
            if headers and _filled_after_text(read(offset, min(_PAGE_ALIGN, size - offset)),
                                              headers[0]):
                return True
        except DeviceError:
            continue
    return False


def _filled_after_text(page: bytes, header: PageHeader) -> bool:
    """Whether what follows the text in `page` (a page's first 4096 bytes) is the NUL
    and 0xFF fill of a written page."""
    body = page[header.size:]
    rest = body[len(page_text(body)):].removeprefix(b"\0")
    return rest.count(ERASED) == len(rest)


def open_store(device: Device, config: StoreConfig, symbols: SymbolTable) -> MtdoopsStore:
    """The mtdoops back end (`symbols` unused: mtdoops holds text only)."""
    record_size = DEFAULT_RECORD_SIZE if config.record_size is None else config.record_size
    if record_size < 4096 or record_size % 4096:
        raise UsageError(f"record_size={record_size}: mtdoops takes only multiples of 4096 "
                         "bytes")
    erasesize = erase_block_size(device, config.erasesize)
    if erasesize is not None and erasesize % record_size:
        raise GeometryError(f"erasesize={erasesize} is not a multiple of record_size="
                            f"{record_size}: mtdoops erases whole pages of a block")
    if erasesize is None and not device.read_only:
        raise GeometryError(f"{device.path}: rm on mtdoops erases whole erase blocks: give "
                            "erasesize=BYTES (the flash's erase block size), or ro to only read")
    return MtdoopsStore(device, record_size=record_size, erasesize=erasesize,
                        name=config.name_or(DEFAULT_NAME))


class MtdoopsStore(Store):
    """The records of an mtdoops partition.

    Opening reads the 16 header bytes of each page; a page's text is read the first
    time its size or content is asked for, and kept in a fixed-budget cache."""

    erases_reach_other_records = True  # an erase rewrites the page's whole erase block

    def __init__(self, device: Device, *, record_size: int, erasesize: int | None,
                 name: str) -> None:
        super().__init__(device, name)
        self.record_size = record_size
        self.erasesize = erasesize
        self.pages = device.size // record_size
        probes = self._read_headers()
        self.little_endian = vote_little_endian((magic_word(raw), is_magic)
                                                for raw in probes.values())
        self._headers: dict[Record, PageHeader] = {}
        self._records = self._recover(probes)
        self._keep_slots(len(self._records))

    def layout(self) -> Layout:
        return Layout(backend="mtdoops", format="mtdoops",
                      abi="le" if self.little_endian else "be",
                      little_endian=self.little_endian,
                      parameters={"record_size": self.record_size,
                                  "erasesize": self.erasesize},
                      zones=self.pages, records=len(self._records),
                      kernel_parameters=f"mtdoops.record_size={self.record_size}",
                      mount_options=self._mount_options())

    def _mount_options(self) -> str:
        options = f"backend=mtdoops,record_size={self.record_size}"
        return options + (f",erasesize={self.erasesize}" if self.erasesize else "")

    def describe(self) -> str:
        return (f"{self.device.path}: mtdoops, {self._mount_options()}: {self.pages} pages, "
                f"{len(self._records)} records")

    # -- listing ----------------------------------------------------------------
    def _read_headers(self) -> dict[int, bytes]:
        """The first bytes of each page that holds a magic (in either byte order: the
        order is voted on them), the others being no record. A page that cannot be read
        is skipped, as `find_next_position` skips it; a page in a hole of a sparse image
        is zeros, and is not read."""
        probes: dict[int, bytes] = {}
        for page in data_slots(self.device.next_data, self.pages, 0, self.record_size,
                               HEADER_PROBE):
            try:
                raw = self.device.read(page * self.record_size, HEADER_PROBE)
            except DeviceError as exc:
                log.error("mtdoops page %d at %#x: %s: skipped", page,
                          page * self.record_size, exc)
                continue
            if has_magic(raw):
                probes[page] = raw
        return probes

    def _recover(self, probes: dict[int, bytes]) -> list[Record]:
        """A record per page with a header, oldest first."""
        found: list[tuple[int, PageHeader, bytes]] = []
        for page, raw in probes.items():
            header = parse_page_header(raw, page * self.record_size, self.little_endian)
            if header is not None:
                found.append((page, header, raw[:header.size]))
        newest = newest_seq([header.seq for _, header, _ in found])
        if newest is None:
            return []
        found.sort(key=lambda item: (-age(item[1].seq, newest), item[0]))
        records = []
        for page, header, snapshot in found:
            zone = Zone(PstoreType.DMESG, page, page * self.record_size, self.record_size,
                        header_size=header.size)
            record = Record(PstoreType.DMESG, page, (zone,), time_ns=header.time_ns,
                            snapshot=(snapshot,))
            self._headers[record] = header
            records.append(record)
        return records

    # -- files --------------------------------------------------------------------
    def _attributes(self, record: Record, wait: bool) -> dict[str, str]:
        zone, = record.zones
        attrs = {"seq": str(self._headers[record].seq), "zone_offset": str(zone.offset),
                 "zone_size": str(zone.size)}
        if record.time_ns is not None:
            attrs["time_ns"] = str(record.time_ns)
        return attrs

    def _decode(self, record: Record) -> Decoded:
        zone, = record.zones
        return Decoded(page_text(self.device.read(zone.offset + zone.header_size,
                                                  zone.buffer_size)))

    # -- erase ----------------------------------------------------------------------
    def _unchanged(self, zone: Zone, snapshot: bytes) -> bool:
        """As listed, or erased by an erase of ours that failed before its sync."""
        now = self.device.read(zone.offset, len(snapshot))
        return now in (snapshot, bytes([ERASED]) * len(snapshot))

    def _erase_zones(self, record: Record) -> None:
        """Erase the page's erase block and write back its other pages."""
        assert self.erasesize is not None, "a writable mtdoops store has its erasesize"
        zone, = record.zones
        erase_keeping(self.device, zone.offset, zone.size, self.erasesize)
