"""The store layer: opens a source and recovers its records.  Plain synchronous
Python, no FUSE: the mount and the offline tool are both built on `open_store`.

Each back end is a package (`zone`, `ramoops`, `mtdoops`, `blockconsole`) with
`OPTIONS` (the StoreConfig fields it reads), `recognizes(read, size, next_data) -> bool`
(but pstore/zone, the back end of a source no other recognizes) and
`open_store(device, config, symbols) -> Store`; with `backend=auto` the first that
recognizes the source is used, pstore/zone otherwise."""

from __future__ import annotations

import dataclasses

from pstorefs.errors import PstoreError, SourceError, UsageError
from pstorefs.format.kallsyms import NO_SYMBOLS
from pstorefs.store import blockconsole, mtdoops, ramoops, zone
from pstorefs.store.base import (
    UNSIZED,
    Body,
    Decoded,
    Entry,
    Layout,
    RangedBody,
    Record,
    Store,
    body_chunks,
)
from pstorefs.store.config import BACKENDS, SIZE_OPTIONS, StoreConfig
from pstorefs.store.device import Device
from pstorefs.store.signatures import foreign_signature
from pstorefs.store.symbols import load_system_map

__all__ = ["BACKENDS", "SIZE_OPTIONS", "UNSIZED", "Body", "Decoded", "Entry", "Layout",
           "RangedBody", "Record", "Store", "StoreConfig", "body_chunks", "open_store"]

_MODULES = {"zone": zone, "ramoops": ramoops, "mtdoops": mtdoops,
            "blockconsole": blockconsole}
assert tuple(_MODULES) == BACKENDS

_RECOGNIZED_FIRST = ("mtdoops", "blockconsole", "ramoops")
"""Asked in this order whether the source is theirs; pstore/zone is assumed otherwise
(its detection is the scan of `pstorefs.store.zone.detect`, which refuses what is not)."""

_EVERY_BACKEND = frozenset({"backend", "offset", "size", "name", "read_only", "force"})


def _recognizes(name: str, device: Device) -> bool:
    """Whether back end `name` takes the source; one it cannot read (a bad sector where
    its header would be) is not its, and pstore/zone copes with such zones alone."""
    try:
        return bool(_MODULES[name].recognizes(device.read, device.size, device.next_data))
    except PstoreError:
        return False


def _option(config: StoreConfig, key: str) -> str:
    """`key=value` as it was given (a flag by its name), for a message."""
    value = getattr(config, key)
    return key if value is True else f"{key}={value}"


def open_store(source: str, config: StoreConfig) -> Store:
    """Open `source` with the back end the options name (or the one recognized), and
    list its records (headers only). An option the back end does not read is refused:
    a size meant for another back end would otherwise be silently dropped."""
    device = Device(source, read_only=config.read_only, offset=config.offset,
                    size=config.size)
    try:
        if not config.force and (held := foreign_signature(device)):
            raise SourceError(f"{source}: holds {held} (as blkid -p sees it), not a pstore "
                              "area: not opened (-o force reads it all the same)")
        name = config.backend if config.backend != "auto" else next(
            (n for n in _RECOGNIZED_FIRST if _recognizes(n, device)), "zone")
        module = _MODULES[name]
        given = {f.name for f in dataclasses.fields(config)
                 if getattr(config, f.name) != f.default}
        unread = sorted(given - _EVERY_BACKEND - module.OPTIONS)
        if unread:
            raise UsageError(", ".join(_option(config, key) for key in unread)
                             + f": not an option of the {name} back end")
        symbols = load_system_map(config.system_map) if config.system_map else NO_SYMBOLS
        return module.open_store(device, config, symbols)
    except BaseException:
        device.close()
        raise
