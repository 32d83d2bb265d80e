"""Fixtures of the mount tier: every test here needs FUSE (and root), and leaves no
mount behind."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers.machine import require_fuse, run, unmount
from helpers.mounts import unescape


@pytest.fixture(autouse=True)
def _fuse_machine(tmp_path: Path) -> Iterator[None]:
    """Needs FUSE; afterwards no mount may be left under the test's directory, not even
    a dead one (which os.path.ismount does not see)."""
    require_fuse()
    yield
    top = os.path.realpath(tmp_path)
    with open("/proc/mounts") as fh:
        left = [unescape(line.split()[1]) for line in fh]
    for target in reversed([t for t in left if t.startswith(top + os.sep)]):
        run(["fusermount3", "-uz", target])


@pytest.fixture
def public_mnt() -> Iterator[Path]:
    """A mount point that user nobody can reach (tmp_path's parents are 0700)."""
    top = Path(tempfile.mkdtemp(prefix="pstorefs-mount-", dir="/tmp"))
    top.chmod(0o755)
    (top / "mnt").mkdir()
    (top / "mnt").chmod(0o755)
    try:
        yield top / "mnt"
    finally:
        unmount(top / "mnt")
        shutil.rmtree(top, ignore_errors=True)
