"""The fuzzing harness shared by tests/store/test_fuzz.py, tests/mount/test_fuzz.py and
the long run (tests/fuzz/run).

Seeds are every back end's images: the kernel-written fixtures of pstore/blk
(tests/data/fixtures), ramoops (with and without ECC), mtdpstore and mtdoops
(tests/data/fixtures-backends), and a blockconsole log from the test-only writer
(there is no kernel-written one). A mutant is a seed mutated, opened with options drawn
from every StoreConfig field, sometimes placed at an `offset=` inside a larger source or
in a sparse source of GiBs with a few headers copied far out. `check` opens it with the
store layer (`open_store`), reads every record and checks what pstorefs promises for
untrusted sources (README, "Threat model"):

* only `PstoreError`s come out; `limits` bounds each case's time and memory;
* reading never changes the source (compared over its data and its holes);
* every read lies in the source's region; where the options pin the layout, a listing
  read of more than a header lies in one zone, and every record's zones and reads lie
  in zones that the FORMAT places (tests/fuzz/oracle.py works them out from the kernel's
  code, not from what the store reports);
* bodies are bounded; names come from the format and are unique; `find` gives the
  record back;
* an erase writes only what the back end's kernel writes (oracle.py): pstore/zone the
  `datalen`/`start` words, to 0; ramoops those and, with ECC, the Reed-Solomon parity
  of the zapped header; flash the erase block, to 0xFF; blockconsole nothing. Then every
  prefix of the erase's writes (split at sectors) replayed on the source reads as the
  source before the erase or after it, never as a torn record.

All reads and writes are seen where they reach the file (`os.pread`/`os.pwrite` as
pstorefs.store.device calls them), in absolute offsets.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import random
import re
import resource
import signal
import struct
import traceback
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pstorefs.store as store_pkg
import pstorefs.store.device as device_module
from fuzz.oracle import (
    EraseSpec,
    Oracle,
    RamoopsOracle,
    Span,
    ZoneOracle,
    oracle_for,
    rs_encode,
)
from pstorefs.cli.options import parse_options
from pstorefs.errors import PstoreError
from pstorefs.format.abi import ABIS, kmsg_header_struct
from pstorefs.format.consts import PSTORE_KMSG_HEADER_MAGIC, PSZ_SIG, PstoreType
from pstorefs.store import StoreConfig, open_store

TESTS = Path(__file__).resolve().parent.parent
FIXTURES = TESTS / "data" / "fixtures"
BACKEND_FIXTURES = TESTS / "data" / "fixtures-backends"

HEADER = 12
"""sizeof(struct psz_buffer) and of struct persistent_ram_buffer."""

PROBE_MAX = 64
"""The most a listing may read outside the zones: a zone header and a dmesg header
(and, with backend=auto, the pages `_recognizing` reads)."""

MAX_LINE = 1400
"""A generous bound on one line of ftrace text: two 0x%016x, two symbol names (a
System.map name is at most KSYM_NAME_LEN = 512), the CPU and the timestamp."""

GIB = 1 << 30
SECTOR = 512


class Violation(AssertionError):
    """A property pstorefs promises did not hold for this input."""


# -- the seeds ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class FuzzCase:
    id: str
    image: bytes = dataclasses.field(repr=False)
    options: str = ""
    arch: str = "x86_64"
    backend: str = "zone"
    """The back end that wrote it (pstore/zone for pstore/blk and mtdpstore)."""

    @property
    def abi(self):
        return abi_named(self.arch)

    @functools.cached_property
    def config(self) -> StoreConfig:
        return parse_options([self.options]).store

    @functools.cached_property
    def oracle(self) -> Oracle:
        found = oracle_for(self.backend, self.config, len(self.image))
        assert found is not None, f"{self.id}: its options do not pin a layout"
        return found

    @functools.cached_property
    def zones(self) -> list[Span]:
        """Its layout's zones (pages, tiles), from the oracle: where mutations aim."""
        return self.oracle.spans()


def _backend_of(case_id: str) -> str:
    return next((b for b in ("ramoops", "mtdoops", "blockconsole") if case_id.startswith(b)),
                "zone")


def blockconsole_seed() -> bytes:
    """A 2-tile blockconsole log that wrapped once, from the test-only writer."""
    from helpers.blockconsole import Console, formatted, lines
    disk = formatted(2)
    con = Console(disk)
    while con.bc.round < 1 or con.bc.console_bytes // (1 << 20) != 1:
        con.printk(lines(0, 400))
    con.fill_tile()
    return bytes(disk)


@functools.cache
def load_cases() -> tuple[FuzzCase, ...]:
    cases = []
    for root in (FIXTURES, BACKEND_FIXTURES):
        for d in sorted(root.iterdir()):
            if not (d / "case.json").exists():
                continue
            meta = json.loads((d / "case.json").read_text())
            options = meta["mount_options"]
            if meta.get("system_map"):
                options += f",system_map={d / meta['system_map']}"
            cases.append(FuzzCase(meta["id"], (d / "image.bin").read_bytes(), options,
                                  meta["arch"], _backend_of(meta["id"])))
    cases.append(FuzzCase("blockconsole-writer-2tiles", blockconsole_seed(),
                          "backend=blockconsole", "x86_64", "blockconsole"))
    return tuple(cases)


def abi_named(name: str):
    from pstorefs.format.abi import resolve_abi
    return resolve_abi(name)


def memoize_system_maps() -> None:
    """The System.map is trusted input, not fuzzed: load each one once per process."""
    loader = store_pkg.load_system_map
    if not hasattr(loader, "cache_info"):
        store_pkg.load_system_map = functools.cache(loader)  # type: ignore[attr-defined]


# -- the source: dense bytes, or sparse runs in a large file -----------------------------------
@dataclass(frozen=True)
class Source:
    """The bytes of a source file: `runs` of data, zeros (holes) elsewhere, `size` long."""

    size: int
    runs: tuple[tuple[int, bytes], ...]

    @classmethod
    def dense(cls, data: bytes) -> Source:
        return cls(len(data), ((0, data),) if data else ())

    def at(self, offset: int, length: int) -> bytes:
        out = bytearray(length)
        for start, data in self.runs:
            lo, hi = max(start, offset), min(start + len(data), offset + length)
            if lo < hi:
                out[lo - offset:hi - offset] = data[lo - start:hi - start]
        return bytes(out)

    @property
    def sparse(self) -> bool:
        return sum(len(d) for _, d in self.runs) < self.size // 2

    def describe(self) -> str:
        return (f"{self.size} bytes, data at "
                + ", ".join(f"{a:#x}+{len(d)}" for a, d in self.runs[:8]))


def write_image(path: str | os.PathLike, data: bytes | Source) -> None:
    src = data if isinstance(data, Source) else Source.dense(data)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        os.ftruncate(fd, 0)  # a fresh file: no data left from the last image
        os.ftruncate(fd, src.size)
        for start, run in src.runs:
            os.pwrite(fd, run, start)
    finally:
        os.close(fd)


def _data_runs(fd: int, size: int) -> list[tuple[int, int]]:
    """Where the file has data (SEEK_DATA/SEEK_HOLE)."""
    runs, at = [], 0
    while at < size:
        try:
            start = os.lseek(fd, at, os.SEEK_DATA)
        except OSError:
            break
        end = os.lseek(fd, start, os.SEEK_HOLE)
        runs.append((start, end))
        at = end
    return runs


def differences(path: str | os.PathLike, src: Source) -> list[tuple[int, bytes, bytes]]:
    """(offset, bytes expected, bytes found) of each run of bytes where the file differs
    from `src`: compared over its data and the file's, so that a write into a hole
    (which makes data) is seen. A source of another size is one difference at its end."""
    with open(path, "rb") as fh:
        fd = fh.fileno()
        size = os.fstat(fd).st_size
        if size != src.size:
            return [(min(size, src.size), b"", b"")]
        spans = [(a, a + len(d)) for a, d in src.runs] + _data_runs(fd, size)
        out: list[tuple[int, bytes, bytes]] = []
        for start, end in _merge(spans):
            for at in range(start, end, 1 << 20):
                n = min(1 << 20, end - at)
                want, got = src.at(at, n), os.pread(fd, n, at)
                if want != got:
                    out += _runs(at, want, got)
    return out


def _runs(base: int, want: bytes, got: bytes) -> list[tuple[int, bytes, bytes]]:
    """The runs of differing bytes, found 4 KiB at a time."""
    out: list[tuple[int, bytes, bytes]] = []
    for block in range(0, len(want), 4096):
        if want[block:block + 4096] == got[block:block + 4096]:
            continue
        i, end = block, min(block + 4096, len(want))
        while i < end:
            if want[i] == got[i]:
                i += 1
                continue
            j = i
            while j < end and want[j] != got[j]:
                j += 1
            if out and out[-1][0] + len(out[-1][1]) == base + i:  # across blocks
                at, old, new = out.pop()
                out.append((at, old + want[i:j], new + got[i:j]))
            else:
                out.append((base + i, want[i:j], got[i:j]))
            i = j
    return out


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[list[int]] = []
    for a, b in sorted(spans):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


# -- what reaches the file ---------------------------------------------------------------------
class IoLog:
    """Every `os.pread`, `os.pwrite` and `os.fdatasync` pstorefs.store.device made while
    installed: reads as (absolute offset, length), writes as (absolute offset, bytes) in
    order, a sync as None."""

    def __init__(self) -> None:
        self.reads: list[tuple[int, int]] = []
        self.writes: list[tuple[int, bytes] | None] = []

    def take(self) -> list[tuple[int, int]]:
        out, self.reads = self.reads, []
        return out

    def take_writes(self) -> list[tuple[int, bytes] | None]:
        out, self.writes = self.writes, []
        return out


class _RecordingOs:
    """`os` as pstorefs.store.device sees it while a log is installed."""

    def __init__(self, log: IoLog) -> None:
        self._log = log

    def __getattr__(self, name: str):
        return getattr(os, name)

    def pread(self, fd: int, length: int, offset: int) -> bytes:
        data = os.pread(fd, length, offset)
        self._log.reads.append((offset, length))
        return data

    def pwrite(self, fd: int, data: bytes, offset: int) -> int:
        self._log.writes.append((offset, bytes(data)))
        return os.pwrite(fd, data, offset)

    def fdatasync(self, fd: int) -> None:
        self._log.writes.append(None)
        os.fdatasync(fd)


@contextmanager
def recording_reads() -> Iterator[IoLog]:
    log = IoLog()
    device_module.os = _RecordingOs(log)  # type: ignore[assignment]
    try:
        yield log
    finally:
        device_module.os = os


# -- limits on one case ------------------------------------------------------------------------
class Hang(BaseException):
    """A case ran past its time (a BaseException: no `except Exception` in the code
    under test may swallow it)."""


def _on_alarm(signum, frame):
    raise Hang()


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


@contextmanager
def limits(seconds: float, mib: int, what: str = "") -> Iterator[None]:
    """Run one case within `seconds` and `mib` MiB more than the process held at its
    start: a case past either is a Violation naming `what`. The peak is the kernel's
    (VmHWM, reset through /proc/self/clear_refs); an address-space limit of 4 x `mib`
    above the current size turns a runaway allocation into a MemoryError before it
    can take the machine."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # reset the peak RSS to the current RSS
    base = _status_kib("VmRSS")
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    ceiling = _status_kib("VmSize") * 1024 + 4 * (mib << 20)
    if hard != resource.RLIM_INFINITY:
        ceiling = min(ceiling, hard)
    old = signal.signal(signal.SIGALRM, _on_alarm)
    resource.setrlimit(resource.RLIMIT_AS, (ceiling, hard))
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    except Hang:
        raise Violation(f"time: {what} took more than {seconds} s") from None
    except MemoryError:
        raise Violation(f"memory: {what} ran out of its {4 * mib} MiB of address "
                        "space") from None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    peak = (_status_kib("VmHWM") - base) >> 10
    if peak > mib:
        raise Violation(f"memory: {what} took {peak} MiB over its start (> {mib})")


# -- options -----------------------------------------------------------------------------------
def backends() -> tuple[str, ...]:
    return tuple(store_pkg.BACKENDS)


KNOWN_FIELDS = {"backend", "kmsg_size", "pmsg_size", "console_size", "ftrace_size",
                "nr_cpus", "name", "abi", "read_only", "system_map", "record_size", "ecc",
                "erasesize", "offset", "size", "format", "show_erased", "force"}


def config_fields() -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(StoreConfig)}


def make_config(**values: object) -> StoreConfig:
    """A StoreConfig with the given values for the fields it has (others left at their
    defaults), so the harness keeps working when fields are added or renamed."""
    have = config_fields()
    return StoreConfig(**{k: v for k, v in values.items() if k in have})  # type: ignore[arg-type]


SIZES_KIB = (0, 0, 4, 8, 16, 32, 60, 64, 64, 64, 128, 256, 1, -1, 4096)
"""pstore/blk sizes tried (KiB)."""
SIZES_BYTES = (0, 4096, 4096, 8192, 16384, 16384, 32768, 65536, 5000, 1, 100, -1, 1 << 20)
"""ramoops sizes tried (bytes)."""
ECCS = (None, 0, 0, 1, 2, 4, 8, 16, 16, 32, 64, 127, 128, 255, -1)
ERASESIZES = (None, None, 4096, 65536, 65536, 131072, 512, 3, 0, -4096)
RECORD_SIZES = (None, 512, 4096, 4096, 8192, 16384, 32768, 65536, 3000, 1, 0, -1)


def _nullable(name: str) -> bool:
    f = config_fields().get(name)
    return f is not None and (f.default is None or "None" in str(f.type))


def vary_config(rng: random.Random, case: FuzzCase) -> StoreConfig:
    """The case's own options, or (sometimes) a variation of every option the back ends
    read: sizes in each back end's units, CPU counts, `record_size`, `ecc`,
    `erasesize`, `format`, `backend`, ABIs, names, read-only, `show_erased`, `force`.
    (`offset=` and `size=` go with the source they fit: `place`.)"""
    base = case.config
    if rng.random() < 0.6:
        return base
    values = {f: getattr(base, f) for f in config_fields()}
    own = case.backend if rng.random() < 0.8 else rng.choice(backends())
    if own != case.backend:
        values["backend"] = own
    sizes = ("kmsg_size", "pmsg_size", "console_size", "ftrace_size")
    if rng.random() < 0.3:
        for key in sizes:  # no size given: the layout is detected from the bytes
            values[key] = None
    table = SIZES_BYTES if own == "ramoops" else SIZES_KIB
    for key in sizes:
        if rng.random() < 0.25 and not (own == "ramoops" and key == "kmsg_size"):
            values[key] = rng.choice((None, *table))
    if rng.random() < 0.2:
        values["nr_cpus"] = rng.choice((None, 1, 1, 2, 3, 4, 6, 18, 0, -1, 64))
    if own in ("ramoops", "mtdoops") and rng.random() < 0.3:
        values["record_size"] = rng.choice(RECORD_SIZES)
    if own == "ramoops" and rng.random() < 0.3:
        values["ecc"] = rng.choice(ECCS)
    if own in ("zone", "mtdoops") and rng.random() < 0.2:
        values["erasesize"] = rng.choice(ERASESIZES)
    if own == "zone" and rng.random() < 0.15:
        values["format"] = rng.choice(("auto", "zone", "blkoops"))
    if own in ("zone", "ramoops") and rng.random() < 0.2:
        values["abi"] = rng.choice(["auto", "auto", *ABIS])
    if rng.random() < 0.1:
        values["name"] = rng.choice((None, "blkoops", "pstore_blk", "x", "a-b-1"))
    if rng.random() < 0.3:
        values["read_only"] = not values["read_only"]
    if own == "zone" and rng.random() < 0.2:
        values["show_erased"] = not values["show_erased"]
    if rng.random() < 0.1:
        values["force"] = not values["force"]
    if rng.random() < 0.1:
        values["backend"] = rng.choice(("auto", *backends()))
    if rng.random() < 0.1:
        values["system_map"] = None
    for name, f in config_fields().items():
        if name not in KNOWN_FIELDS and isinstance(f.default, bool) and rng.random() < 0.3:
            values[name] = not f.default
    return make_config(**values)


# -- mutations ---------------------------------------------------------------------------------
INTERESTING = (0, 1, 2, 3, 4, 7, 8, 11, 12, 13, 16, 27, 28, 29, 39, 40, 41, 52, 0x7F, 0x80,
               0xFF, 0x100, 0x1FF, 0x200, 0xFFF, 0x1000, 0x7FFF, 0x8000, 0xFFFF, 0x10000,
               0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0xFFFFFFFE)
MTDOOPS_MAGICS = (0x5D005D00, 0x5D005E00)
SIGS = (*(PSZ_SIG ^ int(t) for t in PstoreType), PSZ_SIG, PSTORE_KMSG_HEADER_MAGIC,
        *MTDOOPS_MAGICS, PSZ_SIG ^ 0x060100)


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

    def value(self, zone: Span) -> int:
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
        if self.case.backend == "ramoops":
            ops += [self.ramoops_header, self.ramoops_header, self.ecc_noise]
        elif self.case.backend == "mtdoops":
            ops += [self.mtdoops_header, self.mtdoops_header]
        elif self.case.backend == "blockconsole":
            ops += [self.tile_header, self.tile_header]
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

    def _zone(self, used_first: bool = True) -> Span | None:
        zones = self.zones
        if used_first and self.rng.random() < 0.7:
            used = [z for z in zones if z.offset + 8 <= len(self.case.image)
                    and self.case.image[z.offset:z.offset + 4] not in (bytes(4), b"\xff" * 4)]
            zones = used or zones
        return self.rng.choice(zones) if zones else None

    def _put(self, data: bytearray, at: int, raw: bytes, what: str) -> bytearray:
        if 0 <= at and at + len(raw) <= len(data):
            data[at:at + len(raw)] = raw
            self.log.append(f"{what} @{at:#x}={raw[:32].hex()}{'…' if len(raw) > 32 else ''}")
        return data

    def field(self, data: bytearray) -> bytearray:
        """Overwrite the first, second or third word of a zone's (page's) header."""
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
        rings = [z for z in self.zones if z.type != "dmesg"] or self.zones
        if not rings:
            return data
        z = self.rng.choice(rings)
        buf = z.size - HEADER
        datalen = self.rng.choice((buf, buf + 1, buf - 1, 1, 0, -1, 24, 23, 25, 0x7FFFFFFF))
        start = self.rng.choice((0, 1, datalen, datalen - 1, datalen + 1, buf, -1, 12))
        ptype = {p.file_prefix: int(p) for p in PstoreType}.get(z.type, 0)
        raw = _u32(PSZ_SIG ^ ptype) + _u32(datalen) + _u32(start)
        return self._put(data, z.offset, raw, "ring")

    def ramoops_header(self, data: bytearray) -> bytearray:
        """A ramoops header: DBGC (or an ftrace version-code signature), `start` and
        `size` at and around the buffer's edges, or a dmesg record's `====` line."""
        z = self._zone()
        if z is None:
            return data
        r = self.rng
        buf = z.size - HEADER
        if r.random() < 0.3:
            line = r.choice((b"====1.2-C\n", b"====-1.999999999-D\n", b"====99999999999999"
                             b"9999999.1\n", b"====1.2\n", b"====x\n", b"===="))
            return self._put(data, z.offset + HEADER, line, "ramoops kmsg line")
        size = r.choice((buf, buf + 1, buf - 1, 0, 1, 0x7FFFFFFF, 0xFFFFFFFF, buf // 2))
        start = r.choice((0, 1, size, size - 1, size + 1, buf, 0xFFFFFFFF))
        sig = r.choice((PSZ_SIG, PSZ_SIG, PSZ_SIG ^ 0x060100, PSZ_SIG ^ 0x050A00, 0))
        return self._put(data, z.offset, _u32(sig) + _u32(start) + _u32(size), "ramoops hdr")

    def ecc_noise(self, data: bytearray) -> bytearray:
        """1 to 20 bytes of one 128-byte block (data or parity) changed: corrections,
        then blocks past what the code corrects."""
        z = self._zone()
        if z is None or not data:
            return data
        r = self.rng
        block = z.offset + HEADER + r.randrange(max(z.size - HEADER, 1)) // 128 * 128
        n = r.choice((1, 2, 3, 8, 9, 20))
        for _ in range(n):
            at = min(block + r.randrange(128), len(data) - 1)
            data[at] ^= r.randrange(1, 256)
        self.log.append(f"ecc noise {n} B in block {block:#x}")
        return data

    def mtdoops_header(self, data: bytearray) -> bytearray:
        """An mtdoops page header: a magic, a `seq` near the wrap, any timestamp."""
        z = self._zone()
        if z is None:
            return data
        r = self.rng
        seq = r.choice((0, 1, 2, 0xFFFFFFFE, 0xFFFFFFFF, 0x7FFFFFFF, r.getrandbits(32)))
        magic = r.choice((*MTDOOPS_MAGICS, 0xFFFFFFFF, 0))
        stamp = struct.pack("<q", r.choice((0, -1, 1 << 62, -(1 << 63), 1_795_447_981 * 10**9)))
        return self._put(data, z.offset, _u32(seq) + _u32(magic) + stamp, "mtdoops hdr")

    def tile_header(self, data: bytearray) -> bytearray:
        """A blockconsole tile header's uuid, round or tile field, or tile 0's header
        copied onto another tile."""
        z = self._zone(used_first=False)
        if z is None:
            return data
        r = self.rng
        if r.random() < 0.3:
            return self._put(data, z.offset, bytes(data[:59]), "tile 0's header")
        at = z.offset + r.choice((32, 41, 50))
        value = r.choice((b"00000000", b"ffffffff", b"0000000g", b"%08x" % r.getrandbits(32),
                          bytes(data[at:at + 8])))
        return self._put(data, at, value, "tile field")

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
        garbage; written with a valid pstore/zone header so that it gets decoded."""
        r = self.rng
        dmesg = [z for z in self.zones if z.type == "dmesg"]
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


PREFIXES = (3, 512, 4096, 12345, 65536, 1 << 20)
SPARSE_SIZES = (1 * GIB, 2 * GIB, 4 * GIB, 16 * GIB, 64 * GIB)


def place(rng: random.Random, case: FuzzCase, data: bytes, config: StoreConfig,
          log: list[str]) -> tuple[Source, StoreConfig]:
    """Where the mutant lies in its source: alone (most), at an `offset=` inside a larger
    source (with `size=` right, wrong or absent), or at the start of a sparse source of
    GiBs with a few headers of the seed, some mutated, copied far out (the scans must
    stop on evidence, not walk the device)."""
    pick = rng.random()
    if pick < 0.08:
        base = rng.choice(PREFIXES)
        fill = rng.choice((bytes(base), b"\xff" * base, rng.randbytes(base)))
        tail = rng.choice((0, 0, 512, 65536))
        src = Source(base + len(data) + tail, ((0, fill), (base, data)))
        offset = base + rng.choice((0, 0, 0, 0, 1, -1, 512, -512, 4096))
        size = rng.choice((None, None, len(data), len(data), len(data) - 4096, len(data) + 1,
                           len(data) + tail))
        log.append(f"placed at {base:#x} (offset={offset}, size={size}) in {src.size} B")
        return src, dataclasses.replace(config, offset=max(offset, 0), size=size)
    if pick < 0.12:
        total = rng.choice(SPARSE_SIZES)
        runs = [(0, data)]
        spans = case.zones or [Span("dmesg", 0, 4096)]
        for _ in range(rng.randint(1, 4)):
            z = rng.choice(spans)
            step = rng.choice((4096, 65536, 1 << 20, max(z.size, 1)))
            at = rng.randrange(len(data) // step + 1, total // step) * step
            header = bytearray(case.image[z.offset:z.offset + rng.choice((16, 64, 4096))])
            if header and rng.random() < 0.5:  # a mutated copy
                header[rng.randrange(min(len(header), 16))] = rng.randrange(256)
            if at + len(header) <= total and at >= len(data):
                runs.append((at, header))
        runs = sorted((at, bytes(run)) for at, run in runs)
        log.append(f"sparse {total >> 30} GiB, headers at "
                   + ", ".join(f"{a:#x}" for a, _ in runs[1:]))
        return Source(total, tuple(runs)), config
    return Source.dense(data), config


@dataclass
class Mutant:
    case: FuzzCase
    source: Source
    config: StoreConfig
    mutations: list[str]


def mutant(rng: random.Random, cases: tuple[FuzzCase, ...] | None = None) -> Mutant:
    """One mutated source: its seed, its bytes, the options to open it with, and what
    was changed."""
    cases = cases or load_cases()
    case = rng.choice(cases)
    m = Mutator(rng, case)
    data = bytes(m.mutate(bytearray(case.image)))
    config = vary_config(rng, case)
    source, config = place(rng, case, data, config, m.log)
    return Mutant(case, source, config, m.log)


# -- the properties ----------------------------------------------------------------------------
@dataclass
class Outcome:
    opened: bool = False
    error: str | None = None
    backend: str = ""
    oracle: bool = False
    records: int = 0
    read_errors: int = 0
    undecodable: int = 0
    bytes_read: int = 0
    erased: bool = False
    erase_refused: bool = False
    erased_read: int = 0
    replays: int = 0


def _region(config: StoreConfig, src: Source) -> tuple[int, int]:
    """[start, end) of the file the options select (what open_store may read)."""
    start = config.offset
    end = src.size if config.size is None else start + config.size
    return start, end


def _backend_of_store(store: object) -> str:
    return type(store).__module__.split(".")[2]


def check(path: str | os.PathLike, data: bytes | Source, config: StoreConfig, log: IoLog, *,
          erase_rng: random.Random | None = None) -> Outcome:
    """Open `path` (holding `data`) with `config`, read every record, check every
    property; raise Violation naming the first that fails. `log` must be installed
    (`recording_reads`). With `erase_rng`, also erase one record (on a writable config),
    check what was written and replay every prefix of its writes."""
    src = data if isinstance(data, Source) else Source.dense(data)
    out = Outcome()
    base, end = _region(config, src)
    region = (0, max(end - base, 0))
    log.take()
    log.take_writes()
    try:
        store = open_store(str(path), config)
    except PstoreError as exc:
        out.error = type(exc).__name__
        _check_reads(log.take(), base, [region], "open (refused)")
        _check_unchanged(path, src, log, "a refused open")
        return out
    except Exception as exc:
        raise Violation(f"open_store raised {type(exc).__name__}, not a PstoreError:\n"
                        + traceback.format_exc()) from exc
    out.opened = True
    try:
        out.backend = _backend_of_store(store)
        size = store.device.size
        if size != region[1]:
            raise Violation(f"the store reads {size} bytes, the options select {region[1]}")
        oracle = oracle_for(out.backend, config, size)
        out.oracle = oracle is not None
        reads = log.take()
        _check_reads(reads, base, [region], "open")
        records = list(store.records)
        reads += log.take()
        _check_reads(reads, base, [region], "listing")
        if oracle is not None:
            big = [(a - base, n) for a, n in reads
                   if n > PROBE_MAX and not (config.backend == "auto" and _recognizing(a, n))]
            bad = [f"{a:#x}+{n}" for a, n in big if not oracle.inside(a, n)]
            if bad:
                raise Violation(f"listing read more than a header outside every zone "
                                f"{out.backend} places: {bad[:6]}")
        out.records = len(records)
        name = store.name
        seen_names: list[str] = []
        for record in records:
            mine = _record_extents(record, oracle, size, out.backend)
            try:
                entry = store.entry(record)
                body = store.read(record)
                found = store.find(entry.name)
            except PstoreError:
                out.read_errors += 1
                _check_reads(log.take(), base, mine, f"{record.type.name} {record.id} (failed)")
                continue
            except Exception as exc:
                raise Violation(f"reading {record.type.name} {record.id} raised "
                                f"{type(exc).__name__}:\n" + traceback.format_exc()) from exc
            _check_reads(log.take(), base, mine, f"{entry.name}")
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
        _check_reads(log.take(), base, [region], "find of unknown names")
        for record in list(store.erased):
            mine = _record_extents(record, oracle, size, out.backend)
            try:
                entry = store.entry(record)
                body = store.read(record)
            except PstoreError:
                out.read_errors += 1
                _check_reads(log.take(), base, mine, "an erased record (failed)")
                continue
            except Exception as exc:
                raise Violation(f"reading erased {record.type.name} {record.id} raised "
                                f"{type(exc).__name__}:\n" + traceback.format_exc()) from exc
            _check_reads(log.take(), base, mine, f"erased {entry.name}")
            if entry.size != len(body):
                raise Violation(f"erased {entry.name}: size {entry.size}, read {len(body)}")
            if len(body) > _body_bound(store, record, entry.name.endswith(".enc.z")):
                raise Violation(f"erased {entry.name}: {len(body)} bytes, past the bound")
            out.erased_read += 1
        _check_unchanged(path, src, log, "reading every record")
        writes = None
        if erase_rng is not None and records and not store.read_only:
            record = erase_rng.choice(records)
            writes = _check_erase(store, path, src, config, record, log, out.backend, size)
            out.erase_refused = writes is None
            out.erased = bool(writes)
    finally:
        store.close()
    if writes:  # with the store closed: the replays open the source themselves
        out.replays = _replay_erase(path, src, config, log, writes)
    return out


def _recognizing(offset: int, length: int) -> bool:
    """A read that asks whether the source is mtdoops' (backend=auto): a 4 KiB page,
    read whole where its header has a magic, in the first MiB (`RECOGNIZE_SPAN`)."""
    return offset % 4096 == 0 and length <= 4096 and offset < 1 << 20


def _record_extents(record, oracle: Oracle | None, size: int, backend: str
                    ) -> list[tuple[int, int]]:
    """The extents a record's reads must stay in: its zones, each checked to be one the
    format places (where the options pin the layout) and to lie in the source."""
    extents = []
    for z in record.zones:
        if not 0 <= z.offset < z.offset + z.size <= size:
            raise Violation(f"{record}: zone {z.offset:#x}+{z.size} outside the "
                            f"{size}-byte source")
        if oracle is not None and not oracle.holds(z.type.file_prefix, z.offset, z.size):
            raise Violation(f"{record}: no {backend} layout of these options has a "
                            f"{z.type.file_prefix} zone at {z.offset:#x} of {z.size} bytes")
        extents.append((z.offset, z.offset + z.size))
    return extents


def _check_reads(reads: list[tuple[int, int]], base: int, extents: list[tuple[int, int]],
                 what: str) -> None:
    bad = []
    for off, length in reads:
        rel = off - base
        if length < 0 or not any(a <= rel and rel + length <= b for a, b in extents):
            bad.append(f"{rel:#x}+{length}")
    if bad:
        raise Violation(f"{what}: reads outside {[(hex(a), hex(b)) for a, b in extents][:6]}: "
                        f"{bad[:6]}")


def _check_unchanged(path: str | os.PathLike, src: Source, log: IoLog, what: str) -> None:
    writes = [w for w in log.take_writes() if w is not None]
    if writes:
        raise Violation(f"{what} wrote {[(hex(a), len(d)) for a, d in writes][:4]}")
    diff = differences(path, src)
    if diff:
        raise Violation(f"{what} changed the image, first at {diff[0][0]:#x}")


def _body_bound(store: object, record, undecodable: bool) -> int:
    buffers = sum(z.size - z.header_size for z in record.zones)
    if record.type is PstoreType.FTRACE:
        return sum(z.size // 16 + 1 for z in record.zones) * MAX_LINE
    if record.type is PstoreType.DMESG and record.compressed and not undecodable:
        zone = record.zones[0]
        limit = getattr(store, "_decompressed_limit", None)
        return limit(zone) if limit is not None else 3 * zone.size
    # an uncompressed dmesg record has a "<Reason>: Total N times" line; ramoops an
    # ECC notice
    return buffers + 128


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


def _spans(record) -> list[Span]:
    return [Span(z.type.file_prefix, z.offset, z.size) for z in record.zones]


def erase_spec(backend: str, config: StoreConfig, size: int, record, src: Source,
               base: int) -> EraseSpec:
    """What the back end's kernel writes to erase `record` (oracle.py), the layout the
    options pin or, where it is detected, the record's zones as the format's units."""
    oracle = oracle_for(backend, config, size)
    if oracle is None and backend == "zone":
        oracle = ZoneOracle(config, size)
    if oracle is None and backend == "ramoops":
        ecc = config.ecc
        if ecc is None:  # detected: the header's parity tells which ecc wrote it
            ecc = _detected_ecc(record, src, base)
        oracle = RamoopsOracle(dataclasses.replace(config, ecc=ecc), size)
    assert oracle is not None
    return oracle.erase(_spans(record), lambda at, n: src.at(base + at, n))


def _detected_ecc(record, src: Source, base: int) -> int:
    zone = record.zones[0]
    header = src.at(base + zone.offset, HEADER)
    for ecc in (16, 32, 64, 8, 4, 2):
        probe = RamoopsOracle(make_config(ecc=ecc, record_size=0), zone.size)
        par = probe.par_header(zone.size)
        if par is not None and src.at(base + zone.offset + par, ecc) == rs_encode(header, ecc):
            return ecc
    return 0


def _check_erase(store, path: str | os.PathLike, src: Source, config: StoreConfig, record,
                 log: IoLog, backend: str, size: int
                 ) -> list[tuple[int, bytes] | None] | None:
    """Erase `record`: it succeeds or fails with a PstoreError, and writes only what the
    back end's kernel writes (`erase_spec`). Returns the writes made (None: refused,
    as the back end must where its writer defines no erase); the source is put back."""
    base = config.offset
    spec = erase_spec(backend, config, size, record, src, base)
    try:
        store.erase(record)
        ok = True
    except PstoreError:
        ok = False
    except Exception as exc:
        raise Violation(f"erase raised {type(exc).__name__}:\n" + traceback.format_exc()) from exc
    writes = log.take_writes()
    _check_reads(log.take(), base, [(z.offset, z.offset + z.size) for z in record.zones],
                 "erase")
    if spec.refused:
        if ok:
            raise Violation(f"{backend} defines no erase, but erasing {record} succeeded")
    for at, old, new in differences(path, src):
        rel = at - base
        if not new:
            raise Violation("erase changed the size of the source")
        if not spec.allows(rel, new):
            bad = next(i for i in range(len(new)) if not spec.allows(rel + i, new[i:i + 1]))
            raise Violation(f"erase of {record} ({backend}) wrote {new[bad]:#x} at "
                            f"{rel + bad:#x} (was {old[bad]:#x}): not what the kernel's "
                            "erase writes there")
    if ok and not record.erased:
        with open(path, "rb") as fh:
            for change in spec.must:
                now = os.pread(fh.fileno(), change.end - change.start, base + change.start)
                if not change.holds(now):
                    raise Violation(f"erase of {record} ({backend}) reported success, but "
                                    f"{change.start:#x}+{change.end - change.start} holds "
                                    f"{now[:16].hex()}…, not what the kernel's erase leaves")
    write_image(path, src)
    if spec.refused or not ok:
        return None if spec.refused else []
    return writes


def _pieces(writes: list[tuple[int, bytes] | None]) -> list[tuple[int, bytes]]:
    """The writes as a device may commit them: each whole where it lies in one sector,
    else sector by sector, in order."""
    out = []
    for w in writes:
        if w is None:
            continue
        at, data = w
        while data:
            n = min(len(data), SECTOR - at % SECTOR)
            out.append((at, data[:n]))
            at, data = at + n, data[n:]
    return out


ECC_NOTICE = re.compile(rb"\nECC: (No errors detected|\d+ Corrected bytes, \d+ unrecoverable "
                        rb"blocks)\n$")


def _view(path: str | os.PathLike, config: StoreConfig) -> dict[str, bytes | None]:
    """name -> body (None: fails) of what the store shows, ECC notices left out (an
    erase cut before the parity leaves a header the parity corrects: a notice that
    counts it)."""
    view: dict[str, bytes | None] = {}
    try:
        store = open_store(str(path), dataclasses.replace(config, read_only=True))
    except PstoreError as exc:
        return {"<refused>": f"{type(exc).__name__}: {exc}".encode()}
    try:
        for record in store.records:
            try:
                entry = store.entry(record)
                view[entry.name] = ECC_NOTICE.sub(b"", store.read(record))
            except PstoreError:
                view[f"{record.type.file_prefix}-{record.id}"] = None
    finally:
        store.close()
    return view


def _replay_erase(path: str | os.PathLike, src: Source, config: StoreConfig, log: IoLog,
                  writes: list[tuple[int, bytes] | None], most: int = 4) -> int:
    """Every prefix of the erase's writes (at most `most` of them, the first ones and
    the last), applied to the source: each reads as the source before the erase or as
    after it. Returns how many were replayed."""
    pieces = _pieces(writes)
    if len(pieces) < 2:
        return 0
    cuts = sorted({1, 2, len(pieces) - 1, len(pieces) // 2} & set(range(1, len(pieces))))
    cuts = cuts[:most]
    fd = os.open(path, os.O_RDWR)
    try:
        for at, data in pieces:
            os.pwrite(fd, data, at)
    finally:
        os.close(fd)
    after = _view(path, config)
    old = _view_before(path, src, config)
    for cut in cuts:
        write_image(path, src)
        fd = os.open(path, os.O_RDWR)
        try:
            for at, data in pieces[:cut]:
                os.pwrite(fd, data, at)
        finally:
            os.close(fd)
        now = _view(path, config)
        if now not in (old, after):
            torn = sorted(k for k in set(now) | set(old) | set(after)
                          if now.get(k) not in (old.get(k), after.get(k)))
            raise Violation(f"an erase cut after {cut} of its {len(pieces)} sector writes "
                            f"reads neither as before nor as after: {torn[:4]}")
    write_image(path, src)
    log.take()
    log.take_writes()
    return len(cuts)


def _view_before(path: str | os.PathLike, src: Source, config: StoreConfig
                 ) -> dict[str, bytes | None]:
    write_image(path, src)
    return _view(path, config)
