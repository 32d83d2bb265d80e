"""mount(8) through mount.fuse3 (`mount -t fuse.pstorefs`), on loop devices and image
files, and an /etc/fstab line (restored afterwards)."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers.cases import CASES, Case, expected_after_erase, sha256
from helpers.machine import holder_pids, require, run, unmount
from helpers.mounts import (
    ALL_FRONTS,
    KMSG,
    assert_same_image,
    check_contents,
    copy_image,
    loop_device,
    proc_mount,
    wait_gone,
)

FSTAB = Path("/etc/fstab")

_fstab_lock = threading.Lock()


@contextlib.contextmanager
def helper_mounted(source: str | os.PathLike, mnt: Path, options: str | None
                   ) -> Iterator[Path]:
    """`mount -t fuse.pstorefs -o OPTIONS SOURCE MNT` (mount(8) -> mount.fuse3)."""
    require(shutil.which("mount.fuse3") is not None, "mount.fuse3 (Debian package fuse3)")
    mnt.mkdir(exist_ok=True)
    cmd = ["mount", "-t", "fuse.pstorefs"] + (["-o", options] if options else [])
    r = run([*cmd, str(source), str(mnt)])
    assert r.returncode == 0, f"{cmd}: rc {r.returncode}: {r.stderr}"
    assert os.path.ismount(mnt), "mount returned 0 but nothing is mounted"
    pids = holder_pids(source)
    try:
        yield mnt
    finally:
        if os.path.ismount(mnt):
            run(["umount", str(mnt)])
        unmount(mnt)
        wait_gone(pids)


# -- mount(8), mount.fuse3 and fstab ---------------------------------------------------------
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_mount_helper_on_a_loop_device(case: Case, tmp_path: Path) -> None:
    img = copy_image(tmp_path, case)
    before = sha256(img)
    with loop_device(img) as dev:
        t0 = time.time_ns()
        with helper_mounted(dev, tmp_path / "mnt", case.options) as m:
            t1 = time.time_ns()
            check_contents(case, m, t0, t1)
            source, fstype, opts = proc_mount(m)
            assert (source, fstype) == (dev, "fuse.pstorefs") and "rw" in opts
    assert sha256(img) == before
    if "erase" not in case.meta:
        return
    er = case.meta["erase"]
    img = copy_image(tmp_path, case, er["image_before"])
    with loop_device(img) as dev:
        with helper_mounted(dev, tmp_path / "mnt", case.options) as m:
            for name in er["remove"]:
                os.unlink(m / name)
            assert sorted(os.listdir(m)) == sorted(er["names_after"])
        want = expected_after_erase(case)
        with open(dev, "rb") as fh:
            assert_same_image(fh.read(), want, f"{case.id}: {dev} after rm")
        with helper_mounted(dev, tmp_path / "mnt", case.options) as m:
            assert sorted(os.listdir(m)) == sorted(er["names_after"])
    assert_same_image(img.read_bytes(), want, f"{case.id}: backing file after rm")


def test_mount_helper_on_an_image_file_and_ro(tmp_path: Path) -> None:
    img = copy_image(tmp_path, ALL_FRONTS)
    before = sha256(img)
    t0 = time.time_ns()
    with helper_mounted(img, tmp_path / "mnt", ALL_FRONTS.options + ",nofail,_netdev") as m:
        check_contents(ALL_FRONTS, m, t0, time.time_ns())
        assert proc_mount(m)[:2] == (str(img), "fuse.pstorefs")
    with helper_mounted(img, tmp_path / "mnt", ALL_FRONTS.options + ",ro") as m:
        assert "ro" in proc_mount(m)[2]
        with pytest.raises(OSError) as info:
            os.unlink(m / "pmsg-pstore_blk-0")
        assert info.value.errno == errno.EROFS
    assert sha256(img) == before
    # a bad option through the helper: refused, nothing mounted
    r = run(["mount", "-t", "fuse.pstorefs", "-o", "bogus_option", str(img),
             str(tmp_path / "mnt")])
    assert r.returncode != 0 and not os.path.ismount(tmp_path / "mnt")
    assert "Traceback" not in r.stderr


def test_mount_helper_is_silent_and_fails_in_one_line(tmp_path: Path) -> None:
    """Through mount(8): a mount prints nothing (the boot console, `mount -a`) unless
    `-o verbose` asks for the layout (mount.fuse3 drops mount(8)'s `-v`); a refusal,
    bad usage too, is one line and exit status 1, not mount(8)'s 2 (system error)."""
    require(shutil.which("mount.fuse3") is not None, "mount.fuse3 (Debian package fuse3)")
    img = copy_image(tmp_path, KMSG)
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    for options, said in (([], ""), (["-o", "verbose"], f"pstorefs: {img}: layout detected: "
                          "kmsg_size=64,pmsg_size=0,console_size=0,ftrace_size=0,nr_cpus=1\n")):
        r = run(["mount", "-t", "fuse.pstorefs", *options, str(img), str(mnt)])
        pids = holder_pids(img)
        try:
            assert r.returncode == 0 and os.path.ismount(mnt), r.stderr
            assert (r.stdout, r.stderr) == ("", said)
        finally:
            run(["umount", str(mnt)])
            wait_gone(pids)
    for source, options in ((img, ["-o", "bogus_option"]), (img, ["-o", "kmsg_size=abc"]),
                            (empty, [])):
        r = run(["mount", "-t", "fuse.pstorefs", *options, str(source), str(mnt)])
        assert r.returncode == 1 and not os.path.ismount(mnt), (options, r.stderr)
        assert r.stdout == "" and len(r.stderr.splitlines()) == 1, r.stderr
        assert "layout detected" not in r.stderr


@contextlib.contextmanager
def fstab_with(line: str) -> Iterator[None]:
    """/etc/fstab with `line` appended; the original is always put back."""
    with _fstab_lock:
        existed = FSTAB.exists()
        backup = FSTAB.read_bytes() if existed else b""
        try:
            FSTAB.write_bytes(backup + (b"" if not backup or backup.endswith(b"\n") else b"\n")
                              + line.encode() + b"\n")
            yield
        finally:
            if existed:
                FSTAB.write_bytes(backup)
            else:
                FSTAB.unlink(missing_ok=True)


@pytest.mark.parametrize("case,noise", [
    (KMSG, "nofail"),
    (ALL_FRONTS, "nofail,noauto,_netdev,x-systemd.device-timeout=5,defaults"),
], ids=["kmsg", "all-fronts-noisy"])
def test_fstab(case: Case, noise: str, tmp_path: Path) -> None:
    require(shutil.which("mount.fuse3") is not None, "mount.fuse3 (Debian package fuse3)")
    img = copy_image(tmp_path, case)
    before = sha256(img)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with loop_device(img) as dev, fstab_with(f"{dev} {mnt} fuse.pstorefs {case.options},"
                                             f"{noise} 0 0"):
        try:
            t0 = time.time_ns()
            r = run(["mount", str(mnt)])
            assert r.returncode == 0, f"mount {mnt}: {r.stderr}"
            check_contents(case, mnt, t0, time.time_ns())
            assert proc_mount(mnt)[:2] == (dev, "fuse.pstorefs")
            pids = holder_pids(dev)
            r = run(["umount", str(mnt)])
            assert r.returncode == 0, r.stderr
            assert not os.path.ismount(mnt) and wait_gone(pids)
            # by source: `mount DEV` finds the line, `umount DEV` finds the mount
            r = run(["mount", dev])
            assert r.returncode == 0, f"mount {dev}: {r.stderr}"
            assert os.path.ismount(mnt)
            assert sorted(os.listdir(mnt)) == sorted(case.files)
            pids = holder_pids(dev)
            r = run(["umount", dev])
            assert r.returncode == 0, f"umount {dev}: {r.stderr}"
            assert not os.path.ismount(mnt) and wait_gone(pids)
        finally:
            if os.path.ismount(mnt):
                run(["umount", str(mnt)])
            unmount(mnt)
    assert sha256(img) == before
    assert FSTAB.read_text().count(str(mnt)) == 0, "/etc/fstab was not restored"
