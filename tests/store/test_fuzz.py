"""Hostile images: property tests over the store layer and the fuzz run.

The properties (tests/fuzz/harness.py `check`) are the README's threat model made
executable: whatever the bytes and the options, only PstoreErrors come out, reading
never changes the image, no read leaves the zones the format places (tests/fuzz/
oracle.py, from the kernel's code and the options, not from the store), bodies are
bounded (a deflate bomb is cut off at 3 x (zone buffer - dmesg header)), file names come
from the format, an erase writes what the back end's kernel writes and no prefix of it
leaves a torn record. Every case runs within a time and a memory limit (`limits`).
Hypothesis runs derandomized with no example database, so the suite is the same on
every run; the long, random run is tests/fuzz/run, the coverage-guided one
tests/fuzz/atheris_targets.py (tests/store/test_fuzz_atheris.py). Mutants through the
real mount: tests/mount/test_fuzz.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import random
import struct
import subprocess
import sys
import time
import tracemalloc
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz import harness
from fuzz.harness import (
    GIB,
    HEADER,
    SIGS,
    Source,
    Violation,
    bomb,
    check,
    config_fields,
    deflate,
    limits,
    load_cases,
    make_config,
    memoize_system_maps,
    recording_reads,
    write_image,
)
from fuzz.oracle import rs_encode
from pstorefs.format.abi import ABIS, kmsg_header_struct, zone_header_struct
from pstorefs.format.consts import PSTORE_KMSG_HEADER_MAGIC, PSZ_SIG, PstoreType
from pstorefs.store import open_store

FUZZ_RUN = Path(__file__).parents[1] / "fuzz" / "run"
CASES = load_cases()
memoize_system_maps()

CASE_SECONDS = 30
"""Each case's time limit: ten times the slowest seen on a loaded 2-core machine."""
CASE_MIB = 256
"""Each case's memory limit above what the test process held before it."""


def fuzz_settings(examples: int) -> settings:
    return settings(max_examples=examples, derandomize=True, database=None, deadline=None,
                    suppress_health_check=list(HealthCheck), print_blob=True)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz") / "image.bin"


def check_bytes(path: Path, data: bytes | Source, config, *, erase_seed: int | None = None
                ) -> harness.Outcome:
    """`check` of one source within the case limits (a case past them fails)."""
    write_image(path, data)
    with recording_reads() as log, limits(CASE_SECONDS, CASE_MIB, "this example"):
        return check(path, data, config, log,
                     erase_rng=None if erase_seed is None else random.Random(erase_seed))


# -- strategies -----------------------------------------------------------------------------
SIZE_KIB = st.one_of(st.sampled_from([0, 4, 8, 16, 64, 128]), st.integers(-8, 2048))


def _size(name: str):
    return st.one_of(st.none(), SIZE_KIB) if harness._nullable(name) else SIZE_KIB


@st.composite
def configs(draw: st.DrawFn, case: harness.FuzzCase | None = None):
    """Any option set: every StoreConfig field, drawn (`offset=` and `size=` with the
    source they select: `placed`); fields added later keep their defaults (a boolean
    one is drawn too)."""
    base = case.config if case else make_config()
    values = {name: getattr(base, name) for name in config_fields()}
    sizes = ("kmsg_size", "pmsg_size", "console_size", "ftrace_size")
    if draw(st.booleans()) or case is None:
        detect = draw(st.booleans())
        for key in sizes:
            values[key] = None if detect else draw(_size(key))
        cpus = st.one_of(st.integers(1, 4), st.integers(-2, 64))
        values["nr_cpus"] = draw(st.one_of(st.none(), cpus))
    if draw(st.booleans()):
        values["record_size"] = draw(st.sampled_from(harness.RECORD_SIZES))
        values["ecc"] = draw(st.sampled_from(harness.ECCS))
        values["erasesize"] = draw(st.sampled_from(harness.ERASESIZES))
        values["format"] = draw(st.sampled_from(["auto", "zone", "blkoops"]))
    values["abi"] = draw(st.sampled_from(["auto", *ABIS]))
    values["name"] = draw(st.sampled_from([values["name"], "blkoops", "pstore_blk", "a-1"]))
    values["read_only"] = draw(st.booleans())
    values["show_erased"] = draw(st.booleans())
    values["force"] = draw(st.booleans())
    values["backend"] = draw(st.sampled_from([values["backend"], "auto", *harness.backends()]))
    if case is None:
        maps = sorted(str(p) for p in harness.FIXTURES.glob("*/System.map.gz"))
        values["system_map"] = draw(st.sampled_from([None, *maps[:1]]))
    for name, f in config_fields().items():
        if name not in harness.KNOWN_FIELDS and isinstance(f.default, bool):
            values[name] = draw(st.booleans())
    return make_config(**values)


@st.composite
def placed(draw: st.DrawFn, data: bytes, config) -> tuple[Source, object]:
    """`data` alone, or after a prefix with `offset=` (right or a little off) and
    `size=` (right, short, long or absent)."""
    if not draw(st.booleans()):
        return Source.dense(data), config
    base = draw(st.sampled_from(harness.PREFIXES))
    offset = base + draw(st.sampled_from([0, 0, 1, -1, 512, -512]))
    size = draw(st.sampled_from([None, len(data), len(data) - 4096, len(data) + 1]))
    src = Source(base + len(data), ((0, b"\xff" * base), (base, data)))
    return src, dataclasses.replace(config, offset=max(offset, 0), size=size)


INT32 = st.one_of(st.sampled_from(harness.INTERESTING), st.integers(0, 0xFFFFFFFF))


class Image(bytes):
    """Bytes that print as their size and hash in a failure report, not as megabytes."""

    def __repr__(self) -> str:
        return f"Image({len(self)} bytes, sha256 {hashlib.sha256(self).hexdigest()[:16]})"

    def _repr_pretty_(self, p, cycle) -> None:
        p.text(repr(self))


@st.composite
def partitions(draw: st.DrawFn) -> bytes:
    """A partition built to get past the signature checks: a background, then, at zone
    offsets of a plausible layout, headers with any sig/datalen/start, dmesg headers with
    the magic and any fields, and payloads (random, deflate, bombs)."""
    size = draw(st.one_of(st.sampled_from([4096, 8192, 16384, 65536, 1 << 20]),
                          st.integers(0, 300_000)))
    fill = draw(st.sampled_from([b"\0", b"\xff", b"random"]))
    rnd = random.Random(draw(st.integers(0, 1 << 16)))
    data = bytearray(rnd.randbytes(size) if fill == b"random" else fill * size)
    zone = draw(st.sampled_from([4096, 8192, 16384, 65536]))
    abi = ABIS[draw(st.sampled_from(sorted(ABIS)))]
    hlen = abi.kmsg_header_size
    zhdr = zone_header_struct(abi)
    for _ in range(draw(st.integers(0, 6))):
        if size < HEADER:
            break
        at = draw(st.integers(0, max(size // zone - 1, 0))) * zone
        if at + HEADER > size:
            continue
        sig = draw(st.one_of(st.sampled_from(SIGS), st.integers(0, 0xFFFFFFFF)))
        payload_kind = draw(st.sampled_from(["none", "random", "deflate", "bomb", "text"]))
        payload = {"none": b"", "random": rnd.randbytes(draw(st.integers(0, zone))),
                   "deflate": deflate(rnd.randbytes(draw(st.integers(0, 3 * zone))), -15),
                   "bomb": bomb(draw(st.sampled_from([1, 8, 60]))),
                   "text": b"line\n" * draw(st.integers(0, zone // 5))}[payload_kind]
        kmsg = kmsg_header_struct(abi).build({
            "magic": draw(st.sampled_from([PSTORE_KMSG_HEADER_MAGIC, 0])),
            "tv_sec": draw(st.integers(-(1 << 63), (1 << 63) - 1)),
            "tv_nsec": draw(st.integers(-(1 << 31), (1 << 31) - 1)) if abi.long_size == 4
            else draw(st.integers(-(1 << 63), (1 << 63) - 1)),
            "compressed": draw(st.integers(0, 255)),
            "counter": draw(st.integers(0, 0xFFFFFFFF)),
            "reason": draw(st.integers(-(1 << 31), (1 << 31) - 1))})
        natural = hlen + len(payload)
        datalen = draw(st.one_of(st.just(natural), INT32))
        start = draw(st.one_of(st.just(0), st.just(datalen), INT32))
        raw = zhdr.build({"sig": sig & 0xFFFFFFFF, "datalen": _s32(datalen),
                          "start": _s32(start)}) + kmsg + payload
        raw = raw[:size - at]
        data[at:at + len(raw)] = raw
    return Image(data)


def _s32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


MUTATION = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 1 << 30), st.integers(0, 63), st.integers(0, 7)),
    st.tuples(st.just("run"), st.integers(0, 1 << 30), st.integers(0, 4096),
              st.integers(1, 4096), st.sampled_from([0, 0xFF, None])),
    st.tuples(st.just("field"), st.integers(0, 1 << 30), st.sampled_from([0, 4, 8]), INT32),
    st.tuples(st.just("kmsg"), st.integers(0, 1 << 30), st.integers(0, 9), INT32),
    st.tuples(st.just("truncate"), st.integers(0, 1 << 30), st.integers(-600, 600)),
    st.tuples(st.just("grow"), st.integers(1, 1 << 17)),
    st.tuples(st.just("copy"), st.integers(0, 1 << 30), st.integers(0, 1 << 30)),
    st.tuples(st.just("deflate"), st.integers(0, 1 << 30),
              st.sampled_from(["bomb", "limit-1", "limit", "limit+1", "cut", "garbage"])),
)


def apply(case: harness.FuzzCase, data: bytearray, mutation: tuple) -> bytearray:
    """One drawn mutation of `case`'s image; offsets are relative to a zone of its
    layout, so that they land where the format decides things."""
    zones = case.zones
    kind, which, *rest = mutation
    z = zones[which % len(zones)] if zones else None
    abi = case.abi
    if kind == "flip" and data:
        at = min(z.offset + rest[0], len(data) - 1) if z else 0
        data[at] ^= 1 << rest[1]
    elif kind == "run" and z:
        at, length, value = z.offset + rest[0], rest[1], rest[2]
        fill = random.Random(at).randbytes(length) if value is None else bytes([value]) * length
        data[at:at + length] = fill[:max(len(data) - at, 0)]
    elif kind == "field" and z and z.offset + rest[0] + 4 <= len(data):
        struct.pack_into("<I", data, z.offset + rest[0], rest[1])
    elif kind == "kmsg" and z and z.offset + HEADER + 4 * rest[0] + 4 <= len(data):
        struct.pack_into("<I", data, z.offset + HEADER + 4 * rest[0], rest[1])
    elif kind == "truncate" and z:
        del data[max(0, min(z.offset + rest[0], len(data))):]
    elif kind == "grow":
        data += bytes(which)
    elif kind == "copy" and len(zones) > 1:
        a, b = zones[which % len(zones)], zones[rest[0] % len(zones)]
        n = max(min(a.size, b.size, len(data) - a.offset, len(data) - b.offset), 0)
        data[b.offset:b.offset + n] = data[a.offset:a.offset + n]
    elif kind == "deflate":
        dmesg = [x for x in zones if x.type is PstoreType.DMESG]
        if dmesg:
            z = dmesg[which % len(dmesg)]
            hlen, buf = abi.kmsg_header_size, z.size - HEADER
            limit = 3 * (buf - hlen)
            payload = {"bomb": lambda: bomb(60),
                       "limit-1": lambda: deflate(b"y" * (limit - 1)),
                       "limit": lambda: deflate(b"y" * limit),
                       "limit+1": lambda: deflate(b"y" * (limit + 1)),
                       "cut": lambda: deflate(b"y" * 1000)[:-3],
                       "garbage": lambda: random.Random(which).randbytes(500)}[rest[0]]()
            payload = payload[:buf - hlen]
            kmsg = kmsg_header_struct(abi).build({
                "magic": PSTORE_KMSG_HEADER_MAGIC, "tv_sec": 1, "tv_nsec": 2,
                "compressed": 1, "counter": 3, "reason": 2})
            raw = struct.pack("<Iii", PSZ_SIG, hlen + len(payload), 0) + kmsg + payload
            if z.offset + len(raw) <= len(data):
                data[z.offset:z.offset + len(raw)] = raw
    return data


# -- the properties ---------------------------------------------------------------------------
@fuzz_settings(150)
@given(data=st.binary(max_size=12288), config=configs())
def test_any_byte_string_as_a_partition(scratch: Path, data: bytes, config) -> None:
    check_bytes(scratch, data, config)


@fuzz_settings(120)
@given(data=partitions(), config=configs(), erase=st.integers(0, 3))
def test_crafted_partitions(scratch: Path, data: bytes, config, erase: int) -> None:
    check_bytes(scratch, data, config, erase_seed=erase if erase else None)


@fuzz_settings(250)
@given(case=st.sampled_from(CASES), mutations=st.lists(MUTATION, min_size=1, max_size=6),
       erase=st.integers(0, 3), vary=st.booleans(), data=st.data())
def test_mutated_fixtures(scratch: Path, case, mutations, erase: int, vary: bool,
                          data: st.DataObject) -> None:
    image = bytearray(case.image)
    for mutation in mutations:
        image = apply(case, image, mutation)
    config = data.draw(configs(case)) if vary else case.config
    src, config = data.draw(placed(bytes(image), config))
    check_bytes(scratch, src, config, erase_seed=erase if erase else None)


@fuzz_settings(60)
@given(case=st.sampled_from(CASES), data=st.data())
def test_fixtures_under_any_options(scratch: Path, case, data: st.DataObject) -> None:
    src, config = data.draw(placed(case.image, data.draw(configs(case))))
    check_bytes(scratch, src, config)


def _files(case: harness.FuzzCase) -> int:
    """How many files the kernel showed (the writer's log: one)."""
    for root in (harness.FIXTURES, harness.BACKEND_FIXTURES):
        if (root / case.id / "case.json").exists():
            return len(json.loads((root / case.id / "case.json").read_text())["files"])
    return 1


def test_every_seed_reads_clean(scratch: Path) -> None:
    """Every back end's seed passes every property with its own options, every record
    reads, and its erase is checked (refused by blockconsole) and replayed (the oracle
    for the mutants: nothing fails before a mutation)."""
    assert {c.backend for c in CASES} == set(harness.backends())
    for case in CASES:
        out = check_bytes(scratch, case.image, case.config, erase_seed=0)
        assert out.opened and out.read_errors == 0 and out.undecodable == 0, case.id
        assert out.records == _files(case) and out.oracle, case.id
        assert out.backend == case.backend, case.id
        if out.records:
            assert out.erased + out.erase_refused == 1, case.id
        if case.id in ("ramoops-ecc16", "mtdoops-4k-pages", "mtdpstore-erase64k"):
            assert out.replays, f"{case.id}: the erase's prefixes were not replayed"


# -- large sparse sources -------------------------------------------------------------------
@pytest.mark.parametrize("case", [c for c in CASES if c.id in (
    "kmsg-deflate-3oops", "x86_64-all-fronts", "ramoops-ecc16", "mtdoops-4k-pages",
    "mtdpstore-erase64k", "blockconsole-writer-2tiles")], ids=lambda c: c.id)
def test_sparse_sources(scratch: Path, case) -> None:
    """A seed at the start of a 16 GiB sparse source with its first zone's header
    copied at 1, 5 and 15 GiB (and the source's options, or none: detection): within
    the case limits, and nothing written to the holes."""
    head = case.image[:64]
    src = Source(16 * GIB, ((0, case.image), (GIB, head), (5 * GIB, head),
                            (15 * GIB, head)))
    for config in (case.config, make_config(backend=case.backend)):
        check_bytes(scratch, src, config, erase_seed=1)
    # the seed at an offset of 3 GiB, the region given
    src = Source(4 * GIB, ((3 * GIB, case.image),))
    config = dataclasses.replace(case.config, offset=3 * GIB, size=len(case.image))
    out = check_bytes(scratch, src, config, erase_seed=0)
    assert out.records == _files(case), case.id


# -- the erase oracle, against the kernel's own erases ----------------------------------------
ERASED = [c for c in CASES if (harness.BACKEND_FIXTURES / c.id / "image-after-erase.bin").exists()
          or (harness.FIXTURES / c.id / "image-after-erase.bin").exists()]


@pytest.mark.parametrize("case", ERASED, ids=lambda c: c.id)
def test_erase_oracle_allows_the_kernels_erase(case) -> None:
    """What the kernel's own erase changed (the fixture's image-after-erase.bin) is
    what the oracle allows an erase of that record to write: ramoops' parity, flash's
    0xFF, zone's datalen words. (A test of the oracle, written from the kernel's code,
    against the kernel.)"""
    root = next(r for r in (harness.FIXTURES, harness.BACKEND_FIXTURES) if (r / case.id).exists())
    meta = json.loads((root / case.id / "case.json").read_text())
    before = (root / case.id / meta["erase"]["image_before"]).read_bytes()
    after = (root / case.id / meta["erase"]["image_after"]).read_bytes()
    oracle = case.oracle
    changed = [i for i in range(len(before)) if before[i] != after[i]]
    assert changed, case.id
    zones = [z for z in oracle.spans() if any(z.offset <= i < z.end for i in changed)]
    assert len(zones) == len(meta["erase"]["remove"]), (case.id, zones)
    spec = oracle.erase(zones, lambda at, n: before[at:at + n])
    stray = [i for i in changed if not spec.allows(i, after[i:i + 1])]
    assert not stray, f"{case.id}: the kernel wrote where the oracle allows nothing: {stray[:8]}"
    for change in spec.must:
        assert change.holds(after[change.start:change.end]), (case.id, change)


# -- memory: the deflate bomb --------------------------------------------------------------------
def _bomb_image(kmsg_kib: int, abi_name: str, payload: bytes) -> tuple[bytes, int]:
    abi = ABIS[abi_name]
    zone = kmsg_kib * 1024
    hlen = abi.kmsg_header_size
    kmsg = kmsg_header_struct(abi).build({
        "magic": PSTORE_KMSG_HEADER_MAGIC, "tv_sec": 1_700_000_000, "tv_nsec": 5,
        "compressed": 1, "counter": 1, "reason": 2})
    assert hlen + len(payload) <= zone - HEADER, "payload does not fit the zone"
    img = bytearray(4 * zone)
    header = zone_header_struct(abi).build({"sig": PSZ_SIG, "datalen": hlen + len(payload),
                                            "start": 0})
    img[:HEADER + hlen + len(payload)] = header + kmsg + payload
    return bytes(img), 3 * (zone - HEADER - hlen)


@fuzz_settings(24)
@given(kmsg_kib=st.sampled_from([4, 16, 64, 1024]), abi=st.sampled_from(sorted(ABIS)),
       over=st.sampled_from([-1, 0, 1, 2, 100, "bomb"]))
def test_deflate_bomb_is_cut_off_at_the_documented_limit(scratch: Path, kmsg_kib: int,
                                                         abi: str, over) -> None:
    """Text of limit-1, limit, limit+1, ... bytes and bombs of up to ~1000x the zone:
    at most `limit` bytes are ever produced, and the decoder's memory stays near it."""
    zone_buffer = kmsg_kib * 1024 - HEADER
    limit = 3 * (zone_buffer - ABIS[abi].kmsg_header_size)
    if over == "bomb":
        mib = (zone_buffer - 64) // 1040  # as many MiB of zeros as fit the zone
        text_len = mib << 20
        payload = bomb(mib)
    else:
        text_len = limit + over
        payload = zlib.compress(b"z" * text_len, 9)[2:-4]  # raw deflate
    image, want_limit = _bomb_image(kmsg_kib, abi, payload)
    assert want_limit == limit
    config = make_config(kmsg_size=kmsg_kib, abi=abi, read_only=True)
    write_image(scratch, image)
    tracemalloc.start()
    try:
        with contextlib.closing(open_store(str(scratch), config)) as store:
            record, = store.records
            tracemalloc.reset_peak()
            body = store.read(record)
            entry = store.entry(record)
            _, peak = tracemalloc.get_traced_memory()
            if hasattr(store, "_decompressed_limit"):
                assert store._decompressed_limit(record.zones[0]) == limit
    finally:
        tracemalloc.stop()
    if text_len <= limit:
        assert body == b"z" * text_len and entry.name == "dmesg-blkoops-0"
    else:
        assert entry.name == "dmesg-blkoops-0.enc.z", f"{text_len} > {limit} not cut off"
        assert body == payload, "an over-limit record is shown raw"
    # the decoder may hold its output (≤ limit + 1) and the raw payload, a few copies
    assert peak <= 3 * limit + 4 * len(payload) + (1 << 20), (
        f"{peak} bytes at peak for a {text_len}-byte text, limit {limit}")


# -- the harness itself can fail ----------------------------------------------------------------
KMSG = next(c for c in CASES if c.id == "kmsg-deflate-3oops")


def _wrapped_store(monkeypatch: pytest.MonkeyPatch, tamper) -> None:
    real = harness.open_store

    def opener(path: str, config):
        store = real(path, config)
        read = store.read

        def tampered(record):
            tamper(store, record)
            return read(record)

        store.read = tampered
        return store

    monkeypatch.setattr(harness, "open_store", opener)


@pytest.mark.parametrize("fault", ["read elsewhere", "raise", "write", "huge body"])
def test_harness_catches_violations(scratch: Path, monkeypatch: pytest.MonkeyPatch,
                                    fault: str) -> None:
    """Each property the harness checks does fail when pstorefs breaks it."""
    def tamper(store, record) -> None:
        zone = record.zones[0]
        if fault == "read elsewhere" and zone.offset:
            store.device.read(0, HEADER)
        elif fault == "raise":
            raise KeyError("a bug")
        elif fault == "write":
            fd = os.open(scratch, os.O_WRONLY)
            os.pwrite(fd, b"\1", 100)
            os.close(fd)

    if fault == "huge body":
        real_read = harness.open_store

        def opener(path, config):
            store = real_read(path, config)
            store.read = lambda record: b"x" * (1 << 22)
            store.entry = lambda record, e=store.entry: dataclasses.replace(
                e(record), size=1 << 22)
            return store

        monkeypatch.setattr(harness, "open_store", opener)
    else:
        _wrapped_store(monkeypatch, tamper)
    with pytest.raises(Violation):
        check_bytes(scratch, KMSG.image, make_config(kmsg_size=64, name="pstore_blk"))


def _case(case_id: str) -> harness.FuzzCase:
    return next(c for c in CASES if c.id == case_id)


def _ff_backwards(device, offset: int, length: int, erasesize: int) -> None:
    """A flash erase that writes its 0xFF from the last sector to the first, each
    sector a write of its own: a cut leaves the header and part of the record."""
    for at in reversed(range(offset, offset + length, 512)):
        device.write(at, b"\xff" * 512)


@pytest.mark.parametrize("fault", ["wrong parity", "zeros on flash", "over the signature",
                                   "torn flash"])
def test_harness_catches_bad_erases(scratch: Path, monkeypatch: pytest.MonkeyPatch,
                                    fault: str) -> None:
    """The erase checks fail an erase that writes what the back end's kernel does not:
    ramoops parity that is not the zapped header's, zeros where flash erases to 0xFF, a
    zone header's signature; and the replays fail an erase one of whose prefixes reads
    as a torn record."""
    import pstorefs.store.ramoops.store as ramoops_store
    import pstorefs.store.zone.store as zone_store

    if fault == "wrong parity":
        case = _case("ramoops-ecc16")
        monkeypatch.setattr(ramoops_store.RamoopsStore, "_zapped_parity",
                            lambda self, prz: bytes(prz.ecc.ecc_size))
    elif fault == "zeros on flash":
        case = _case("mtdpstore-erase64k")
        monkeypatch.setattr(zone_store, "erase_keeping",
                            lambda device, offset, length, erasesize:
                            device.write(offset, bytes(length)))
    elif fault == "over the signature":
        case = _case("kmsg-plain-3oops")
        monkeypatch.setattr(zone_store.ZoneStore, "_erase_zones", lambda self, record:
                            self.device.write(record.zones[0].offset, bytes(HEADER)))
    else:
        case = _case("mtdpstore-erase64k")
        monkeypatch.setattr(zone_store, "erase_keeping", _ff_backwards)
    with pytest.raises(Violation, match="neither as before" if fault == "torn flash"
                       else "not what the kernel's erase"):
        check_bytes(scratch, case.image, case.config, erase_seed=0)


def test_parity_oracle_is_the_kernels() -> None:
    """The oracle's Reed-Solomon parity is the kernel's: every header of the ramoops
    ECC fixture carries exactly the parity `rs_encode` computes for it."""
    case = _case("ramoops-ecc16")
    oracle = case.oracle
    for z in oracle.spans():
        par = oracle.par_header(z.size)
        header = case.image[z.offset:z.offset + HEADER]
        assert case.image[z.offset + par:z.offset + par + 16] == rs_encode(header, 16), z


def test_limits_fail_a_slow_or_greedy_case() -> None:
    """A case past its time or its memory is a failure that names it."""
    with pytest.raises(Violation, match="time: image 7 took more than"):
        with limits(0.2, 64, "image 7"):
            time.sleep(10)
    with pytest.raises(Violation, match="memory: image 8"):
        with limits(60, 32, "image 8"):
            hog = b"x" * (96 << 20)
            del hog
    with limits(60, 32, "image 9"):
        small = b"x" * (1 << 20)
        del small


# -- the long run, short --------------------------------------------------------------------------
def _run_fuzz(*args: str, timeout: float = 300) -> tuple[subprocess.CompletedProcess, dict]:
    r = subprocess.run([sys.executable, str(FUZZ_RUN), *args, "--json", "--progress", "1000"],
                       capture_output=True, text=True, timeout=timeout)
    lines = r.stdout.strip().splitlines()
    assert lines, f"no output (rc {r.returncode}): {r.stderr[-2000:]}"
    return r, json.loads(lines[-1])


def test_fuzz_run_600_images(tmp_path: Path) -> None:
    r, summary = _run_fuzz("--cases", "600", "--jobs", "2", "--seed", "20260601",
                           "--out", str(tmp_path / "failures"))
    assert r.returncode == 0 and summary["failures"] == 0, r.stdout[-4000:]
    assert summary["images"] == 600
    stats = summary["stats"]
    assert stats["opened"] > 300 and stats["records read"] > 600, stats
    assert stats["records shown raw (.enc.z)"] > 0 and stats["erases checked"] > 0, stats
    assert sum(v for k, v in stats.items() if k.startswith("case ")) == 600
    assert len([k for k in stats if k.startswith("case ")]) == len(CASES)
    assert all(stats.get(f"opened by {b}", 0) > 0 for b in harness.backends()), stats
    assert stats["sparse sources"] > 0 and stats["sources at an offset="] > 0, stats
    assert stats["erase prefixes replayed"] > 0, stats
    assert stats["opened with the layout pinned (oracle)"] > 150, stats
    assert not list((tmp_path / "failures").glob("fail-*"))


@pytest.mark.parametrize("kind", ["raise", "hang", "memory"])
def test_fuzz_run_fails_and_saves_the_input(tmp_path: Path, kind: str) -> None:
    """A non-PstoreError, a case over its time, a case over its memory: each is a
    failure saved under the seed and index that make it again."""
    out = tmp_path / "failures"
    r, summary = _run_fuzz("--cases", "10", "--jobs", "2", "--seed", "3", "--out", str(out),
                           "--inject-bug", "5", "--inject-kind", kind, "--timeout", "6",
                           "--case-mib", "64")
    assert r.returncode == 1, r.stdout
    assert summary["failures"] == 2 and summary["images"] == 10, r.stdout
    saved = sorted(out.glob("fail-3-*.json"))
    assert [p.name for p in saved] == [f"fail-3-{i}.json" for i in (0, 5)]
    meta = json.loads(saved[1].read_text())
    want = {"raise": "injected bug", "hang": "time: image 3:5 took more than 6",
            "memory": "memory: image 3:5"}[kind]
    assert want in meta["error"] and meta["index"] == 5, meta["error"]
    if kind != "raise":
        return
    assert saved[1].with_suffix(".bin").stat().st_size > 0
    # the saved image replays (without the injected bug it passes)
    rr = subprocess.run([sys.executable, str(FUZZ_RUN), "--replay", str(saved[1])],
                        capture_output=True, text=True, timeout=60)
    assert rr.returncode == 0 and "passes now" in rr.stdout, rr.stdout + rr.stderr
