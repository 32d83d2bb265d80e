"""What else a source may hold: another filesystem's or a partition table's signature,
as libblkid (util-linux, on every Linux system) finds it, `blkid -p` style.

pstore writes no signature of its own that a whole partition carries, so a mistyped
device name would otherwise mount as an "unused" pstore partition, and an `rm` there
would write into someone's filesystem. libblkid is asked through ctypes, on the very
descriptor and region the store reads: no second open, no process started.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from functools import cache

from pstorefs.store.device import Device

log = logging.getLogger(__name__)

_SUBLKS_TYPE = 1 << 5
_SUBLKS_USAGE = 1 << 7
"""`BLKID_SUBLKS_TYPE`, `BLKID_SUBLKS_USAGE` (blkid.h): what superblock probing reports."""

_KINDS = {"filesystem": "filesystem", "raid": "RAID member", "crypto": "encrypted volume",
          "other": "volume"}
"""libblkid's USAGE values, as a message names them."""


@cache
def _libblkid() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("blkid")
    if name is None:
        return None
    lib = ctypes.CDLL(name)
    lib.blkid_new_probe.restype = ctypes.c_void_p
    lib.blkid_probe_set_device.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int64,
                                           ctypes.c_int64]
    lib.blkid_probe_enable_partitions.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.blkid_probe_set_superblocks_flags.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.blkid_do_safeprobe.argtypes = [ctypes.c_void_p]
    lib.blkid_probe_lookup_value.argtypes = [ctypes.c_void_p, ctypes.c_char_p,
                                             ctypes.POINTER(ctypes.c_char_p),
                                             ctypes.POINTER(ctypes.c_size_t)]
    lib.blkid_free_probe.argtypes = [ctypes.c_void_p]
    return lib


def foreign_signature(device: Device) -> str | None:
    """What the source's region holds instead of pstore, in words ("an ext4
    filesystem", "a gpt partition table"), or None: nothing libblkid knows (or no
    libblkid, which is logged)."""
    lib = _libblkid()
    if lib is None:
        log.warning("libblkid not found: the source is not checked for other signatures")
        return None
    probe = lib.blkid_new_probe()
    if not probe:
        return None
    try:
        if lib.blkid_probe_set_device(probe, device.fd, device.base, device.size) != 0:
            return None
        lib.blkid_probe_set_superblocks_flags(probe, _SUBLKS_TYPE | _SUBLKS_USAGE)
        lib.blkid_probe_enable_partitions(probe, 1)
        if lib.blkid_do_safeprobe(probe) != 0:  # 1: nothing found; <0: error, ambivalent
            return None
        fs_type, usage = _value(lib, probe, b"TYPE"), _value(lib, probe, b"USAGE")
        if fs_type:
            return _a(f"{fs_type} {_KINDS.get(usage or 'other', 'volume')}")
        table = _value(lib, probe, b"PTTYPE")
        return _a(f"{table} partition table") if table else None
    finally:
        lib.blkid_free_probe(probe)


def _a(words: str) -> str:
    return f"{'an' if words[0] in 'aeiou' else 'a'} {words}"


def _value(lib: ctypes.CDLL, probe: int, name: bytes) -> str | None:
    data, size = ctypes.c_char_p(), ctypes.c_size_t()
    if lib.blkid_probe_lookup_value(probe, name, ctypes.byref(data), ctypes.byref(size)):
        return None
    return data.value.decode(errors="replace") if data.value else None
