"""The store layer without FUSE: open_store on the kernel's images and on images the
test writer (tests/writer.py, pinned to the kernel below) makes for other layouts."""

from __future__ import annotations

import hashlib
import random
import struct
import tracemalloc
import zlib
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import CASES, ERASE_CASES, Case, case_by_id
from writer import HEADER, Ring, ZoneWriter, deflate, kernel_sizes, layout

from pstorefs.codecs.compression import decompress
from pstorefs.errors import (
    GeometryError,
    PstoreError,
    ReadOnlyError,
    SourceError,
    ZoneChangedError,
)
from pstorefs.format.abi import I386, X86_64, Abi, resolve_abi
from pstorefs.format.consts import PSZ_SIG, KmsgDumpReason, PstoreType
from pstorefs.format.zone import (
    kmsg_zone_ok,
    parse_kmsg_header,
    parse_zone_header,
    ring_unwrap,
    ring_zone_ok,
)
from pstorefs.store import Store, StoreConfig, open_store
from pstorefs.store.cache import ITEM_OVERHEAD, BodyCache
from pstorefs.store.device import Device
from pstorefs.store.zone.layout import Geometry, geometry_from_options, kib_to_bytes
from pstorefs.store.zone.store import ZoneStore

KIB = 1024
MIB = 1024 * KIB
FTRACE_SIG = PSZ_SIG ^ PstoreType.FTRACE


def case_id(case: Case) -> str:
    return case.id


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


def survive(path: Path, cfg: StoreConfig) -> dict[str, bytes]:
    """Open, list and read everything; only the documented PstoreError subclasses may
    come out (anything else fails the test)."""
    try:
        store = open_store(str(path), cfg)
    except PstoreError:
        return {}
    with closing(store):
        return harvest(store)


def harvest(store: Store) -> dict[str, bytes]:
    """name → content of every record that can be read; a record that cannot fails
    with a PstoreError only."""
    out = {}
    for record in store.records:
        try:
            out[store.entry(record).name] = store.read(record)
        except PstoreError:
            continue
    return out


def first_difference(a: bytes, b: bytes) -> int | None:
    if a == b:
        return None
    return next((i for i in range(min(len(a), len(b))) if a[i] != b[i]), min(len(a), len(b)))


def assert_same_image(got: bytes, want: bytes) -> None:
    at = first_difference(got, want)
    assert at is None, f"images differ first at offset {at:#x} (sizes {len(got)}, {len(want)})"


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def oops_text(n: int, size: int = 3000) -> bytes:
    """A dmesg record's text, as pstore_dump hands it over."""
    lines = "".join(f"<4>[{n:5d}.{i:06d}] Oops#{n} line {i}: the quick brown fox\n"
                    for i in range(size // 40 + 1))
    return (f"Oops#{n} Part1\n" + lines).encode()[:size]


def save(writer: ZoneWriter, tmp_path: Path, name: str = "image.bin") -> Path:
    path = tmp_path / name
    writer.save(path)
    return path


def zone_tuples(zones: list) -> list[tuple[PstoreType, int, int, int]]:
    return [(z.type, z.index, z.offset, z.size) for z in zones]


# == the writer is pinned to the kernel ====================================================
def rebuild(case: Case, image: bytes) -> ZoneWriter:
    """Write the records found in a kernel-written `image` again with the test writer,
    as the kernel wrote them: the console during boot (before recovery, so it is flushed
    whole), pmsg and ftrace after, each ring in small writes; dmesg records round-robin
    with the writer's own counters. Header fields and bytes come from the image."""
    abi = resolve_abi(case.meta["arch"])
    w = ZoneWriter(abi, len(image), **kernel_sizes(case.meta["mount_options"]),
                   recovered=False)

    def replay(ring: Ring | None, step: int) -> None:
        if ring is None:
            return
        z = ring.spec
        raw = image[z.offset:z.offset + z.size]
        header = parse_zone_header(abi, raw, z.offset)
        if not ring_zone_ok(header, z.type, ring.buffer_size):
            return
        content = ring_unwrap(raw[HEADER:], header)
        if header.start != header.datalen:  # wrapped: the older bytes it overwrote
            ring.write(bytes(header.start))
        first = len(content) % step
        chunks = [content[:first]] if first else []
        chunks += [content[i:i + step] for i in range(first, len(content), step)]
        for chunk in chunks:
            ring.write(chunk)

    replay(w.console, 80)
    w.recover()
    replay(w.pmsg, 37)
    for ring in w.ftrace:
        replay(ring, abi.ftrace_record_size)
    hlen = abi.kmsg_header_size
    for z in w.dmesg_zones:
        raw = image[z.offset:z.offset + z.size]
        header = parse_zone_header(abi, raw, z.offset)
        kmsg = parse_kmsg_header(abi, raw[HEADER:], z.offset + HEADER)
        if kmsg_zone_ok(header, kmsg.magic, abi, z.size - HEADER):
            index = w.dmesg(raw[HEADER + hlen:HEADER + header.datalen], reason=kmsg.reason,
                            time=(kmsg.tv_sec, kmsg.tv_nsec), compressed=kmsg.compressed)
            assert index == z.index
    return w


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_writer_rebuilds_fixture(case: Case) -> None:
    """Every byte of every kernel image: zone headers, dmesg zones whole (zeros after the
    data, counters), ring data, the console's 0xFF tail."""
    image = case.image.read_bytes()
    assert_same_image(bytes(rebuild(case, image).image), image)


@pytest.mark.parametrize("case", ERASE_CASES, ids=case_id)
def test_writer_erase_is_the_kernels(case: Case) -> None:
    erase = case.meta["erase"]
    before = (case.dir / erase["image_before"]).read_bytes()
    w = rebuild(case, before)
    assert_same_image(bytes(w.image), before)
    for name in erase["remove"]:
        kind, index = name.split("-")[0], int(name.rsplit("-", 1)[1])
        if kind == "dmesg":
            w.erase_dmesg(index)
        elif kind == "ftrace":
            w.ftrace[0].erase()  # the kernel erases CPU 0's zone only
        else:
            ring = w.pmsg if kind == "pmsg" else w.console
            assert ring is not None
            ring.erase()
    assert_same_image(bytes(w.image), (case.dir / erase["image_after"]).read_bytes())


def test_writer_ring_semantics() -> None:
    """`psz_record_write`: `start` is the next write position; an exactly full ring has
    start == datalen == buffer_size; once wrapped, datalen is buffer_size."""
    w = ZoneWriter(X86_64, 16 * KIB, kmsg_size=0, pmsg_size=4 * KIB)
    ring = w.pmsg
    assert ring is not None and ring.buffer_size == 4084

    def header() -> tuple[int, int, int]:
        return struct.unpack_from("<Iii", w.image, 0)

    ring.write(b"a" * 100)
    assert header() == (PSZ_SIG ^ PstoreType.PMSG, 100, 100)
    ring.write(b"b" * 3984)
    assert header()[1:] == (4084, 4084)
    ring.write(b"c" * 10)
    assert header()[1:] == (4084, 10)
    ring.write(b"d" * 5000)  # longer than the ring: only its tail is kept
    assert header()[1:] == (4084, 10)
    assert bytes(w.image[HEADER:HEADER + 4084]) == b"d" * 4084


# == the kernel's images through the store =================================================
READ_ORDER = {PstoreType.DMESG: 0, PstoreType.FTRACE: 1, PstoreType.PMSG: 2,
              PstoreType.CONSOLE: 3}


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_store_shows_what_the_kernel_showed(case: Case) -> None:
    files = case.files
    with closing(open_store(str(case.image), config(case, read_only=True))) as store:
        got = listing(store)
        assert sorted(got) == sorted(files)
        for meta in case.meta["files"]:
            name = meta["name"]
            record = store.find(name)
            assert record is not None, name
            entry = store.entry(record)
            assert got[name] == files[name], name
            assert entry.name == name
            assert entry.size == len(files[name]) == meta["content_bytes"], name
            assert entry.time_ns == meta["mtime_ns"], name
        kinds = [(READ_ORDER[r.type], r.id) for r in store.records]
        assert kinds == sorted(kinds), "records are not in the kernel's read order"


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_abi_is_detected(case: Case) -> None:
    with closing(open_store(str(case.image), config(case, read_only=True))) as store:
        assert isinstance(store, ZoneStore)
        assert store.abi == resolve_abi(case.meta["arch"])


@pytest.mark.parametrize("case_name", ["i386-all-fronts", "x86_64-all-fronts"])
def test_abi_override(case_name: str) -> None:
    case = case_by_id(case_name)
    own = case.meta["arch"]
    other = "x86_64" if own == "i386" else "i386"
    with closing(open_store(str(case.image), config(case, read_only=True, abi=own))) as store:
        assert listing(store) == case.files
    with closing(open_store(str(case.image), config(case, read_only=True, abi=other))) as store:
        assert isinstance(store, ZoneStore) and store.abi == resolve_abi(other)
        wrong = harvest(store)
        assert wrong
        dmesg = {n: b for n, b in case.files.items() if n.startswith("dmesg-")}
        assert all(wrong.get(n) != b for n, b in dmesg.items())


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_listing_and_reading_write_nothing(case: Case, image_copy: Callable[..., Path]) -> None:
    path = image_copy(case)
    before = sha(path)
    with closing(open_store(str(path), config(case))) as store:
        assert not store.read_only
        listing(store)
    assert sha(path) == before


def test_find_unknown_names() -> None:
    case = case_by_id("kmsg-deflate-3oops")
    with closing(open_store(str(case.image), config(case, read_only=True))) as store:
        for name in ("dmesg-pstore_blk-3", "dmesg-blkoops-0", "dmesg-pstore_blk-00",
                     "pmsg-pstore_blk-0", "dmesg-pstore_blk-", "nonsense", ""):
            assert store.find(name) is None, name


def test_locate_reads_nothing_and_find_is_exact() -> None:
    """locate answers from the headers alone: a compressed record not decoded yet is
    located under its `.enc.z` name too, until decoding shows it has the plain one.
    find is exact: it decodes to know, and never answers the name the record lacks."""
    case = case_by_id("kmsg-deflate-3oops")
    with closing(open_store(str(case.image), config(case, read_only=True))) as store:
        reads = []
        real_read = store.device.read
        store.device.read = lambda *a: reads.append(a) or real_read(*a)
        tentative = store.locate("dmesg-pstore_blk-0.enc.z")
        assert tentative is not None and tentative.compressed
        assert store.locate("dmesg-pstore_blk-0") == tentative
        assert reads == [], "locate read the device"
        assert store.find("dmesg-pstore_blk-1.enc.z") is None, "find is exact"
        assert reads, "find decoded the record to know its name"
        assert store.entry(tentative).name == "dmesg-pstore_blk-0"
        assert store.locate("dmesg-pstore_blk-0.enc.z") is None, "decoded: the name is known"
        assert store.find("dmesg-pstore_blk-0") == tentative


# == erase =================================================================================
def expected_after_erase(case: Case) -> bytes:
    """The kernel's image after rm, with the planned deviation: removing the ftrace file
    zeroes datalen and start of every ftrace zone, not only CPU 0's."""
    erase = case.meta["erase"]
    image = bytearray((case.dir / erase["image_after"]).read_bytes())
    if any(name.startswith("ftrace-") for name in erase["remove"]):
        for zone in layout(len(image), **kernel_sizes(case.meta["mount_options"])):
            sig = struct.unpack_from("<I", image, zone.offset)[0]
            if zone.type is PstoreType.FTRACE and sig == FTRACE_SIG:
                struct.pack_into("<ii", image, zone.offset + 4, 0, 0)
    return bytes(image)


@pytest.mark.parametrize("case", ERASE_CASES, ids=case_id)
def test_erase_gives_the_kernels_image(case: Case, image_copy: Callable[..., Path]) -> None:
    erase = case.meta["erase"]
    path = image_copy(case, erase["image_before"])
    with closing(open_store(str(path), config(case))) as store:
        for name in erase["remove"]:
            record = store.find(name)
            assert record is not None, name
            store.erase(record)
    assert_same_image(path.read_bytes(), expected_after_erase(case))
    with closing(open_store(str(path), config(case, read_only=True))) as store:
        assert sorted(store.entry(r).name for r in store.records) == sorted(erase["names_after"])


def test_erase_again_finishes_our_own_erase(image_copy: Callable[..., Path]) -> None:
    """A zone that holds what our erase writes is still the record listed (an erase
    whose fdatasync failed must be retryable): erasing again writes the same bytes."""
    case = case_by_id("kmsg-plain-3oops")
    path = image_copy(case)
    with closing(open_store(str(path), config(case))) as store:
        record = store.records[0]
        store.erase(record)
        after = path.read_bytes()
        store.erase(record)
    assert path.read_bytes() == after


@pytest.mark.parametrize(("name", "at", "value"), [
    ("dmesg-pstore_blk-0", HEADER + 28, struct.pack("<I", 7)),          # counter
    ("dmesg-pstore_blk-0", HEADER + 8, struct.pack("<q", 1795395999)),  # time
    ("dmesg-pstore_blk-0", HEADER + 16, struct.pack("<q", 1)),          # time (ns)
    ("dmesg-pstore_blk-0", 4, struct.pack("<i", 100)),                  # datalen
    ("pmsg-pstore_blk-0", 4, struct.pack("<i", 100)),
    ("pmsg-pstore_blk-0", 8, struct.pack("<i", 3)),
    ("ftrace-pstore_blk-0", 8, struct.pack("<i", 12)),                  # start
    ("console-pstore_blk-0", 4, struct.pack("<i", 11720)),
], ids=["counter", "time", "nsec", "datalen", "pmsg-datalen", "pmsg-start", "ftrace-start",
        "console"])
def test_erase_refuses_a_changed_zone(image_copy: Callable[..., Path], name: str, at: int,
                                      value: bytes) -> None:
    case = case_by_id("x86_64-all-fronts")
    path = image_copy(case, case.meta["erase"]["image_before"])
    with closing(open_store(str(path), config(case))) as store:
        record = store.find(name)
        assert record is not None
        with open(path, "r+b") as fh:  # a new record, written behind the store's back
            fh.seek(record.zones[0].offset + at)
            fh.write(value)
        changed = path.read_bytes()
        with pytest.raises(ZoneChangedError):
            store.erase(record)
    assert path.read_bytes() == changed


def test_read_only_store_refuses_erase(image_copy: Callable[..., Path]) -> None:
    case = case_by_id("x86_64-all-fronts")
    path = image_copy(case)
    before = sha(path)
    with closing(open_store(str(path), config(case, read_only=True))) as store:
        assert store.read_only
        for record in store.records:
            with pytest.raises(ReadOnlyError):
                store.erase(record)
    assert sha(path) == before


# == geometry ==============================================================================
@pytest.mark.parametrize(("sizes", "source"), [
    ({"kmsg_size": 4096}, MIB),                                        # bigger than the image
    ({"kmsg_size": 0}, MIB),                                           # every size 0
    ({"kmsg_size": -4, "pmsg_size": 0}, MIB),
    ({"kmsg_size": 0, "ftrace_size": 4, "nr_cpus": 512}, MIB),         # 8-byte ftrace zones
    ({"kmsg_size": 64, "pmsg_size": 2048}, MIB),                       # pmsg does not fit
    ({"kmsg_size": 64, "ftrace_size": 1024, "console_size": 64}, MIB),  # ftrace does not fit
    ({"kmsg_size": 64, "pmsg_size": 1024}, MIB),                       # no room for dmesg
    ({"kmsg_size": 64, "ftrace_size": 64, "nr_cpus": 0}, MIB),
    ({"kmsg_size": 4}, 4095),                                          # below pstore's minimum
    ({"kmsg_size": 4}, 0),
], ids=["kmsg-too-big", "all-zero", "negative", "ftrace-split", "pmsg-too-big",
        "ftrace-too-big", "no-dmesg-room", "no-cpus", "tiny-source", "empty-source"])
def test_geometry_errors(tmp_path: Path, sizes: dict[str, int], source: int) -> None:
    path = tmp_path / "image.bin"
    path.write_bytes(bytes(source))
    with pytest.raises(GeometryError):
        open_store(str(path), StoreConfig(read_only=True, **sizes))  # type: ignore[arg-type]
    # the source was released: it can be opened (and locked) again at once
    if source >= 4096:
        open_store(str(path), StoreConfig(kmsg_size=4, read_only=True)).close()


@pytest.mark.parametrize(("kib", "nbytes"), [
    (64, 65536), (4, 4096), (8, 8192), (6, 4096), (1, 4096), (5, 4096), (10, 4096),
    (4097, 8192), (4100, 4100 * 1024), (0, 0), (-4, 0),
])
def test_kib_to_bytes_rounds_like_the_kernel(kib: int, nbytes: int) -> None:
    """blk.c `check_size`: ALIGN(kib, 4096) of the KiB number, in bytes."""
    assert kib_to_bytes("kmsg_size", kib) == nbytes
    assert geometry_from_options(StoreConfig(kmsg_size=kib)).kmsg_size == nbytes


def test_source_errors(tmp_path: Path) -> None:
    with pytest.raises(SourceError):
        open_store(str(tmp_path / "missing.bin"), StoreConfig())
    with pytest.raises(SourceError):
        open_store(str(tmp_path), StoreConfig())
    case = case_by_id("kmsg-plain-3oops")
    with closing(open_store(str(case.image), config(case, read_only=True))), \
            pytest.raises(SourceError):
        open_store(str(case.image), config(case, read_only=True))


# == corrupt images ========================================================================
def pack(fmt: str, at: int, *values: int) -> Callable[[bytearray], bytes]:
    def mutate(image: bytearray) -> bytes:
        struct.pack_into(fmt, image, at, *values)
        return bytes(image)
    return mutate


def garble(start: int, end: int) -> Callable[[bytearray], bytes]:
    def mutate(image: bytearray) -> bytes:
        for i in range(start, end):
            image[i] ^= 0x5A
        return bytes(image)
    return mutate


def cut(size: int) -> Callable[[bytearray], bytes]:
    return lambda image: bytes(image[:size])


def payload(zone: int, hlen: int = 40) -> Callable[[bytes], bytes]:
    """The raw bytes of the dmesg record at `zone` in an image."""
    def extract(image: bytes) -> bytes:
        datalen = struct.unpack_from("<i", image, zone + 4)[0]
        return image[zone + HEADER + hlen:zone + HEADER + datalen]
    return extract


def replace_first_line(line: bytes) -> Callable[[bytes, bytes], bytes]:
    return lambda _image, kernel: line + kernel.split(b"\n", 1)[1]


@dataclass
class Corruption:
    case: str
    label: str
    mutate: Callable[[bytearray], bytes]
    gone: tuple[str, ...] = ()
    added: dict[str, Callable[[bytes], bytes]] = field(default_factory=dict)
    changed: dict[str, Callable[[bytes, bytes], bytes]] = field(default_factory=dict)


KD, KP, XF, IF = "kmsg-deflate-3oops", "kmsg-plain-3oops", "x86_64-all-fronts", "i386-all-fronts"
D0, D1, D2 = "dmesg-pstore_blk-0", "dmesg-pstore_blk-1", "dmesg-pstore_blk-2"
PM, CO, FT = "pmsg-pstore_blk-0", "console-pstore_blk-0", "ftrace-pstore_blk-0"
Z1 = 0x10000
FRONT_D0 = 0x30000

CORRUPTIONS = [
    Corruption(KD, "datalen past the zone", pack("<i", 4, 0x7FFFFFFF), (D0,)),
    Corruption(KD, "datalen one past the buffer", pack("<i", 4, 65525), (D0,)),
    Corruption(KD, "negative datalen", pack("<i", 4, -5), (D0,)),
    Corruption(KD, "datalen shorter than the dmesg header", pack("<i", 4, 39), (D0,)),
    Corruption(KD, "erased", pack("<i", 4, 0), (D0,)),
    Corruption(KD, "bad magic", pack("<I", 12, 0x12345678), (D0,)),
    Corruption(KD, "console signature on a dmesg zone", pack("<I", 0, PSZ_SIG ^ 2), (D0,)),
    Corruption(KD, "start past the zone (dmesg ignores start)", pack("<i", 8, 1 << 30)),
    Corruption(KD, "compressed flag 7", pack("<B", 12 + 24, 7)),
    Corruption(KD, "garbled deflate", garble(Z1 + 60, Z1 + 400), (D1,),
               added={D1 + ".enc.z": payload(Z1)}),
    Corruption(KD, "truncated deflate stream", pack("<i", 4, 12081 - 100), (D0,),
               added={D0 + ".enc.z": payload(0)}),
    Corruption(KD, "image cut inside zone 1", cut(Z1 + 1000), (D1, D2)),
    Corruption(KP, "unknown reason", pack("<i", 12 + 32, 99),
               changed={D0: replace_first_line(b"Unknown: Total 1 times\n")}),
    Corruption(KP, "counter 2^31", pack("<I", 12 + 28, 1 << 31),
               changed={D0: replace_first_line(b"Oops: Total -2147483648 times\n")}),
    Corruption(XF, "pmsg datalen past the zone", pack("<i", 4, 65525), (PM,)),
    Corruption(XF, "pmsg negative datalen", pack("<i", 4, -1), (PM,)),
    Corruption(XF, "pmsg start past the zone", pack("<i", 8, 65525), (PM,)),
    Corruption(XF, "pmsg negative start", pack("<i", 8, -1), (PM,)),
    Corruption(XF, "console start past datalen", pack("<i", 0x10000 + 8, 17449), (CO,)),
    Corruption(XF, "ftrace signature wrong", pack("<I", 0x20000, PSZ_SIG ^ 9), (FT,)),
    Corruption(XF, "ftrace erased", pack("<i", 0x20000 + 4, 0), (FT,)),
    Corruption(XF, "pmsg shorter", pack("<ii", 4, 100, 100),
               changed={PM: lambda _image, kernel: kernel[:100]}),
    Corruption(XF, "image cut inside dmesg zone 1", cut(FRONT_D0 + Z1 + 1000), (D1,)),
    Corruption(IF, "i386 bad magic", pack("<I", FRONT_D0 + 12, 0), (D0,)),
    Corruption(IF, "i386 datalen shorter than the dmesg header", pack("<i", FRONT_D0 + 4, 27),
               (D0,)),
]


@pytest.mark.parametrize("corruption", CORRUPTIONS, ids=lambda c: f"{c.case}: {c.label}")
def test_corrupt_images(tmp_path: Path, corruption: Corruption) -> None:
    """Only sound records are listed, each as the kernel would show it."""
    case = case_by_id(corruption.case)
    image = corruption.mutate(bytearray(case.image.read_bytes()))
    path = tmp_path / "bad.bin"
    path.write_bytes(image)
    with closing(open_store(str(path), config(case, read_only=True))) as store:
        assert isinstance(store, ZoneStore) and store.abi == resolve_abi(case.meta["arch"])
        got = listing(store)
    want = {n: b for n, b in case.files.items() if n not in corruption.gone}
    want.update({n: f(image) for n, f in corruption.added.items()})
    want.update({n: f(image, case.files[n]) for n, f in corruption.changed.items()})
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name] == want[name], name


def test_negative_timestamp(tmp_path: Path) -> None:
    case = case_by_id(KP)
    image = bytearray(case.image.read_bytes())
    struct.pack_into("<q", image, 12 + 8, -1)
    path = tmp_path / "bad.bin"
    path.write_bytes(image)
    nsec = struct.unpack_from("<q", image, 12 + 16)[0]
    with closing(open_store(str(path), config(case, read_only=True))) as store:
        record = store.find(D0)
        assert record is not None
        assert store.entry(record).time_ns == -1_000_000_000 + nsec
        assert store.read(record) == case.files[D0]


@pytest.mark.parametrize("case_name", [KD, XF, IF])
def test_random_bytes_list_nothing(tmp_path: Path, case_name: str) -> None:
    case = case_by_id(case_name)
    path = tmp_path / "random.bin"
    path.write_bytes(random.Random(7).randbytes(case.image.stat().st_size))
    assert survive(path, config(case, read_only=True)) == {}


@pytest.mark.parametrize("case_name", [KD, XF, IF])
def test_random_flips_never_crash(tmp_path: Path, case_name: str) -> None:
    case = case_by_id(case_name)
    original = case.image.read_bytes()
    zones = layout(len(original), **kernel_sizes(case.meta["mount_options"]))
    rnd = random.Random(case_name)
    path = tmp_path / "flipped.bin"
    for round_ in range(12):
        image = bytearray(original)
        for _ in range(2000 if round_ == 0 else 40):
            if round_ == 0:  # anywhere
                at = rnd.randrange(len(image))
            else:            # in the headers, where it matters
                at = rnd.choice(zones).offset + rnd.randrange(64)
            image[at] = rnd.randrange(256)
        path.write_bytes(image)
        got = survive(path, config(case, read_only=True))
        assert all(n.split("-")[0] in ("dmesg", "pmsg", "console", "ftrace") for n in got)
        assert path.read_bytes() == image


# == decompression =========================================================================
def test_raw_deflate() -> None:
    text = oops_text(1, 20000)
    for wbits in (-11, -15):
        stream = deflate(text, wbits)
        assert decompress(stream, len(text), "deflate") == (text, "deflate")
        assert decompress(stream, len(text) - 1, "deflate") is None
        assert decompress(stream[:-20], 10 * len(text), "deflate") is None  # incomplete
        assert decompress(stream + bytes(100), len(text), "deflate") == (text, "deflate")
    assert decompress(b"\xff" * 64, 1000, "deflate") is None


def test_deflate_bomb_is_cut_off() -> None:
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    bomb = b"".join(c.compress(bytes(MIB)) for _ in range(64)) + c.flush()
    assert len(bomb) < 100 * KIB
    tracemalloc.start()
    try:
        assert decompress(bomb, 196452) is None
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * MIB, f"inflating the bomb took {peak} bytes"


@pytest.mark.parametrize("abi", [X86_64, I386], ids=lambda a: a.name)
def test_decompression_limit_is_three_record_buffers(tmp_path: Path, abi: Abi) -> None:
    """3 * (kmsg_size - 12 - sizeof(psz_kmsg_header)) bytes decompress; one more is
    shown raw as .enc.z."""
    limit = 3 * (4096 - 12 - abi.kmsg_header_size)
    w = ZoneWriter(abi, 16 * KIB, kmsg_size=4 * KIB)
    fits, over = oops_text(1, limit), oops_text(2, limit + 1)
    w.dmesg(deflate(fits), compressed=True)
    w.dmesg(deflate(over), compressed=True)
    path = save(w, tmp_path)
    with closing(open_store(str(path), StoreConfig(kmsg_size=4, read_only=True))) as store:
        got = listing(store)
    assert got == {"dmesg-blkoops-0": fits, "dmesg-blkoops-1.enc.z": deflate(over)}


# == layouts the fixtures do not have (test writer) ========================================
@pytest.mark.parametrize("kmsg_kib", [4, 8, 32])
@pytest.mark.parametrize("abi", [X86_64, I386], ids=lambda a: a.name)
def test_other_kmsg_sizes(tmp_path: Path, abi: Abi, kmsg_kib: int) -> None:
    w = ZoneWriter(abi, 256 * KIB, kmsg_size=kmsg_kib * KIB)
    texts = [oops_text(n) for n in range(1, 5)]
    w.dmesg(texts[0], time=(1_700_000_001, 5))
    w.dmesg(deflate(texts[1], -11), compressed=True, time=(1_700_000_002, 999_999_999))
    w.dmesg(deflate(texts[2], -15), compressed=True, time=(1_700_000_003, 0))
    w.dmesg(texts[3], reason=KmsgDumpReason.PANIC, time=(1_700_000_004, 7))
    path = save(w, tmp_path)
    with closing(open_store(str(path), StoreConfig(kmsg_size=kmsg_kib, read_only=True))) as s:
        assert isinstance(s, ZoneStore) and s.abi is abi
        assert zone_tuples(s.zones) == zone_tuples(w.zones)
        assert len(s.zones) == 256 // kmsg_kib
        assert listing(s) == {
            "dmesg-blkoops-0": b"Oops: Total 1 times\n" + texts[0],
            "dmesg-blkoops-1": texts[1],
            "dmesg-blkoops-2": texts[2],
            "dmesg-blkoops-3": b"Panic: Total 1 times\n" + texts[3],
        }
        times = [s.entry(r).time_ns for r in s.records]
        assert times == [1_700_000_001_000_000_005, 1_700_000_002_999_999_999,
                         1_700_000_003_000_000_000, 1_700_000_004_000_000_007]


def test_wrapped_dmesg_round_robin(tmp_path: Path) -> None:
    w = ZoneWriter(X86_64, 16 * KIB, kmsg_size=4 * KIB)
    texts = [oops_text(n, 5000 if n == 6 else 1000) for n in range(1, 7)]
    for n, text in enumerate(texts, 1):
        assert w.dmesg(text, time=(1_700_000_000 + n, 1000 * n + 7)) == (n - 1) % 4
    path = save(w, tmp_path)
    with closing(open_store(str(path), StoreConfig(kmsg_size=4, read_only=True))) as store:
        assert [(r.id, r.counter) for r in store.records] == [(0, 5), (1, 6), (2, 3), (3, 4)]
        got = listing(store)
    assert got == {
        "dmesg-blkoops-0": b"Oops: Total 5 times\n" + texts[4],
        "dmesg-blkoops-1": b"Oops: Total 6 times\n" + texts[5][:4096 - 12 - 40],
        "dmesg-blkoops-2": b"Oops: Total 3 times\n" + texts[2],
        "dmesg-blkoops-3": b"Oops: Total 4 times\n" + texts[3],
    }


def test_ambiguous_dmesg_headers_need_abi(tmp_path: Path) -> None:
    """A header with time 0, counter 0 and reason 0 reads the same on both ABIs."""
    w = ZoneWriter(X86_64, 16 * KIB, kmsg_size=4 * KIB)
    w.dmesg(b"Unknown dump\n", reason=KmsgDumpReason.UNDEF, time=(0, 0))
    path = save(w, tmp_path)
    with pytest.raises(GeometryError):
        open_store(str(path), StoreConfig(kmsg_size=4, read_only=True))
    with closing(open_store(str(path), StoreConfig(kmsg_size=4, read_only=True,
                                                   abi="x86_64"))) as store:
        assert listing(store) == {"dmesg-blkoops-0": b"Unknown: Total 0 times\nUnknown dump\n"}
        assert store.entry(store.records[0]).time_ns is None


def test_partition_tail_smaller_than_a_zone(tmp_path: Path) -> None:
    w = ZoneWriter(X86_64, MIB, kmsg_size=48 * KIB)
    assert len(w.dmesg_zones) == 21  # 21 * 48 KiB, 16 KiB left over
    w.dmesg(oops_text(1))
    w.dmesg(oops_text(2))
    tail = 21 * 48 * KIB
    w.put(tail, bytes(w.image[0:HEADER + 40 + 3000]))  # a record-like tail: not a zone
    path = save(w, tmp_path)
    with closing(open_store(str(path), StoreConfig(kmsg_size=48, read_only=True))) as store:
        assert isinstance(store, ZoneStore)
        assert zone_tuples(store.zones) == zone_tuples(w.zones)
        assert store.zones[-1].offset + store.zones[-1].size == tail
        assert sorted(listing(store)) == ["dmesg-blkoops-0", "dmesg-blkoops-1"]


def test_128_mib_cap(tmp_path: Path) -> None:
    """Zones past 128 MiB are not the kernel's (Linux 5.11+): not listed, whatever they
    hold, while the first zone past the cap holds no header."""
    w = ZoneWriter(X86_64, 128 * KIB, kmsg_size=64 * KIB)
    w.dmesg(oops_text(1))
    w.dmesg(oops_text(2))
    path = tmp_path / "big.bin"
    with open(path, "wb") as fh:
        fh.truncate(129 * MIB)
        fh.write(w.image[:64 * KIB])
        fh.seek(128 * MIB + 64 * KIB)
        fh.write(w.image[64 * KIB:])
    with closing(open_store(str(path), StoreConfig(kmsg_size=64, read_only=True))) as store:
        assert isinstance(store, ZoneStore) and len(store.zones) == 2048
        assert store.geometry.capped
        assert listing(store) == {"dmesg-blkoops-0": b"Oops: Total 1 times\n" + oops_text(1)}


@pytest.mark.parametrize("options", [{"kmsg_size": 64}, {}], ids=["given", "detected"])
def test_records_past_the_cap(tmp_path: Path, options: dict[str, int]) -> None:
    """A 5.8-5.10 kernel used the whole partition: when the first zone past 128 MiB holds
    a dmesg header, every zone of the partition is read."""
    w = ZoneWriter(X86_64, 128 * MIB, kmsg_size=64 * KIB)
    for n in range(2048):
        w.dmesg(oops_text(n))
    past = ZoneWriter(X86_64, 64 * KIB, kmsg_size=64 * KIB)  # zone 2048, as 5.10 wrote it
    past.dmesg(oops_text(2048))
    path = tmp_path / "old.bin"
    path.write_bytes(bytes(w.image) + bytes(past.image) + bytes(960 * KIB))
    with closing(open_store(str(path), StoreConfig(read_only=True, **options))) as store:
        assert isinstance(store, ZoneStore) and not store.geometry.capped
        assert len(store.zones) == 2064 and len(store.records) == 2049
        last = store.find("dmesg-blkoops-2048")
        assert last is not None and last.zones[0].offset == 128 * MIB
        assert store.read(last) == b"Oops: Total 1 times\n" + oops_text(2048)


def ftrace_line(cpu: int, stamp: int, ip: int, parent: int, width: int = 16) -> bytes:
    """`CPU:%d ts:%llu %08lx  %08lx  %ps <- %pS` without a System.map."""
    return (f"CPU:{cpu} ts:{stamp} {ip:0{width}x}  {parent:0{width}x}  "
            f"0x{ip:x} <- 0x{parent:x}\n").encode()


TEXT = 0xFFFFFFFF81000000


def two_cpu_writer() -> ZoneWriter:
    w = ZoneWriter(X86_64, 64 * KIB, kmsg_size=4 * KIB, ftrace_size=8 * KIB, nr_cpus=2)
    for cpu, stamp, ip in [(0, 1, 0x10), (0, 3, 0x20), (0, 5, 0x30), (0, 5, 0x40),
                           (1, 2, 0x50), (1, 3, 0x60), (1, 5, 0x70), (1, 6, 0x80)]:
        w.ftrace_call(cpu, TEXT + ip, TEXT + 0x100 + ip, stamp)
    return w


def test_two_cpu_ftrace_merge(tmp_path: Path) -> None:
    """Merged by ts >> 8; on equal ts the later CPU zone's record first."""
    w = two_cpu_writer()
    assert [z.size for z in w.zones if z.type is PstoreType.FTRACE] == [4096, 4096]
    path = save(w, tmp_path)
    cfg = StoreConfig(kmsg_size=4, ftrace_size=8, nr_cpus=2, read_only=True)
    with closing(open_store(str(path), cfg)) as store:
        assert isinstance(store, ZoneStore) and store.abi is X86_64
        got = listing(store)
    order = [(0, 1, 0x10), (1, 2, 0x50), (1, 3, 0x60), (0, 3, 0x20), (1, 5, 0x70),
             (0, 5, 0x30), (0, 5, 0x40), (1, 6, 0x80)]
    assert got == {"ftrace-blkoops-0": b"".join(
        ftrace_line(cpu, stamp, TEXT + ip, TEXT + 0x100 + ip) for cpu, stamp, ip in order)}


def test_ftrace_with_a_system_map(tmp_path: Path) -> None:
    system_map = tmp_path / "System.map"
    system_map.write_text(f"{TEXT:x} T _stext\n{TEXT + 0x10:x} T do_one\n"
                          f"{TEXT + 0x20:x} t do_two\n{TEXT + 0x1000:x} T _etext\n")
    path = save(two_cpu_writer(), tmp_path)
    cfg = StoreConfig(kmsg_size=4, ftrace_size=8, nr_cpus=2, read_only=True,
                      system_map=str(system_map))
    with closing(open_store(str(path), cfg)) as store:
        text = listing(store)["ftrace-blkoops-0"].decode().splitlines()
    assert text[0] == ("CPU:0 ts:1 ffffffff81000010  ffffffff81000110  "
                       "do_one <- do_two+0xf0/0xfe0")
    assert text[3] == ("CPU:0 ts:3 ffffffff81000020  ffffffff81000120  "
                       "do_two <- do_two+0x100/0xfe0")


def test_system_map_errors(tmp_path: Path) -> None:
    path = save(two_cpu_writer(), tmp_path)
    not_a_map = tmp_path / "notes.txt"
    not_a_map.write_text("hello\n")
    for system_map in (tmp_path / "missing.map", not_a_map):
        with pytest.raises(SourceError):
            open_store(str(path), StoreConfig(kmsg_size=4, ftrace_size=8, nr_cpus=2,
                                              read_only=True, system_map=str(system_map)))


def test_two_cpu_ftrace_erase_clears_every_zone(tmp_path: Path) -> None:
    w = two_cpu_writer()
    path = save(w, tmp_path)
    with closing(open_store(str(path), StoreConfig(kmsg_size=4, ftrace_size=8,
                                                   nr_cpus=2))) as store:
        store.erase(store.records[0])
    for ring in w.ftrace:
        ring.erase()
    assert_same_image(path.read_bytes(), bytes(w.image))


def test_two_cpu_ftrace_erase_refused_when_cpu1_changed(tmp_path: Path) -> None:
    w = two_cpu_writer()
    path = save(w, tmp_path)
    with closing(open_store(str(path), StoreConfig(kmsg_size=4, ftrace_size=8,
                                                   nr_cpus=2))) as store:
        record = store.records[0]
        w.ftrace_call(1, TEXT + 0x90, TEXT + 0x190, 7)  # CPU 1 traced on meanwhile
        w.save(path)
        with pytest.raises(ZoneChangedError):
            store.erase(record)
    assert_same_image(path.read_bytes(), bytes(w.image))  # CPU 0 untouched too


def stream(rnd: random.Random, size: int) -> bytes:
    text = "".join(f"[{i:6d}] line {i} of the stream\n" for i in range(size // 20))
    return text.encode()[:size]


def write_in_chunks(ring: Ring, data: bytes, rnd: random.Random) -> None:
    at = 0
    while at < len(data):
        n = rnd.randrange(1, 700)
        ring.write(data[at:at + n])
        at += n


@pytest.mark.parametrize("with_dmesg", [True, False], ids=["dmesg-votes", "ftrace-votes"])
@pytest.mark.parametrize("abi", [X86_64, I386], ids=lambda a: a.name)
def test_wrapped_rings(tmp_path: Path, abi: Abi, with_dmesg: bool) -> None:
    rnd = random.Random(abi.name)
    w = ZoneWriter(abi, 64 * KIB, kmsg_size=8 * KIB, pmsg_size=8 * KIB, console_size=8 * KIB,
                   ftrace_size=8 * KIB)
    size = 8 * KIB - HEADER
    assert w.pmsg is not None and w.console is not None
    pmsg, console = stream(rnd, 25000), stream(rnd, size + 1)
    write_in_chunks(w.pmsg, pmsg, rnd)
    write_in_chunks(w.console, console, rnd)
    width = 2 * abi.long_size
    calls = [(TEXT + 0x10 * i if abi is X86_64 else 0xC1000000 + 0x10 * i,
              (TEXT if abi is X86_64 else 0xC1000000) + 0x8000 + i, 1000 + i) for i in range(700)]
    for ip, parent, stamp in calls:
        w.ftrace_call(0, ip, parent, stamp)
    if with_dmesg:
        w.dmesg(oops_text(1))
    for zone, total in ((0, len(pmsg)), (8 * KIB, len(console)),
                        (16 * KIB, 700 * abi.ftrace_record_size)):
        _sig, datalen, start = struct.unpack_from("<Iii", w.image, zone)
        assert (datalen, start) == (size, total % size)
    path = save(w, tmp_path)
    cfg = StoreConfig(kmsg_size=8, pmsg_size=8, console_size=8, ftrace_size=8, read_only=True)
    with closing(open_store(str(path), cfg)) as store:
        assert isinstance(store, ZoneStore) and store.abi is abi
        got = listing(store)
    kept = size // abi.ftrace_record_size
    want = {"pmsg-blkoops-0": pmsg[-size:], "console-blkoops-0": console[-size:],
            "ftrace-blkoops-0": b"".join(ftrace_line(0, stamp, ip, parent, width)
                                         for ip, parent, stamp in calls[-kept:])}
    if with_dmesg:
        want["dmesg-blkoops-0"] = b"Oops: Total 1 times\n" + oops_text(1)
    assert got == want


def test_ring_exactly_full_then_one_more(tmp_path: Path) -> None:
    w = ZoneWriter(X86_64, 16 * KIB, kmsg_size=4 * KIB, pmsg_size=4 * KIB)
    assert w.pmsg is not None
    data = stream(random.Random(1), 4084)
    w.pmsg.write(data[:1000])
    w.pmsg.write(data[1000:])
    cfg = StoreConfig(kmsg_size=4, pmsg_size=4, read_only=True)
    with closing(open_store(str(save(w, tmp_path, "full.bin")), cfg)) as store:
        assert listing(store) == {"pmsg-blkoops-0": data}
    w.pmsg.write(b"!")
    with closing(open_store(str(save(w, tmp_path, "more.bin")), cfg)) as store:
        assert listing(store) == {"pmsg-blkoops-0": data[1:] + b"!"}


def test_ftrace_size_not_divisible_by_nr_cpus(tmp_path: Path) -> None:
    """64 KiB over 6 CPUs: six 10922-byte zones end at 65532, where dmesg zones start;
    their count still comes from the nominal sizes."""
    w = ZoneWriter(X86_64, 256 * KIB, kmsg_size=8 * KIB, pmsg_size=4 * KIB,
                   ftrace_size=64 * KIB, nr_cpus=6)
    ftrace = [z for z in w.zones if z.type is PstoreType.FTRACE]
    assert [z.size for z in ftrace] == [10922] * 6
    assert w.dmesg_zones[0].offset == 4096 + 65532 and len(w.dmesg_zones) == 23
    assert w.pmsg is not None
    w.pmsg.write(b"hello pmsg\n")
    for cpu in range(6):
        for n in range(3):
            w.ftrace_call(cpu, TEXT + 0x100 * cpu + n, TEXT + 0x8000, 10 * n + cpu)
    w.dmesg(oops_text(1))
    w.dmesg(deflate(oops_text(2)), compressed=True)
    path = save(w, tmp_path)
    cfg = StoreConfig(kmsg_size=8, pmsg_size=4, ftrace_size=64, nr_cpus=6)
    with closing(open_store(str(path), cfg)) as store:
        assert isinstance(store, ZoneStore)
        assert zone_tuples(store.zones) == zone_tuples(w.zones)
        got = listing(store)
        calls = sorted((10 * n + cpu, cpu, n) for cpu in range(6) for n in range(3))
        assert got == {
            "dmesg-blkoops-0": b"Oops: Total 1 times\n" + oops_text(1),
            "dmesg-blkoops-1": oops_text(2),
            "ftrace-blkoops-0": b"".join(ftrace_line(cpu, stamp, TEXT + 0x100 * cpu + n,
                                                     TEXT + 0x8000)
                                         for stamp, cpu, n in calls),
            "pmsg-blkoops-0": b"hello pmsg\n",
        }
        ft = store.find("ftrace-blkoops-0")
        assert ft is not None and len(ft.zones) == 6
        store.erase(ft)
    for ring in w.ftrace:
        ring.erase()
    assert_same_image(path.read_bytes(), bytes(w.image))


class RecordingDevice(Device):
    """A Device that logs its writes and syncs."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.log: list[tuple[str, int, bytes]] = []

    def write(self, offset: int, data: bytes) -> None:
        self.log.append(("write", offset, data))
        super().write(offset, data)

    def sync(self) -> None:
        self.log.append(("sync", 0, b""))
        super().sync()


def test_erase_writes_only_datalen_and_start(tmp_path: Path) -> None:
    """At most the 8 bytes of datalen and start per zone; where they straddle a sector
    (an 18-CPU split puts ftrace zone 9 at 32760, 504 bytes into a sector) datalen is
    written and synced first; dmesg: datalen alone."""
    w = ZoneWriter(X86_64, 128 * KIB, kmsg_size=4 * KIB, ftrace_size=64 * KIB, nr_cpus=18)
    offsets = {z.index: z.offset for z in w.zones if z.type is PstoreType.FTRACE}
    assert (offsets[8], offsets[9], offsets[10]) == (29120, 32760, 36400)
    for cpu in (8, 9, 10):
        for n in range(4):
            w.ftrace_call(cpu, TEXT + 0x10 * n, TEXT + 0x100, 4 * n + cpu)
    w.dmesg(oops_text(1))
    path = save(w, tmp_path)
    device = RecordingDevice(str(path))
    store = ZoneStore(device, Geometry(kmsg_size=4 * KIB, ftrace_size=64 * KIB, nr_cpus=18),
                      name="blkoops")
    with closing(store):
        ftrace = store.find("ftrace-blkoops-0")
        dmesg = store.find("dmesg-blkoops-0")
        assert ftrace is not None and dmesg is not None
        store.erase(ftrace)
        zero4, zero8 = bytes(4), bytes(8)
        assert device.log == [("write", 29124, zero8),
                              ("write", 32764, zero4), ("sync", 0, b""), ("write", 32768, zero4),
                              ("write", 36404, zero8), ("sync", 0, b"")]
        device.log.clear()
        store.erase(dmesg)
        at = w.dmesg_zones[0].offset + 4
        assert device.log == [("write", at, zero4), ("sync", 0, b"")]
    for cpu in (8, 9, 10):
        w.ftrace[cpu].erase()
    w.erase_dmesg(0)
    assert_same_image(path.read_bytes(), bytes(w.image))


# == the body cache ========================================================================
def test_body_cache_is_an_lru_within_budget() -> None:
    o = ITEM_OVERHEAD
    cache = BodyCache(100 + 3 * o)
    cache.put("a", b"a" * 40)
    cache.put("b", b"b" * 40)
    assert cache.get("a") == b"a" * 40  # a is now the most recent
    cache.put("c", b"c" * 40)            # 120 > 100: b goes
    assert cache.get("b") is None
    assert cache.get("a") == b"a" * 40 and cache.get("c") == b"c" * 40
    cache.put("huge", b"h" * (101 + 3 * o - o))  # bigger than the budget: never kept
    assert cache.get("huge") is None and cache.get("a") is not None
    cache.put("a", b"A" * 10)            # replacing frees the old body
    cache.put("d", b"d" * 50)            # 10 + 40 + 50 = 100 fits
    assert [cache.get(k) is not None for k in "acd"] == [True, True, True]
    cache.drop("c")
    cache.drop("never there")
    assert cache.get("c") is None
    cache.put("e", b"e" * 40)            # 10 + 50 + 40: fits after the drop
    assert [cache.get(k) is not None for k in "ade"] == [True, True, True]


@pytest.mark.parametrize("budget", [0, 40_000, 80_000, 1 << 20])
def test_store_cache_stays_within_budget(budget: int) -> None:
    case = case_by_id(KD)
    store = ZoneStore(Device(str(case.image), read_only=True), Geometry(kmsg_size=64 * KIB),
                      name="pstore_blk", cache_budget=budget)
    with closing(store):
        for _ in range(2):
            assert listing(store) == case.files
            cached = [store.read(r, wait=False) for r in store.records]
            assert sum(len(b) for b in cached if b is not None) <= budget
        if budget >= sum(len(b) for b in case.files.values()):
            assert all(b is not None for b in cached)


# == thousands of zones: found from the headers, kept compact ==============================
def many_records(tmp_path: Path, count: int = 4096) -> Path:
    w = ZoneWriter(X86_64, count * 4 * KIB, kmsg_size=4 * KIB)
    for n in range(count):
        w.dmesg(deflate(oops_text(n, 600)), compressed=True)
    return save(w, tmp_path)


def test_zone_list_is_the_kernels_zones(tmp_path: Path) -> None:
    """`Geometry.zones` makes the dmesg zones when asked for: the same zones, in the
    same order, as listing them out."""
    g = Geometry(kmsg_size=8 * KIB, pmsg_size=16 * KIB, console_size=8 * KIB,
                 ftrace_size=8 * KIB, nr_cpus=2)
    zones = g.zones(MIB)
    listed = list(zones)
    assert len(zones) == len(listed) == 4 + (MIB - 32 * KIB) // (8 * KIB)
    assert [z.type for z in listed[:4]] == [PstoreType.PMSG, PstoreType.CONSOLE,
                                             PstoreType.FTRACE, PstoreType.FTRACE]
    dmesg = listed[4:]
    assert all(z.index == i and z.offset == 32 * KIB + i * 8 * KIB and z.size == 8 * KIB
               for i, z in enumerate(dmesg))
    assert zones[-1] == dmesg[-1] and zones[4] == dmesg[0] and zones[1:3] == listed[1:3]
    assert zones.dmesg(7) == dmesg[7]
    with pytest.raises(IndexError):
        zones[len(zones)]


def test_records_are_made_again_equal_and_found_in_log_time(tmp_path: Path) -> None:
    path = many_records(tmp_path)
    with closing(open_store(str(path), StoreConfig(kmsg_size=4, read_only=True))) as store:
        records = store.records
        assert len(records) == 4096
        assert records[17] == records[17] and hash(records[17]) == hash(records[17])
        assert records.index(records[4000]) == 4000 and records[-1] == records[4095]
        assert records[4000] in records
        other = records[5]._replace(snapshot=(bytes(52),))
        assert other not in records
        with pytest.raises(ValueError):
            records.index(other)
        assert store.find("dmesg-blkoops-4095") == records[4095]
        assert store.find("dmesg-blkoops-4096") is None
        assert [r.id for r in records[10:13]] == [10, 11, 12]


def test_memory_grows_by_bytes_per_record_not_by_objects(tmp_path: Path) -> None:
    """What opening keeps is a few dozen bytes per record (its zone index, the header
    bytes erase compares, its size once decoded), not a record's objects (some 500
    bytes): 16,384 records of a 128 MiB partition stay around a megabyte. Decoding them
    all adds only what the fixed-budget cache keeps."""
    path = many_records(tmp_path)
    tracemalloc.start()
    try:
        store = open_store(str(path), StoreConfig(kmsg_size=4, read_only=True))
        opened, _ = tracemalloc.get_traced_memory()
        for record in store.records:
            store.entry(record)
        decoded, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    try:
        per_record = opened / len(store.records)
        assert per_record < 160, f"{per_record:.0f} bytes held per record"
        assert decoded - opened < 2.2 * MIB, "decoded bodies beyond the cache's budget"
        assert {store.entry(r).name for r in store.records} == {
            f"dmesg-blkoops-{n}" for n in range(4096)}
    finally:
        store.close()


def test_a_read_that_an_erase_overlapped_is_read_again(tmp_path: Path) -> None:
    """On flash an erase rewrites a whole erase block, neighbours included: a record
    read while an erase writes is read again, and what the torn read saw is not kept."""
    case = case_by_id("kmsg-deflate-3oops")
    path = tmp_path / "image.bin"
    path.write_bytes(case.image.read_bytes())
    with closing(open_store(str(path), config(case))) as store:
        record = store.records[1]
        real_read = store.device.read
        reads = []

        def torn(offset: int, size: int) -> bytes:
            reads.append(offset)
            if len(reads) == 1:  # an erase begins and ends while this read runs
                store._erases += 2
                return b"\xff" * size
            return real_read(offset, size)

        store.device.read = torn
        assert store.read(record) == case.files["dmesg-pstore_blk-1"]
        assert len(reads) == 2
        assert store.entry(record).name == "dmesg-pstore_blk-1"
