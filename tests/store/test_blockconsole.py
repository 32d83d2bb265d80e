"""blockconsole in the store: the reader against the test-only writer
(tests/helpers/blockconsole_writer.py).

No kernel ever merged blockconsole and no image one wrote exists, so nothing here is
checked against a kernel: every image is made by a writer that follows the seed's
drivers/block/blockconsole.c function by function, and every expectation is the text
that writer was given, less what its code loses or leaves (said where it does).
"""

from __future__ import annotations

import errno
import random
from contextlib import closing
from pathlib import Path

import pytest

from helpers.blockconsole import UUID, Console, formatted, lines, save
from helpers.blockconsole_writer import (
    BCON_LONG_HEADERSIZE,
    CACHE_MASK,
    CACHE_SIZE,
    SECTOR_SIZE,
    BlockConsole,
)
from helpers.cases import FIXTURES, sha256
from pstorefs.errors import (
    EraseUnsupportedError,
    FormatError,
    GeometryError,
    PstoreError,
    ReadOnlyError,
)
from pstorefs.format.blockconsole import parse_tile_header
from pstorefs.fs import errno_of
from pstorefs.store import Store, StoreConfig, open_store
from pstorefs.store.blockconsole import BlockConsoleStore, recognizes
from pstorefs.store.blockconsole import store as store_module
from pstorefs.store.device import Device

DATA = CACHE_SIZE - BCON_LONG_HEADERSIZE
"""Console bytes one tile holds."""
OTHER_FIXTURES = FIXTURES.parent / "fixtures-backends"  # the copies in tests/data
FOREIGN_IMAGES = sorted(FIXTURES.glob("*/*.bin")) + sorted(OTHER_FIXTURES.glob("*/image.bin"))


def store(path: Path, **options: object) -> Store:
    return open_store(str(path), StoreConfig(backend="blockconsole", **options))  # type: ignore[arg-type]


def shown(path: Path, **options: object) -> bytes:
    """The one file's content, or b"" when nothing is listed."""
    with closing(store(path, **options)) as s:
        if not s.records:
            return b""
        record, = s.records
        assert s.entry(record).size == len(s.read(record))
        return s.read(record)


def attributes(path: Path) -> dict[str, str]:
    with closing(store(path)) as s:
        return s.attributes(s.records[0])


def next_attach(disk: bytearray) -> int:
    """Where the writer's own `bcon_find_end_of_log` would start the next boot (on a
    copy: attaching erases a tile)."""
    return BlockConsole(bytearray(disk)).write_bytes


# -- round trips -----------------------------------------------------------------------
def test_small_log(tmp_path: Path) -> None:
    disk = formatted(4)
    con = Console(disk)
    con.printk(lines(0, 200))
    con.bc.bcon_pad()  # a second of quiet: the partial sector is padded and written
    img = save(disk, tmp_path / "bcon.img")
    assert shown(img) == con.text
    attrs = attributes(img)
    assert attrs["zone_offset"] == str(CACHE_SIZE)  # the first boot starts at tile 1
    assert (attrs["uuid"], attrs["round"]) == (f"{UUID:08x}", "0")
    assert int(attrs["write_offset"]) == next_attach(disk) == 2 * CACHE_SIZE
    with closing(store(img)) as s:
        assert s.entry(s.records[0]).name == "console-blockconsole-0"
        assert s.entry(s.records[0]).time_ns is None  # no time in the format: mount time
        assert s.find("console-blockconsole-0") is s.records[0]
        assert s.find("console-blockconsole-1") is None


def test_partial_last_sector(tmp_path: Path) -> None:
    """A crash before the pad timer: the sector being filled never reaches the device."""
    disk = formatted(2)
    con = Console(disk)
    con.printk(lines(0, 100))
    unwritten = con.bc.bcon_console_ofs()
    assert unwritten and con.bc.bcon_console_sector() > 0
    assert shown(save(disk, tmp_path / "crash.img")) == con.text[:-unwritten]
    con.bc.blockconsole_panic()  # the panic notifier pads and writes it
    assert shown(save(disk, tmp_path / "panic.img")) == con.text


def test_padding_after_a_partial_line_is_kept(tmp_path: Path) -> None:
    disk = formatted(2)
    con = Console(disk)
    con.printk(lines(0, 20) + b"[   21.000000] half a line")
    pad = SECTOR_SIZE - con.bc.bcon_console_ofs()
    con.bc.bcon_pad()
    con.printk(b" and the rest\n")
    con.bc.bcon_pad()
    text = bytes(con.text)
    cut = text.index(b" and the rest")
    assert shown(save(disk, tmp_path / "bcon.img")) == (
        text[:cut] + b" " * (pad - 1) + b"\n" + text[cut:])


def test_wrapping_several_times(tmp_path: Path) -> None:
    disk = formatted(3)
    con = Console(disk)
    n = 0
    while con.bc.round < 3 or con.bc.console_bytes // CACHE_SIZE != 1:
        con.printk(lines(n, 500))
        n += 500
    con.fill_tile()  # tile 1 ends whole: no sectors of the round before are left in it
    img = save(disk, tmp_path / "bcon.img")
    assert shown(img) == con.text[con.starts[2]:]  # tile 2 (previous round), 0, 1
    attrs = attributes(img)
    assert attrs["zone_offset"] == f"{2 * CACHE_SIZE},0,{CACHE_SIZE}"
    assert attrs["round"] == str(int(disk[41:49], 16)) == "3"
    assert int(attrs["write_offset"]) == next_attach(disk) == 2 * CACHE_SIZE


def test_log_filling_every_tile(tmp_path: Path) -> None:
    """Every tile this round's: the log is tiles 0..N-1 and the next boot wraps."""
    disk = formatted(2)
    con = Console(disk)
    while con.bc.round < 2 or con.bc.console_bytes // CACHE_SIZE != 1:
        con.printk(lines(0, 300))
    con.fill_tile()
    img = save(disk, tmp_path / "bcon.img")
    assert shown(img) == con.text[con.starts[0]:]
    assert attributes(img)["zone_offset"] == f"0,{CACHE_SIZE}"
    assert int(attributes(img)["write_offset"]) == next_attach(disk) == 0


def test_boots(tmp_path: Path) -> None:
    """Each boot starts a fresh tile (`bcon_find_end_of_log`), zeroed first."""
    disk = formatted(4)
    first = Console(disk)
    first.printk(lines(0, 300))
    first.bc.bcon_pad()
    second = Console(disk)
    assert second.bc.write_bytes == 2 * CACHE_SIZE
    second.printk(lines(300, 300))
    second.bc.blockconsole_panic()
    img = save(disk, tmp_path / "bcon.img")
    assert shown(img) == first.text + second.text
    assert attributes(img)["zone_offset"] == f"{CACHE_SIZE},{2 * CACHE_SIZE}"


def test_tile_index_field(tmp_path: Path) -> None:
    """The header's tile field is the tile's index where a boot starts, and the
    previous tile's where the log runs on into it (read before it is advanced)."""
    disk = formatted(3)
    con = Console(disk)
    while con.bc.round < 1 or con.bc.console_bytes // CACHE_SIZE != 0:
        con.printk(lines(0, 400))
    con.fill_tile()
    tiles = [parse_tile_header(bytes(disk[t * CACHE_SIZE:][:64]), 0) for t in range(3)]
    assert [(h.round, h.tile) for h in tiles] == [(1, 0), (0, 1), (0, 1)]


def test_previous_round_left_after_the_end_of_a_boot(tmp_path: Path) -> None:
    """The seed's code zeroes only the tile a boot starts in: `bcon_erase_segment`'s
    bios have no `bi_end_io`, so `in_flight` stays set and later erases are skipped.
    A boot ending in a tile the log ran into leaves the previous round's sectors after
    its own; they cannot be told apart, and are shown where they lie."""
    disk = formatted(3)
    con = Console(disk)  # starts at tile 1
    while con.bc.round < 1 or con.bc.console_bytes // CACHE_SIZE != 1:
        con.printk(lines(0, 400))
    con.printk(lines(0, 100))
    con.bc.blockconsole_panic()
    first_unwritten = (con.bc.write_bytes & CACHE_MASK) // SECTOR_SIZE
    old_tile1 = bytes(con.text[:DATA])  # tile 1 in round 0
    stale = old_tile1[first_unwritten * SECTOR_SIZE - BCON_LONG_HEADERSIZE:]
    img = save(disk, tmp_path / "bcon.img")
    assert shown(img) == con.text[con.starts[2]:] + stale
    assert attributes(img)["zone_offset"] == f"{2 * CACHE_SIZE},0,{CACHE_SIZE}"


def test_wrap_drops_the_first_sector_of_tile_0(tmp_path: Path) -> None:
    """One console write across the end of the device: what it put in tile 0's first
    sector is gone when the writeback wraps (`bcon_advance_write_bytes` rebuilds that
    sector with the new round), as the seed's code does."""
    disk = formatted(2)
    con = Console(disk)
    con.printk(lines(0, 2000))
    room = 100
    con.printk(b"#" * (CACHE_SIZE - (con.bc.console_bytes & CACHE_MASK) - room - 1) + b"\n")
    crossing = lines(5000, 40)
    con.bc.bcon_write(crossing)
    con.bc.bcon_pad()
    lost = SECTOR_SIZE - BCON_LONG_HEADERSIZE
    assert shown(save(disk, tmp_path / "bcon.img")) == (
        con.text + crossing[:room] + crossing[room + lost:])


def test_writeback_lagging_behind(tmp_path: Path) -> None:
    """printk fills the cache while the writeback thread is held back; it then writes
    every sector the console has passed."""
    disk = formatted(2)
    con = Console(disk)
    con.bc.stalled = True
    con.printk(lines(0, 1000))
    assert shown(save(disk, tmp_path / "stalled.img")) == b""
    con.bc.stalled = False
    con.bc.bcon_pad()
    assert shown(save(disk, tmp_path / "bcon.img")) == con.text


def test_first_sector_after_attach_keeps_tile0_header_bytes(tmp_path: Path) -> None:
    """`bcon_find_end_of_log` copies tile 0's first 50 bytes into the cache's sector 1,
    which is not cleared before use: padded early, that sector carries them."""
    disk = formatted(2)
    con = Console(disk)
    con.printk(b"a" * (SECTOR_SIZE - BCON_LONG_HEADERSIZE) + b"0123456789")
    con.bc.bcon_pad()
    assert shown(save(disk, tmp_path / "bcon.img")) == con.text + bytes(disk[10:50])


def test_newest_tiles_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                           caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(store_module, "MAX_TILES", 2)
    disk = formatted(4)
    con = Console(disk)
    while con.bc.console_bytes // CACHE_SIZE != 3:
        con.printk(lines(0, 400))
    con.fill_tile()
    img = save(disk, tmp_path / "bcon.img")
    assert shown(img) == con.text[con.starts[2]:]
    with closing(store(img)) as s:
        assert s.layout().as_dict()["assumed"] == ["only the newest 2 of 4 tiles are read"]
    assert "only the newest 2 of 4 tiles are read" in caplog.text


def test_empty_logs(tmp_path: Path) -> None:
    disk = formatted(2)
    assert shown(save(disk, tmp_path / "fresh.img")) == b""
    BlockConsole(disk)  # attached, nothing printed: tile 1 zeroed, no header yet
    img = save(disk, tmp_path / "attached.img")
    assert shown(img) == b""
    with closing(store(img)) as s:
        assert s.layout().as_dict()["records"] == 0
        assert s.find("console-blockconsole-0") is None


def test_name_option(tmp_path: Path) -> None:
    disk = formatted(2)
    Console(disk).printk(lines(0, 50))
    with closing(store(save(disk, tmp_path / "bcon.img"), name="bcon")) as s:
        assert s.entry(s.records[0]).name == "console-bcon-0"


def test_region_of_a_larger_source(tmp_path: Path) -> None:
    disk = formatted(2)
    con = Console(disk)
    con.printk(lines(0, 300))
    con.bc.bcon_pad()
    img = tmp_path / "whole.img"
    img.write_bytes(b"\xa5" * 4096 + disk + b"\x5a" * 4096)
    assert shown(img, offset=4096, size=len(disk)) == con.text


# -- recognizes() ----------------------------------------------------------------------
def test_recognizes_written_image() -> None:
    disk = formatted(1)
    assert recognizes(lambda o, n: bytes(disk[o:o + n]), len(disk))
    assert not recognizes(lambda o, n: bytes(disk[o:o + n]), BCON_LONG_HEADERSIZE - 1)


@pytest.mark.parametrize("image", FOREIGN_IMAGES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_not_recognized(image: Path) -> None:
    data = image.read_bytes()  # not a Device: its flock would race other test runs
    assert not recognizes(lambda offset, length: data[offset:offset + length], len(data))


def test_foreign_images_exist() -> None:
    assert len(FOREIGN_IMAGES) >= 15, FOREIGN_IMAGES


def test_detected_without_options(tmp_path: Path) -> None:
    disk = formatted(2)
    Console(disk).printk(lines(0, 50))
    with closing(open_store(str(save(disk, tmp_path / "bcon.img")), StoreConfig())) as s:
        assert isinstance(s, BlockConsoleStore)
        assert s.layout().as_dict()["backend"] == "blockconsole"


# -- hostile input ---------------------------------------------------------------------
@pytest.mark.parametrize("image", sorted(FIXTURES.glob("*/image.bin")),
                         ids=lambda p: p.parent.name)
def test_foreign_image_refused(image: Path, tmp_path: Path) -> None:
    copy = tmp_path / "image.bin"
    copy.write_bytes(image.read_bytes())
    with pytest.raises(FormatError, match=r"blockconsole 1\.1 tile header at offset 0x0 "):
        store(copy)


@pytest.mark.parametrize("size", [0, 58, 4096, CACHE_SIZE - 1])
def test_smaller_than_a_tile(tmp_path: Path, size: int) -> None:
    img = save(formatted(1)[:size], tmp_path / "short.img")
    with pytest.raises(GeometryError):
        store(img)


def test_bytes_past_the_last_tile_ignored(tmp_path: Path) -> None:
    disk = formatted(2, extra=CACHE_SIZE - 1)
    con = Console(disk)
    assert con.bc.max_bytes == 2 * CACHE_SIZE
    con.printk(lines(0, 300))
    con.bc.bcon_pad()
    disk[2 * CACHE_SIZE:] = disk[:CACHE_SIZE - 1]  # a header where no tile is
    assert shown(save(disk, tmp_path / "bcon.img")) == con.text


def test_foreign_tiles_left_out(tmp_path: Path) -> None:
    """Tiles of another uuid (an earlier mkblockconsole), an older round or no header
    are not the log's; tile 2 below is neither of the two rounds there are."""
    disk = formatted(4)
    con = Console(disk)
    con.printk(lines(0, 300))
    con.bc.bcon_pad()
    for tile, header in ((2, b"\nLinux blockconsole version 1.1\n00000001\n00000000\n"),
                         (3, b"\nLinux blockconsole version 1.1\n5eed0bc1\nfffffffe\n")):
        disk[tile * CACHE_SIZE:tile * CACHE_SIZE + SECTOR_SIZE] = (
            header + b"00000000\n" + b"old text\n" * 50).ljust(SECTOR_SIZE, b" ")
    assert shown(save(disk, tmp_path / "bcon.img")) == con.text


def test_hostile_images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Random damage to a written image: it opens and reads, or fails with one
    PstoreError; no read leaves the device and nothing is written."""
    disk = formatted(3)
    con = Console(disk)
    while con.bc.round < 1 or con.bc.console_bytes // CACHE_SIZE != 1:
        con.printk(lines(0, 400))
    con.printk(lines(0, 50))
    reads: list[tuple[int, int, int]] = []
    real_read = Device.read

    def read(self: Device, offset: int, length: int) -> bytes:
        reads.append((offset, length, self.size))
        return real_read(self, offset, length)

    def write(self: Device, offset: int, data: bytes) -> None:
        raise AssertionError("a write while reading")

    monkeypatch.setattr(Device, "read", read)
    monkeypatch.setattr(Device, "write", write)
    rng = random.Random(8)
    img = tmp_path / "hostile.img"
    outcomes = set()
    for _ in range(120):
        bad = bytearray(disk)
        for _ in range(rng.randint(1, 12)):
            tile = rng.randrange(3) * CACHE_SIZE
            at = tile + rng.choice([rng.randrange(BCON_LONG_HEADERSIZE),
                                    rng.randrange(CACHE_SIZE)])
            bad[at] = rng.randrange(256)
        if rng.random() < 0.2:
            bad = bad[:rng.randrange(len(bad))]
        img.write_bytes(bad)
        try:
            with closing(store(img)) as s:
                for record in s.records:
                    assert len(s.read(record)) == s.entry(record).size
                    s.attributes(record)
            outcomes.add("read")
        except PstoreError as exc:
            outcomes.add(type(exc).__name__)
    assert all(0 <= off and off + n <= size for off, n, size in reads)
    assert {"read", "FormatError"} <= outcomes, outcomes


def test_listing_reads_little(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Listing reads what the kernel's search reads and a kilobyte per tile shown."""
    disk = formatted(16)
    con = Console(disk)
    con.printk(lines(0, 300))
    img = save(disk, tmp_path / "bcon.img")
    read_bytes = []
    real_read = Device.read

    def read(self: Device, offset: int, length: int) -> bytes:
        read_bytes.append(length)
        return real_read(self, offset, length)

    monkeypatch.setattr(Device, "read", read)
    with closing(store(img)):
        assert sum(read_bytes) < 32 * 1024


# -- rm and no writes ------------------------------------------------------------------
def test_erase_refused(tmp_path: Path) -> None:
    disk = formatted(2)
    Console(disk).printk(lines(0, 50))
    img = save(disk, tmp_path / "bcon.img")
    before = sha256(img)
    with closing(store(img)) as s:
        with pytest.raises(EraseUnsupportedError) as refused:
            s.erase(s.records[0])
        assert errno_of(refused.value) == errno.EPERM
    with closing(store(img, read_only=True)) as s:
        with pytest.raises(ReadOnlyError):
            s.erase(s.records[0])
    assert sha256(img) == before


def test_reading_writes_nothing(tmp_path: Path) -> None:
    disk = formatted(3)
    con = Console(disk)
    while con.bc.round < 1:
        con.printk(lines(0, 400))
    img = save(disk, tmp_path / "bcon.img")
    before = sha256(img)
    with closing(store(img)) as s:
        for record in s.records:
            s.read(record)
            s.attributes(record)
        s.layout()
    assert sha256(img) == before
