"""What the pstore/zone store tests share: a case's StoreConfig, listing and reading
everything, comparing images, oops text as pstore_dump hands it over."""

from __future__ import annotations

from pathlib import Path

from helpers.cases import Case
from helpers.zone_writer import ZoneWriter
from pstorefs.store import Store, StoreConfig

KIB = 1024
MIB = 1024 * KIB


def config(case: Case, **overrides: object) -> StoreConfig:
    """The StoreConfig of a case's mount options (and its System.map)."""
    opts = dict(kv.split("=", 1) for kv in case.meta["mount_options"].split(","))
    kw: dict[str, object] = {k: (v if k == "name" else int(v)) for k, v in opts.items()}
    if case.meta.get("system_map"):
        kw["system_map"] = str(case.dir / case.meta["system_map"])
    kw.update(overrides)
    return StoreConfig(**kw)  # type: ignore[arg-type]


def listing(store: Store) -> dict[str, bytes]:
    """name → content of every record (nothing may fail)."""
    return {store.entry(r).name: store.read(r) for r in store.records}


def first_difference(a: bytes, b: bytes) -> int | None:
    if a == b:
        return None
    return next((i for i in range(min(len(a), len(b))) if a[i] != b[i]), min(len(a), len(b)))


def assert_same_image(got: bytes, want: bytes) -> None:
    at = first_difference(got, want)
    assert at is None, f"images differ first at offset {at:#x} (sizes {len(got)}, {len(want)})"


def oops_text(n: int, size: int = 3000) -> bytes:
    """A dmesg record's text, as pstore_dump hands it over."""
    lines = "".join(f"<4>[{n:5d}.{i:06d}] Oops#{n} line {i}: the quick brown fox\n"
                    for i in range(size // 40 + 1))
    return (f"Oops#{n} Part1\n" + lines).encode()[:size]


def save(writer: ZoneWriter, tmp_path: Path, name: str = "image.bin") -> Path:
    path = tmp_path / name
    writer.save(path)
    return path


KD, KP, XF, IF = "kmsg-deflate-3oops", "kmsg-plain-3oops", "x86_64-all-fronts", "i386-all-fronts"
