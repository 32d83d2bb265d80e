"""Layout detection (pstorefs/store/zone/ detect, scan, infer, fronts) on the kernel's
images and on hostile ones: with no size option, the layout comes from the partition
itself, and it must show exactly what the true options show.

The oracle is twofold: the kernel's own files for its images (tests/data/fixtures), and
for images the test writer makes (tests/helpers/zone_writer.py, pinned to the kernel),
the store opened with the options the writer used. "The same" means the same file names,
the same bytes, and the same zones behind each record (`Record.zones` offsets: where
`rm` writes). Where detection takes a default (`Detection.assumed`), that must still
hold. Where it refuses, the message names the option that settles it, and nothing is
ever written. Layouts the writer makes: test_zone_detect_writer.py; the blkoops RFC
format: test_zone_detect_blkoops.py; `pstorectl probe`: tests/cli.
"""

from __future__ import annotations

import dataclasses
import struct
from contextlib import closing
from pathlib import Path

import pytest

from helpers.cases import (
    BACKEND_CASES,
    CASES,
    ERASE_CASES,
    Case,
    case_by_id,
    expected_after_erase,
    zone_layout,
)
from helpers.detect import (
    DETECTED,
    KIB,
    MIB,
    PAST_CAP_ALONE,
    Layout,
    case_config,
    case_geometry,
    check_detected,
    fill_ring,
    oops_text,
    opened,
    past_cap_alone,
    reader,
    records,
    refused,
    save,
    sha,
    snapshot,
    stale_smaller_zones,
    trace,
    wrap_ring,
    write_sparse,
    zone_header,
)
from helpers.zone_writer import HEADER, ZoneWriter
from pstorefs.errors import UsageError
from pstorefs.format.abi import BE64, X86_64
from pstorefs.format.consts import PSZ_SIG, PstoreType
from pstorefs.store import StoreConfig, open_store
from pstorefs.store.device import Device
from pstorefs.store.zone.infer import Detection, infer_layout
from pstorefs.store.zone.layout import SZ_128M, Geometry
from pstorefs.store.zone.scan import scan
from pstorefs.store.zone.store import find_layout


# == 1. the kernel's images, the options removed ===========================================
def detected_config(case: Case) -> StoreConfig:
    """Only what is not the layout: the name, and the System.map for ftrace."""
    cfg = case_config(case)
    return StoreConfig(name=cfg.name, read_only=True, system_map=cfg.system_map)


FIXTURE_IMAGES = [(case, name) for case in CASES
                  for name in ("image.bin", "image-before-erase.bin", "image-after-erase.bin")
                  if name in case.images]


def fixture_id(param: object) -> str:
    return param.id if isinstance(param, Case) else str(param).removesuffix(".bin")


@pytest.mark.parametrize(("case", "image"), FIXTURE_IMAGES, ids=fixture_id)
def test_fixture_detected_as_with_the_options(case: Case, image: str) -> None:
    path = case.file(image)
    before = sha(path)
    got, geometry, _ = opened(path, detected_config(case))
    want, _, _ = opened(path, case_config(case))
    assert geometry == case_geometry(case)
    assert got == want
    if image == "image.bin":
        assert {name: body for name, (body, _) in got.items()} == case.files
    assert sha(path) == before


@pytest.mark.parametrize(("case", "image"), [(c, n) for c, n in FIXTURE_IMAGES if c.capped],
                         ids=fixture_id)
def test_fixture_infer_layout(case: Case, image: str) -> None:
    """`scan` finds headers only at the case's zone starts, of the zone's type, and
    `infer_layout` gives the case's options back. A 5.8-5.10 writer's zones past the
    128 MiB cap are detection's later step (`uncap`), which the test above covers."""
    data = (case.file(image)).read_bytes()
    hits = scan(reader(data), len(data))
    starts = {z.offset: z.type for z in zone_layout(case, len(data))}
    assert all(starts.get(h.offset) == h.type.file_prefix for h in hits), hits
    assert [h.offset for h in hits] == sorted(h.offset for h in hits)
    found = infer_layout(hits, len(data))
    assert isinstance(found, Detection)
    assert found.geometry == case_geometry(case)
    if len([h for h in hits if h.type is PstoreType.DMESG]) >= 2:
        assert not any("kmsg_size" in note for note in found.assumed)


@pytest.mark.parametrize("case", ERASE_CASES, ids=lambda c: c.id)
def test_fixture_erase_on_the_detected_layout(case: Case, tmp_path: Path) -> None:
    """rm on the detected layout writes what the kernel's rm wrote (with pstorefs'
    planned ftrace deviation), and the image then still detects the same."""
    erase = case.meta["erase"]
    path = save((case.file(erase["image_before"])).read_bytes(), tmp_path)
    config = dataclasses.replace(detected_config(case), read_only=False)
    with closing(open_store(str(path), config)) as store:
        for name in erase["remove"]:
            record = store.find(name.replace("-pstore_blk-", f"-{config.name}-"))
            assert record is not None, name
            store.erase(record)
    assert path.read_bytes() == expected_after_erase(case)
    _, geometry, _ = opened(path, detected_config(case))
    assert geometry == case_geometry(case)


def test_fixture_assumptions_are_said() -> None:
    """One record: the zone size is the kernel's default, and the note says so; an
    unused partition likewise; all fronts written: nothing assumed."""
    for case_id, note in (("kmsg-oops-then-panic", "kmsg_size=64 taken"),
                          ("empty-partition", "kmsg_size=64 taken")):
        _, _, assumed = opened(case_by_id(case_id).image, DETECTED)
        assert any(note in a for a in assumed), assumed
    data = case_by_id("x86_64-all-fronts-wrapped").image.read_bytes()
    assert infer_layout(scan(reader(data), len(data)), len(data)).assumed == ()


def test_explicit_options_win() -> None:
    """One size option and the rest are the kernel's "off": no detection at all."""
    case = case_by_id("x86_64-all-fronts")
    cfg = StoreConfig(kmsg_size=64, read_only=True)
    with closing(open_store(str(case.image), cfg)) as store:
        assert store.geometry == Geometry(kmsg_size=64 * KIB)  # type: ignore[attr-defined]
        assert not any("taken" in note for note in store.assumed)  # type: ignore[attr-defined]
    cfg = StoreConfig(kmsg_size=32, read_only=True)
    with closing(open_store(str(case_by_id("kmsg-plain-3oops").image), cfg)) as store:
        assert store.geometry.kmsg_size == 32 * KIB  # type: ignore[attr-defined]


# == 3. refusals ===========================================================================
@pytest.mark.parametrize("first_size", [30 * KIB, 1000], ids=["long", "short"])
def test_stale_headers_of_another_kmsg_size(tmp_path: Path, first_size: int) -> None:
    path = stale_smaller_zones(tmp_path, first_size)
    message = refused(path)
    assert "kmsg_size=" in message
    # either size shows a different set of files: the option settles it
    big, _, _ = opened(path, StoreConfig(kmsg_size=64, read_only=True))
    small, _, _ = opened(path, StoreConfig(kmsg_size=4, read_only=True))
    assert sorted(big) != sorted(small)


def test_gap_in_the_dmesg_run(tmp_path: Path) -> None:
    """64 KiB zones written (8 records), then 16 KiB zones (2 records): headers at 0,
    16 KiB and 64 KiB, which no round-robin run of one zone size gives."""
    old = ZoneWriter(X86_64, 1 * MIB, kmsg_size=64 * KIB)
    records(old, 8)
    new = ZoneWriter(X86_64, 1 * MIB, kmsg_size=16 * KIB)
    records(new, 2, first=20)
    image = bytearray(old.image)
    image[:32 * KIB] = new.image[:32 * KIB]
    path = save(image, tmp_path)
    message = refused(path)
    assert "kmsg_size=" in message and "round-robin" in message
    with closing(open_store(str(path), StoreConfig(kmsg_size=16, read_only=True))) as store:
        assert len(store.records) == 2 + 7  # the 64 KiB headers at 16 KiB multiples


def test_pmsg_header_not_at_zero(tmp_path: Path) -> None:
    w = ZoneWriter(X86_64, 256 * KIB, kmsg_size=8 * KIB, pmsg_size=16 * KIB)
    records(w, 2)
    w.put(8 * KIB, zone_header(X86_64, PstoreType.PMSG, 10, 10) + b"0123456789")
    assert "give the sizes" in refused(save(w, tmp_path))


def test_ring_header_after_the_dmesg_zones(tmp_path: Path) -> None:
    w = ZoneWriter(X86_64, 256 * KIB, kmsg_size=16 * KIB)
    records(w, 1)
    w.put(48 * KIB, zone_header(X86_64, PstoreType.CONSOLE, 10, 10) + b"0123456789")
    message = refused(save(w, tmp_path))
    assert "give the sizes" in message and "console" in message


def test_both_byte_orders(tmp_path: Path) -> None:
    w = ZoneWriter(X86_64, 256 * KIB, kmsg_size=16 * KIB)
    records(w, 1)
    be = ZoneWriter(BE64, 256 * KIB, kmsg_size=16 * KIB)
    records(be, 2)
    w.put(16 * KIB, bytes(be.image[16 * KIB:32 * KIB]))
    message = refused(save(w, tmp_path))
    assert "abi=" in message and "give the layout options" in message


@pytest.mark.parametrize("bad", ["two-pmsg", "ftrace-before-console", "wrapped-pmsg-short",
                                 "console-off-4k", "ftrace-off-grid"])
def test_front_areas_no_kernel_layout_fits(tmp_path: Path, bad: str) -> None:
    w = ZoneWriter(X86_64, 256 * KIB, kmsg_size=8 * KIB, pmsg_size=8 * KIB,
                   console_size=8 * KIB, ftrace_size=16 * KIB, nr_cpus=2)
    assert w.pmsg is not None and w.console is not None
    fill_ring(w.pmsg, 100)
    fill_ring(w.console, 100)
    trace(w, [0, 1], 5)
    records(w, 2)
    if bad == "two-pmsg":
        w.put(4 * KIB, zone_header(X86_64, PstoreType.PMSG, 4, 4) + b"abcd")
    elif bad == "ftrace-before-console":
        w.put(4 * KIB, zone_header(X86_64, PstoreType.FTRACE, 0, 0))
    elif bad == "wrapped-pmsg-short":  # a wrapped 4 KiB ring right before a console at 8 KiB
        w.put(0, zone_header(X86_64, PstoreType.PMSG, 4096 - HEADER, 7))
    elif bad == "console-off-4k":
        w.put(8 * KIB, bytes(12))
        w.put(10 * KIB, zone_header(X86_64, PstoreType.CONSOLE, 100, 100))
    else:  # a third ftrace header at neither CPU's start
        w.put(16 * KIB + 5000, zone_header(X86_64, PstoreType.FTRACE, 24, 24) + bytes(24))
    assert "give" in refused(save(w, tmp_path))


def test_nothing_written_on_any_open(tmp_path: Path) -> None:
    """Every open above is hashed; this one opens a fixture copy writable, detected,
    listed and read whole."""
    case = case_by_id("x86_64-all-fronts")
    path = save(case.image.read_bytes(), tmp_path)
    before = sha(path)
    with closing(open_store(str(path), StoreConfig(system_map=case_config(case).system_map))
                 ) as store:
        assert not store.read_only
        snapshot(store)
    assert sha(path) == before


# == 4. the 128 MiB cap and the unused tail =================================================


def dmesg_zone(n: int, kmsg: int = 64 * KIB) -> bytes:
    w = ZoneWriter(X86_64, kmsg, kmsg_size=kmsg)
    w.dmesg(oops_text(n), time=(1_700_000_000 + n, 0))
    return bytes(w.image)


@pytest.mark.parametrize("past", [0, 64 * KIB], ids=["first-zone-past", "second-zone-past"])
def test_records_past_the_cap(tmp_path: Path, past: int) -> None:
    """A Linux 5.8-5.10 writer used all of a partition over 128 MiB: the zones past the
    cap are read when the first of them holds a dmesg header, and only then."""
    zones = {64 * KIB * n: dmesg_zone(n) for n in range(3)}
    zones[SZ_128M + past] = dmesg_zone(9)
    path = write_sparse(tmp_path / "sparse.bin", SZ_128M + MIB, zones)
    got, geometry, assumed = opened(path, DETECTED)
    want, _, _ = opened(path, StoreConfig(kmsg_size=64, read_only=True))
    assert got == want
    assert geometry.capped is bool(past)
    names = sorted(got)
    if past:
        assert names == [f"dmesg-blkoops-{n}" for n in range(3)]
    else:
        assert got["dmesg-blkoops-2048"][1] == (SZ_128M,)
        assert any("past 128 MiB" in note for note in assumed)


def test_cap_with_fronts(tmp_path: Path) -> None:
    """The zones past the cap continue the dmesg run after the fronts."""
    lay = Layout(SZ_128M, 64 * KIB, pmsg=64 * KIB, console=64 * KIB)
    w = lay.writer()
    assert w.pmsg is not None and w.console is not None
    wrap_ring(w.pmsg)
    fill_ring(w.console, 100)
    records(w, 3)
    zones = {0: bytes(w.image[:320 * KIB]), SZ_128M: dmesg_zone(2046)}
    path = write_sparse(tmp_path / "sparse.bin", SZ_128M + 2 * MIB, zones)
    got, geometry, _ = opened(path, DETECTED)
    assert not geometry.capped and geometry.pmsg_size == geometry.console_size == 64 * KIB
    want, _, _ = opened(path, lay.config())
    assert got == want and got["dmesg-blkoops-2046"][1] == (SZ_128M,)


def test_records_past_the_cap_alone(tmp_path: Path) -> None:
    """The 131068 KiB before the first header are no unused pmsg area (a zone kmalloc
    cannot give): they are dmesg zones from 0, numbered as `kmsg_size=4` numbers them,
    and `rm` erases the zone the kernel would."""
    path = past_cap_alone(tmp_path)
    got, geometry, assumed = opened(path, DETECTED)
    want, _, _ = opened(path, StoreConfig(kmsg_size=4, read_only=True))
    assert got == want
    assert sorted(got) == [f"dmesg-blkoops-{n}" for n in PAST_CAP_ALONE]
    assert got["dmesg-blkoops-32768"][1] == (SZ_128M,)
    assert geometry == Geometry(kmsg_size=4 * KIB, capped=False)
    assert any("dmesg zones from 0 never written" in note for note in assumed)
    assert warnings_of(path, StoreConfig(kmsg_size=4, read_only=True)) == ()  # a run from 32767
    with closing(open_store(str(path), StoreConfig())) as store:
        store.erase(store.find("dmesg-blkoops-32768"))
    with open(path, "rb") as fh:
        fh.seek(SZ_128M + 4)
        assert fh.read(4) == b"\0\0\0\0"  # datalen of zone 32768, and nothing else
    assert sorted(opened(path, DETECTED)[0]) == ["dmesg-blkoops-32767", "dmesg-blkoops-32769"]


def test_lone_record_past_a_large_gap_is_refused(tmp_path: Path) -> None:
    """One header after the gap: zones of 4, 28, 124 ... KiB all put a start under it
    and number it differently, and no next header tells."""
    message = refused(past_cap_alone(tmp_path, (32767,)))
    assert "kmsg_size=" in message and "4 or 28 or 124" in message


@pytest.mark.parametrize("tail", [0, 4 * KIB, 44 * KIB])
def test_unused_tail_after_the_last_zone(tmp_path: Path, tail: int) -> None:
    lay = Layout(21 * 48 * KIB + tail, 48 * KIB)
    w = lay.writer()
    records(w, 3)
    _, geometry, _ = check_detected(save(w, tmp_path), lay, exact=True)
    zones = geometry.zones(lay.size)
    assert len(zones) == 21 and zones[-1].offset + zones[-1].size == 21 * 48 * KIB


def test_header_in_the_tail_is_refused(tmp_path: Path) -> None:
    """The kernel never writes the tail: a header there is another layout's, and with
    two records the scan sees it (with three it stops before)."""
    w = ZoneWriter(X86_64, MIB, kmsg_size=48 * KIB)
    records(w, 2)
    w.put(21 * 48 * KIB, bytes(w.image[:HEADER + 40 + 3000]))
    path = save(w, tmp_path)
    assert "kmsg_size=" in refused(path)
    with closing(open_store(str(path), StoreConfig(kmsg_size=48, read_only=True))) as store:
        assert len(store.records) == 2


# == 5. what detection reads ===============================================================
class CountingDevice:
    """Device-like: what `find_layout` uses (`read`, `next_data`, `size`, `path`),
    counting the reads."""

    def __init__(self, path: Path) -> None:
        self.device = Device(str(path), read_only=True)
        self.path = str(path)
        self.size = self.device.size
        self.next_data = self.device.next_data
        self.reads: list[tuple[int, int]] = []

    def read(self, offset: int, length: int) -> bytes:
        self.reads.append((offset, length))
        return self.device.read(offset, length)

    @property
    def total(self) -> int:
        return sum(length for _, length in self.reads)

    def overlap(self) -> int:
        """Bytes read more than once."""
        covered = 0
        end = 0
        for offset, length in sorted(self.reads):
            covered += max(0, offset + length - max(offset, end))
            end = max(end, offset + length)
        return self.total - covered


def measured(path: Path) -> tuple[Detection, CountingDevice]:
    device = CountingDevice(path)
    try:
        return find_layout(device, DETECTED), device
    finally:
        device.device.close()


@pytest.mark.parametrize("written", [3, 256], ids=["3-records", "all-zones"])
def test_scan_stops_after_a_few_dmesg_headers(tmp_path: Path, written: int) -> None:
    w = ZoneWriter(X86_64, 16 * MIB, kmsg_size=64 * KIB)
    for n in range(written):
        w.dmesg(oops_text(n, 2000))
    found, device = measured(save(w, tmp_path))
    assert found.geometry == Geometry(kmsg_size=64 * KIB)
    assert device.total <= 2 * MIB, device.reads


@pytest.mark.parametrize("fronts", [False, True], ids=["empty", "one-record-and-fronts"])
def test_scan_reads_a_nearly_empty_image_once(tmp_path: Path, fronts: bool) -> None:
    size = 16 * MIB
    if fronts:
        w = ZoneWriter(X86_64, size, kmsg_size=64 * KIB, pmsg_size=64 * KIB,
                       console_size=64 * KIB)
        assert w.pmsg is not None
        fill_ring(w.pmsg, 1000)
        records(w, 1)
        image: bytes | bytearray = w.image
    else:
        image = bytes(size)
    found, device = measured(save(image, tmp_path))
    assert found.assumed
    assert device.total <= size + 16 * len(device.reads)
    assert device.overlap() <= 16 * len(device.reads)


# == what a review found: each was accepted on a guess, or cost far too much =================
def test_damaged_zone_between_two_is_refused(tmp_path: Path) -> None:
    """Zone 1's dmesg magic is gone: its bytes are there, so 128 KiB zones (the spacing
    of the two good headers) would renumber zone 2 as 1. Refused, naming kmsg_size."""
    image = bytearray(case_by_id("kmsg-plain-3oops").image.read_bytes())
    image[64 * KIB + 12] ^= 0xFF
    assert "kmsg_size=" in refused(save(image, tmp_path))


def test_damaged_zone_0_is_refused(tmp_path: Path) -> None:
    """Zone 0's signature is gone but its bytes are there: taking the 64 KiB before the
    first header as an unused area would name every record one off."""
    image = bytearray(case_by_id("kmsg-plain-3oops").image.read_bytes())
    image[0] ^= 0xFF
    assert "give the sizes" in refused(save(image, tmp_path))


@pytest.mark.parametrize("ptype", [PstoreType.PMSG, PstoreType.CONSOLE, PstoreType.FTRACE])
def test_signature_noise_stops_the_scan(tmp_path: Path, ptype: PstoreType) -> None:
    """16 MiB full of ring signatures: the scan stops as soon as they cannot all be the
    kernel's (a second pmsg or console zone; more ftrace zones than CPUs), reading a
    fraction of the image, and a refusal is one short line."""
    noise = (struct.pack("<Iii", PSZ_SIG ^ ptype, 0, 0) + bytes(4)) * (MIB // 16)
    data = noise * 16
    reads: list[int] = []

    def read(offset: int, length: int) -> bytes:
        reads.append(length)
        return data[offset:offset + length]

    hits = scan(read, len(data))
    assert sum(reads) <= 2 * MIB and len(hits) <= 4098
    if ptype is not PstoreType.FTRACE:
        message = refused(save(data, tmp_path))
        assert "\n" not in message and len(message) < 400, message


@pytest.mark.parametrize("image", ["image.bin", "image-after-erase.bin"])
@pytest.mark.parametrize("case_id", ["mtdpstore-erase64k", "mtdpstore-erase128k"])
def test_flash_layout_detected(case_id: str, image: str) -> None:
    """mtdpstore with erasesize= and no size: zeros at a would-be zone start are the
    tail of a zone written whole, which rules the smaller sizes out; after an rm the
    erased zone is 0xFF like an unused one, and the kernel's default is taken, said."""
    case = next(c for c in BACKEND_CASES if c.id == case_id)
    erasesize = int(case.option("erasesize"))
    config = StoreConfig(read_only=True, name="pstore_blk", erasesize=erasesize)
    with closing(open_store(str(case.file(image)), config)) as store:
        assert store.geometry == Geometry(kmsg_size=64 * KIB)
        names = sorted(store.entry(r).name for r in store.records)
        if image == "image.bin":
            assert names == sorted(case.files)
            assert not any("kmsg_size" in note for note in store.assumed)
        else:
            assert names == sorted(case.meta["erase"]["names_after"])


def test_flash_refuses_what_the_default_does_not_settle(tmp_path: Path) -> None:
    """Headers at 0 and 96 KiB on 128 KiB blocks: 32 or 96 KiB zones fit (the zones in
    between erased), the default does not: refused."""
    w = ZoneWriter(X86_64, 256 * KIB, kmsg_size=32 * KIB)
    records(w, 4, 1000)
    image = bytearray(w.image)
    image[32 * KIB:96 * KIB] = b"\xff" * (64 * KIB)
    image[128 * KIB:] = b"\xff" * (128 * KIB)
    path = save(image, tmp_path)
    assert "kmsg_size=" in refused(path, StoreConfig(read_only=True, erasesize=128 * KIB))


def test_options_of_another_back_end_are_refused(tmp_path: Path) -> None:
    path = save(case_by_id("kmsg-plain-3oops").image.read_bytes(), tmp_path)
    for options in ({"record_size": 4096}, {"ecc": 16}):
        with pytest.raises(UsageError, match="not an option of the zone back end"):
            open_store(str(path), StoreConfig(read_only=True, **options))


# == 6. zones kmalloc does not give; sizes given that contradict the headers ================
@pytest.mark.parametrize(("gap", "first"), [(4 * MIB, 0), (8 * MIB, 128)],
                         ids=["unused-pmsg", "dmesg-from-0"])
def test_an_empty_front_is_at_most_a_zone_kmalloc_gives(tmp_path: Path, gap: int,
                                                         first: int) -> None:
    """No header before the dmesg headers: 4 MiB can be an unused pmsg zone, 8 MiB
    cannot (psz_init_zone kmallocs a zone whole: 4 MiB at most with 4 KiB pages), so
    those are dmesg zones from 0, never written."""
    path = write_sparse(tmp_path / "sparse.bin", 16 * MIB,
                        {gap + 64 * KIB * n: dmesg_zone(n) for n in range(3)})
    got, geometry, assumed = opened(path, DETECTED)
    assert sorted(got) == [f"dmesg-blkoops-{first + n}" for n in range(3)]
    assert geometry == Geometry(kmsg_size=64 * KIB, pmsg_size=0 if first else gap)
    want, _, _ = opened(path, StoreConfig(kmsg_size=64, pmsg_size=0 if first else gap // KIB,
                                          read_only=True))
    assert got == want
    assert any(("never written" if first else "unused pmsg") in note for note in assumed)


def warnings_of(path: Path, config: StoreConfig) -> tuple[str, ...]:
    with closing(open_store(str(path), config)) as store:
        return store.layout().warnings


def test_a_layout_needing_a_zone_kmalloc_does_not_give_is_said(tmp_path: Path) -> None:
    """Given or forced by the bytes (a console header 8 MiB in: the pmsg zone before it
    is 8 MiB), it is read as asked, and `warnings` says no 4 KiB-page kernel has it."""
    lay = Layout(16 * MIB, 64 * KIB, pmsg=8 * MIB, console=64 * KIB)
    w = lay.writer()
    assert w.console is not None
    fill_ring(w.console, 500)
    records(w, 2)
    path = save(w, tmp_path)
    for config in (lay.config(), DETECTED):
        warnings = warnings_of(path, config)
        assert len(warnings) == 1
        assert warnings[0].startswith("a pmsg zone of 8192 KiB: more than the 4 MiB kmalloc")
    assert warnings_of(path, StoreConfig(kmsg_size=8192, read_only=True))[0].startswith(
        "dmesg zones of 8192 KiB")


def contradicted(tmp_path: Path, options: dict[str, int], *, pmsg: int = 0
                 ) -> tuple[list[str], tuple[str, ...], list[tuple[int, int]]]:
    """Names, warnings and the reads at open of a 1 MiB partition of 64 KiB dmesg zones
    (after a `pmsg` KiB pmsg area) with three records, opened with `options`."""
    lay = Layout(MIB, 64 * KIB, pmsg=pmsg * KIB)
    w = lay.writer()
    if w.pmsg is not None:
        fill_ring(w.pmsg, 300)
    records(w, 3)
    path = save(w, tmp_path)
    before = sha(path)
    reads: list[tuple[int, int]] = []
    original = Device.read

    def read(self: Device, offset: int, length: int) -> bytes:
        reads.append((offset, length))
        return original(self, offset, length)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Device, "read", read)
        store = open_store(str(path), StoreConfig(**options))  # type: ignore[arg-type]
    with closing(store):
        names = sorted(store.entry(r).name for r in store.records)
        warnings = store.layout().warnings
    assert sha(path) == before  # opened writable: nothing written all the same
    return names, warnings, reads


@pytest.mark.parametrize(("options", "pmsg", "names", "sign", "found"), [
    ({"kmsg_size": 32}, 0, [0, 2, 4], "dmesg zone 1 has no header between written ones",
     "kmsg_size=64,pmsg_size=0,"),
    ({"kmsg_size": 64, "pmsg_size": 64}, 0, [0, 1], "a dmesg header at the pmsg zone's start",
     "kmsg_size=64,pmsg_size=0,"),
    ({"kmsg_size": 64}, 64, [1, 2, 3], "a pmsg header at dmesg zone 0's start",
     "kmsg_size=64,pmsg_size=64,"),
], ids=["kmsg-too-small", "pmsg-given-none-written", "pmsg-written-none-given"])
def test_sizes_that_contradict_the_headers_warn(tmp_path: Path, options: dict[str, int],
                                                pmsg: int, names: list[int], sign: str,
                                                found: str) -> None:
    """Read as given (never refused), with one warning naming what is wrong and the
    sizes detection finds, from the bytes the listing reads anyway: no read at open is
    more than a header's (no scan)."""
    got, warnings, reads = contradicted(tmp_path, options, pmsg=pmsg)
    assert got == [f"dmesg-blkoops-{n}" for n in names]
    assert len(warnings) == 1 and warnings[0].startswith("the sizes given (")
    assert sign in warnings[0] and f"detection finds {found}" in warnings[0]
    assert max(length for _, length in reads) <= 64


@pytest.mark.parametrize("pmsg", [0, 64])
def test_the_writers_sizes_do_not_warn(tmp_path: Path, pmsg: int) -> None:
    names, warnings, _ = contradicted(tmp_path, {"kmsg_size": 64, "pmsg_size": pmsg},
                                      pmsg=pmsg)
    assert len(names) == 3 + bool(pmsg) and warnings == ()


def test_a_pmsg_ring_not_wrapped_is_at_most_a_zone_kmalloc_gives(tmp_path: Path) -> None:
    """6 MiB between a pmsg ring that has not wrapped and the first dmesg header: a
    4 MiB pmsg zone and an unused 2 MiB console area (a 6 MiB pmsg zone no 4 KiB-page
    kernel registers); the files and the erase are those of the writer's options."""
    lay = Layout(16 * MIB, 64 * KIB, pmsg=6 * MIB)
    w = lay.writer()
    assert w.pmsg is not None
    fill_ring(w.pmsg, 1000)
    records(w, 3)
    path = save(w, tmp_path)
    got, geometry, assumed = opened(path, DETECTED)
    assert (geometry.pmsg_size, geometry.console_size) == (4 * MIB, 2 * MIB)
    assert geometry.impossible_zones() == ()
    assert got == opened(path, lay.config())[0]
    assert any("unused console area" in note for note in assumed)


def test_a_dmesg_run_that_wraps_does_not_warn(tmp_path: Path) -> None:
    """Written from zone 14 on (recovery resumed past the newest), through 15, 0 and 1:
    one run round the end, as the kernel's round-robin leaves it."""
    lay = Layout(MIB, 64 * KIB)
    w = lay.writer()
    w.kmsg_write_cnt = 14
    records(w, 4)
    path = save(w, tmp_path)
    assert warnings_of(path, lay.config()) == ()
    w.erase_dmesg(15)  # an erased zone keeps its header: still one run
    path = save(w, tmp_path)
    assert warnings_of(path, lay.config()) == ()
    image = bytearray(w.image)
    image[15 * 64 * KIB:16 * 64 * KIB] = bytes(64 * KIB)  # never written: two runs
    warnings = warnings_of(save(image, tmp_path), lay.config())
    assert len(warnings) == 1 and "dmesg zone 2 has no header between written ones" in warnings[0]
