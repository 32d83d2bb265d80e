"""What pstorefs shows beyond the kernel's files, through the mount: extended attributes
and the erased view (`show_erased`), checked against the kernel's fixtures."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
from contextlib import closing
from pathlib import Path

import pytest

from helpers.cases import CASES, ERASE_CASES, Case, case_by_id
from helpers.machine import mounted, require, run
from pstorefs.store import Store, StoreConfig, open_store
from pstorefs.store.zone.store import ZoneStore

KIB = 1024


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def listing(store: Store) -> dict[str, bytes]:
    return {store.entry(r).name: store.read(r) for r in store.records}


def mount_options(case: Case) -> str:
    """No size option (the layout is detected), the kernel's name, its System.map."""
    system_map = case.dir / "System.map.gz"
    return "name=pstore_blk" + (f",system_map={system_map}" if system_map.exists() else "")


# == extended attributes ======================================================================
def kernel_offsets(case: Case) -> dict[str, int]:
    """Where each dmesg file's zone starts in the case's layout (from its options)."""
    opts = dict(kv.split("=") for kv in case.options.split(","))
    front = sum(int(opts.get(k, 0)) for k in ("pmsg_size", "console_size", "ftrace_size"))
    return {f["name"]: front * KIB + int(f["name"].rsplit("-", 1)[1]) * int(opts["kmsg_size"]) * KIB
            for f in case.meta["files"] if f["name"].startswith("dmesg-")}


@pytest.mark.parametrize("case", [c for c in CASES if c.files], ids=lambda c: c.id)
def test_xattrs_on_the_mount(tmp_path: Path, case: Case) -> None:
    """`getfattr -d` shows what the header knows; `cat` is unchanged."""
    require(shutil.which("getfattr") is not None, "getfattr (Debian package attr)")
    image = tmp_path / "image.bin"
    shutil.copyfile(case.image, image)
    offsets = kernel_offsets(case)
    with mounted(image, tmp_path / "mnt", mount_options(case)) as mnt:
        for f in case.meta["files"]:
            path = mnt / f["name"]
            names = set(os.listxattr(path))
            value = {n.removeprefix("user.pstore."): os.getxattr(path, n).decode()
                     for n in names}
            assert all(n.startswith("user.pstore.") for n in names)
            if f.get("compare_content") is not False:
                assert path.read_bytes() == case.files[f["name"]]
            if f["name"].startswith("dmesg-"):
                first_line = case.files[f["name"]].split(b"\n", 1)[0].decode()
                assert value["zone_offset"] == str(offsets[f["name"]])
                assert int(value["time_ns"]) == f["mtime_ns"]
                if value["compressed"] == "1":
                    assert value["compressor"] == case.compressor
                    assert first_line.startswith(value["reason"] + "#")
                else:  # "Oops: Total 3 times"
                    assert first_line == f"{value['reason']}: Total {value['counter']} times"
            else:
                assert "reason" not in value and int(value["zone_size"]) > 0
            dump = run(["getfattr", "-d", "-m", "user.pstore.", str(path)])
            assert dump.returncode == 0, dump.stderr
            for key, val in value.items():
                assert f'user.pstore.{key}="{val}"' in dump.stdout
        first = mnt / case.meta["files"][0]["name"]
        with pytest.raises(OSError) as err:
            os.getxattr(first, "user.pstore.nonesuch")
        assert err.value.errno == errno.ENODATA
        with pytest.raises(OSError) as err:
            os.setxattr(first, "user.pstore.reason", b"Panic")
        assert err.value.errno == errno.EPERM
    assert sha(image) == sha(case.image)


def test_xattr_write_on_ro_mount(tmp_path: Path) -> None:
    case = case_by_id("kmsg-plain-3oops")
    with mounted(case.image, tmp_path / "mnt", "name=pstore_blk,ro") as mnt:
        with pytest.raises(OSError) as err:
            os.setxattr(mnt / "dmesg-pstore_blk-0", "user.pstore.reason", b"x")
        assert err.value.errno == errno.EROFS


# == the erased view ==========================================================================
@pytest.mark.parametrize("case", ERASE_CASES, ids=lambda c: c.id)
def test_erased_view_of_kernel_erased_images(tmp_path: Path, case: Case) -> None:
    """The kernel's own `rm` (image-after-erase.bin) zeroes `datalen` only: the records
    come back under erased/ as they were, read-only, and nothing is written."""
    erase = case.meta["erase"]
    image = tmp_path / "after.bin"
    shutil.copyfile(case.file(erase["image_after"]), image)
    before_path = case.file(erase["image_before"])
    opts = mount_options(case)
    with closing(open_store(str(before_path), StoreConfig(read_only=True, name="pstore_blk"))
                 ) as store:
        assert isinstance(store, ZoneStore)
        was = listing(store)
    with mounted(image, tmp_path / "mnt", opts + ",show_erased") as mnt:
        assert sorted(os.listdir(mnt)) == sorted([*erase["names_after"], "erased"])
        erased = mnt / "erased"
        assert (os.stat(erased).st_mode & 0o777) == 0o750
        shown = sorted(os.listdir(erased))
        for name in erase["remove"]:
            if name.startswith("dmesg-"):
                assert name in shown
                assert (erased / name).read_bytes() == was[name]
                assert int(os.getxattr(erased / name, "user.pstore.erased")) == 1
            elif name.startswith("pmsg-"):
                assert name in shown
                data = (erased / name).read_bytes()  # buffer order: a rotation of the ring
                assert len(data) == len(was[name]) and was[name] in data + data
        for name in shown:
            with pytest.raises(OSError) as err:
                os.unlink(erased / name)
            assert err.value.errno == errno.EPERM
    assert sha(image) == sha(case.file(erase["image_after"]))
    with mounted(image, tmp_path / "mnt2", opts) as mnt:
        assert "erased" not in os.listdir(mnt)


def test_erased_view_on_ro_mount(tmp_path: Path) -> None:
    case = case_by_id("kmsg-deflate-3oops")
    image = tmp_path / "after.bin"
    shutil.copyfile(case.file(case.meta["erase"]["image_after"]), image)
    with mounted(image, tmp_path / "mnt", "name=pstore_blk,show_erased,ro") as mnt:
        name = "dmesg-pstore_blk-0"
        assert (mnt / "erased" / name).read_bytes() == case.files[name]
        with pytest.raises(OSError) as err:
            os.unlink(mnt / "erased" / name)
        assert err.value.errno == errno.EROFS
