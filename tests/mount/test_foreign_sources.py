"""Through the mount helper: a source holding another filesystem is refused in one line
and exit 1, never mounted, never written; one with no pstore header anywhere mounts
read-only (EROFS)."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path

from helpers.cases import sha256
from helpers.machine import PSTOREFS, mounted, require, run
from helpers.mounts import proc_mount


def test_a_filesystem_is_refused_and_an_empty_source_mounts_read_only(tmp_path: Path,
                                                                        mnt: Path) -> None:
    require(shutil.which("mkfs.ext4") is not None, "mkfs.ext4 (e2fsprogs)")
    ext4 = tmp_path / "ext4.img"
    with open(ext4, "wb") as fh:
        fh.truncate(8 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(ext4)], check=True, timeout=60)
    before = sha256(ext4)
    mnt.mkdir(exist_ok=True)
    result = run([PSTOREFS, str(ext4), str(mnt)])
    assert result.returncode == 1, result.stderr
    assert result.stderr.count("\n") == 1 and "ext4 filesystem" in result.stderr
    assert not os.path.ismount(mnt) and sha256(ext4) == before
    blank = tmp_path / "blank.img"
    blank.write_bytes(bytes(range(256)) * (16 << 10))
    before = sha256(blank)
    with mounted(blank, mnt) as m:
        assert "ro" in proc_mount(m)[2]
        assert os.listdir(m) == []
        try:
            (m / "new").write_bytes(b"x")
        except OSError as exc:
            assert exc.errno == errno.EROFS
        else:
            raise AssertionError("a write to a read-only mount went through")
    assert sha256(blank) == before
