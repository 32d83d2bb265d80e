"""What the layout-detection tests share: opening an image with and without the true
options, writing records and rings with the test writer, refusals."""

from __future__ import annotations

import dataclasses
import hashlib
import struct
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers.cases import Case
from helpers.zone_writer import Ring, ZoneWriter, deflate
from pstorefs.errors import GeometryError
from pstorefs.format.abi import X86_64, Abi
from pstorefs.format.consts import PSZ_SIG, PstoreType
from pstorefs.store import Store, StoreConfig, open_store
from pstorefs.store.zone.layout import Geometry, geometry_from_options

KIB = 1024
MIB = 1024 * KIB
TEXT = 0xFFFFFFFF81000000


DETECTED = StoreConfig(read_only=True)
"""No size option: the layout is detected."""


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def reader(data: bytes) -> Callable[[int, int], bytes]:
    return lambda offset, length: data[offset:offset + length]


Snapshot = dict[str, tuple[bytes, tuple[int, ...]]]


def snapshot(store: Store) -> Snapshot:
    """name → (content, the offsets of the zones the record's erase writes)."""
    return {store.entry(r).name: (store.read(r), tuple(z.offset for z in r.zones))
            for r in store.records}


def opened(path: Path, config: StoreConfig) -> tuple[Snapshot, Geometry, tuple[str, ...]]:
    with closing(open_store(str(path), config)) as store:
        return snapshot(store), store.geometry, tuple(store.assumed)  # type: ignore[attr-defined]


def oops_text(n: int, size: int = 3000) -> bytes:
    lines = "".join(f"<4>[{n:5d}.{i:06d}] Oops#{n} line {i}: the quick brown fox\n"
                    for i in range(size // 40 + 1))
    return (f"Oops#{n} Part1\n" + lines).encode()[:size]


def stream(tag: str, size: int) -> bytes:
    text = "".join(f"[{tag} {i:6d}] line {i} of the stream\n" for i in range(size // 20 + 1))
    return text.encode()[:size]


def fill_ring(ring: Ring, size: int, tag: str = "ring") -> bytes:
    """`size` bytes written in chunks, as pmsg or the console writes them."""
    data = stream(tag, size)
    for at in range(0, len(data), 500):
        ring.write(data[at:at + 500])
    return data


def wrap_ring(ring: Ring, tag: str = "ring") -> bytes:
    """Enough to wrap, leaving `start < datalen` (a wrapped ring's header)."""
    return fill_ring(ring, ring.buffer_size + 1000, tag)


def text_base(abi: Abi) -> int:
    return TEXT if abi.long_size == 8 else 0xC1000000


def trace(w: ZoneWriter, cpus: list[int] | range, calls: int) -> None:
    """`calls` traced calls on each CPU of `cpus`, the stamp rising across them."""
    base = text_base(w.abi)
    stamp = 1000
    for n in range(calls):
        for cpu in cpus:
            w.ftrace_call(cpu, base + 16 * n, base + 0x8000 + cpu, stamp)
            stamp += 1


def records(w: ZoneWriter, count: int, size: int = 3000, first: int = 1) -> None:
    """`count` dmesg records, every other one deflated."""
    for n in range(first, first + count):
        text = oops_text(n, size)
        if n % 2:
            w.dmesg(text, time=(1_700_000_000 + n, n))
        else:
            w.dmesg(deflate(text), compressed=True, time=(1_700_000_000 + n, n))


@dataclass(frozen=True)
class Layout:
    """A writer's parameters, in bytes."""

    size: int
    kmsg: int
    pmsg: int = 0
    console: int = 0
    ftrace: int = 0
    cpus: int = 1

    def writer(self, abi: Abi = X86_64, **kw: object) -> ZoneWriter:
        return ZoneWriter(abi, self.size, kmsg_size=self.kmsg, pmsg_size=self.pmsg,
                          console_size=self.console, ftrace_size=self.ftrace,
                          nr_cpus=self.cpus, **kw)

    def config(self, **kw: object) -> StoreConfig:
        """The true options."""
        return StoreConfig(kmsg_size=self.kmsg // KIB, pmsg_size=self.pmsg // KIB,
                           console_size=self.console // KIB, ftrace_size=self.ftrace // KIB,
                           nr_cpus=self.cpus, read_only=True, **kw)

    def geometry(self) -> Geometry:
        return geometry_from_options(self.config())


def check_detected(path: Path, lay: Layout, *, exact: bool, abi: str = "auto"
                   ) -> tuple[Snapshot, Geometry, tuple[str, ...]]:
    """Detection shows what the true options show; `exact`: and finds those options.
    Opened writable, as a mount would: nothing may be written either way."""
    before = sha(path)
    want, _, _ = opened(path, lay.config(abi=abi))
    got, geometry, assumed = opened(path, StoreConfig(abi=abi))
    assert got == want, f"detected {geometry.mount_options()}, assumed {assumed}"
    if exact:
        assert geometry == lay.geometry(), assumed
    # what probe prints must pin that layout: sizes in whole KiB, as the kernel takes them
    pinned = options_config(geometry.mount_options(), abi=abi)
    assert geometry_from_options(pinned) == dataclasses.replace(geometry, capped=True)
    assert opened(path, pinned)[0] == want
    assert sha(path) == before
    return got, geometry, assumed


def options_config(mount_options: str, **kw: object) -> StoreConfig:
    """The StoreConfig of `-o` options as `Geometry.mount_options` writes them."""
    opts: dict[str, object] = {k: (v if k == "format" else int(v)) for k, v in
                               (kv.split("=", 1) for kv in mount_options.split(","))}
    return StoreConfig(**opts, read_only=True, **kw)  # type: ignore[arg-type]


def save(w: ZoneWriter | bytes | bytearray, tmp_path: Path, name: str = "image.bin") -> Path:
    path = tmp_path / name
    path.write_bytes(bytes(w.image if isinstance(w, ZoneWriter) else w))
    return path


def refused(path: Path, config: StoreConfig | None = None) -> str:
    """The GeometryError's message; the image is unchanged (opened writable)."""
    before = sha(path)
    with pytest.raises(GeometryError) as info:
        open_store(str(path), config or StoreConfig())
    assert sha(path) == before
    return str(info.value)


def case_config(case: Case, **overrides: object) -> StoreConfig:
    """The StoreConfig of a case's mount options (and its System.map)."""
    opts = dict(kv.split("=", 1) for kv in case.meta["mount_options"].split(","))
    kw: dict[str, object] = {k: (v if k == "name" else int(v)) for k, v in opts.items()}
    kw.update(read_only=True, **overrides)
    if case.meta.get("system_map"):
        kw["system_map"] = str(case.dir / case.meta["system_map"])
    return StoreConfig(**kw)


def case_geometry(case: Case) -> Geometry:
    """The layout the case's writer used: its options', over the whole partition for a
    5.8-5.10 writer (case.json "capped": false)."""
    return dataclasses.replace(geometry_from_options(case_config(case)), capped=case.capped)


def stale_smaller_zones(tmp_path: Path, first_size: int) -> Path:
    """4 KiB zones written once (40 records), then the partition reused with 64 KiB
    zones: zone 0 is new, the old 4 KiB headers from 64 KiB on are still there."""
    old = ZoneWriter(X86_64, 512 * KIB, kmsg_size=4 * KIB)
    records(old, 40, 1000)
    new = ZoneWriter(X86_64, 512 * KIB, kmsg_size=64 * KIB)
    new.dmesg(oops_text(1, first_size))
    image = bytearray(old.image)
    image[:64 * KIB] = new.image[:64 * KIB]
    return save(image, tmp_path, f"stale{first_size}.bin")


def zone_header(abi: Abi, ptype: PstoreType, datalen: int, start: int) -> bytes:
    order = "<" if abi.little_endian else ">"
    return struct.pack(order + "Iii", PSZ_SIG ^ ptype, datalen, start)


PAST_CAP_ALONE = (32767, 32768, 32769)
"""Linux 5.10 on 160 MiB with 4 KiB zones (no cap then) wrote these dmesg zones and
nothing before them (issue 17)."""


def past_cap_alone(tmp_path: Path, indexes: tuple[int, ...] = PAST_CAP_ALONE) -> Path:
    """That partition as a sparse image: the test writer's 4 KiB dmesg zones (their
    bytes do not depend on where they lie) placed at those zone indexes."""
    zones = {}
    for n in indexes:
        w = ZoneWriter(X86_64, 4 * KIB, kmsg_size=4 * KIB)
        w.dmesg(oops_text(n, 2000), time=(1_700_000_000 + n, 0))
        zones[4 * KIB * n] = bytes(w.image)
    return write_sparse(tmp_path / "past-cap.bin", 160 * MIB, zones)


def write_sparse(path: Path, size: int, pieces: dict[int, bytes]) -> Path:
    """A `size`-byte file holding `pieces` (offset: bytes) and holes elsewhere."""
    with open(path, "wb") as fh:
        fh.truncate(size)
        for offset, data in pieces.items():
            fh.seek(offset)
            fh.write(data)
    return path
