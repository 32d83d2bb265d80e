"""The floors each figure of bench/run is measured against, as separate processes.

    floors.py headers IMAGE ZONE_SIZE     # imports pyfuse3 and trio, reads every zone header
    floors.py zlib INDEX IMAGE            # single-threaded zlib over every payload, from memory
    floors.py fsync INDEX IMAGE           # one pwrite of rm's bytes + fdatasync per zone

Each prints one JSON line: its own timing where the work is only part of the process
(`seconds`), and its peak RSS (`maxrss_kib`).
"""

from __future__ import annotations

import json
import os
import resource
import struct
import sys
import time

DMESG_SIG = 0x43474244  # PSZ_SIG ^ PSTORE_TYPE_DMESG
KMSG_MAGIC = 0x4DFC3AE5  # PSTORE_KMSG_HEADER_MAGIC
PROBE = 12 + 40  # struct psz_buffer + the largest struct psz_kmsg_header


class Zones:
    """rm's writes without pstorefs on an image of the workload `meta` (its index):
    `erase(n)` makes `datalen` = 0 in the zone of the n-th record, durably (one pwrite,
    one fdatasync)."""

    def __init__(self, image: str, meta: dict) -> None:
        self.image = image
        self.fd = os.open(image, os.O_RDWR)
        self.datalens = [off - PROBE + 4 for off, _ in meta["payloads"]]
        assert all(at % meta["kmsg_size"] == 4 for at in self.datalens)

    def erase(self, n: int) -> None:
        os.pwrite(self.fd, bytes(4), self.datalens[n])
        os.fdatasync(self.fd)

    def close(self) -> None:
        os.close(self.fd)

    def describe(self) -> str:
        """What an error names (as a store's `describe`, for pstorefs' `Eraser`)."""
        return f"{self.image}: the rm floor's image"


def _maxrss() -> int:
    """This process's peak RSS (VmHWM: getrusage's ru_maxrss would carry the parent's
    from before the exec)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def headers(image: str, zone_size: int) -> dict:
    """What any reader must do before it can answer a readdir: start Python with the
    FUSE stack imported, and read and check each zone header."""
    import pyfuse3  # noqa: F401
    import trio  # noqa: F401

    fd = os.open(image, os.O_RDONLY)
    size = min(os.fstat(fd).st_size, 128 << 20)
    unpack = struct.Struct("<IiiI").unpack_from
    valid = 0
    for offset in range(0, size - zone_size + 1, zone_size):
        sig, datalen, _start, magic = unpack(os.pread(fd, PROBE, offset))
        valid += sig == DMESG_SIG and magic == KMSG_MAGIC and datalen > 0
    os.close(fd)
    return {"valid": valid, "maxrss_kib": _maxrss()}


def _payloads(index: str, image: str) -> list[bytes]:
    with open(index) as fh:
        spans = json.load(fh)["payloads"]
    with open(image, "rb") as fh:
        data = fh.read()
    return [data[off:off + n] for off, n in spans]


def inflate(index: str, image: str) -> dict:
    """Python's zlib decompressing every payload once, in one thread, from memory."""
    import zlib
    payloads = _payloads(index, image)
    t0 = time.perf_counter()
    out = 0
    for p in payloads:
        out += len(zlib.decompress(p, -15))
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "bytes": out, "maxrss_kib": _maxrss()}


def fsync(index: str, image: str) -> dict:
    """rm's writes without pstorefs: `datalen` = 0 in each zone, each made durable
    before the next, on a copy of the image (the caller puts it on the same
    filesystem as pstorefs' copy)."""
    with open(index) as fh:
        meta = json.load(fh)
    zones = Zones(image, meta)
    t0 = time.perf_counter()
    for at in range(len(zones.datalens)):
        zones.erase(at)
    seconds = time.perf_counter() - t0
    zones.close()
    return {"seconds": seconds, "zones": len(zones.datalens), "maxrss_kib": _maxrss()}


def main(argv: list[str]) -> None:
    what = argv[0]
    if what == "headers":
        result = headers(argv[1], int(argv[2]))
    elif what == "zlib":
        result = inflate(argv[1], argv[2])
    elif what == "fsync":
        result = fsync(argv[1], argv[2])
    else:
        raise SystemExit(f"floors.py: unknown floor {what!r}")
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
