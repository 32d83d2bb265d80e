"""The ramoops cases (tests/data/fixtures-backends/ramoops-*) and what the ramoops
tests read of them."""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable
from pathlib import Path

from helpers.cases import DATA, Case
from pstorefs.codecs.reed_solomon import rs_codec
from pstorefs.format.ramoops import (
    PERSISTENT_RAM_BUFFER_SIZE,
    PERSISTENT_RAM_SIG,
    RamBuffer,
    build_buffer,
    ecc_geometry,
)
from pstorefs.store.base import Zone
from pstorefs.store.ramoops.layout import RamoopsGeometry

BACKEND_FIXTURES = DATA / "fixtures-backends"
CASES = [Case(d, json.loads((d / "case.json").read_text()))
         for d in sorted(BACKEND_FIXTURES.glob("ramoops-*"))]


ECC16 = next(c for c in CASES if c.id == "ramoops-ecc16")


def case_id(case: Case) -> str:
    return case.id


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def copy(tmp_path: Path, case: Case, name: str = "image.bin") -> Path:
    return case.copy(name, tmp_path / f"{case.id}-{name}")


def layout_of(case: Case) -> RamoopsGeometry:
    o = dict(kv.split("=", 1) for kv in case.meta["mount_options"].split(","))
    return RamoopsGeometry(case.meta["image_bytes"], int(o["record_size"]),
                         int(o["console_size"]), int(o["ftrace_size"]), int(o["pmsg_size"]),
                         int(o["ecc"]))


def all_bad_ecc_region(layout: RamoopsGeometry, text: Callable[[Zone], bytes], *,
                       seed: int = 0) -> tuple[bytes, dict[Zone, int]]:
    """A region with ECC as a kernel leaves it after one write of `text(zone)` to each
    zone (no ftrace zone: its signature differs), then one symbol changed in every
    block the kernel checks, the header included: every block with an error. Also the
    symbols each zone's correction counts."""
    rs = rs_codec(layout.ecc_size)
    rnd = random.Random(seed)
    image = bytearray(layout.mem_size)
    corrected = {}
    for zone in layout.zones():
        ecc = ecc_geometry(zone.size, layout.ecc_size)
        data = text(zone)[:ecc.buffer_size]
        header = build_buffer(RamBuffer(PERSISTENT_RAM_SIG, len(data) % ecc.buffer_size,
                                        len(data)), little_endian=True)
        image[zone.offset:zone.offset + len(header)] = header
        at = zone.offset + ecc.par_header
        image[at:at + ecc.ecc_size] = rs.encode(header)
        base = zone.offset + PERSISTENT_RAM_BUFFER_SIZE
        image[base:base + len(data)] = data
        blocks = ecc.blocks(len(data))
        for index in blocks:
            at, size = ecc.block(index)
            par = zone.offset + ecc.par_buffer + index * ecc.ecc_size
            image[par:par + ecc.ecc_size] = rs.encode(bytes(image[base + at:base + at + size]))
            image[base + at + rnd.randrange(size)] ^= rnd.randrange(1, 256)
        image[zone.offset + rnd.randrange(len(header))] ^= rnd.randrange(1, 256)
        corrected[zone] = len(blocks) + 1
    return bytes(image), corrected
