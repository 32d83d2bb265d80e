"""Flash back ends through the mount: the kernel-written mtdoops and mtdpstore cases
listed, read and removed as the kernel showed and erased them."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

from helpers.cases import Case
from helpers.flash import FLASH_CASES, MTDOOPS, MTDPSTORE, erased_pages, sha
from helpers.machine import mounted


# -- FUSE mounts ---------------------------------------------------------------------------------
@pytest.mark.parametrize("case", FLASH_CASES, ids=lambda c: c.id)
def test_mount(case: Case, tmp_path: Path, mnt: Path) -> None:
    img = tmp_path / "image.bin"
    shutil.copyfile(case.image, img)
    before = sha(img)
    with mounted(img, mnt, case.options) as m:
        assert sorted(os.listdir(m)) == sorted(case.files)
        for f in case.meta["files"]:
            path = m / f["name"]
            assert path.read_bytes() == case.files[f["name"]]
            st_ = path.stat()
            assert (st_.st_size, st_.st_mtime_ns) == (f["size"], f["mtime_ns"])
            assert stat.S_IMODE(st_.st_mode) == int(f["mode"], 8)
            if "seq" in f:
                assert os.getxattr(path, "user.pstore.seq") == str(f["seq"]).encode()
    assert sha(img) == before


@pytest.mark.parametrize("case", MTDPSTORE, ids=lambda c: c.id)
def test_mount_rm_mtdpstore(case: Case, tmp_path: Path, mnt: Path) -> None:
    erase = case.meta["erase"]
    img = tmp_path / "image.bin"
    shutil.copyfile(case.file(erase["image_before"]), img)
    with mounted(img, mnt, case.options) as m:
        for name in erase["remove"]:
            os.unlink(m / name)
        assert sorted(os.listdir(m)) == erase["names_after"]
    assert img.read_bytes() == (case.file(erase["image_after"])).read_bytes()
    with mounted(img, mnt, case.options) as m:
        assert sorted(os.listdir(m)) == erase["names_after"]


def test_mount_rm_mtdoops(tmp_path: Path, mnt: Path) -> None:
    img = tmp_path / "image.bin"
    shutil.copyfile(MTDOOPS.image, img)
    with mounted(img, mnt, MTDOOPS.options) as m:
        os.unlink(m / "dmesg-mtdoops-1")
        assert sorted(os.listdir(m)) == ["dmesg-mtdoops-0", "dmesg-mtdoops-2"]
    assert img.read_bytes() == erased_pages(MTDOOPS.image.read_bytes(), 1)
    with mounted(img, mnt, MTDOOPS.options) as m:
        assert sorted(os.listdir(m)) == ["dmesg-mtdoops-0", "dmesg-mtdoops-2"]
        assert (m / "dmesg-mtdoops-2").read_bytes() == MTDOOPS.files["dmesg-mtdoops-2"]
