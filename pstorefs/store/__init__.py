"""The store layer: opens a source and recovers its records.  Plain synchronous
Python, no FUSE: the mount and the offline tool are both built on `open_store`."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pstorefs.format.abi import resolve_abi
from pstorefs.format.consts import ZoneFormat
from pstorefs.format.kallsyms import NO_SYMBOLS
from pstorefs.store.base import Entry, Record, Store
from pstorefs.store.detect import Detection, detect, uncap
from pstorefs.store.device import Device
from pstorefs.store.geometry import Geometry, kib_to_bytes
from pstorefs.store.symbols import load_system_map
from pstorefs.store.zone import ZoneStore

__all__ = ["Entry", "Record", "Store", "StoreConfig", "open_store"]

log = logging.getLogger(__name__)

SIZE_OPTIONS = ("kmsg_size", "pmsg_size", "console_size", "ftrace_size")
"""The layout options; with none of them given, the layout is detected."""


@dataclass(frozen=True)
class StoreConfig:
    """What opening a source needs, with the kernel's parameter names and units
    (sizes in KiB). A size left None is detected from the source when every size is
    None; once one is given, the others take the kernel's values for "not set" (kmsg
    64, the rest off), as the kernel trusts its parameters."""

    kmsg_size: int | None = None
    pmsg_size: int | None = None
    console_size: int | None = None
    ftrace_size: int | None = None
    nr_cpus: int | None = None
    name: str = "blkoops"
    abi: str = "auto"
    format: str = "auto"
    read_only: bool = False
    system_map: str | None = None
    show_erased: bool = False

    @property
    def layout_given(self) -> bool:
        return any(getattr(self, key) is not None for key in SIZE_OPTIONS)

    @property
    def zone_format(self) -> ZoneFormat | None:
        return None if self.format == "auto" else ZoneFormat(self.format)

    def geometry(self) -> Geometry:
        """The layout the given options describe."""
        return Geometry(kmsg_size=kib_to_bytes("kmsg_size", 64 if self.kmsg_size is None
                                               else self.kmsg_size),
                        pmsg_size=kib_to_bytes("pmsg_size", self.pmsg_size or 0),
                        console_size=kib_to_bytes("console_size", self.console_size or 0),
                        ftrace_size=kib_to_bytes("ftrace_size", self.ftrace_size or 0),
                        nr_cpus=1 if self.nr_cpus is None else self.nr_cpus,
                        format=self.zone_format or ZoneFormat.ZONE)


def find_layout(device: Device, config: StoreConfig) -> Detection:
    """The options' layout if they give one, else the one detected on the source."""
    if config.layout_given:
        return uncap(device.read, Detection(config.geometry()), device.size)
    found = detect(device.read, device.size, nr_cpus=config.nr_cpus,
                   format=config.zone_format)
    log.info("%s: layout detected: %s", device.path, found.geometry.mount_options())
    for note in found.assumed:
        log.warning("%s: %s", device.path, note)
    return found


def open_store(source: str, config: StoreConfig) -> Store:
    """Open `source` and list its records (headers only)."""
    symbols = load_system_map(config.system_map) if config.system_map else NO_SYMBOLS
    device = Device(source, read_only=config.read_only)
    try:
        layout = find_layout(device, config)
        return ZoneStore(device, layout.geometry, name=config.name,
                         abi=None if config.abi == "auto" else resolve_abi(config.abi),
                         symbols=symbols, assumed=layout.assumed,
                         show_erased=config.show_erased)
    except BaseException:
        device.close()
        raise
