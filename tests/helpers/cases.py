"""The bundled kernel-written cases (tests/data), and what they imply: each case's zone
layout and the image the kernel's erase leaves, computed from case.json alone.

Every case under tests/data/fixtures and tests/data/kernels was written and read back by
a real Linux kernel (see its README.md); these are the oracle.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

DATA = Path(__file__).parent.parent / "data"
FIXTURES = DATA / "fixtures"
KERNELS = DATA / "kernels"
"""One case per kernel version and compressor, made by contrib/oracle (see its README)."""


def _expanded(packed: Path) -> Path:
    """`packed` (a gzipped image) expanded once into the temp dir, holes left sparse, and
    named by its content so that every test process shares one copy."""
    digest = hashlib.sha256(packed.read_bytes()).hexdigest()[:16]
    out = Path(tempfile.gettempdir()) / "pstorefs-cases" / f"{packed.stem}-{digest}"
    if not out.exists():
        out.parent.mkdir(exist_ok=True)
        part = out.with_name(f"{out.name}.{os.getpid()}")
        with gzip.open(packed, "rb") as src, part.open("wb") as dst:
            while block := src.read(1 << 16):
                if block.count(0) == len(block):
                    dst.seek(len(block), os.SEEK_CUR)
                else:
                    dst.write(block)
            dst.truncate()
        part.replace(out)
    return out

@dataclass(frozen=True)
class Case:
    """One kernel-written case: image, the kernel's files, and its case.json."""

    dir: Path
    meta: dict

    @property
    def id(self) -> str:
        return self.meta["id"]

    def file(self, name: str) -> Path:
        """The case's image or other file `name`; images of a case with "sparse_images":
        "gzip" are kept as NAME.gz (a 160 MiB partition is 160 KiB so) and expanded here."""
        if self.meta.get("sparse_images") == "gzip" and name.endswith(".bin"):
            return _expanded(self.dir / f"{name}.gz")
        return self.dir / name

    @property
    def images(self) -> list[str]:
        """The names of the case's images (image.bin, image-before-erase.bin, ...)."""
        return sorted(p.name.removesuffix(".gz") for p in self.dir.iterdir()
                      if p.name.endswith((".bin", ".bin.gz")))

    def copy(self, name: str, dest: Path) -> Path:
        """The image `name` copied to `dest`, which the test may write."""
        shutil.copyfile(self.file(name), dest)
        return dest

    @property
    def image(self) -> Path:
        return self.file("image.bin")

    @property
    def compressor(self) -> str | None:
        """The compressor that wrote the case's compressed records and names them: the
        reading kernel's `pstore.compress` (lz4hc writes lz4 blocks, see
        pstorefs/codecs/compression.py; `(null)` is 6.12's none), or deflate, Debian's
        6.1 default, for the cases that do not record it."""
        ran = self.meta.get("kernel_parameters", {}).get("pstore.compress", "deflate")
        return {"lz4hc": "lz4", "(null)": None, "none": None}.get(ran, ran)

    @property
    def capped(self) -> bool:
        """Whether the writer used at most 128 MiB (Linux 5.11+); case.json says
        "capped": false for a 5.8-5.10 writer, which used the whole partition."""
        return self.meta.get("capped", True)

    @property
    def options(self) -> str:
        opts = self.meta["mount_options"]
        if self.meta.get("system_map"):
            opts += f",system_map={self.dir / self.meta['system_map']}"
        return opts

    def option(self, key: str, default: str | None = None) -> str | None:
        pairs = dict(kv.split("=", 1) for kv in self.meta["mount_options"].split(","))
        return pairs.get(key, default)

    @property
    def files(self) -> dict[str, bytes]:
        return {f["name"]: (self.dir / "files" / f["name"]).read_bytes()
                for f in self.meta["files"]}


def load_cases(root: Path = FIXTURES) -> list[Case]:
    return [Case(d, json.loads((d / "case.json").read_text()))
            for d in sorted(root.iterdir()) if (d / "case.json").exists()]


CASES = load_cases() + load_cases(KERNELS)
BACKEND_CASES = load_cases(DATA / "fixtures-backends")
"""The other back ends' kernel-written cases (ramoops, mtdpstore, mtdoops)."""
ERASE_CASES = [c for c in CASES if "erase" in c.meta]


def case_by_id(case_id: str) -> Case:
    return next(c for c in CASES if c.id == case_id)


# -- the zone layout and the expected erase, from case.json alone ---------------------
# Computed independently of pstorefs (mainline pstore/zone: pmsg, console, ftrace per CPU,
# then dmesg zones filling the rest, capped at 128 MiB since 5.11), so tests can check its writes.

PSZ_SIG = 0x43474244
ZONE_SIG = {"dmesg": PSZ_SIG ^ 0, "console": PSZ_SIG ^ 2, "ftrace": PSZ_SIG ^ 3,
            "pmsg": PSZ_SIG ^ 7}


@dataclass(frozen=True)
class ExpectedZone:
    """One zone of a case's layout: its type name, offset and size in bytes, worked out
    here from the case's module parameters and zone.c, independently of pstorefs' own
    `Zone` and `Geometry`: the tests' oracle must not be the code it checks."""

    type: str
    offset: int
    size: int


def zone_layout(case: Case, image_bytes: int | None = None) -> list[ExpectedZone]:
    """Every zone of `case` (with its mount options) on an image of `image_bytes`."""
    def kib(key: str) -> int:
        return max(int(case.option(key, "0") or 0), 0) * 1024

    total = image_bytes if image_bytes is not None else case.meta["image_bytes"]
    if case.capped:
        total = min(total, 128 << 20)
    zones, offset = [], 0
    for kind in ("pmsg", "console"):
        if size := kib(f"{kind}_size"):
            zones.append(ExpectedZone(kind, offset, size))
            offset += size
    if ftrace := kib("ftrace_size"):
        cpus = int(case.option("nr_cpus", "1") or 1)
        per_cpu = ftrace // cpus
        for cpu in range(cpus):
            zones.append(ExpectedZone("ftrace", offset + cpu * per_cpu, per_cpu))
        offset += ftrace
    kmsg = kib("kmsg_size")
    while kmsg and offset + kmsg <= total:
        zones.append(ExpectedZone("dmesg", offset, kmsg))
        offset += kmsg
    return zones


def expected_after_erase(case: Case) -> bytes:
    """The kernel's image after the case's rm, with pstorefs' planned deviation: removing
    the ftrace file zeroes `datalen` and `start` of every CPU's ftrace zone."""
    img = bytearray(case.file(case.meta["erase"]["image_after"]).read_bytes())
    if any(name.startswith("ftrace-") for name in case.meta["erase"]["remove"]):
        for zone in zone_layout(case):
            if (zone.type == "ftrace"
                    and int.from_bytes(img[zone.offset:zone.offset + 4], "little")
                    == ZONE_SIG["ftrace"]):
                img[zone.offset + 4:zone.offset + 12] = bytes(8)
    return bytes(img)


def sha256(path: str | os.PathLike) -> str:
    import hashlib
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def two_cpu_ftrace_image(records_per_cpu: int = 100) -> tuple[bytes, str]:
    """x86_64-all-fronts' image with its 64 KiB ftrace area rewritten as two 32 KiB CPU
    zones (nr_cpus=2) of synthetic records, and the mount options that read it.

    Record k (k = 0, 1, ...) is on CPU k % 2 with timestamp k, ip 0xffffffff81000000 +
    16 k and parent ip 0xffffffff82000000 + k // 2, so the merged file alternates CPUs.
    The fixtures were all written with one CPU; this is what tests "rm erases every CPU
    zone" and the merge."""
    import struct
    case = case_by_id("x86_64-all-fronts")
    img = bytearray(case.image.read_bytes())
    area = next(z for z in zone_layout(case) if z.type == "ftrace")
    per_cpu = area.size // 2
    img[area.offset:area.offset + area.size] = bytes(area.size)
    for cpu in range(2):
        recs = b"".join(struct.pack("<QQQ", 0xFFFFFFFF81000000 + 16 * k,
                                    0xFFFFFFFF82000000 + k // 2, (k << 8) | cpu)
                        for k in range(cpu, 2 * records_per_cpu, 2))
        at = area.offset + cpu * per_cpu
        img[at:at + 12] = struct.pack("<Iii", ZONE_SIG["ftrace"], len(recs), len(recs))
        img[at + 12:at + 12 + len(recs)] = recs
    return bytes(img), case.meta["mount_options"].replace("nr_cpus=1", "nr_cpus=2")
