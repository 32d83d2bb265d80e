"""The benchmark workloads, written with the test-only writer
(tests/helpers/zone_writer.py, pinned to kernel images byte for byte) as a Linux 6.1
x86_64 kernel with `pstore.compress=deflate` would leave them.

Each record is what `pstore_dump` (fs/pstore/platform.c) hands to pstore/zone: the dump
header `Oops#<n> Part1\\n`, then the newest whole lines of the kernel log that fit in
`big_oops_buf` (`zbufsize_deflate(bufsize)`: bufsize * 100 / 45 for 4000-10000 byte
buffers, / 60 above), raw-deflated with windowBits -11 into the zone. The log text is
the kernel fixtures' own (tests/data/fixtures/*/files/dmesg-*), each record ending at a
different line of it, so every payload differs and compresses as real oops text does.
"""

from __future__ import annotations

import json
import random
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "data" / "fixtures"
sys.path.insert(0, str(REPO / "tests"))  # the test-only writer: tests/helpers/zone_writer.py

from helpers.zone_writer import HEADER, ZoneWriter, deflate  # noqa: E402
from pstorefs.format.abi import LE64  # noqa: E402

NAME = "blkoops"
"""pstorefs' default back-end name in file names."""

EPOCH = 1_795_000_000
"""tv_sec of record 0; records are a minute apart."""


def corpus_lines() -> list[bytes]:
    """Every log line of the fixtures' dmesg files, without pstore's own header lines."""
    lines: list[bytes] = []
    for path in sorted(FIXTURES.glob("*/files/dmesg-*")):
        for line in path.read_bytes().splitlines(keepends=True):
            if line.startswith((b"Oops#", b"Panic#", b"Oops: Total", b"Panic: Total")):
                continue
            lines.append(line)
    return lines


def big_oops_buf_size(bufsize: int) -> int:
    """`zbufsize_deflate` of Linux 5.8-6.5 (fs/pstore/platform.c)."""
    if 1000 <= bufsize <= 2000:
        cmpr = 56
    elif 2001 <= bufsize <= 3000:
        cmpr = 54
    elif 3001 <= bufsize <= 3999:
        cmpr = 52
    elif 4000 <= bufsize <= 10000:
        cmpr = 45
    else:
        cmpr = 60
    return bufsize * 100 // cmpr


def record_text(lines: list[bytes], end: int, counter: int, room: int) -> bytes:
    """The dump header and the newest lines of the log up to `lines[end]` that fit."""
    header = b"Oops#%d Part1\n" % counter
    room -= len(header)
    tail: list[bytes] = []
    at = end
    while True:
        line = lines[at % len(lines)]
        if len(line) > room:
            break
        tail.append(line)
        room -= len(line)
        at -= 1
    return header + b"".join(reversed(tail))


@dataclass
class Workload:
    """An image and what pstorefs must show for it."""

    path: Path
    size: int
    kmsg_size: int
    options: str  # the explicit mount options ("" for the default layout)
    names: list[str]
    sizes: list[int]
    mtimes_ns: list[int]
    payloads: list[tuple[int, int]]  # (offset, length) of each deflate stream

    @property
    def records(self) -> int:
        return len(self.names)

    @property
    def zones(self) -> int:
        return self.size // self.kmsg_size

    def save_index(self, path: Path) -> None:
        """What the no-op filesystem and the floors need, as JSON."""
        path.write_text(json.dumps({
            "names": self.names, "sizes": self.sizes, "mtimes_ns": self.mtimes_ns,
            "payloads": self.payloads, "kmsg_size": self.kmsg_size, "size": self.size}))


def build(path: Path, size: int, kmsg_kib: int, options: str, seed: int = 7) -> Workload:
    """A full partition: every dmesg zone holds one compressed oops record."""
    kmsg_size = kmsg_kib << 10
    writer = ZoneWriter(LE64, size, kmsg_size=kmsg_size)
    lines = corpus_lines()
    rng = random.Random(seed)
    hlen = LE64.kmsg_header_size
    bufsize = kmsg_size - HEADER - hlen
    room = big_oops_buf_size(bufsize)
    names, sizes, mtimes, payloads = [], [], [], []
    for k in range(len(writer.dmesg_zones)):
        text = record_text(lines, rng.randrange(len(lines)), k + 1, room)
        data = deflate(text)
        if len(data) > bufsize:  # pstore_dump falls back to the plain text; not here
            raise RuntimeError(f"record {k}: {len(data)} compressed bytes do not fit {bufsize}")
        assert zlib.decompress(data, -15) == text
        tv_sec, tv_nsec = EPOCH + 60 * k, (k * 7919) % 1_000_000_000
        index = writer.dmesg(data, time=(tv_sec, tv_nsec), compressed=True)
        zone = writer.dmesg_zones[index]
        names.append(f"dmesg-{NAME}-{index}")
        sizes.append(len(text))
        mtimes.append(tv_sec * 1_000_000_000 + tv_nsec)
        payloads.append((zone.offset + HEADER + hlen, len(data)))
    writer.save(path)
    return Workload(path, size, kmsg_size, options, names, sizes, mtimes, payloads)


if __name__ == "__main__":  # bench/workload.py OUT SIZE_MIB KMSG_KIB: build one image
    out, mib, kib = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    w = build(Path(out), mib << 20, kib, f"kmsg_size={kib}")
    comp = sum(n for _, n in w.payloads)
    print(f"{out}: {w.records} records, text {sum(w.sizes)} bytes, "
          f"deflate {comp} bytes ({comp / sum(w.sizes):.2f})")
