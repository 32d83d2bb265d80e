"""The store layer without FUSE, pstore/zone: open_store on the kernel's images (listing,
reading, erase, geometry, corrupt images, decompression), and the test writer
(tests/helpers/zone_writer.py) pinned to those images byte for byte."""

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

from helpers.cases import CASES, ERASE_CASES, Case, case_by_id
from helpers.zone import (
    IF,
    KD,
    KIB,
    KP,
    MIB,
    XF,
    assert_same_image,
    config,
    listing,
    oops_text,
    save,
)
from helpers.zone_writer import HEADER, Ring, ZoneWriter, deflate, kernel_sizes, layout
from pstorefs.codecs.compression import decompress
from pstorefs.errors import GeometryError, PstoreError, ReadOnlyError, SourceError, ZoneChangedError
from pstorefs.format.abi import I386, X86_64, Abi, resolve_abi
from pstorefs.format.consts import PSZ_SIG, PstoreType
from pstorefs.format.zone import (
    kmsg_zone_ok,
    parse_kmsg_header,
    parse_zone_header,
    ring_unwrap,
    ring_zone_ok,
)
from pstorefs.store import Store, StoreConfig, open_store
from pstorefs.store.device import Device
from pstorefs.store.zone.layout import Geometry, geometry_from_options, kib_to_bytes
from pstorefs.store.zone.recovery import Listing
from pstorefs.store.zone.store import ZoneStore

FTRACE_SIG = PSZ_SIG ^ PstoreType.FTRACE


def case_id(case: Case) -> str:
    return case.id


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


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# == the writer is pinned to the kernel ====================================================
def rebuild(case: Case, image: bytes) -> ZoneWriter:
    """Write the records found in a kernel-written `image` again with the test writer,
    as the kernel wrote them: the console during boot (before recovery, so it is flushed
    whole), pmsg and ftrace after, each ring in small writes; dmesg records round-robin
    with the writer's own counters. Header fields and bytes come from the image."""
    abi = resolve_abi(case.meta["arch"])
    w = ZoneWriter(abi, len(image), **kernel_sizes(case.meta["mount_options"]),
                   recovered=False, capped=case.capped)

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
    hlen = abi.kmsg_header_size
    for z in w.dmesg_zones:  # erased records the partition held before: recovery counts them
        header = parse_zone_header(abi, image[z.offset:z.offset + HEADER], z.offset)
        if header.sig == PSZ_SIG and header.datalen == 0:
            w.put(z.offset, image[z.offset:z.offset + HEADER + hlen])
    w.recover()
    replay(w.pmsg, 37)
    for ring in w.ftrace:
        replay(ring, abi.ftrace_record_size)
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
    before = (case.file(erase["image_before"])).read_bytes()
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
    assert_same_image(bytes(w.image), (case.file(erase["image_after"])).read_bytes())


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


def test_the_listing_keeps_the_records_it_made_last(tmp_path: Path) -> None:
    """A partition's records are made from their headers when asked for, not kept; the
    requests for one file each ask for its record, so the last `RECENT` made are kept:
    asked again, the same record, and once forgotten, one made again equal to it."""
    w = ZoneWriter(X86_64, 200 * 4096, kmsg_size=4096)
    for n in range(200):
        w.dmesg(f"Oops#{n + 1} Part1\nrecord {n}\n".encode())
    path = tmp_path / "many.bin"
    path.write_bytes(bytes(w.image))
    with closing(ZoneStore(Device(str(path), read_only=True), Geometry(kmsg_size=4096),
                           name="pstore_blk")) as store:
        records = store.records
        first = records[5]
        assert records[5] is first
        for at in range(10, 10 + Listing.RECENT):
            records[at]
        again = records[5]
        assert again is not first and again == first
        assert [r.id for r in records] == sorted(r.id for r in records)


# == erase =================================================================================
def expected_after_erase(case: Case) -> bytes:
    """The kernel's image after rm, with the planned deviation: removing the ftrace file
    zeroes datalen and start of every ftrace zone, not only CPU 0's."""
    erase = case.meta["erase"]
    image = bytearray((case.file(erase["image_after"])).read_bytes())
    if any(name.startswith("ftrace-") for name in erase["remove"]):
        for zone in layout(len(image), capped=case.capped,
                           **kernel_sizes(case.meta["mount_options"])):
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
    zones = layout(len(original), capped=case.capped,
                   **kernel_sizes(case.meta["mount_options"]))
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
