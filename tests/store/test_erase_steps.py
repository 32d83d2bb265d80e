"""The erase steps every back end shares (`Store.erase`, `Store._decoded`): what a read
beside erases sees, a retried `rm` after an erase that failed part-way, and what is
refused before anything is written."""

from __future__ import annotations

import errno
import threading
from contextlib import closing
from pathlib import Path

import pytest

from helpers.blockconsole import Console, formatted, lines, save
from helpers.cases import case_by_id
from helpers.flash import BLOCK, PAGE, flash_image, mtdoops_page, write
from helpers.ramoops import ECC16
from pstorefs.cli.options import parse_options
from pstorefs.errors import DeviceError, EraseUnsupportedError, PstoreError
from pstorefs.fs import errno_of
from pstorefs.store import Store, StoreConfig, open_store
from pstorefs.store.device import Device


def opened(path: Path, options: str) -> Store:
    return open_store(str(path), parse_options([options]).store)


def copy(tmp_path: Path, source: Path) -> Path:
    path = tmp_path / "image.bin"
    path.write_bytes(source.read_bytes())
    return path


def test_a_read_beside_erases_of_other_records_never_fails(tmp_path: Path) -> None:
    """Off flash an erase writes only its own zone's header: a read that any number of
    erases of other records overlap is read once and answered (it used to give up with
    EBUSY after eight)."""
    case = case_by_id("kmsg-deflate-3oops")
    with closing(opened(copy(tmp_path, case.image), case.options)) as store:
        record = store.records[1]
        real_read = store.device.read
        reads: list[int] = []

        def busy(offset: int, size: int) -> bytes:
            reads.append(offset)
            store._erases += 2  # an erase of another record began and ended meanwhile
            return real_read(offset, size)

        store.device.read = busy  # type: ignore[method-assign]
        for _ in range(20):
            store._cache.drop(store._slot(record))
            store._sizes[store._slot(record)] = -1
            assert store.read(record) == case.files["dmesg-pstore_blk-1"]
        assert len(reads) == 20, "read again although no erase touched it"


def test_what_a_read_learnt_is_not_kept_once_its_record_is_erased(tmp_path: Path) -> None:
    """A read that began before its record's erase and ends after it keeps nothing: no
    stale body in the cache, no size or name answered for the erased record."""
    case = case_by_id("kmsg-plain-3oops")
    with closing(opened(copy(tmp_path, case.image), case.options)) as store:
        record = store.records[0]
        real_read = store.device.read
        in_read, erased = threading.Event(), threading.Event()

        def slow(offset: int, size: int) -> bytes:
            data = real_read(offset, size)
            if threading.current_thread().name == "reader" and not in_read.is_set():
                in_read.set()
                assert erased.wait(10)
            return data

        store.device.read = slow  # type: ignore[method-assign]
        got: list[bytes] = []
        reader = threading.Thread(target=lambda: got.append(store.read(record)),
                                  name="reader")
        reader.start()
        assert in_read.wait(10)
        store.erase(record)
        erased.set()
        reader.join(10)
        assert got == [case.files["dmesg-pstore_blk-0"]]  # what it read before
        assert store.read(record, wait=False) is None
        assert store.entry(record, wait=False) is None


def test_blockconsole_rm_is_eperm_before_anything_is_compared(tmp_path: Path) -> None:
    """The writer defines no erase: EPERM, even once the writer moved on (the tile's
    header changed), never EBUSY; nothing is written."""
    disk = formatted(4)
    console = Console(disk)
    console.printk(lines(0, 200))
    path = save(disk, tmp_path / "console.img")
    with closing(open_store(str(path), StoreConfig())) as store:
        record, = store.records
        with open(path, "r+b") as fh:  # the writer moves on: a new round over a tile
            fh.seek(record.zones[0].offset)
            fh.write(bytes(16))
        moved = path.read_bytes()
        with pytest.raises(EraseUnsupportedError) as refused:
            store.erase(record)
        assert errno_of(refused.value) == errno.EPERM
    assert path.read_bytes() == moved


def test_a_record_of_another_store_is_refused(tmp_path: Path) -> None:
    case = case_by_id("kmsg-plain-3oops")
    first, second = tmp_path / "a.bin", tmp_path / "b.bin"
    first.write_bytes(case.image.read_bytes())
    second.write_bytes(case.image.read_bytes())
    with closing(opened(first, case.options)) as a, closing(opened(second, case.options)) as b:
        foreign = a.records[0]._replace(snapshot=(b"\0" * 8,))
        with pytest.raises(PstoreError):
            b.erase(foreign)
    assert second.read_bytes() == case.image.read_bytes()


def failing_write(monkeypatch: pytest.MonkeyPatch, fail_at: int) -> None:
    """Device.write fails at its `fail_at`th call (from 1), as a device that errs."""
    real_write = Device.write
    calls = [0]

    def write_(self: Device, offset: int, data: bytes) -> None:
        calls[0] += 1
        if calls[0] == fail_at:
            raise DeviceError(f"{self.path}: write failed", errno.EIO, writing=True)
        real_write(self, offset, data)

    monkeypatch.setattr(Device, "write", write_)


def test_ramoops_rm_retried_after_the_parity_write_failed(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    """With ECC, an erase whose parity write failed leaves the zapped header beside its
    old parity: the record is still the listed one, and `rm` again finishes the erase
    with the bytes a whole erase writes."""
    reference = copy(tmp_path, ECC16.image)
    with closing(opened(reference, ECC16.options)) as store:
        store.erase(store.records[0])
    path = tmp_path / "retried.bin"
    path.write_bytes(ECC16.image.read_bytes())
    with closing(opened(path, ECC16.options)) as store:
        record = store.records[0]
        failing_write(monkeypatch, 2)  # the header's zap goes, its parity does not
        with pytest.raises(DeviceError):
            store.erase(record)
        monkeypatch.undo()
        assert path.read_bytes() != ECC16.image.read_bytes(), "the zap was not written"
        store.erase(record)
    assert path.read_bytes() == reference.read_bytes()


def test_mtdoops_rm_retried_after_the_sync_failed(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """An erase whose sync failed left the page erased (0xFF): `rm` again is taken."""
    img = write(tmp_path, flash_image({0: mtdoops_page(1, b"first\n"),
                                       1: mtdoops_page(2, b"second\n")}))
    options = f"backend=mtdoops,record_size={PAGE},erasesize={BLOCK}"
    with closing(opened(img, options)) as store:
        record = store.records[0]
        real_sync = Device.sync
        monkeypatch.setattr(Device, "sync", lambda self: (_ for _ in ()).throw(
            DeviceError(f"{self.path}: fdatasync failed", errno.EIO, writing=True)))
        with pytest.raises(DeviceError):
            store.erase(record)
        monkeypatch.setattr(Device, "sync", real_sync)
        store.erase(record)
    assert img.read_bytes()[:PAGE] == b"\xff" * PAGE
    assert img.read_bytes()[PAGE:2 * PAGE] == mtdoops_page(2, b"second\n")[:PAGE].ljust(
        PAGE, b"\xff")[:PAGE]
