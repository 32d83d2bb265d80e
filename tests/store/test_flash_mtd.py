"""MTD devices under the flash back ends.

This machine cannot create an MTD device (its kernel has no CONFIG_MTD and no module
support), so the MTD path is tested here through its parts: the ioctl structs and
numbers against the kernel's own <mtd/mtd-abi.h>, compiled with the C compiler, and
the erase path over an image with the two ioctls served in-process.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from helpers.cases import Case
from helpers.flash import (
    BLOCK,
    MTDOOPS,
    MTDPSTORE,
    PAGE,
    erased_pages,
    flash_image,
    mtdoops_page,
    text,
    write,
)
from helpers.machine import require, run
from pstorefs.cli.options import parse_options
from pstorefs.errors import GeometryError, SourceError
from pstorefs.format.kallsyms import NO_SYMBOLS
from pstorefs.store import mtdoops as mtdoops_store
from pstorefs.store import zone as zone_store
from pstorefs.store.device import Device
from pstorefs.store.flash import (
    ERASE_INFO_USER,
    MTD_INFO_USER,
    MtdInfo,
    erase_block_size,
    memerase,
    memgetinfo,
)

# -- MTD devices ----------------------------------------------------------------------------------
C_PROBE = r"""
#include <stdio.h>
#include <stddef.h>
#include <sys/ioctl.h>
#include <mtd/mtd-abi.h>
int main(void) {
    printf("%zu %zu %zu %zu %zu %zu %zu %zu %zu %lu %lu\n", sizeof(struct mtd_info_user),
           offsetof(struct mtd_info_user, type), offsetof(struct mtd_info_user, flags),
           offsetof(struct mtd_info_user, size), offsetof(struct mtd_info_user, erasesize),
           offsetof(struct mtd_info_user, writesize), offsetof(struct mtd_info_user, oobsize),
           offsetof(struct mtd_info_user, padding), sizeof(struct erase_info_user),
           (unsigned long)MEMGETINFO, (unsigned long)MEMERASE);
    return 0;
}
"""


def test_ioctl_structs_match_the_kernel_header(tmp_path: Path) -> None:
    """The layouts and ioctl numbers, as the C compiler lays out the kernel's uapi
    header (Debian's linux-libc-dev) on this machine."""
    cc = shutil.which("cc") or shutil.which("gcc")
    require(cc is not None, "a C compiler")
    require(Path("/usr/include/mtd/mtd-abi.h").exists(), "<mtd/mtd-abi.h> (linux-libc-dev)")
    (tmp_path / "probe.c").write_text(C_PROBE)
    built = run([str(cc), "-o", str(tmp_path / "probe"), str(tmp_path / "probe.c")])
    assert built.returncode == 0, built.stderr
    out = subprocess.run([str(tmp_path / "probe")], capture_output=True, text=True, check=True)
    size, *offsets, erase_size, getinfo, erase = map(int, out.stdout.split())
    assert size == MTD_INFO_USER.size == 32
    raw = MTD_INFO_USER.pack(*(0x11 * (i + 1) for i in range(7)))
    assert [raw.index(bytes([0x11 * (i + 1)])) for i in range(7)] == offsets
    assert erase_size == ERASE_INFO_USER.size
    assert (getinfo, erase) == (memgetinfo(), memerase())


def test_ioctl_numbers_of_other_abis() -> None:
    assert (memgetinfo("x86_64"), memerase("x86_64")) == (0x80204D01, 0x40084D02)
    assert (memgetinfo("aarch64"), memerase("aarch64")) == (0x80204D01, 0x40084D02)
    for machine in ("ppc64le", "mips", "sparc64"):
        assert (memgetinfo(machine), memerase(machine)) == (0x40204D01, 0x80084D02)


def test_mtd_info_unpack() -> None:
    raw = MTD_INFO_USER.pack(4, 0x400, 1 << 20, 128 << 10, 2048, 64, 0)
    assert MtdInfo.unpack(raw) == MtdInfo(4, 0x400, 1 << 20, 128 << 10, 2048, 64)


@pytest.mark.root  # mknod of a character device
def test_device_takes_mtd_character_devices_only(tmp_path: Path) -> None:
    """Major 90 is MTD: accepted (here no driver answers, so the open fails); any other
    character device is refused by kind."""
    node = tmp_path / "mtd0"
    os.mknod(node, stat.S_IFCHR | 0o600, os.makedev(90, 0))
    with pytest.raises(SourceError, match="cannot open") as refused:
        Device(str(node))
    assert "not a block device" not in str(refused.value)
    with pytest.raises(SourceError, match="not a block device, MTD device or image file"):
        Device("/dev/null")


class FakeMtd:
    """Serves MEMGETINFO and MEMERASE for a `Device` over an image, as mtdchar would:
    an erase must cover whole blocks and leaves them 0xFF; writes must be whole pages."""

    def __init__(self, device: Device, erasesize: int, writesize: int) -> None:
        self.device, self.erasesize, self.writesize = device, erasesize, writesize
        self.erases: list[tuple[int, int]] = []
        self.writes: list[tuple[int, int]] = []
        device.is_mtd = True

    def ioctl(self, fd: int, request: int, arg: bytes) -> bytes:
        assert fd == self.device.fd
        if request == memgetinfo():
            return MTD_INFO_USER.pack(3, 0xC00, self.device.size, self.erasesize,
                                      self.writesize, 0, 0)
        assert request == memerase()
        start, length = ERASE_INFO_USER.unpack(arg)
        if start % self.erasesize or length % self.erasesize:
            raise OSError(errno.EINVAL, "Invalid argument")
        self.erases.append((start, length))
        os.pwrite(fd, b"\xff" * length, start)
        return arg

    def write(self, real, device: Device, offset: int, data: bytes) -> None:
        assert offset % self.writesize == 0 and len(data) % self.writesize == 0
        self.writes.append((offset, len(data)))
        real(device, offset, data)


@contextmanager
def fake_mtd(monkeypatch, img: Path, erasesize: int = BLOCK,
             writesize: int = 2048) -> Iterator[tuple[Device, FakeMtd]]:
    device = Device(str(img))
    mtd = FakeMtd(device, erasesize, writesize)
    real_write = Device.write
    monkeypatch.setattr(fcntl, "ioctl", mtd.ioctl)
    monkeypatch.setattr(Device, "write", lambda self, off, data: mtd.write(real_write, self,
                                                                            off, data))

    def no_fsync(fd: int) -> None:  # mtdchar has no fsync
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(os, "fdatasync", no_fsync)
    try:
        yield device, mtd
    finally:
        device.close()


def test_mtdoops_on_mtd_erases_with_memerase(tmp_path: Path, monkeypatch) -> None:
    """On MTD the erase block comes from MEMGETINFO (no erasesize= needed), the erase
    is MEMERASE of that block and the kept pages go back in whole writesize pages."""
    pages = {i: mtdoops_page(i + 1, text(i)) for i in (15, 17, 18)}
    pages[16] = mtdoops_page(17, b"<4>[    1.000000] a longer line\n" * 100)  # 2 pages' worth
    original = flash_image(pages)
    img = write(tmp_path, original)
    with fake_mtd(monkeypatch, img) as (device, mtd):
        config = parse_options(["backend=mtdoops"]).store
        s = mtdoops_store.open_store(device, config, NO_SYMBOLS)
        assert s.erasesize == BLOCK
        s.erase(next(r for r in s.records if r.id == 17))
    assert mtd.erases == [(BLOCK, BLOCK)]
    assert mtd.writes == [(16 * PAGE, 4096), (18 * PAGE, 2048)]
    assert img.read_bytes() == erased_pages(original, 17)


def test_mtd_erasesize_option_must_match_the_device(tmp_path: Path, monkeypatch) -> None:
    img = write(tmp_path, MTDOOPS.image.read_bytes())
    with fake_mtd(monkeypatch, img) as (device, _):
        assert erase_block_size(device, BLOCK) == BLOCK
        with pytest.raises(GeometryError, match=f"erasesize={2 * BLOCK}"):
            erase_block_size(device, 2 * BLOCK)


def test_mtd_sync_closes_a_writable_descriptor(tmp_path: Path, monkeypatch) -> None:
    """mtdchar has no fsync (fdatasync fails EINVAL): `mtd_sync` runs when a writable
    descriptor of the device closes."""
    img = write(tmp_path, MTDOOPS.image.read_bytes())
    opened: list[tuple[str, int]] = []
    real_open = os.open
    with fake_mtd(monkeypatch, img) as (device, _):
        monkeypatch.setattr(os, "open", lambda path, flags, *a: (
            opened.append((path, flags)), real_open(path, flags, *a))[1])
        device.sync()
    assert [(p, f & os.O_ACCMODE) for p, f in opened] == [
        (f"/proc/self/fd/{device.fd}", os.O_WRONLY)]


@pytest.mark.parametrize("case", MTDPSTORE, ids=lambda c: c.id)
def test_mtdpstore_on_mtd(case: Case, tmp_path: Path, monkeypatch) -> None:
    """mtdpstore's erase over the MTD path: the same bytes as the case's after-image."""
    erase = case.meta["erase"]
    img = tmp_path / "image.bin"
    shutil.copyfile(case.file(erase["image_before"]), img)
    erasesize = int(case.option("erasesize"))
    with fake_mtd(monkeypatch, img, erasesize=erasesize) as (device, mtd):
        config = parse_options([case.options]).store
        s = zone_store.open_store(device, config, NO_SYMBOLS)
        for name in erase["remove"]:
            s.erase(s.find(name))
    assert mtd.erases == [(0, erasesize)]
    assert img.read_bytes() == (case.file(erase["image_after"])).read_bytes()
