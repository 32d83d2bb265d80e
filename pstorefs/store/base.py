"""What every back end's store offers the layers above: records, their files, erase."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from pstorefs.format.consts import PstoreType
from pstorefs.store.device import Device
from pstorefs.store.geometry import Zone


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


@dataclass(frozen=True, slots=True)
class Entry:
    """How a record appears as a file: its name, size and time (None: mount time)."""

    name: str
    size: int
    time_ns: int | None


class Store(ABC):
    """A source opened by one back end. Thread-safe: the FUSE layer calls it from
    worker threads."""

    device: Device
    _records: Sequence[Record]

    @property
    def read_only(self) -> bool:
        """Whether erasing is refused: the source could only be opened read-only."""
        return self.device.read_only

    @property
    def records(self) -> Sequence[Record]:
        """Every record found, in the kernel's read order."""
        return self._records

    @abstractmethod
    def entry(self, record: Record) -> Entry:
        """The file for `record`; may decode it (the name and size depend on that)."""

    def cached_entry(self, record: Record) -> Entry | None:
        """The file for `record` if it is known without reading the device."""
        return None

    @abstractmethod
    def read(self, record: Record) -> bytes:
        """The file's content: what `cat` shows."""

    def cached_read(self, record: Record) -> bytes | None:
        """The file's content if it is at hand without reading the device."""
        return None

    @abstractmethod
    def attributes(self, record: Record) -> dict[str, str]:
        """What the back end knows of `record` beyond its file (extended attributes)."""

    @property
    def erased(self) -> Sequence[Record]:
        """Erased records whose bytes survive, where the back end can recover them."""
        return ()

    @abstractmethod
    def erase(self, record: Record) -> None:
        """Erase `record` on the device exactly as the kernel would, durably."""

    @abstractmethod
    def layout(self) -> dict[str, object]:
        """The back end's parameters in use and how they were found (`pstorectl probe`)."""

    @abstractmethod
    def describe(self) -> str:
        """One line naming the source and the layout in use, for logs."""

    def close(self) -> None:
        """Release the source."""
        self.device.close()

    @abstractmethod
    def find(self, name: str) -> Record | None:
        """The record a file called `name` is, from what listing read: never the device,
        so that a lookup is answered at once. A compressed record not decoded yet is
        found under both the names it may have (shown as `.enc.z` if it does not
        decode): who needs the exact name compares `entry(record).name`."""
