"""blockconsole through the mount: a log of the test-only writer, detected without
options, read, refused on rm."""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

import pytest

from helpers.blockconsole import UUID, wrapped_log
from helpers.blockconsole_writer import CACHE_SIZE
from helpers.cases import sha256
from helpers.machine import mounted


@pytest.fixture
def written(tmp_path: Path) -> tuple[Path, bytes]:
    return wrapped_log(tmp_path)


def test_mount(written: tuple[Path, bytes], mnt: Path) -> None:
    img, text = written
    before = sha256(img)
    t0 = time.time_ns()
    with mounted(img, mnt) as m:  # detected: no options
        t1 = time.time_ns()
        assert os.listdir(m) == ["console-blockconsole-0"]
        path = m / "console-blockconsole-0"
        assert path.read_bytes() == text
        st = path.stat()
        assert st.st_size == len(text) and st.st_mode & 0o777 == 0o444
        assert t0 <= st.st_mtime_ns <= t1  # the format has no time: the mount's
        assert os.getxattr(path, "user.pstore.uuid") == f"{UUID:08x}".encode()
        assert os.getxattr(path, "user.pstore.zone_offset") == (
            f"{2 * CACHE_SIZE},0,{CACHE_SIZE}".encode())
        with pytest.raises(PermissionError) as refused:
            os.unlink(path)
        assert refused.value.errno == errno.EPERM
        assert os.listdir(m) == ["console-blockconsole-0"]
    assert sha256(img) == before


def test_mount_read_only_and_named(written: tuple[Path, bytes], mnt: Path) -> None:
    img, text = written
    before = sha256(img)
    with mounted(img, mnt, "backend=blockconsole,name=bcon,ro") as m:
        path = m / "console-bcon-0"
        assert path.read_bytes() == text
        with pytest.raises(OSError) as refused:
            os.unlink(path)
        assert refused.value.errno == errno.EROFS
    assert sha256(img) == before
