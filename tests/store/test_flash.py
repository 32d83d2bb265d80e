"""Flash back ends in the store: mtdoops pages and mtdpstore's erase blocks, on images.

The oracle is the kernel-written cases in tests/data/fixtures-backends (mtdoops on a
Linux 6.1 kernel, mtdpstore on a 6.1.192 build, see their README.md). States the
cases lack (several pages a block, wrapped `seq`, v1 headers, big-endian writers,
hostile pages) are built with `mtdoops_page` (tests/helpers/flash.py), a test-only page
builder that follows `mtdoops_write` and is pinned to the kernel by rebuilding the
case's image with it. MTD devices: test_flash_mtd.py.
"""

from __future__ import annotations

import shutil
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers.cases import FIXTURES, Case
from helpers.flash import (
    BACKEND_FIXTURES,
    BLOCK,
    FLASH_CASES,
    MTDOOPS,
    MTDPSTORE,
    PAGE,
    T0,
    erased_pages,
    flash_image,
    mtdoops_page,
    sha,
    text,
    write,
)
from pstorefs.cli.options import parse_options
from pstorefs.errors import GeometryError, ReadOnlyError, UsageError, ZoneChangedError
from pstorefs.format.mtdoops import MTDOOPS_KERNMSG_MAGIC_v2
from pstorefs.store import Store, open_store
from pstorefs.store import mtdoops as mtdoops_store
from pstorefs.store.device import Device

OPTS = f"backend=mtdoops,record_size={PAGE},erasesize={BLOCK}"


def test_cases_are_here() -> None:
    assert [c.id for c in FLASH_CASES] == ["mtdoops-4k-pages", "mtdpstore-erase128k",
                                           "mtdpstore-erase64k"]


# -- test-only writer ---------------------------------------------------------------
@contextmanager
def store(path: Path, options: str) -> Iterator[Store]:
    s = open_store(str(path), parse_options([options]).store)
    try:
        yield s
    finally:
        s.close()


def listing(path: Path, options: str) -> dict[str, bytes]:
    with store(path, options) as s:
        return {s.entry(r).name: s.read(r) for r in s.records}


def test_page_builder_rebuilds_the_kernel_image() -> None:
    """The builder is what mtdoops_write wrote: the case's three pages, rebuilt from
    the kernel's text, seq and timestamp, give its image byte for byte."""
    pages = {i: mtdoops_page(f["seq"], (MTDOOPS.dir / "files" / f["name"]).read_bytes(),
                             timestamp=f["mtime_ns"])
             for i, f in enumerate(MTDOOPS.meta["files"])}
    assert flash_image(pages) == MTDOOPS.image.read_bytes()


# -- the kernel-written cases ----------------------------------------------------------
@pytest.mark.parametrize("case", FLASH_CASES, ids=lambda c: c.id)
def test_case_files_byte_identical(case: Case) -> None:
    with store(case.image, case.options + ",ro") as s:
        entries = [s.entry(r) for r in s.records]
        assert [e.name for e in entries] == [f["name"] for f in case.meta["files"]]
        for record, entry, want in zip(s.records, entries, case.meta["files"], strict=True):
            assert s.read(record) == case.files[want["name"]]
            assert entry.size == want["size"]
            assert entry.time_ns == want["mtime_ns"]


def test_mtdoops_attributes_and_order() -> None:
    with store(MTDOOPS.image, MTDOOPS.options) as s:
        attrs = [s.attributes(r) for r in s.records]
        layout = s.layout().as_dict()
    assert attrs == [{"seq": str(f["seq"]), "zone_offset": str(i * PAGE),
                      "zone_size": str(PAGE), "time_ns": str(f["mtime_ns"])}
                     for i, f in enumerate(MTDOOPS.meta["files"])]
    assert layout["backend"] == "mtdoops"
    assert layout["mount_options"] == MTDOOPS.meta["mount_options"]


def test_nothing_written_on_reading(tmp_path: Path) -> None:
    for case in FLASH_CASES:
        img = tmp_path / f"{case.id}.img"
        shutil.copyfile(case.image, img)
        before = sha(img)
        with store(img, case.options) as s:
            for r in s.records:
                s.read(r)
                s.attributes(r)
            s.find("dmesg-mtdoops-7")
        assert sha(img) == before, case.id


@pytest.mark.parametrize("case", MTDPSTORE, ids=lambda c: c.id)
def test_mtdpstore_erase_byte_identical(case: Case, tmp_path: Path) -> None:
    """rm = the zone's erase block to 0xFF; with 128 KiB blocks the other zone of the
    block is written back (the kernel lost it; the case's after-image has it restored)."""
    img = tmp_path / "image.bin"
    shutil.copyfile(case.file(case.meta["erase"]["image_before"]), img)
    with store(img, case.options) as s:
        for name in case.meta["erase"]["remove"]:
            record = s.find(name)
            assert record is not None
            s.erase(record)
    assert img.read_bytes() == (case.file(case.meta["erase"]["image_after"])).read_bytes()
    assert sorted(listing(img, case.options)) == case.meta["erase"]["names_after"]


# -- recognizing mtdoops -----------------------------------------------------------------
def _recognizes(path: Path) -> bool:
    data = path.read_bytes()
    return mtdoops_store.recognizes(lambda off, n: data[off:off + n], len(data))


def test_recognizes_mtdoops_and_nothing_else() -> None:
    assert _recognizes(MTDOOPS.image)
    others = sorted(p for root in (FIXTURES, BACKEND_FIXTURES) for p in root.glob("*/image*.bin")
                    if not p.parent.name.startswith("mtdoops"))
    assert len(others) >= 20
    assert [p for p in others if _recognizes(p)] == []


def test_recognizes_when_the_first_block_was_erased_ahead(tmp_path: Path) -> None:
    """After a wrap mtdoops erases the block after the newest page ahead of time: page
    0 is then blank and the records start in block 1."""
    img = write(tmp_path, flash_image({16 + i: mtdoops_page(5 + i, text(i)) for i in range(3)}))
    assert _recognizes(img)
    assert list(listing(img, OPTS)) == ["dmesg-mtdoops-16", "dmesg-mtdoops-17",
                                        "dmesg-mtdoops-18"]


@pytest.mark.parametrize("page", [
    b"\xff" * PAGE,
    bytes(PAGE),
    mtdoops_page(0xFFFFFFFF, text(1)),  # seq of an erased page
    mtdoops_page(1, text(1))[:PAGE - 40] + b"not fill" * 5,  # bytes after the NUL
    mtdoops_page(1, text(1), magic=0x5D005F00),
], ids=["erased", "zeros", "erased-seq", "garbage-after-nul", "unknown-magic"])
def test_not_recognized(page: bytes, tmp_path: Path) -> None:
    assert not _recognizes(write(tmp_path, flash_image({0: page})))


def test_auto_detects_mtdoops(tmp_path: Path) -> None:
    img = write(tmp_path, MTDOOPS.image.read_bytes())
    with store(img, f"erasesize={BLOCK}") as s:
        assert s.layout().as_dict()["backend"] == "mtdoops"


# -- pages the case does not have -----------------------------------------------------------
def test_seq_order_across_the_wrap(tmp_path: Path) -> None:
    """`nextcount` wraps from 0xfffffffe to 0: pages 3, 4 were written before 0, 1."""
    seqs = {0: 0, 1: 1, 3: 0xFFFFFFFD, 4: 0xFFFFFFFE, 9: 0xFFFFFFFC}
    img = write(tmp_path, flash_image({p: mtdoops_page(s, text(p)) for p, s in seqs.items()}))
    with store(img, OPTS) as s:
        assert [r.id for r in s.records] == [9, 3, 4, 0, 1]
        assert [s.attributes(r)["seq"] for r in s.records] == [
            str(seqs[p]) for p in (9, 3, 4, 0, 1)]


def test_v1_header(tmp_path: Path) -> None:
    """v1: 8-byte header, no timestamp: the text starts at +8 and the mtime is the
    mount's; pre-5.10 kernels wrote no NUL, the text ends at the 0xFF fill."""
    img = write(tmp_path, flash_image({0: mtdoops_page(1, text(1), timestamp=None),
                                       1: mtdoops_page(2, text(2), timestamp=None, nul=False)}))
    with store(img, OPTS) as s:
        assert [s.read(r) for r in s.records] == [text(1), text(2)]
        assert [s.entry(r).time_ns for r in s.records] == [None, None]
        assert "time_ns" not in s.attributes(s.records[0])


def test_big_endian_writer(tmp_path: Path) -> None:
    img = write(tmp_path, flash_image({0: mtdoops_page(7, text(0), little=False),
                                       1: mtdoops_page(8, text(1), little=False)}))
    assert _recognizes(img)
    with store(img, OPTS) as s:
        assert [s.attributes(r)["seq"] for r in s.records] == ["7", "8"]
        assert [s.entry(r).time_ns for r in s.records] == [T0, T0]
        assert s.layout().as_dict()["little_endian"] is False


def test_name_option_and_find(tmp_path: Path) -> None:
    img = write(tmp_path, flash_image({2: mtdoops_page(1, text(2))}))
    with store(img, OPTS + ",name=oops") as s:
        assert [s.entry(r).name for r in s.records] == ["dmesg-oops-2"]
        assert s.find("dmesg-oops-2") is s.records[0]
        for name in ("dmesg-oops-02", "dmesg-oops-3", "dmesg-mtdoops-2", "dmesg-oops-2.enc.z"):
            assert s.find(name) is None


class _CountedList(list):
    """A store's records, counting the passes over them."""

    passes = 0

    def __iter__(self):
        type(self).passes += 1
        return super().__iter__()


def test_lookups_do_not_search_the_records(tmp_path: Path) -> None:
    """A lookup by name, and what is known of a record, are found by key (dicts built
    in one pass), not by a search of the records: one pass each, however many lookups."""
    pages = 1024
    img = write(tmp_path, flash_image({n: mtdoops_page(n, text(n % 8)) for n in range(pages)},
                                      pages * PAGE))
    with store(img, OPTS) as s:
        names = [s.entry(r).name for r in s.records]  # decoded once, before counting
        s._records = _CountedList(s.records)
        for name in names:
            record = s.locate(name)
            assert record is not None and s.find(name) is record
            assert s.entry(record, wait=False) is not None
        assert s.locate("dmesg-mtdoops-1024") is None
        assert _CountedList.passes <= 1

# -- hostile pages ----------------------------------------------------------------------------
def test_hostile_pages_show_only_what_is_sound(tmp_path: Path) -> None:
    full = b"x" * (PAGE - 16)
    pages = {
        0: mtdoops_page(1, text(0)),
        1: mtdoops_page(2, text(1), magic=0x12345678),  # bad magic: not a record
        2: mtdoops_page(3, full, nul=False),  # no NUL, no fill: the whole page is text
        3: mtdoops_page(4, text(3), timestamp=-5),  # a clock before 1970: mount time
        4: b"\0" * PAGE,
    }
    img = write(tmp_path, flash_image(pages))
    with store(img, OPTS) as s:
        assert [r.id for r in s.records] == [0, 2, 3]
        assert [s.read(r) for r in s.records] == [text(0), full, text(3)]
        assert [s.entry(r).time_ns for r in s.records] == [T0, T0, None]


def test_truncated_image(tmp_path: Path) -> None:
    """An image cut inside page 2: the whole pages are read, the cut one is not (as
    `oops_pages = size / record_size`), and an erase stays inside the image."""
    pages = {i: mtdoops_page(i + 1, text(i)) for i in range(3)}
    img = write(tmp_path, flash_image(pages, size=BLOCK)[:2 * PAGE + 100])
    before = img.read_bytes()
    with store(img, OPTS) as s:
        assert [r.id for r in s.records] == [0, 1]
        s.erase(s.records[1])
    after = img.read_bytes()
    assert len(after) == len(before)
    assert after == before[:PAGE] + b"\xff" * PAGE + before[2 * PAGE:]


def test_image_smaller_than_a_page(tmp_path: Path) -> None:
    img = write(tmp_path, mtdoops_page(1, text(0))[:1000])
    with store(img, OPTS) as s:
        assert s.records == []


@given(st.lists(st.binary(min_size=16, max_size=64), min_size=4, max_size=4))
@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_random_headers_never_crash(tmp_path: Path, heads: list[bytes]) -> None:
    magic = struct.pack("<I", MTDOOPS_KERNMSG_MAGIC_v2)
    pages = {i: (h[:4] + magic + h[8:] if i % 2 else h).ljust(PAGE, b"\xff")
             for i, h in enumerate(heads)}
    img = write(tmp_path, flash_image(pages, size=4 * PAGE), "fuzz.img")
    with store(img, OPTS) as s:
        for r in s.records:
            assert len(s.read(r)) <= PAGE - 8
            s.attributes(r)


def test_erasesize_not_a_multiple_of_record_size(tmp_path: Path) -> None:
    img = write(tmp_path, MTDOOPS.image.read_bytes())
    for erasesize in (6144, 2048):
        with pytest.raises(GeometryError, match=f"erasesize={erasesize}"):
            open_store(str(img), parse_options([f"backend=mtdoops,erasesize={erasesize}"]).store)


def test_erasesize_missing(tmp_path: Path) -> None:
    """Without erasesize= an image cannot be erased as flash: a writable open is
    refused in one line naming the option; a read-only one needs none."""
    img = write(tmp_path, MTDOOPS.image.read_bytes())
    with pytest.raises(GeometryError, match="erasesize=") as refused:
        open_store(str(img), parse_options(["backend=mtdoops"]).store)
    assert "\n" not in str(refused.value)
    assert len(listing(img, "backend=mtdoops,ro")) == 3


@pytest.mark.parametrize("size", [1000, 6000, 2048])
def test_record_size_must_be_a_multiple_of_4096(size: int, tmp_path: Path) -> None:
    img = write(tmp_path, MTDOOPS.image.read_bytes())
    with pytest.raises(UsageError, match=f"record_size={size}"):
        open_store(str(img), parse_options([f"backend=mtdoops,record_size={size},ro"]).store)


# -- erase -----------------------------------------------------------------------------------
@pytest.mark.parametrize("erasesize", [PAGE, 2 * PAGE, BLOCK, 4 * BLOCK])
def test_erase_keeps_the_other_pages_of_the_block(erasesize: int, tmp_path: Path) -> None:
    pages = {i: mtdoops_page(i + 1, text(i)) for i in (0, 1, 2, 3, 15, 16, 17)}
    original = flash_image(pages)
    img = write(tmp_path, original)
    options = f"backend=mtdoops,erasesize={erasesize}"
    with store(img, options) as s:
        for page in (2, 16):
            s.erase(next(r for r in s.records if r.id == page))
    assert img.read_bytes() == erased_pages(original, 2, 16)
    assert [n.rsplit("-", 1)[1] for n in listing(img, options)] == ["0", "1", "3", "15", "17"]


def test_erase_on_an_image_writes_the_page_alone(tmp_path: Path, monkeypatch) -> None:
    """An image takes any write: 0xFF over the removed page alone, synced, leaves the
    block as an erase and a write-back would, with no moment when page 1 exists nowhere
    (a real MTD device erases the block and writes page 1 back: test_mtd_* below)."""
    img = write(tmp_path, flash_image({0: mtdoops_page(1, text(0)),
                                       1: mtdoops_page(2, text(1))}))
    calls: list[tuple[str, int, int]] = []
    real_write, real_sync = Device.write, Device.sync
    monkeypatch.setattr(Device, "write", lambda self, off, data: (
        calls.append(("write", off, len(data))), real_write(self, off, data))[1])
    monkeypatch.setattr(Device, "sync", lambda self: (calls.append(("sync", 0, 0)),
                                                      real_sync(self))[1])
    with store(img, OPTS) as s:
        s.erase(s.records[0])
    assert calls == [("write", 0, PAGE), ("sync", 0, 0)]


def test_erase_refused_when_the_page_changed(tmp_path: Path) -> None:
    img = write(tmp_path, flash_image({0: mtdoops_page(1, text(0)),
                                       1: mtdoops_page(2, text(1))}))
    with store(img, OPTS) as s:
        record = s.records[0]
        with open(img, "r+b") as fh:  # another writer: mtdoops wrote page 0 anew
            fh.write(mtdoops_page(9, text(5)))
        changed = sha(img)
        with pytest.raises(ZoneChangedError):
            s.erase(record)
    assert sha(img) == changed


def test_erase_refused_read_only(tmp_path: Path) -> None:
    img = write(tmp_path, MTDOOPS.image.read_bytes())
    with store(img, OPTS + ",ro") as s:
        with pytest.raises(ReadOnlyError):
            s.erase(s.records[0])
    assert img.read_bytes() == MTDOOPS.image.read_bytes()


def test_recognizing_parses_only_pages_with_a_magic(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whether a source is mtdoops' is asked of every source opened with backend=auto:
    a page's header is parsed only where a magic is, so a pstore/blk partition's 256
    pages cost 256 short reads and no parse (the fuzz run found 55 ms of construct
    parses per auto-detected open)."""
    import pstorefs.store.mtdoops.store as mtdoops_module

    calls: list[int] = []
    real = mtdoops_module.parse_page_header

    def counting(raw: bytes, offset: int, little_endian: bool):
        calls.append(offset)
        return real(raw, offset, little_endian)

    monkeypatch.setattr(mtdoops_module, "parse_page_header", counting)
    zone = (FIXTURES / "kmsg-plain-3oops" / "image.bin").read_bytes()
    assert not mtdoops_module.recognizes(lambda at, n: zone[at:at + n], len(zone))
    assert calls == []
    flash = MTDOOPS.image.read_bytes()
    assert mtdoops_module.recognizes(lambda at, n: flash[at:at + n], len(flash))
    assert calls and all(flash[at + 4:at + 8] in (b"\x00\x5d\x00\x5d", b"\x00\x5e\x00\x5d")
                         for at in calls)
