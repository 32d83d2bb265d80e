"""ramoops through the mount: the kernel-written regions listed, read and removed as
the kernel showed and erased them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers.cases import Case
from helpers.machine import mounted
from helpers.ramoops import CASES, case_id, copy, sha256


# -- real FUSE mounts ---------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_mount(case: Case, tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    img = copy(tmp_path, case)
    before = sha256(img)
    with mounted(img, mnt, case.options) as m:
        assert sorted(os.listdir(m)) == sorted(case.files)
        for f in case.meta["files"]:
            path = m / f["name"]
            assert path.read_bytes() == case.files[f["name"]], f["name"]
            st_ = path.stat()
            assert st_.st_size == f["content_bytes"]
            assert oct(st_.st_mode & 0o777) == "0o" + f["mode"].lstrip("0")
            if f["mtime_ns"] is not None:
                assert st_.st_mtime_ns == f["mtime_ns"]
        assert os.getxattr(m / case.meta["files"][0]["name"], "user.pstore.format") == \
            b"ramoops"
    assert sha256(img) == before
    erase = case.meta["erase"]
    img = copy(tmp_path, case, erase["image_before"])
    with mounted(img, mnt, case.options) as m:
        for name in erase["remove"]:
            os.unlink(m / name)
        assert sorted(os.listdir(m)) == sorted(erase["names_after"])
    assert img.read_bytes() == (case.file(erase["image_after"])).read_bytes()
    with mounted(img, mnt, case.options) as m:
        assert sorted(os.listdir(m)) == sorted(erase["names_after"])
