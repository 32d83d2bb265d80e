"""Every bundled case through a real mount by the `pstorefs` CLI: listing, bytes, sizes,
modes, owners and times exactly as the kernel showed them, and rm as the kernel erased.

Everything under tests/mount needs root, /dev/fuse and fuse3 (and some tests loop
devices and systemd-pstore); a missing piece fails the test (helpers.machine.require),
it never skips.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import struct
import time
from pathlib import Path

import pytest

from helpers.cases import (
    CASES,
    ERASE_CASES,
    Case,
    expected_after_erase,
    sha256,
    two_cpu_ftrace_image,
    zone_layout,
)
from helpers.machine import mounted
from helpers.mounts import (
    ALL_FRONTS,
    PLAIN,
    assert_same_image,
    check_contents,
    copy_image,
    dmesg_offsets,
    opts_without,
    poke,
    proc_mount,
)


# -- every case through the CLI -----------------------------------------------------------
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_case_contents(case: Case, tmp_path: Path, mnt: Path) -> None:
    img = copy_image(tmp_path, case)
    before = sha256(img)
    t0 = time.time_ns()
    with mounted(img, mnt, case.options) as m:
        t1 = time.time_ns()
        check_contents(case, m, t0, t1)
        source, fstype, opts = proc_mount(m)
        assert (source, fstype) == (str(img), "fuse.pstorefs") and "rw" in opts
        vfs = os.statvfs(m)
        assert vfs.f_namemax >= 255
    assert sha256(img) == before, "the image changed although nothing was removed"


@pytest.mark.parametrize("case", ERASE_CASES, ids=lambda c: c.id)
def test_case_erase(case: Case, tmp_path: Path, mnt: Path) -> None:
    er = case.meta["erase"]
    img = copy_image(tmp_path, case, er["image_before"])
    with mounted(img, mnt, case.options) as m:
        handles = {}
        for name in er["remove"]:
            handles[name] = fh = open(m / name, "rb")
            fh.read(100)
        try:
            contents = {}
            for name, fh in handles.items():
                fh.seek(0)
                contents[name] = fh.read()
            for name in er["remove"]:
                os.unlink(m / name)
                assert not (m / name).exists()
                with pytest.raises(FileNotFoundError):
                    os.unlink(m / name)
            assert sorted(os.listdir(m)) == sorted(er["names_after"])
            for name, fh in handles.items():  # still readable through open handles
                fh.seek(0)
                assert fh.read() == contents[name], f"{name}: open handle after rm"
        finally:
            for fh in handles.values():
                fh.close()
    assert_same_image(img.read_bytes(), expected_after_erase(case), f"{case.id}: after rm")
    with mounted(img, mnt, case.options) as m:
        assert sorted(os.listdir(m)) == sorted(er["names_after"]), "removed records came back"
        if er["image_before"] == "image.bin":
            for name in er["names_after"]:
                assert (m / name).read_bytes() == case.files[name]


def test_ftrace_without_system_map_has_consistent_size(tmp_path: Path, mnt: Path) -> None:
    img = copy_image(tmp_path, ALL_FRONTS)
    with mounted(img, mnt, opts_without(ALL_FRONTS, "system_map")) as m:
        for name in ALL_FRONTS.files:
            data = (m / name).read_bytes()
            assert os.stat(m / name).st_size == len(data), name
            if not name.startswith("ftrace-"):
                assert data == ALL_FRONTS.files[name]
        text = (m / "ftrace-pstore_blk-0").read_text()
        assert text.startswith("CPU:0 ts:") and text.endswith("\n")


def test_copy_mmap_and_sendfile(tmp_path: Path, mnt: Path) -> None:
    """What systemd-pstore's copy and other readers use: sendfile, copy_file_range, mmap."""
    import mmap
    img = copy_image(tmp_path, ALL_FRONTS)
    with mounted(img, mnt, ALL_FRONTS.options) as m:
        for name, want in ALL_FRONTS.files.items():
            dest = tmp_path / f"copy-{name}"
            shutil.copyfile(m / name, dest)
            assert dest.read_bytes() == want, f"{name}: shutil.copyfile (sendfile)"
            with open(m / name, "rb") as src, open(dest, "wb") as out:
                left = len(want)
                with contextlib.suppress(OSError):
                    while left and (n := os.copy_file_range(src.fileno(), out.fileno(), left)):
                        left -= n
                if left:
                    out.seek(0)
                    out.truncate()
                    shutil.copyfileobj(src, out)
            assert dest.read_bytes() == want, f"{name}: copy_file_range"
            with open(m / name, "rb") as fh, mmap.mmap(fh.fileno(), 0, prot=mmap.PROT_READ) as mm:
                assert mm[:] == want, f"{name}: mmap"


def _two_cpu_text(records_per_cpu: int = 100) -> bytes:
    lines = []
    for k in range(2 * records_per_cpu):
        ip, pip = 0xFFFFFFFF81000000 + 16 * k, 0xFFFFFFFF82000000 + k // 2
        lines.append(f"CPU:{k % 2} ts:{k} {ip:08x}  {pip:08x}  0x{ip:x} <- 0x{pip:x}\n")
    return "".join(lines).encode()


def test_ftrace_of_two_cpus_merges_and_rm_erases_every_zone(tmp_path: Path, mnt: Path
                                                             ) -> None:
    data, opts = two_cpu_ftrace_image()
    img = tmp_path / "two-cpus.bin"
    img.write_bytes(data)
    area = next(z for z in zone_layout(ALL_FRONTS) if z.type == "ftrace")
    cpu_zones = [area.offset, area.offset + area.size // 2]
    with mounted(img, mnt, opts) as m:
        assert sorted(os.listdir(m)) == sorted(ALL_FRONTS.files)
        text = (m / "ftrace-pstore_blk-0").read_bytes()
        assert text == _two_cpu_text()
        assert os.stat(m / "ftrace-pstore_blk-0").st_size == len(text)
        os.unlink(m / "ftrace-pstore_blk-0")
        assert "ftrace-pstore_blk-0" not in os.listdir(m)
    now = img.read_bytes()
    want = bytearray(data)
    for at in cpu_zones:
        want[at + 4:at + 12] = bytes(8)  # datalen and start of every CPU zone
    assert_same_image(now, bytes(want), "rm of a two-CPU ftrace file")
    with mounted(img, mnt, opts) as m:
        assert "ftrace-pstore_blk-0" not in os.listdir(m), "CPU 1's zone brought it back"


def test_rm_of_dmesg_writes_datalen_only(tmp_path: Path, mnt: Path) -> None:
    """A dmesg zone's `start` is not the kernel's to erase: junk there stays."""
    img = copy_image(tmp_path, PLAIN)
    for at in dmesg_offsets(PLAIN)[:3]:
        poke(img, at + 8, struct.pack("<i", 0x1234))
    before = img.read_bytes()
    with mounted(img, mnt, PLAIN.options) as m:
        assert sorted(os.listdir(m)) == sorted(PLAIN.files)
        for name in PLAIN.files:
            assert (m / name).read_bytes() == PLAIN.files[name]
            os.unlink(m / name)
    want = bytearray(before)
    for at in dmesg_offsets(PLAIN)[:3]:
        want[at + 4:at + 8] = bytes(4)
    assert_same_image(img.read_bytes(), bytes(want), "rm of dmesg zones with a start")


SIZE_KEYS = ("kmsg_size", "pmsg_size", "console_size", "ftrace_size", "nr_cpus")


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_layout_detected_without_size_options(case: Case, tmp_path: Path, mnt: Path) -> None:
    """pstorecheck's `autodetect`: with no size options the layout is found from the
    image itself, and listing, contents and erase are still the kernel's."""
    opts = opts_without(case, *SIZE_KEYS)
    img = copy_image(tmp_path, case)
    before = sha256(img)
    t0 = time.time_ns()
    with mounted(img, mnt, opts) as m:
        check_contents(case, m, t0, time.time_ns())
    assert sha256(img) == before
    if "erase" not in case.meta:
        return
    er = case.meta["erase"]
    img = copy_image(tmp_path, case, er["image_before"])
    with mounted(img, mnt, opts) as m:
        for name in er["remove"]:
            os.unlink(m / name)
        assert sorted(os.listdir(m)) == sorted(er["names_after"])
    assert_same_image(img.read_bytes(), expected_after_erase(case), f"{case.id}: after rm")
    with mounted(img, mnt, opts) as m:
        assert sorted(os.listdir(m)) == sorted(er["names_after"])
