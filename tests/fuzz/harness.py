"""The fuzzing harness shared by tests/store/test_fuzz.py, tests/mount/test_fuzz.py and
the long run (tests/fuzz/run).

It mutates the kernel-written fixture images (tests/data/fixtures/*/image.bin), opens
each mutant with the store layer (`open_store`) and reads every record, and checks the
properties pstorefs promises for untrusted partitions (README, "Threat model"):

* only `PstoreError`s come out: no other exception, no hang (the run script adds a
  per-image time limit);
* reading never changes the image;
* every device read lies within the source, a listing read within one zone of the
  layout, and a record's reads within that record's zone(s);
* bodies are bounded: a decompressed record by the documented limit (3 x (zone buffer -
  dmesg header), `ZoneStore._decompressed_limit`), everything else by its zones;
* names come from the format (type, back-end name, zone index), never from image bytes;
  `entry().size` is the length of what `read()` gives; `find(name)` gives the record back;
* optionally, an erase writes nothing but zeros into `datalen`/`start` of the record's
  own zones.

Nothing here knows pstorefs internals beyond the public store API, the `Device` class
(whose `read` is wrapped to record offsets) and, where it exists, `_decompressed_limit`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import random
import re
import struct
import traceback
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pstorefs.store as store_pkg
from pstorefs.cli.options import parse_options
from pstorefs.errors import PstoreError
from pstorefs.format.abi import ABIS, kmsg_header_struct
from pstorefs.format.consts import PSTORE_KMSG_HEADER_MAGIC, PSZ_SIG, PstoreType
from pstorefs.store import StoreConfig, open_store
from pstorefs.store.device import Device
from pstorefs.store.zone.layout import geometry_from_options

TESTS = Path(__file__).resolve().parent.parent
FIXTURES = TESTS / "data" / "fixtures"

HEADER = 12
"""sizeof(struct psz_buffer): sig, datalen, start."""

PROBE_MAX = 64
"""The most a listing may read outside the zones: a zone header and a dmesg header."""

MAX_LINE = 1400
"""A generous bound on one line of ftrace text: two 0x%016x, two symbol names (a
System.map name is at most KSYM_NAME_LEN = 512), the CPU and the timestamp."""


class Violation(AssertionError):
    """A property pstorefs promises did not hold for this input."""


# -- the kernel-written cases ---------------------------------------------------------------
@dataclass(frozen=True)
class FuzzCase:
    id: str
    image: bytes = dataclasses.field(repr=False)
    options: str = ""
    arch: str = "x86_64"

    @property
    def abi(self):
        return abi_named(self.arch)

    @functools.cached_property
    def config(self) -> StoreConfig:
        return parse_options([self.options]).store

    @functools.cached_property
    def zones(self) -> list:
        return geometry_from_options(self.config).zones(len(self.image))


@functools.cache
def load_cases() -> tuple[FuzzCase, ...]:
    cases = []
    for d in sorted(FIXTURES.iterdir()):
        if not (d / "case.json").exists():
            continue
        meta = json.loads((d / "case.json").read_text())
        options = meta["mount_options"]
        if meta.get("system_map"):
            options += f",system_map={d / meta['system_map']}"
        cases.append(FuzzCase(meta["id"], (d / "image.bin").read_bytes(), options,
                              meta["arch"]))
    return tuple(cases)


def abi_named(name: str):
    """The Abi called `name` (a canonical name or, where pstorefs has them, an alias
    such as x86_64)."""
    try:
        from pstorefs.format.abi import resolve_abi
    except ImportError:
        return ABIS[name]
    return resolve_abi(name)


def memoize_system_maps() -> None:
    """The System.map is trusted input, not fuzzed: load each one once per process."""
    loader = getattr(store_pkg, "load_system_map", None)
    if loader is not None and not hasattr(loader, "cache_info"):
        store_pkg.load_system_map = functools.cache(loader)  # type: ignore[attr-defined]


# -- recording the device's reads ----------------------------------------------------------
class ReadLog:
    """Every `Device.read(offset, length)` that returned bytes while installed."""

    def __init__(self) -> None:
        self.reads: list[tuple[int, int]] = []

    def take(self) -> list[tuple[int, int]]:
        out, self.reads = self.reads, []
        return out


@contextmanager
def recording_reads() -> Iterator[ReadLog]:
    log = ReadLog()
    original = Device.read

    @functools.wraps(original)
    def read(self: Device, offset: int, length: int) -> bytes:
        data = original(self, offset, length)  # a read the Device refuses reads nothing
        log.reads.append((offset, length))
        return data

    Device.read = read  # type: ignore[method-assign]
    try:
        yield log
    finally:
        Device.read = original  # type: ignore[method-assign]


# -- options --------------------------------------------------------------------------------
def backends() -> tuple[str, ...]:
    """The back ends `backend=` names, where pstorefs has several."""
    return tuple(getattr(store_pkg, "BACKENDS", ()) or ())


KNOWN_FIELDS = {"backend", "kmsg_size", "pmsg_size", "console_size", "ftrace_size",
                "nr_cpus", "name", "abi", "read_only", "system_map"}


def config_fields() -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(StoreConfig)}


def make_config(**values: object) -> StoreConfig:
    """A StoreConfig with the given values for the fields it has (others left at their
    defaults), so the harness keeps working when fields are added or renamed."""
    have = config_fields()
    return StoreConfig(**{k: v for k, v in values.items() if k in have})  # type: ignore[arg-type]


SIZES_KIB = (0, 0, 4, 8, 16, 32, 60, 64, 64, 64, 128, 256, 1, -1, 4096)
"""Sizes tried; None as well where the field takes it (the layout is then detected)."""


def _nullable(name: str) -> bool:
    f = config_fields().get(name)
    return f is not None and (f.default is None or "None" in str(f.type))


def vary_config(rng: random.Random, case: FuzzCase) -> StoreConfig:
    """The case's own options, or (sometimes) a variation of them: other sizes, CPU
    counts, ABIs, names, read-only; fields unknown to this harness keep their defaults
    or, if boolean, are flipped at random."""
    base = case.config
    if rng.random() < 0.7:
        return base
    values = {f: getattr(base, f) for f in config_fields()}
    sizes = ("kmsg_size", "pmsg_size", "console_size", "ftrace_size")
    if rng.random() < 0.3 and all(_nullable(k) for k in sizes if k in values):
        for key in sizes:  # no size given: the layout is detected from the bytes
            if key in values:
                values[key] = None
    for key in sizes:
        if key in values and rng.random() < 0.3:
            values[key] = rng.choice(SIZES_KIB)
    if "nr_cpus" in values and rng.random() < 0.2:
        cpus = (1, 1, 2, 3, 4, 6, 18, 0) + ((None,) if _nullable("nr_cpus") else ())
        values["nr_cpus"] = rng.choice(cpus)
    if "abi" in values and rng.random() < 0.3:
        values["abi"] = rng.choice(["auto", "auto", *ABIS])
    if "name" in values and rng.random() < 0.1:
        values["name"] = rng.choice(("blkoops", "pstore_blk", "x", "a-b-1"))
    if "read_only" in values and rng.random() < 0.3:
        values["read_only"] = not values["read_only"]
    if "backend" in values and backends() and rng.random() < 0.1:
        values["backend"] = rng.choice(("auto", *backends()))
    if "system_map" in values and rng.random() < 0.1:
        values["system_map"] = None
    for name, f in config_fields().items():
        if name not in KNOWN_FIELDS and isinstance(f.default, bool) and rng.random() < 0.3:
            values[name] = not f.default
    return make_config(**values)


# -- mutations --------------------------------------------------------------------------------
INTERESTING = (0, 1, 2, 3, 4, 7, 8, 11, 12, 13, 16, 27, 28, 29, 39, 40, 41, 52, 0x7F, 0x80,
               0xFF, 0x100, 0x1FF, 0x200, 0xFFF, 0x1000, 0x7FFF, 0x8000, 0xFFFF, 0x10000,
               0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0xFFFFFFFE)
SIGS = (*(PSZ_SIG ^ int(t) for t in PstoreType), PSZ_SIG, PSTORE_KMSG_HEADER_MAGIC)


@functools.cache
def bomb(megabytes: int) -> bytes:
    """Raw deflate of `megabytes` MiB of zeros, about 1 KiB per MiB (built from
    full-flush blocks, which do not refer back, so one block repeats)."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = c.compress(bytes(1 << 20)) + c.flush(zlib.Z_FULL_FLUSH)
    return block * megabytes + c.flush()


def deflate(data: bytes, wbits: int = -11) -> bytes:
    c = zlib.compressobj(6, zlib.DEFLATED, wbits)
    return c.compress(data) + c.flush()


def _u32(value: int) -> bytes:
    return struct.pack("<I", value & 0xFFFFFFFF)


class Mutator:
    """Mutations of one case's image, chosen by `rng`; `log` says what was done."""

    def __init__(self, rng: random.Random, case: FuzzCase) -> None:
        self.rng = rng
        self.case = case
        self.abi = case.abi
        self.zones = case.zones
        self.log: list[str] = []

    # where to hit: mostly zone headers (where the format's decisions are), also anywhere
    def offset(self, data: bytearray) -> int:
        r = self.rng
        if not data:
            return 0
        if r.random() < 0.6 and self.zones:
            z = r.choice(self.zones)
            return min(z.offset + r.randrange(64), len(data) - 1)
        return r.randrange(len(data))

    def value(self, zone) -> int:
        r = self.rng
        hlen = self.abi.kmsg_header_size
        buf = zone.size - HEADER
        pick = r.random()
        if pick < 0.5:
            return r.choice(INTERESTING)
        if pick < 0.8:
            return r.choice((buf, buf - 1, buf + 1, hlen, hlen - 1, hlen + 1, zone.size,
                             buf - hlen, buf // 2, -1 & 0xFFFFFFFF))
        if pick < 0.9:
            return r.choice(SIGS)
        return r.getrandbits(32)

    def mutate(self, data: bytearray) -> bytearray:
        r = self.rng
        ops = [self.flip, self.byte, self.run, self.field, self.field, self.field, self.kmsg,
               self.ring, self.truncate, self.copy_zone, self.compressed, self.havoc]
        for _ in range(min(1 + int(r.expovariate(0.6)), 16)):
            data = r.choice(ops)(data)
        return data

    def flip(self, data: bytearray) -> bytearray:
        if data:
            at, bit = self.offset(data), self.rng.randrange(8)
            data[at] ^= 1 << bit
            self.log.append(f"flip {at:#x}.{bit}")
        return data

    def byte(self, data: bytearray) -> bytearray:
        if data:
            at = self.offset(data)
            data[at] = self.rng.choice((0, 0xFF, 0x7F, 0x80, 1, self.rng.randrange(256)))
            self.log.append(f"byte {at:#x}={data[at]:#x}")
        return data

    def run(self, data: bytearray) -> bytearray:
        r = self.rng
        if not data:
            return data
        at = self.offset(data)
        length = min(1 + int(r.expovariate(1 / 256)), 1 << 16, len(data) - at)
        kind = r.choice(("zeros", "ones", "random", "byte"))
        fill = {"zeros": bytes(length), "ones": b"\xff" * length,
                "random": r.randbytes(length),
                "byte": bytes([r.randrange(256)]) * length}[kind]
        data[at:at + length] = fill
        self.log.append(f"run {at:#x}+{length} {kind}")
        return data

    def _zone(self, used_first: bool = True):
        zones = self.zones
        if used_first and self.rng.random() < 0.7:
            used = [z for z in zones if z.offset + 8 <= len(self.case.image)
                    and struct.unpack_from("<I", self.case.image, z.offset)[0] in SIGS]
            zones = used or zones
        return self.rng.choice(zones) if zones else None

    def _put(self, data: bytearray, at: int, raw: bytes, what: str) -> bytearray:
        if 0 <= at and at + len(raw) <= len(data):
            data[at:at + len(raw)] = raw
            self.log.append(f"{what} @{at:#x}={raw.hex()}")
        return data

    def field(self, data: bytearray) -> bytearray:
        """Overwrite sig, datalen or start of a zone header."""
        z = self._zone()
        if z is None:
            return data
        at = z.offset + self.rng.choice((0, 4, 8))
        return self._put(data, at, _u32(self.value(z)), "hdr")

    def kmsg(self, data: bytearray) -> bytearray:
        """Overwrite a 4- or 8-byte field of the dmesg header after a zone header."""
        z = self._zone()
        if z is None:
            return data
        hlen = self.abi.kmsg_header_size
        at = z.offset + HEADER + self.rng.randrange(0, hlen, 4)
        if self.rng.random() < 0.3:
            raw = struct.pack("<q", self.rng.choice((-1, 0, 1, 1 << 33, 1 << 62, -(1 << 63),
                                                      (1 << 63) - 1, 999_999_999,
                                                      1_000_000_000)))
        else:
            raw = _u32(self.value(z))
        return self._put(data, at, raw, "kmsg")

    def ring(self, data: bytearray) -> bytearray:
        """A ring zone's datalen/start pair, inconsistent or at the edges."""
        rings = [z for z in self.zones if z.type is not PstoreType.DMESG] or self.zones
        if not rings:
            return data
        z = self.rng.choice(rings)
        buf = z.size - HEADER
        datalen = self.rng.choice((buf, buf + 1, buf - 1, 1, 0, -1, 24, 23, 25, 0x7FFFFFFF))
        start = self.rng.choice((0, 1, datalen, datalen - 1, datalen + 1, buf, -1, 12))
        raw = _u32(PSZ_SIG ^ int(z.type)) + _u32(datalen) + _u32(start)
        return self._put(data, z.offset, raw, "ring")

    def truncate(self, data: bytearray) -> bytearray:
        r = self.rng
        if r.random() < 0.2:  # grow: more zones than the writer had
            extra = r.choice((1, 12, 4096, 65536, 1 << 20))
            data += bytes(extra) if r.random() < 0.5 else r.randbytes(extra)
            self.log.append(f"grow +{extra}")
            return data
        if self.zones and r.random() < 0.7:
            z = r.choice(self.zones)
            cut = z.offset + r.choice((0, 1, 4, 8, 11, 12, 13, 52, 511, 512, 4096, z.size - 1,
                                       z.size, z.size + 1))
        else:
            cut = r.randrange(len(data) + 1)
        cut = max(0, min(cut, len(data)))
        self.log.append(f"truncate {cut:#x}")
        return data[:cut]

    def copy_zone(self, data: bytearray) -> bytearray:
        """A zone's bytes (header and all) copied onto another zone."""
        if len(self.zones) < 2:
            return data
        a, b = self.rng.sample(self.zones, 2)
        length = min(a.size, b.size, len(data) - a.offset, len(data) - b.offset)
        if length > 0:
            data[b.offset:b.offset + length] = data[a.offset:a.offset + length]
            self.log.append(f"copy zone {a.offset:#x} -> {b.offset:#x} ({length})")
        return data

    def compressed(self, data: bytearray) -> bytearray:
        """A dmesg record whose payload is deflate: a bomb, text right at the limit, or
        garbage; written with a valid header so that it gets decoded."""
        r = self.rng
        dmesg = [z for z in self.zones if z.type is PstoreType.DMESG]
        if not dmesg:
            return data
        z = r.choice(dmesg)
        hlen = self.abi.kmsg_header_size
        buf = z.size - HEADER
        limit = 3 * (buf - hlen)
        kind = r.choice(("bomb", "limit", "text", "garbage", "cut"))
        if kind == "bomb":
            payload = bomb(r.choice((1, 8, 60, 250)))
        elif kind in ("limit", "cut"):
            n = limit + r.choice((-1, 0, 1, 2, 4096))
            payload = deflate(b"x" * n, r.choice((-11, -15)))
            if kind == "cut":
                payload = payload[:r.randrange(len(payload) + 1)]
        elif kind == "text":
            payload = deflate(r.randbytes(r.randrange(1, 3 * buf)), -15)
        else:
            payload = r.randbytes(r.randrange(1, buf))
        payload = payload[:buf - hlen]
        khdr = kmsg_header_struct(self.abi).build({
            "magic": PSTORE_KMSG_HEADER_MAGIC, "tv_sec": 1_700_000_000 + r.randrange(1000),
            "tv_nsec": r.randrange(1_000_000_000), "compressed": 1,
            "counter": r.randrange(10), "reason": r.choice((1, 2, 4))})
        raw = (_u32(PSZ_SIG) + struct.pack("<ii", hlen + len(payload), 0) + khdr + payload)
        self.log.append(f"deflate {kind} in zone {z.offset:#x} ({len(payload)} B)")
        return self._put(data, z.offset, raw, "record")

    def havoc(self, data: bytearray) -> bytearray:
        r = self.rng
        n = r.choice((10, 100, 1000))
        for _ in range(n):
            if data:
                data[r.randrange(len(data))] = r.randrange(256)
        self.log.append(f"havoc {n}")
        return data


def mutant(rng: random.Random, cases: tuple[FuzzCase, ...] | None = None
           ) -> tuple[FuzzCase, bytes, StoreConfig, list[str]]:
    """One mutated image: its case, its bytes, the options to open it with, and what
    was changed."""
    cases = cases or load_cases()
    case = rng.choice(cases)
    m = Mutator(rng, case)
    data = bytes(m.mutate(bytearray(case.image)))
    return case, data, vary_config(rng, case), m.log


# -- the properties ------------------------------------------------------------------------------
NAME_RE = re.compile(r"^(?P<prefix>[a-z-]+)-(?P<name>.+)-(?P<id>\d+)(?P<enc>\.enc\.z)?$")


@dataclass
class Outcome:
    opened: bool = False
    error: str | None = None
    records: int = 0
    read_errors: int = 0
    undecodable: int = 0
    bytes_read: int = 0
    erased: int = 0
    erased_read: int = 0


def _within(reads: list[tuple[int, int]], extents: list[tuple[int, int]]) -> list[str]:
    bad = []
    for off, length in reads:
        if not any(start <= off and off + length <= end for start, end in extents):
            bad.append(f"{off:#x}+{length}")
    return bad


def _layout_given(store: object, config: StoreConfig, size: int) -> bool:
    """The store uses exactly the zones the options describe (no auto-detection)."""
    if not getattr(config, "layout_given", True):
        return False
    try:
        return list(store.zones) == list(geometry_from_options(config).zones(size))  # type: ignore
    except Exception:
        return False


def write_image(path: str | os.PathLike, data: bytes) -> None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        os.ftruncate(fd, len(data))
        os.pwrite(fd, data, 0)
    finally:
        os.close(fd)


def read_image(path: str | os.PathLike) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def check(path: str | os.PathLike, data: bytes, config: StoreConfig, log: ReadLog, *,
          erase_rng: random.Random | None = None) -> Outcome:
    """Open `path` (holding `data`) with `config`, read every record, check every
    property; raise Violation naming the first that fails. `log` must be installed
    (`recording_reads`). With `erase_rng`, also erase one record (on a writable config)
    and check what was written."""
    out = Outcome()
    size = len(data)
    log.take()
    try:
        store = open_store(str(path), config)
    except PstoreError as exc:
        out.error = type(exc).__name__
        _check_reads(log.take(), [(0, size)], "open (refused)")
        _check_unchanged(path, data, "a refused open")
        return out
    except Exception as exc:
        raise Violation(f"open_store raised {type(exc).__name__}, not a PstoreError:\n"
                        + traceback.format_exc()) from exc
    out.opened = True
    try:
        zones = list(getattr(store, "zones", []) or [])
        extents = [(z.offset, z.offset + z.size) for z in zones]
        reads = log.take()
        _check_reads(reads, [(0, size)], "open")
        if _layout_given(store, config, size):
            # with the layout given, listing reads zone headers; anything else it reads
            # (a back end's signature, stray headers past the last zone) is a probe of
            # at most a header's size, never a zone's bytes
            big = [r for r in reads if r[1] > PROBE_MAX]
            _check_reads(big, extents, "open: more than a header read outside every zone")
        records = list(store.records)
        out.records = len(records)
        name = getattr(store, "name", None) or getattr(config, "name", None) or "blkoops"
        seen_names: list[str] = []
        for record in records:
            mine = [(z.offset, z.offset + z.size) for z in record.zones]
            if not all(0 <= a < b <= size for a, b in mine):
                raise Violation(f"{record}: zone outside the source")
            try:
                entry = store.entry(record)
                body = store.read(record)
                found = store.find(entry.name)
            except PstoreError:
                out.read_errors += 1
                _check_reads(log.take(), mine, f"{record.type.name} {record.id} (failed)")
                continue
            except Exception as exc:
                raise Violation(f"reading {record.type.name} {record.id} raised "
                                f"{type(exc).__name__}:\n" + traceback.format_exc()) from exc
            _check_reads(log.take(), mine, f"{entry.name}")
            seen_names.append(entry.name)
            out.bytes_read += len(body)
            _check_entry(store, record, entry, body, name)
            out.undecodable += entry.name.endswith(".enc.z")
            if found != record:
                raise Violation(f"find({entry.name!r}) gave {found}, not its record")
        if len(set(seen_names)) != len(seen_names):
            raise Violation(f"two records with one file name: {sorted(seen_names)}")
        for bogus in ("", ".", "..", "dmesg", f"dmesg-{name}-", f"dmesg-{name}-99999",
                      f"dmesg-{name}-0.enc.z.enc.z", f"ftrace-{name}-1", "../etc/passwd",
                      f"dmesg-{name}--1", f"dmesg-{name}-00", f"x-{name}-0"):
            try:
                found = store.find(bogus)
            except PstoreError:
                continue
            except Exception as exc:
                raise Violation(f"find({bogus!r}) raised {type(exc).__name__}:\n"
                                + traceback.format_exc()) from exc
            if found is not None and store.entry(found).name != bogus:
                raise Violation(f"find({bogus!r}) gave {store.entry(found).name}")
        _check_reads(log.take(), extents or [(0, size)], "find of unknown names")
        for record in list(getattr(store, "erased", ()) or ()):
            mine = [(z.offset, z.offset + z.size) for z in record.zones]
            try:
                entry = store.entry(record)
                body = store.read(record)
            except PstoreError:
                out.read_errors += 1
                _check_reads(log.take(), mine, "an erased record (failed)")
                continue
            except Exception as exc:
                raise Violation(f"reading erased {record.type.name} {record.id} raised "
                                f"{type(exc).__name__}:\n" + traceback.format_exc()) from exc
            _check_reads(log.take(), mine, f"erased {entry.name}")
            if entry.size != len(body):
                raise Violation(f"erased {entry.name}: size {entry.size}, read {len(body)}")
            if len(body) > _body_bound(store, record, entry.name.endswith(".enc.z")):
                raise Violation(f"erased {entry.name}: {len(body)} bytes, past the bound")
            out.erased_read += 1
        _check_unchanged(path, data, "reading every record")
        if erase_rng is not None and records and not store.read_only:
            out.erased = _check_erase(store, path, data, erase_rng.choice(records), log)
    finally:
        store.close()
    return out


def _check_reads(reads: list[tuple[int, int]], extents: list[tuple[int, int]], what: str
                 ) -> None:
    for off, length in reads:
        if length < 0 or off < 0:
            raise Violation(f"{what}: read of {length} bytes at {off}")
    bad = _within(reads, extents)
    if bad:
        raise Violation(f"{what}: reads outside {[(hex(a), hex(b)) for a, b in extents][:6]}: "
                        f"{bad[:6]}")


def _check_unchanged(path: str | os.PathLike, data: bytes, what: str) -> None:
    if read_image(path) != data:
        raise Violation(f"{what} changed the image")


def _body_bound(store: object, record, undecodable: bool) -> int:
    buffers = sum(z.size - HEADER for z in record.zones)
    if record.type is PstoreType.FTRACE:
        return sum((z.size - HEADER) // 16 + 1 for z in record.zones) * MAX_LINE
    if record.type is PstoreType.DMESG and record.compressed and not undecodable:
        limit = getattr(store, "_decompressed_limit", None)
        zone = record.zones[0]
        if limit is not None:
            return limit(zone)
        return 3 * (zone.size - HEADER)
    return buffers + 64  # an uncompressed dmesg record has a "<Reason>: Total N times" line


def _check_entry(store: object, record, entry, body: bytes, name: str) -> None:
    undecodable = entry.name.endswith(".enc.z")
    want = f"{record.type.file_prefix}-{name}-{record.id}"
    if entry.name not in (want, want + ".enc.z"):
        raise Violation(f"file name {entry.name!r} is not {want!r}: not from the format")
    if undecodable and not (record.type is PstoreType.DMESG and record.compressed):
        raise Violation(f"{entry.name}: .enc.z on a record that is not compressed")
    if entry.size != len(body):
        raise Violation(f"{entry.name}: entry size {entry.size} but read gives {len(body)}")
    bound = _body_bound(store, record, undecodable)
    if len(body) > bound:
        raise Violation(f"{entry.name}: {len(body)} bytes, more than the bound {bound}")


def _check_erase(store, path: str | os.PathLike, data: bytes, record, log: ReadLog) -> int:
    """Erase `record`: it succeeds or fails with a PstoreError; only zeros land, only
    in `datalen`/`start` of its own zones; then the image is put back."""
    try:
        store.erase(record)
        ok = 1
    except PstoreError:
        ok = 0
    except Exception as exc:
        raise Violation(f"erase raised {type(exc).__name__}:\n" + traceback.format_exc()) from exc
    _check_reads(log.take(), [(z.offset, z.offset + z.size) for z in record.zones], "erase")
    after = read_image(path)
    if len(after) != len(data):
        raise Violation(f"erase changed the image size {len(data)} -> {len(after)}")
    if after != data:
        patched = bytearray(data)
        for z in record.zones:
            a, b = z.offset + 4, z.offset + HEADER
            for i in range(a, b):
                if after[i] not in (0, data[i]):
                    raise Violation(f"erase wrote {after[i]:#x} at {i:#x}: not a zero")
            patched[a:b] = after[a:b]
        if patched != after:
            stray = next(i for i in range(len(after)) if after[i] != patched[i])
            raise Violation(f"erase of {record.type.name} {record.id} wrote outside "
                            f"datalen/start of its zones, first at {stray:#x}")
    if ok and not getattr(record, "erased", False):
        for z in record.zones:
            if after[z.offset + 4:z.offset + 8] != bytes(4):
                raise Violation(f"erase reported success but datalen at {z.offset + 4:#x} "
                                "is not 0")
    write_image(path, data)
    return ok
