"""The store layer: opens a source and recovers its records.  Plain synchronous
Python, no FUSE: the mount and the offline tool are both built on `open_store`.

Each back end is a module with `open_store(device, config, symbols) -> Store`; with
`backend=auto` the first whose `recognizes(read, size)` is true is used, pstore/zone
otherwise."""

from __future__ import annotations

import importlib
from types import ModuleType

from pstorefs.errors import UsageError
from pstorefs.format.kallsyms import NO_SYMBOLS
from pstorefs.store.base import Entry, Record, Store
from pstorefs.store.config import BACKENDS, SIZE_OPTIONS, StoreConfig
from pstorefs.store.device import Device
from pstorefs.store.symbols import load_system_map

__all__ = ["BACKENDS", "SIZE_OPTIONS", "Entry", "Record", "Store", "StoreConfig",
           "open_store"]

_MODULES = {"zone": "pstorefs.store.zone", "ramoops": "pstorefs.store.ramoops",
            "mtdoops": "pstorefs.store.mtdoops", "blockconsole": "pstorefs.store.blockconsole"}
"""The back ends, by `backend=` name. TODO(lead): plain imports once all are built."""

_RECOGNIZED_FIRST = ("mtdoops", "blockconsole", "ramoops")
"""Back ends whose `recognizes` is asked, in order, before pstore/zone is assumed."""


def _module(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(_MODULES[name])
    except ModuleNotFoundError:
        return None


def open_store(source: str, config: StoreConfig) -> Store:
    """Open `source` with the back end the options name (or the one recognized), and
    list its records (headers only)."""
    if config.backend != "auto" and _module(config.backend) is None:
        raise UsageError(f"backend={config.backend}: not built yet")
    symbols = load_system_map(config.system_map) if config.system_map else NO_SYMBOLS
    device = Device(source, read_only=config.read_only, offset=config.offset,
                    size=config.size)
    try:
        module = _module(config.backend) if config.backend != "auto" else next(
            (m for m in map(_module, _RECOGNIZED_FIRST)
             if m is not None and m.recognizes(device.read, device.size)), _module("zone"))
        assert module is not None
        return module.open_store(device, config, symbols)
    except BaseException:
        device.close()
        raise
