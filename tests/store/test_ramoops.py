"""ramoops in the store: the kernel-written regions, ECC through the store, hostile
headers, erase, layout detection.

The oracle is the ramoops cases in tests/data/fixtures-backends (Linux 6.1 writers,
read back by the same kernels, see their README.md). States they lack (ECC errors,
wrapped and multi-CPU ftrace zones, old record headers, hostile headers) are built with
`Region`, a test-only writer that follows ram_core.c's `persistent_ram_write` and is
pinned to the kernel by rebuilding the ECC case's image with it byte for byte.
"""

from __future__ import annotations

import random
import struct
import zlib
from contextlib import closing
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers.cases import DATA, Case
from helpers.ramoops import BACKEND_FIXTURES, CASES, ECC16, case_id, copy, layout_of, sha256
from pstorefs.cli.options import parse_options
from pstorefs.codecs.reed_solomon import rs_codec
from pstorefs.errors import GeometryError, PstoreError, ReadOnlyError, ZoneChangedError
from pstorefs.format.consts import PstoreType
from pstorefs.format.ramoops import PERSISTENT_RAM_SIG, ecc_geometry, ecc_notice
from pstorefs.store import Store, StoreConfig, open_store
from pstorefs.store import ramoops as ramoops_store
from pstorefs.store.base import Entry
from pstorefs.store.device import Device
from pstorefs.store.ramoops.layout import RamoopsGeometry

ERASE_CASES = [c for c in CASES if "erase" in c.meta]


ALL_FRONTS = next(c for c in CASES if c.id == "ramoops-all-fronts")
FTRACE_SIG_6_1_192 = 0x43414384
"""DBGC ^ KERNEL_VERSION(6, 1, 192): the ftrace signature in these cases."""

EMPTY_HEADER_PARITY = bytes.fromhex("aa25d52132e2353a385519c02bcbad5f")
"""The kernel's ecc=16 parity of an empty header (DBGC, 0, 0), from ramoops-ecc16's
image after its rm."""


def config(case: Case, **overrides: object) -> StoreConfig:
    """The StoreConfig the case's mount options give (with its System.map)."""
    store = parse_options([case.options]).store
    return StoreConfig(**{**store.__dict__, **overrides})


def files(store: Store) -> dict[str, bytes]:
    return {store.entry(r).name: store.read(r) for r in store.records}


# -- a test-only writer, following ram_core.c ------------------------------------------
class Region:
    """A ramoops region as a kernel with `layout` leaves it: every zone signed and
    zapped at probe (`persistent_ram_post_init`), then written with
    `persistent_ram_write`, parity kept as `persistent_ram_update_ecc` keeps it."""

    def __init__(self, layout: RamoopsGeometry, *, ftrace_sig: int = FTRACE_SIG_6_1_192,
                 fill: int = 0) -> None:
        self.layout = layout
        self.image = bytearray([fill]) * layout.mem_size
        self.spans = layout.zones()
        self.rs = rs_codec(layout.ecc_size) if layout.ecc_size else None
        for span in self.spans:
            sig = ftrace_sig if span.type is PstoreType.FTRACE else PERSISTENT_RAM_SIG
            self.header(span.type, span.index, sig, 0, 0)

    def span(self, ptype: PstoreType, index: int = 0):
        return next(s for s in self.spans if s.type is ptype and s.index == index)

    def header(self, ptype: PstoreType, index: int, sig: int, start: int, size: int) -> None:
        span = self.span(ptype, index)
        struct.pack_into("<III", self.image, span.offset, sig, start, size)
        if self.rs:
            ecc = ecc_geometry(span.size, self.layout.ecc_size)
            raw = bytes(self.image[span.offset:span.offset + 12])
            at = span.offset + ecc.par_header
            self.image[at:at + ecc.ecc_size] = self.rs.encode(raw)

    def write(self, ptype: PstoreType, data: bytes, index: int = 0) -> None:
        """`persistent_ram_write(prz, data, len(data))`."""
        span = self.span(ptype, index)
        ecc = ecc_geometry(span.size, self.layout.ecc_size)
        cap = ecc.buffer_size
        sig, start, size = struct.unpack_from("<III", self.image, span.offset)
        data = data[-cap:]
        size = min(size + len(data), cap)
        base = span.offset + 12
        pos = start
        for byte in data:
            self.image[base + pos] = byte
            pos = (pos + 1) % cap
        self._update_ecc(span, ecc, start, len(data))
        self.header(ptype, index, sig, (start + len(data)) % cap, size)

    def record(self, data: bytes, index: int) -> None:
        """`ramoops_pstore_write` of a dmesg record: zap, then header and payload."""
        sig = struct.unpack_from("<I", self.image, self.span(PstoreType.DMESG, index).offset)[0]
        self.header(PstoreType.DMESG, index, sig, 0, 0)
        self.write(PstoreType.DMESG, data, index)

    def _update_ecc(self, span, ecc, start: int, count: int) -> None:
        if not self.rs:
            return
        base = span.offset + 12
        touched = {(start + i) % ecc.buffer_size // ecc.block_size for i in range(count)}
        for index in touched:
            at, size = ecc.block(index)
            block = bytes(self.image[base + at:base + at + size])
            par = span.offset + ecc.par_buffer + index * ecc.ecc_size
            self.image[par:par + ecc.ecc_size] = self.rs.encode(block)

    def save(self, path: Path) -> Path:
        path.write_bytes(bytes(self.image))
        return path


def dmesg(text: bytes, sec: int = 1700000000, usec: int = 123456, *, compress: bool = True
          ) -> bytes:
    """A dmesg record as ram.c writes it: its header line, then raw deflate or text."""
    if compress:
        c = zlib.compressobj(9, zlib.DEFLATED, -15)
        return f"===={sec}.{usec:06d}-C\n".encode() + c.compress(text) + c.flush()
    return f"===={sec}.{usec:06d}-D\n".encode() + text


def open_image(path: Path, layout: RamoopsGeometry, **kw: object) -> Store:
    return open_store(str(path), StoreConfig(
        backend="ramoops", record_size=layout.record_size, console_size=layout.console_size,
        ftrace_size=layout.ftrace_size, pmsg_size=layout.pmsg_size, ecc=layout.ecc_size,
        nr_cpus=layout.nr_cpus, **kw))  # type: ignore[arg-type]


SMALL = RamoopsGeometry(65536, record_size=8192, console_size=8192, ftrace_size=8192,
                      pmsg_size=8192, ecc_size=16)
OOPS = b"Oops#1 Part1\n<4>[    1.000000] BUG: kernel NULL pointer dereference\n" * 40


# -- the kernel's cases -----------------------------------------------------------------
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_files_byte_identical(case: Case) -> None:
    with closing(open_store(str(case.image), config(case))) as store:
        got = files(store)
        assert list(got) == [f["name"] for f in _kernel_order(case)]
        for f in case.meta["files"]:
            assert got[f["name"]] == case.files[f["name"]], f["name"]
            record = store.find(f["name"])
            assert record is not None
            assert store.entry(record).time_ns == f["mtime_ns"], f["name"]
            assert store.entry(record).size == f["content_bytes"], f["name"]


def _kernel_order(case: Case) -> list[dict]:
    """ramoops_pstore_read's order: dmesg by zone, console, pmsg, ftrace."""
    rank = {"dmesg": 0, "console": 1, "pmsg": 2, "ftrace": 3}
    return sorted(case.meta["files"], key=lambda f: (rank[f["name"].split("-")[0]],
                                                      int(f["name"].rsplit("-", 1)[1])))


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_reading_writes_nothing(case: Case, tmp_path: Path) -> None:
    img = copy(tmp_path, case)
    before = sha256(img)
    with closing(open_store(str(img), config(case))) as store:
        for record in store.records:
            store.read(record)
            store.attributes(record)
        store.layout()
    assert sha256(img) == before


@pytest.mark.parametrize("case", ERASE_CASES, ids=case_id)
def test_erase_byte_identical(case: Case, tmp_path: Path) -> None:
    erase = case.meta["erase"]
    img = copy(tmp_path, case, erase["image_before"])
    with closing(open_store(str(img), config(case))) as store:
        for name in erase["remove"]:
            record = store.find(name)
            assert record is not None, name
            store.erase(record)
    assert img.read_bytes() == (case.file(erase["image_after"])).read_bytes()
    with closing(open_store(str(img), config(case))) as store:
        assert sorted(store.entry(r).name for r in store.records) == sorted(erase["names_after"])


def test_ecc_erase_rewrites_the_header_parity(tmp_path: Path) -> None:
    img = copy(tmp_path, ECC16)
    with closing(open_store(str(img), config(ECC16))) as store:
        store.erase(store.records[0])
    assert img.read_bytes()[0x4000 - 16:0x4000] == EMPTY_HEADER_PARITY


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_recognized(case: Case) -> None:
    for image in case.dir.glob("image*.bin"):
        data = image.read_bytes()
        assert ramoops_store.recognizes(lambda o, n, d=data: d[o:o + n], len(data)), image
    with closing(open_store(str(case.image), config(case, backend="auto"))) as store:
        assert isinstance(store, ramoops_store.RamoopsStore)


@pytest.mark.parametrize("image", sorted((DATA / "fixtures").glob("*/image*.bin"))
                         + sorted(BACKEND_FIXTURES.glob("mtd*/image*.bin")),
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_not_recognized(image: Path) -> None:
    data = image.read_bytes()
    assert not ramoops_store.recognizes(lambda o, n: data[o:o + n], len(data))


def test_attributes() -> None:
    with closing(open_store(str(ECC16.image), config(ECC16))) as store:
        attrs = store.attributes(store.records[1])
    assert attrs == {"zone_offset": "16384", "zone_size": "16384", "abi": "le64",
                     "format": "ramoops", "time_ns": "1795447812297825000",
                     "compressed": "1", "compressor": "deflate", "reason": "Oops",
                     "counter": "2",
                     "ecc_size": "16", "ecc_corrected_bytes": "0",
                     "ecc_unrecoverable_blocks": "0"}
    assert ECC16.files["dmesg-ramoops-1"].startswith(b"Oops#2 Part1\n")


def test_layout_and_probe() -> None:
    with closing(open_store(str(ALL_FRONTS.image), config(ALL_FRONTS))) as store:
        layout = store.layout().as_dict()
    assert layout["kernel_parameters"] == (
        "ramoops.mem_size=524288 ramoops.record_size=32768 ramoops.console_size=16384 "
        "ramoops.ftrace_size=32768 ramoops.pmsg_size=16384 ramoops.ecc=0")
    assert layout["nr_cpus"] == 1
    assert layout["zones"] == 17 and layout["records"] == 5 and layout["abi"] == "le64"


# -- the zone layout rule and the ECC geometry (08-other-backends-verified.md) --------------
def test_options_round_down_and_default() -> None:
    layout, notes = ramoops_store.layout_from_options(
        StoreConfig(backend="ramoops", record_size=5000, ecc=1, pmsg_size=0), 1 << 20)
    assert (layout.record_size, layout.console_size, layout.ftrace_size, layout.pmsg_size,
            layout.ecc_size) == (4096, 4096, 4096, 0, 16)
    assert notes == ["record_size=5000 is not a power of two: the kernel uses 4096"]


# -- ECC through the store: corrected in memory, the kernel's notice ------------------------
def _zone0_block(g, index: int) -> int:
    return 12 + g.block(index)[0]


def test_ecc_corrects_data_parity_and_header(tmp_path: Path) -> None:
    clean = ECC16.files["dmesg-ramoops-0"]
    text = clean.removesuffix(ecc_notice(0, 0))
    image = bytearray(ECC16.image.read_bytes())
    g = ecc_geometry(0x4000, 16)
    for index, flips in ((0, 3), (5, 8), (40, 1)):  # data blocks below size
        for k in range(flips):
            image[_zone0_block(g, index) + 7 * k] ^= 0x5A
    image[g.par_buffer + 16 * 2 + 4] ^= 0xFF       # a parity byte of block 2
    image[4:6] = b"\x00\x00"                      # start, corrupted in the header
    image[9] ^= 0x01                              # size too
    path = tmp_path / "ecc.bin"
    path.write_bytes(image)
    before = sha256(path)
    with closing(open_store(str(path), config(ECC16))) as store:
        got = files(store)
        attrs = store.attributes(store.records[0])
    corrected = 3 + 8 + 1 + 1 + 3
    assert got["dmesg-ramoops-0"] == text + ecc_notice(corrected, 0)
    assert got["dmesg-ramoops-0"].endswith(b"\nECC: 16 Corrected bytes, 0 unrecoverable blocks\n")
    assert got["dmesg-ramoops-1"] == ECC16.files["dmesg-ramoops-1"]
    assert attrs["ecc_corrected_bytes"] == "16" and attrs["ecc_unrecoverable_blocks"] == "0"
    assert sha256(path) == before  # corrected in memory only


def test_ecc_detected_past_a_header_it_corrects(tmp_path: Path) -> None:
    """Without `ecc=`, a zone header whose parity no longer matches (what ECC is there
    for; found by the fuzz run) still leaves the region read, and erased, with ECC: as
    ECC=0 the erase would zap that header without its parity, and a kernel reading with
    ECC would correct the erased record back."""
    image = bytearray(ECC16.image.read_bytes())
    image[0x3C008:0x3C00C] = bytes.fromhex("29000000")  # the last zone's `size` word
    path = tmp_path / "ecc.bin"
    path.write_bytes(image)
    options = StoreConfig(backend="ramoops", record_size=0x4000)
    with closing(open_store(str(path), options)) as store:
        assert store.layout().parameters["ecc"] == 16
        assert files(store) == ECC16.files


def test_ramoops_refuses_fewer_than_one_cpu() -> None:
    with pytest.raises(GeometryError, match="nr_cpus"):
        open_store(str(ECC16.image), StoreConfig(backend="ramoops", nr_cpus=-1,
                                                 read_only=True))


def test_ecc_uncorrectable_block(tmp_path: Path) -> None:
    image = bytearray(ECC16.image.read_bytes())
    g = ecc_geometry(0x4000, 16)
    for k in range(9):  # 9 errors in one block: more than 16 roots correct
        image[_zone0_block(g, 20) + 3 * k] ^= 0xA5
    path = tmp_path / "bad.bin"
    path.write_bytes(image)
    before = sha256(path)
    with closing(open_store(str(path), config(ECC16))) as store:
        record = store.records[0]
        body = store.read(record)
        name = store.entry(record).name
    assert body.endswith(b"\nECC: 0 Corrected bytes, 1 unrecoverable blocks\n")
    assert name in ("dmesg-ramoops-0", "dmesg-ramoops-0.enc.z")
    assert sha256(path) == before


def test_ecc_garbage_parity_everywhere(tmp_path: Path) -> None:
    """Random parity: headers may "correct" into nonsense or fail; nothing but a
    PstoreError may come out, and nothing is written."""
    rnd = random.Random(5)
    image = bytearray(ECC16.image.read_bytes())
    for span in layout_of(ECC16).zones():
        g = ecc_geometry(span.size, 16)
        for at in range(span.offset + g.par_buffer, span.offset + span.size):
            image[at] = rnd.randrange(256)
    path = tmp_path / "garbage.bin"
    path.write_bytes(image)
    before = sha256(path)
    got = survive(path, config(ECC16))
    assert all(b"unrecoverable blocks" in body for body in got.values())
    assert sha256(path) == before


def test_ecc_notice_on_every_type(tmp_path: Path) -> None:
    region = Region(SMALL)
    region.record(dmesg(OOPS), 0)
    region.write(PstoreType.CONSOLE, b"console line\n" * 900)  # wraps
    region.write(PstoreType.PMSG, b"pmsg bytes")
    region.write(PstoreType.FTRACE, _ftrace_records([(0xFFFFFFFF81000010, 0xFFFFFFFF81000020,
                                                       5 << 8)]))
    path = region.save(tmp_path / "small.bin")
    with closing(open_image(path, SMALL)) as store:
        got = files(store)
    notice = ecc_notice(0, 0)
    assert got["dmesg-ramoops-0"] == OOPS + notice
    cap = ecc_geometry(8192, 16).buffer_size
    assert got["console-ramoops-0"] == (b"console line\n" * 900)[-cap:] + notice
    assert got["pmsg-ramoops-0"] == b"pmsg bytes" + notice
    assert got["ftrace-ramoops-0"] == (
        b"CPU:0 ts:5 ffffffff81000010  ffffffff81000020  0xffffffff81000010 <- "
        b"0xffffffff81000020\n" + notice)


def test_the_test_writer_is_the_kernels(tmp_path: Path) -> None:
    """Region rebuilds ramoops-ecc16 byte for byte from its two records."""
    image = ECC16.image.read_bytes()
    layout = layout_of(ECC16)
    region = Region(layout)
    for index in (0, 1):
        size = struct.unpack_from("<I", image, index * 0x4000 + 8)[0]
        region.record(image[index * 0x4000 + 12:][:size], index)
    assert bytes(region.image) == image


# -- rings, ftrace, old headers, .enc.z -----------------------------------------------------
def _ftrace_records(records: list[tuple[int, int, int]]) -> bytes:
    return b"".join(struct.pack("<QQQ", ip, parent, ts) for ip, parent, ts in records)


def test_ftrace_per_cpu_merged_each_in_ring_order(tmp_path: Path) -> None:
    layout = RamoopsGeometry(65536, 8192, 8192, 8192, 8192, nr_cpus=2)
    region = Region(layout)
    region.write(PstoreType.FTRACE, _ftrace_records([(0x10, 0x20, 9 << 8), (0x11, 0x21, 3 << 8)]),
                 index=0)
    region.write(PstoreType.FTRACE, _ftrace_records([(0x30, 0x40, (5 << 8) | 1)]), index=1)
    with closing(open_image(region.save(tmp_path / "ft.bin"), layout)) as store:
        text = files(store)["ftrace-ramoops-0"].decode()
        record = store.records[0]
    assert [line.split()[:2] for line in text.splitlines()] == [
        ["CPU:1", "ts:5"], ["CPU:0", "ts:9"], ["CPU:0", "ts:3"]]
    assert len(record.zones) == 2


def test_wrapped_ftrace_drops_the_partial_record(tmp_path: Path) -> None:
    layout = RamoopsGeometry(65536, 8192, 8192, 1024, 8192)
    region = Region(layout)
    records = [(0x1000 + i, 0x2000 + i, i << 8) for i in range(60)]  # 1440 bytes > 1012
    region.write(PstoreType.FTRACE, _ftrace_records(records))
    with closing(open_image(region.save(tmp_path / "w.bin"), layout)) as store:
        lines = files(store)["ftrace-ramoops-0"].decode().splitlines()
    assert len(lines) == 1012 // 24
    assert lines[-1].startswith("CPU:0 ts:59 ")


def test_old_header_and_uncompressed(tmp_path: Path) -> None:
    region = Region(SMALL)
    region.record(b"====1600000000.5\nPanic#1 Part1\ntext\n", 2)
    path = region.save(tmp_path / "old.bin")
    with closing(open_image(path, SMALL)) as store:
        record = store.find("dmesg-ramoops-2")
        assert record is not None and not record.compressed
        assert store.read(record) == b"Panic#1 Part1\ntext\n" + ecc_notice(0, 0)
        assert store.entry(record).time_ns == 1600000000 * 10**9 + 5000
        assert store.attributes(record)["reason"] == "Panic"


def test_truncated_stream_is_enc_z(tmp_path: Path) -> None:
    record = dmesg(OOPS)
    region = Region(SMALL)
    region.record(record[:-20], 0)
    with closing(open_image(region.save(tmp_path / "cut.bin"), SMALL)) as store:
        got = files(store)
    assert got == {"dmesg-ramoops-0.enc.z": record[24:-20] + ecc_notice(0, 0)}


def test_zero_time_and_record_without_header(tmp_path: Path) -> None:
    region = Region(SMALL)
    region.record(dmesg(OOPS, sec=0), 0)
    region.record(b"no header here", 1)
    with closing(open_image(region.save(tmp_path / "z.bin"), SMALL)) as store:
        assert [store.entry(r) for r in store.records] == [
            Entry("dmesg-ramoops-0", len(OOPS) + 25, None)]


# -- hostile headers ------------------------------------------------------------------------
def survive(path: Path, cfg: StoreConfig) -> dict[str, bytes]:
    """Open, list, read and describe everything; only PstoreError may come out, and no
    read may leave the region."""
    size = path.stat().st_size
    reads: list[tuple[int, int]] = []
    real_read = Device.read

    def read(self: Device, offset: int, length: int) -> bytes:
        reads.append((offset, length))
        return real_read(self, offset, length)

    Device.read = read  # type: ignore[method-assign]
    try:
        try:
            store = open_store(str(path), cfg)
        except PstoreError:
            return {}
        with closing(store):
            out = {}
            for record in store.records:
                try:
                    out[store.entry(record).name] = store.read(record)
                    store.attributes(record)
                except PstoreError:
                    pass
            store.layout()
            return out
    finally:
        Device.read = real_read  # type: ignore[method-assign]
        assert all(0 <= o and o + n <= size for o, n in reads)


HOSTILE = {
    "start past size": (4, struct.pack("<I", 20000)),
    "size past the buffer": (8, struct.pack("<I", 16373)),
    "size 2**32-1": (8, b"\xff\xff\xff\xff"),
    "start and size past the region": (4, struct.pack("<II", 1 << 31, 1 << 31)),
    "wrong signature": (0, b"XBGC"),
    "no record header": (12, b"=== "),
    "garbled stream": (40, bytes(range(200))),
}


@pytest.mark.parametrize("label", list(HOSTILE))
def test_hostile_headers(label: str, tmp_path: Path) -> None:
    case = next(c for c in CASES if c.id == "ramoops-dmesg")
    at, patch = HOSTILE[label]
    image = bytearray(case.image.read_bytes())
    image[at:at + len(patch)] = patch
    path = tmp_path / "hostile.bin"
    path.write_bytes(image)
    before = sha256(path)
    got = survive(path, config(case))
    assert got.get("dmesg-ramoops-1") == case.files["dmesg-ramoops-1"]
    if label != "garbled stream":
        assert "dmesg-ramoops-0" not in got
    assert sha256(path) == before


def test_hostile_wrapped_dmesg_and_ring_headers(tmp_path: Path) -> None:
    """start < size on every zone: the kernel's ring rule applies to all of them."""
    region = Region(SMALL)
    region.record(dmesg(OOPS), 0)
    for span in region.spans:
        struct.pack_into("<II", region.image, span.offset + 4, 100, 7000)
    path = region.save(tmp_path / "rings.bin")
    got = survive(path, StoreConfig(backend="ramoops", record_size=8192, console_size=8192,
                                    ftrace_size=8192, pmsg_size=8192))
    assert {n.split("-")[0] for n in got} <= {"dmesg", "console", "pmsg", "ftrace"}


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow,
                                                  HealthCheck.function_scoped_fixture],
          deadline=None)
@given(case=st.sampled_from(CASES), seed=st.integers(0, 2**32),
       flips=st.sampled_from([1, 10, 100, 2000]))
def test_random_corruption_survives(case: Case, seed: int, flips: int,
                                    tmp_path_factory: pytest.TempPathFactory) -> None:
    rnd = random.Random(seed)
    image = bytearray(case.image.read_bytes())
    for _ in range(flips):
        image[rnd.randrange(len(image))] = rnd.randrange(256)
    path = tmp_path_factory.mktemp("fuzz") / "m.bin"
    path.write_bytes(image)
    before = sha256(path)
    survive(path, config(case))
    assert sha256(path) == before


def test_region_too_small_for_the_sizes_refused(tmp_path: Path) -> None:
    path = tmp_path / "short.bin"
    path.write_bytes(ALL_FRONTS.image.read_bytes()[:40000])
    with pytest.raises(GeometryError):
        open_store(str(path), config(ALL_FRONTS))


def test_truncated_region_survives(tmp_path: Path) -> None:
    """A cut image is a smaller `mem_size`: another layout, read as the kernel would."""
    path = tmp_path / "cut.bin"
    path.write_bytes(ALL_FRONTS.image.read_bytes()[:100000])
    before = sha256(path)
    survive(path, config(ALL_FRONTS))
    assert sha256(path) == before


def test_ecc_too_large_refused() -> None:
    with pytest.raises(GeometryError):
        open_store(str(ECC16.image), config(ECC16, ecc=200))


# -- erase: re-validation, read-only, sector-straddling headers -------------------------
def test_erase_refused_when_the_zone_changed(tmp_path: Path) -> None:
    img = copy(tmp_path, ECC16)
    with closing(open_store(str(img), config(ECC16))) as store:
        record = store.records[0]
        with open(img, "r+b") as fh:  # a new dump lands after the listing
            fh.seek(20)
            fh.write(b"9")
        changed = img.read_bytes()
        with pytest.raises(ZoneChangedError):
            store.erase(record)
    assert img.read_bytes() == changed


def test_erase_read_only(tmp_path: Path) -> None:
    img = copy(tmp_path, ECC16)
    before = sha256(img)
    with closing(open_store(str(img), config(ECC16, read_only=True))) as store:
        with pytest.raises(ReadOnlyError):
            store.erase(store.records[0])
    assert sha256(img) == before


def test_erase_every_ftrace_zone(tmp_path: Path) -> None:
    layout = RamoopsGeometry(65536, 8192, 8192, 8192, 8192, nr_cpus=3, ecc_size=16)
    region = Region(layout)
    for cpu in range(3):
        region.write(PstoreType.FTRACE, _ftrace_records([(0x10, 0x20, (4 << 8) | cpu)]), cpu)
    path = region.save(tmp_path / "ft3.bin")
    ftrace = [s for s in layout.zones() if s.type is PstoreType.FTRACE]
    with closing(open_image(path, layout)) as store:
        store.erase(store.records[0])
    image = path.read_bytes()
    rs = rs_codec(16)
    for span in ftrace:
        g = ecc_geometry(span.size, 16)
        header = image[span.offset:span.offset + 12]
        assert header == struct.pack("<III", FTRACE_SIG_6_1_192, 0, 0)
        assert image[span.offset + g.par_header:][:16] == rs.encode(header)
    with closing(open_image(path, layout)) as store:
        assert store.records == []


def test_sector_straddling_zap_writes_size_first(tmp_path: Path) -> None:
    """A zone whose start/size straddle a sector: `size` is zeroed (and synced) first,
    so a cut between the writes leaves start > size, which is never read."""
    layout = RamoopsGeometry(9200, 4096, 0, 0, 0)  # two zones of 4600: the second's
    victim = layout.zones()[1]                    # start/size straddle 4608
    assert (victim.offset + 4) // 512 != (victim.offset + 11) // 512
    region = Region(layout)
    region.record(dmesg(b"Oops#1 Part1\n"), victim.index)
    path = region.save(tmp_path / "straddle.bin")
    writes: list[tuple[int, bytes]] = []
    real_write = Device.write

    def write(self: Device, offset: int, data: bytes) -> None:
        writes.append((offset, data))
        real_write(self, offset, data)

    with closing(open_image(path, layout)) as store:
        Device.write = write  # type: ignore[method-assign]
        try:
            store.erase(store.find(f"dmesg-ramoops-{victim.index}"))
        finally:
            Device.write = real_write  # type: ignore[method-assign]
    assert writes == [(victim.offset + 8, bytes(4)), (victim.offset + 4, bytes(4))]


# -- layout detection ---------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES, ids=case_id)
@pytest.mark.parametrize("given", ["", "record_size", "record_size,ecc"])
def test_layout_detected(case: Case, given: str) -> None:
    keep = {key: getattr(config(case), key) for key in given.split(",") if key}
    cfg = StoreConfig(backend="auto", system_map=config(case).system_map, **keep)
    with closing(open_store(str(case.image), cfg)) as store:
        assert files(store) == case.files
        assert store.layout().as_dict()["mount_options"].startswith(case.meta["mount_options"])
        assert store.layout().as_dict()["assumed"] == []


def test_detects_cpus_ecc_and_a_console_after_the_dmesg_zones(tmp_path: Path) -> None:
    layout = RamoopsGeometry(131072, 16384, 16384, 16384, 16384, ecc_size=32, nr_cpus=4)
    region = Region(layout)
    region.record(dmesg(OOPS), 1)
    region.write(PstoreType.CONSOLE, b"console text\n")
    path = region.save(tmp_path / "cpus.bin")
    found = ramoops_store.detect_layout(lambda o, n: path.read_bytes()[o:o + n], 131072)
    assert found == layout


@pytest.mark.parametrize("last", ["empty", "dmesg", "console text"])
def test_console_or_last_dmesg_zone(last: str, tmp_path: Path) -> None:
    """A console zone and one more dmesg zone start at the same place when the sizes
    are equal: what it holds decides, and an empty one changes no file."""
    with_console = RamoopsGeometry(65536, 8192, 8192, 8192, 8192)
    without = RamoopsGeometry(65536, 8192, 0, 8192, 8192)
    region = Region(without if last == "dmesg" else with_console)
    if last == "dmesg":
        region.record(dmesg(OOPS), 5)
    elif last == "console text":
        region.write(PstoreType.CONSOLE, b"console text\n")
    path = region.save(tmp_path / "last.bin")
    data = path.read_bytes()
    found = ramoops_store.detect_layout(lambda o, n: data[o:o + n], len(data))
    assert found == (without if last == "dmesg" else with_console)


def test_nothing_to_detect_falls_back_to_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "zeros.bin"
    path.write_bytes(bytes(65536))
    with closing(open_store(str(path), StoreConfig(backend="ramoops"))) as store:
        assert store.records == []
        assert store.layout().as_dict()["record_size"] == 4096
        assert "defaults assumed" in store.layout().as_dict()["assumed"][0]
    assert path.read_bytes() == bytes(65536)


def test_big_endian_writer(tmp_path: Path) -> None:
    """A big-endian kernel writes the same region with its headers byte-swapped."""
    case = next(c for c in CASES if c.id == "ramoops-plain")
    image = bytearray(case.image.read_bytes())
    for span in layout_of(case).zones():
        words = struct.unpack_from("<III", image, span.offset)
        struct.pack_into(">III", image, span.offset, *words)
    path = tmp_path / "be.bin"
    path.write_bytes(image)
    assert ramoops_store.recognizes(lambda o, n: image[o:o + n], len(image))
    with closing(open_store(str(path), StoreConfig(backend="auto"))) as store:
        assert files(store) == case.files
        assert store.layout().as_dict()["abi"] == "be64"
        store.erase(store.records[0])
    assert path.read_bytes()[:12] == struct.pack(">III", PERSISTENT_RAM_SIG, 0, 0)


def test_ftrace_of_a_32_bit_writer_with_a_sign_extended_map(tmp_path: Path) -> None:
    """A mipsel kernel's map lists `ffffffff801291bc T raise_softirq` (binutils keeps
    MIPS32 addresses sign-extended); its records hold 32-bit `801291d4`."""
    system_map = tmp_path / "System.map"
    system_map.write_text("ffffffff80100000 T _stext\nffffffff801291bc T raise_softirq\n"
                          "ffffffff80129210 T __raise_softirq_irqoff\n"
                          "ffffffff80173ed0 T update_process_times\n"
                          "ffffffff80173f68 t process_timeout\nffffffff806d7f20 T _etext\n")
    layout = RamoopsGeometry(65536, 8192, 8192, 8192, 8192)
    region = Region(layout)
    region.write(PstoreType.FTRACE, struct.pack("<IIQ", 0x801291D4, 0x80173F2C, 2486358 << 8))
    with closing(open_image(region.save(tmp_path / "mipsel.bin"), layout, abi="mipsel",
                            system_map=str(system_map))) as store:
        text = files(store)["ftrace-ramoops-0"]
    assert text == (b"CPU:0 ts:2486358 801291d4  80173f2c  "
                    b"raise_softirq <- update_process_times+0x5c/0x98\n")
