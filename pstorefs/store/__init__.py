"""The store layer: opens a source and recovers its records.  Plain synchronous
Python, no FUSE: the mount and the offline tool are both built on `open_store`."""

from __future__ import annotations

from dataclasses import dataclass

from pstorefs.format.abi import ABIS
from pstorefs.format.kallsyms import NO_SYMBOLS
from pstorefs.store.base import Entry, Record, Store
from pstorefs.store.device import Device
from pstorefs.store.geometry import Geometry, kib_to_bytes
from pstorefs.store.symbols import load_system_map
from pstorefs.store.zone import ZoneStore

__all__ = ["Entry", "Record", "Store", "StoreConfig", "open_store"]


@dataclass(frozen=True)
class StoreConfig:
    """What opening a source needs, with the kernel's parameter names and units
    (sizes in KiB)."""

    kmsg_size: int = 64
    pmsg_size: int = 0
    console_size: int = 0
    ftrace_size: int = 0
    nr_cpus: int = 1
    name: str = "blkoops"
    abi: str = "auto"
    read_only: bool = False
    system_map: str | None = None

    def geometry(self) -> Geometry:
        return Geometry(kmsg_size=kib_to_bytes("kmsg_size", self.kmsg_size),
                        pmsg_size=kib_to_bytes("pmsg_size", self.pmsg_size),
                        console_size=kib_to_bytes("console_size", self.console_size),
                        ftrace_size=kib_to_bytes("ftrace_size", self.ftrace_size),
                        nr_cpus=self.nr_cpus)


def open_store(source: str, config: StoreConfig) -> Store:
    """Open `source` and list its records (headers only)."""
    geometry = config.geometry()
    symbols = load_system_map(config.system_map) if config.system_map else NO_SYMBOLS
    device = Device(source, read_only=config.read_only)
    try:
        return ZoneStore(device, geometry, name=config.name,
                         abi=None if config.abi == "auto" else ABIS[config.abi],
                         symbols=symbols)
    except BaseException:
        device.close()
        raise
