"""The FUSE adapter's parts alone, without FUSE: the errno mapping (`fs.errors`), the
listing state (`fs.listing`) and the read-ahead policy (`fs.read_ahead`) driven
against a real store."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest
import trio

from helpers.ramoops import all_bad_ecc_region
from helpers.zone_writer import ZoneWriter, deflate
from pstorefs.errors import (
    DeviceError,
    EraseUnsupportedError,
    FormatError,
    GeometryError,
    PstoreError,
    ReadOnlyError,
    SourceError,
    UsageError,
    ZoneChangedError,
)
from pstorefs.format.abi import X86_64
from pstorefs.format.consts import PstoreType
from pstorefs.format.ramoops import PERSISTENT_RAM_BUFFER_SIZE, ecc_geometry, ecc_notice
from pstorefs.fs import READ_AHEAD, ReadAhead, errno_of
from pstorefs.fs.listing import Files, Listed, Listing, kernel_caches_listing
from pstorefs.store import UNSIZED, Entry, Record, StoreConfig, open_store
from pstorefs.store.base import Zone
from pstorefs.store.device import Device
from pstorefs.store.ramoops.layout import RamoopsGeometry
from pstorefs.store.zone.layout import Geometry
from pstorefs.store.zone.store import ZoneStore

RECORDS = 64


# -- errors: errnos are the front end's ---------------------------------------------------
@pytest.mark.parametrize(("exc", "want"), [
    (UsageError("x"), errno.EINVAL),
    (GeometryError("x"), errno.EINVAL),
    (ZoneChangedError("x"), errno.EBUSY),
    (ReadOnlyError("x"), errno.EROFS),
    (EraseUnsupportedError("x"), errno.EPERM),
    (SourceError("x"), errno.EIO),
    (FormatError("header", 0), errno.EIO),
    (PstoreError("x"), errno.EIO),
], ids=lambda v: type(v).__name__ if isinstance(v, Exception) else errno.errorcode[v])
def test_errno_of_each_error(exc: PstoreError, want: int) -> None:
    assert errno_of(exc) == want


@pytest.mark.parametrize(("cause", "writing", "want"), [
    (errno.EIO, False, errno.EIO),
    (errno.ENOSPC, False, errno.EIO),  # every failed read is EIO
    (None, False, errno.EIO),  # a short read, a range outside the source
    (errno.ENOSPC, True, errno.ENOSPC),  # a failed write keeps its cause
    (errno.EROFS, True, errno.EROFS),
    (None, True, errno.EIO),  # a short write
    *[(gone, True, errno.EIO) for gone in (errno.ENXIO, errno.ENODEV, errno.ENOMEDIUM,
                                           errno.ENOTCONN, errno.ESHUTDOWN,
                                           errno.ECONNABORTED, errno.ESTALE, errno.EBADF)],
])
def test_errno_of_a_device_error(cause: int | None, writing: bool, want: int) -> None:
    assert errno_of(DeviceError("x", cause, writing=writing)) == want


def test_device_errors_keep_facts_not_errnos(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The store says what failed (the system call's errno, whether it wrote); which
    errno a request answers with is `errno_of`'s choice."""
    image = tmp_path / "image.bin"
    image.write_bytes(bytes(4096))
    with closing(Device(str(image))) as device:
        with pytest.raises(DeviceError) as outside:
            device.read(4000, 200)
        assert (outside.value.cause, outside.value.writing) == (None, False)

        def fail(code: int):
            def call(*args: object) -> None:
                raise OSError(code, os.strerror(code))
            return call

        monkeypatch.setattr(os, "pread", fail(errno.ENXIO))
        with pytest.raises(DeviceError) as read:
            device.read(0, 512)
        assert (read.value.cause, read.value.writing) == (errno.ENXIO, False)
        monkeypatch.setattr(os, "pwrite", fail(errno.ENOSPC))
        with pytest.raises(DeviceError) as write:
            device.write(0, b"x")
        assert (write.value.cause, write.value.writing) == (errno.ENOSPC, True)
        monkeypatch.setattr(os, "fdatasync", fail(errno.EIO))
        with pytest.raises(DeviceError) as sync:
            device.sync()
        assert (sync.value.cause, sync.value.writing) == (errno.EIO, True)
    assert [errno_of(e.value) for e in (outside, read, write, sync)] == [
        errno.EIO, errno.EIO, errno.ENOSPC, errno.EIO]


# -- the listing state ------------------------------------------------------------------------
def test_listed_takes_out_and_lists_in_order() -> None:
    listed = Listed(10)
    assert len(listed) == 10 and 0 in listed and 9 in listed
    assert -1 not in listed and 10 not in listed
    for index in (3, 4, 3, 42):
        listed.discard(index)
    assert len(listed) == 8 and 3 not in listed and 4 not in listed
    assert listed.next(0, 4, 10) == [0, 1, 2, 5]
    assert listed.next(5, 100, 8) == [5, 6, 7]
    assert listed.next(8, 100, 10) == [8, 9]
    assert listed.next(10, 100, 10) == []


def test_files_index_the_erased_after_the_live() -> None:
    live = [object(), object()]
    erased = [object()]
    files = Files(live, erased)  # type: ignore[arg-type]
    assert len(files) == 3
    assert [files[i] for i in range(3)] == [*live, *erased]
    assert [files.index(r) for r in (*live, *erased)] == [0, 1, 2]  # type: ignore[arg-type]


@pytest.mark.parametrize(("show_erased", "release", "caches"), [
    (False, "6.1.0-18-amd64", True),
    (False, "5.1.0", True),
    (False, "5.0.21", False),  # no FOPEN_CACHE_DIR before 5.1
    (False, "4.19.0", False),
    (False, "weird", False),
    (True, "6.1.0", False),  # erased/: readdir must tell the directories apart
])
def test_the_kernel_caches_the_listing(show_erased: bool, release: str, caches: bool) -> None:
    assert kernel_caches_listing(show_erased, release) is caches


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ZoneStore]:
    """A store of `RECORDS` compressed dmesg records, none decoded yet."""
    w = ZoneWriter(X86_64, RECORDS * 4096, kmsg_size=4096)
    for n in range(RECORDS):
        w.dmesg(deflate(f"Oops#{n + 1} Part1\nrecord {n}\n".encode() * 20), compressed=True)
    path = tmp_path / "many.bin"
    path.write_bytes(bytes(w.image))
    with closing(ZoneStore(Device(str(path), read_only=True), Geometry(kmsg_size=4096),
                           name="pstore_blk")) as s:
        assert len(s.records) == RECORDS
        yield s


async def test_a_listing_resumes_where_the_reply_was_full(store: ZoneStore) -> None:
    listed = Listed(RECORDS)
    listed.discard(1)
    listing = Listing(store, Files(store.records, []), listed, kernel_caches=False,
                      changed_ns=0)
    got: list[tuple[int, Entry]] = []

    def add_ten(index: int, entry: Entry) -> bool:
        got.append((index, entry))
        return len(got) % 10 != 0

    assert not await listing.reply(range(RECORDS), 0, add_ten)
    assert [index for index, _ in got] == [0, *range(2, 11)]
    assert await listing.reply(range(20), got[-1][0] + 1, lambda i, e: got.append((i, e)) or True)
    assert [index for index, _ in got] == [0, *range(2, 20)]
    assert [e.name for _, e in got] == [f"dmesg-pstore_blk-{i}" for i, _ in got]
    assert not listing.left_out


def test_a_record_left_out_is_found_again_once() -> None:
    listing = Listing(None, Files([], []), Listed(0), kernel_caches=False,  # type: ignore[arg-type]
                      changed_ns=0)
    listing.left_out.add(5)
    assert not listing.found_again(4)
    assert listing.found_again(5)
    assert not listing.found_again(5)


# -- read-ahead -------------------------------------------------------------------------------
async def decoded_ahead(store: ZoneStore, read_ahead: ReadAhead) -> set[int]:
    """The records whose bodies are in the store's cache once the batch is done."""
    for _ in range(1000):
        if not read_ahead.busy:
            break
        await trio.sleep(0.01)
    return {i for i, r in enumerate(store.records) if store.read(r, wait=False) is not None}


def read_ahead_of(store: ZoneStore, listed: Listed | None = None) -> ReadAhead:
    records: list[Record] = list(store.records)
    return ReadAhead(store, Files(records, []), listed or Listed(len(records)), len(records))


async def test_read_ahead_of_requests_in_listing_order(store: ZoneStore) -> None:
    """The second request in order decodes the next `READ_AHEAD` records; the next
    batch starts once the requests come within half of it of its end."""
    read_ahead = read_ahead_of(store)
    read_ahead.requested(0)
    assert not read_ahead.busy and await decoded_ahead(store, read_ahead) == set()
    read_ahead.requested(1)
    first = set(range(2, 2 + READ_AHEAD))
    assert await decoded_ahead(store, read_ahead) == first
    for index in range(2, 2 + READ_AHEAD // 2):
        read_ahead.requested(index)
        assert not read_ahead.busy, index
    read_ahead.requested(2 + READ_AHEAD // 2)
    assert await decoded_ahead(store, read_ahead) == first | set(
        range(2 + READ_AHEAD, 2 + READ_AHEAD // 2 + READ_AHEAD + 1))


async def test_no_read_ahead_out_of_order(store: ZoneStore) -> None:
    read_ahead = read_ahead_of(store)
    for index in (5, 3, 10, 8, 40, 0, 2):
        read_ahead.requested(index)
        assert not read_ahead.busy, index
    assert await decoded_ahead(store, read_ahead) == set()


async def test_read_ahead_restarts_after_a_jump_and_skips_what_rm_took(
        store: ZoneStore) -> None:
    listed = Listed(RECORDS)
    listed.discard(45)
    read_ahead = read_ahead_of(store, listed)
    for index in (0, 1):
        read_ahead.requested(index)
    first = await decoded_ahead(store, read_ahead)
    for index in (40, 41):  # a jump, then in order from there: up to the last record
        read_ahead.requested(index)
    assert await decoded_ahead(store, read_ahead) - first == set(range(42, RECORDS)) - {45}


# -- ramoops with ECC: a listing corrects nothing ------------------------------------------------
ECC_LAYOUT = RamoopsGeometry(4 << 20, record_size=64 << 10, console_size=512 << 10,
                             ftrace_size=0, pmsg_size=256 << 10, ecc_size=64)
OOPS_LINE = b"<4>[    1.000000] BUG: kernel NULL pointer dereference, address: 0\n"


def _ecc_text(zone: Zone) -> bytes:
    if zone.type is PstoreType.DMESG:
        return f"====1700000000.{zone.index:06d}-D\n".encode() + OOPS_LINE * 600
    return f"{zone.type.file_prefix} line\n".encode() * 40000


async def test_an_all_bad_ecc_region_lists_from_its_headers(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    """Every block of a ramoops region with ECC has an error: opening and listing it
    read each zone's header, its parity and a dmesg record's first blocks, nothing of
    the rest; each record is listed by name with its size unknown, and its size and
    text, corrected as the kernel corrects them, come when asked for."""
    image, corrected = all_bad_ecc_region(ECC_LAYOUT, _ecc_text)
    path = tmp_path / "ecc.bin"
    path.write_bytes(image)
    read_bytes: list[int] = []
    device_read = Device.read

    def counted(self: Device, offset: int, size: int) -> bytes:
        read_bytes.append(size)
        return device_read(self, offset, size)

    monkeypatch.setattr(Device, "read", counted)
    g = ECC_LAYOUT
    config = StoreConfig(backend="ramoops", record_size=g.record_size,
                         console_size=g.console_size, ftrace_size=0, pmsg_size=g.pmsg_size,
                         ecc=g.ecc_size)
    with closing(open_store(str(path), config)) as store:
        zones = len(store.zones)
        assert len(store.records) == zones == 54
        listing = Listing(store, Files(store.records, []), Listed(zones), kernel_caches=False,
                          changed_ns=0)
        got: list[Entry] = []
        assert await listing.reply(range(zones), 0, lambda _, e: got.append(e) or True)
        per_zone = 2 * PERSISTENT_RAM_BUFFER_SIZE + g.ecc_size + 256 + 2 * g.ecc_size
        assert sum(read_bytes) <= zones * per_zone < len(image) // 64
        assert [e.size for e in got] == [UNSIZED] * zones
        assert [e.name for e in got] == [store.entry(r, wait=False) is None
                                         and store.unsized(r) for r in store.records]
        for record in store.records:
            zone = record.zones[0]
            text = _ecc_text(zone)[:ecc_geometry(zone.size, g.ecc_size).buffer_size]
            if record.type is PstoreType.DMESG:
                text = text[text.index(b"\n") + 1:]
            body = text + ecc_notice(corrected[zone], 0)
            assert store.entry(record).size == len(body)
            assert store.read(record) == body
        assert not listing.left_out
