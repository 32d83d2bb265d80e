"""Hostile images: property tests over the store layer and the fuzz run.

The properties (tests/fuzz/harness.py `check`) are the README's threat model made
executable: whatever the bytes and the options, only PstoreErrors come out, reading
never changes the image, no read leaves the zone it belongs to, bodies are bounded (a
deflate bomb is cut off at 3 x (zone buffer - dmesg header)), file names come from the
format. Hypothesis runs derandomized with no example database, so the suite is the same
on every run; the long, random run is tests/fuzz/run. Mutants through the real mount:
tests/mount/test_fuzz.py.
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
import tracemalloc
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz import harness
from fuzz.harness import (
    HEADER,
    SIGS,
    Violation,
    bomb,
    check,
    config_fields,
    deflate,
    load_cases,
    make_config,
    memoize_system_maps,
    recording_reads,
    write_image,
)
from pstorefs.format.abi import ABIS, kmsg_header_struct, zone_header_struct
from pstorefs.format.consts import PSTORE_KMSG_HEADER_MAGIC, PSZ_SIG, PstoreType
from pstorefs.store import open_store

FUZZ_RUN = Path(__file__).parents[1] / "fuzz" / "run"
CASES = load_cases()
memoize_system_maps()


def fuzz_settings(examples: int) -> settings:
    return settings(max_examples=examples, derandomize=True, database=None, deadline=None,
                    suppress_health_check=list(HealthCheck), print_blob=True)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz") / "image.bin"


def check_bytes(path: Path, data: bytes, config, *, erase_seed: int | None = None
                ) -> harness.Outcome:
    write_image(path, data)
    with recording_reads() as log:
        return check(path, data, config, log,
                     erase_rng=None if erase_seed is None else random.Random(erase_seed))


# -- strategies -----------------------------------------------------------------------------
SIZE_KIB = st.one_of(st.sampled_from([0, 4, 8, 16, 64, 128]), st.integers(-8, 2048))


def _size(name: str):
    return st.one_of(st.none(), SIZE_KIB) if harness._nullable(name) else SIZE_KIB


@st.composite
def configs(draw: st.DrawFn, case: harness.FuzzCase | None = None):
    """Any option set: every StoreConfig field this test knows, drawn; fields added
    later keep their defaults (a boolean one is drawn too)."""
    base = case.config if case else make_config()
    values = {name: getattr(base, name) for name in config_fields()}
    sizes = ("kmsg_size", "pmsg_size", "console_size", "ftrace_size")
    if draw(st.booleans()) or case is None:
        detect = all(harness._nullable(k) for k in sizes) and draw(st.booleans())
        for key in sizes:
            if key in values:
                values[key] = None if detect else draw(_size(key))
        if "nr_cpus" in values:
            cpus = st.one_of(st.integers(1, 4), st.integers(-2, 64))
            values["nr_cpus"] = draw(st.one_of(st.none(), cpus) if harness._nullable("nr_cpus")
                                     else cpus)
    if "abi" in values:
        values["abi"] = draw(st.sampled_from(["auto", *ABIS]))
    if "name" in values:
        values["name"] = draw(st.sampled_from([values["name"], "blkoops", "pstore_blk", "a-1"]))
    if "read_only" in values:
        values["read_only"] = draw(st.booleans())
    if "backend" in values and harness.backends():
        values["backend"] = draw(st.sampled_from([values["backend"], "auto",
                                                  *harness.backends()]))
    if "system_map" in values and case is None:
        maps = sorted(str(p) for p in harness.FIXTURES.glob("*/System.map.gz"))
        values["system_map"] = draw(st.sampled_from([None, *maps[:1]]))
    for name, f in config_fields().items():
        if name not in harness.KNOWN_FIELDS and isinstance(f.default, bool):
            values[name] = draw(st.booleans())
    return make_config(**values)


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
    check_bytes(scratch, bytes(image), config, erase_seed=erase if erase else None)


@fuzz_settings(60)
@given(case=st.sampled_from(CASES), data=st.data())
def test_fixtures_under_any_options(scratch: Path, case, data: st.DataObject) -> None:
    check_bytes(scratch, case.image, data.draw(configs(case)))


def test_every_fixture_reads_clean(scratch: Path) -> None:
    """The unmutated fixtures pass every property with their own options, and every
    record reads (the oracle for the mutants: nothing fails before a mutation)."""
    for case in CASES:
        out = check_bytes(scratch, case.image, case.config, erase_seed=0)
        assert out.opened and out.read_errors == 0 and out.undecodable == 0, case.id
        want = len(json.loads((harness.FIXTURES / case.id / "case.json").read_text())["files"])
        assert out.records == want, case.id


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


# -- the long run, short --------------------------------------------------------------------------
def _run_fuzz(*args: str, timeout: float = 300) -> tuple[subprocess.CompletedProcess, dict]:
    r = subprocess.run([sys.executable, str(FUZZ_RUN), *args, "--json", "--progress", "1000"],
                       capture_output=True, text=True, timeout=timeout)
    lines = r.stdout.strip().splitlines()
    assert lines, f"no output (rc {r.returncode}): {r.stderr[-2000:]}"
    return r, json.loads(lines[-1])


def test_fuzz_run_2000_images(tmp_path: Path) -> None:
    r, summary = _run_fuzz("--cases", "2000", "--jobs", "2", "--seed", "20260601",
                           "--out", str(tmp_path / "failures"))
    assert r.returncode == 0 and summary["failures"] == 0, r.stdout[-4000:]
    assert summary["images"] == 2000
    stats = summary["stats"]
    assert stats["opened"] > 1000 and stats["records read"] > 2000, stats
    assert stats["records shown raw (.enc.z)"] > 0 and stats["erases checked"] > 0, stats
    assert sum(v for k, v in stats.items() if k.startswith("case ")) == 2000
    assert len([k for k in stats if k.startswith("case ")]) == len(CASES)
    assert not list((tmp_path / "failures").glob("fail-*"))


def test_fuzz_run_fails_and_saves_the_input(tmp_path: Path) -> None:
    out = tmp_path / "failures"
    r, summary = _run_fuzz("--cases", "40", "--jobs", "2", "--seed", "3", "--out", str(out),
                           "--inject-bug", "10")
    assert r.returncode == 1, r.stdout
    assert summary["failures"] == 4 and summary["images"] == 40
    saved = sorted(out.glob("fail-3-*.json"))
    assert [p.name for p in saved] == [f"fail-3-{i}.json" for i in (0, 10, 20, 30)]
    meta = json.loads(saved[1].read_text())
    assert "injected bug" in meta["error"] and meta["index"] == 10
    assert saved[1].with_suffix(".bin").stat().st_size > 0
    # the saved image replays (without the injected bug it passes)
    rr = subprocess.run([sys.executable, str(FUZZ_RUN), "--replay", str(saved[1])],
                        capture_output=True, text=True, timeout=60)
    assert rr.returncode == 0 and "passes now" in rr.stdout, rr.stdout + rr.stderr
