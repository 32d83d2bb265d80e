"""The daemon's decoding process (`pstorefs.fs.decoder`) as a user's machine sees it:
one child of the daemon, holding the source and nothing of the mount's, gone with
the mount whether it is unmounted or its daemon killed."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from helpers.cases import case_by_id
from helpers.machine import alive, holder_pids, mounted, parent_pid, run, wait_for

CASE = case_by_id("linux6.12-kmsg8-deflate-5oops")


def children(pid: int) -> list[int]:
    return [int(p) for p in filter(str.isdigit, os.listdir("/proc")) if parent_pid(int(p)) == pid]


def open_files(pid: int) -> set[str]:
    names = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            names.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            pass
    return names


def test_one_child_holds_the_source_and_nothing_of_the_mount(tmp_path: Path) -> None:
    image = CASE.copy("image.bin", tmp_path / "image.bin")
    with mounted(image, tmp_path / "mnt", CASE.options) as m:
        daemon, = holder_pids(image)
        decoder, = children(daemon)
        files = open_files(decoder)
        assert str(image.resolve()) in files
        assert "/dev/fuse" in open_files(daemon) and "/dev/fuse" not in files
        for name in sorted(CASE.files, key=lambda n: int(n.rsplit("-", 1)[1])):
            assert (m / name).read_bytes() == CASE.files[name]
    assert wait_for(lambda: not alive(decoder), 10), "the decoding process outlived umount"


def test_it_ends_with_a_killed_daemon(tmp_path: Path) -> None:
    image = CASE.copy("image.bin", tmp_path / "image.bin")
    mnt = tmp_path / "mnt"
    with mounted(image, mnt, CASE.options):
        daemon, = holder_pids(image)
        decoder, = children(daemon)
        os.kill(daemon, signal.SIGKILL)
        assert wait_for(lambda: not alive(decoder), 10), "the decoding process outlived its daemon"
        assert wait_for(lambda: not holder_pids(image), 10), "the source is still held"
        run(["fusermount3", "-uz", str(mnt)])
