"""pytest fixtures shared by every tier, and the tiers' markers; the helpers tests import
by name are in tests/helpers (cases.py: the kernel-written cases; machine.py: FUSE, root,
mounts). The layout of the suite: tests/README.md."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers.cases import Case
from helpers.machine import copy_for_other_users

TESTS = Path(__file__).parent
TIER_MARKERS = {"fs": ("fuse",), "mount": ("fuse", "root")}
"""What every test of a tier needs (tests/README.md). Markers describe, they never skip:
a test that cannot get what it needs fails (helpers.machine.require)."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(TESTS):
            tier = item.path.relative_to(TESTS).parts[0]
            for marker in TIER_MARKERS.get(tier, ()):
                item.add_marker(marker)


@pytest.fixture
def mnt(tmp_path: Path) -> Path:
    path = tmp_path / "mnt"
    path.mkdir()
    return path


@pytest.fixture
def image_copy(tmp_path: Path):
    """A writable copy of a case's image (or another of its images)."""

    def copy(case: Case, name: str = "image.bin") -> Path:
        return case.copy(name, tmp_path / f"{case.id}-{name}")

    return copy


@pytest.fixture(scope="session")
def for_others() -> Iterator[dict[str, list[str]]]:
    """The commands (`pstorefs`, `pstorectl`) that run this pstorefs as another user
    (nobody), from a copy that user can read: the checkout and its `.venv` may sit where
    only root gets in (/root, mode 0700)."""
    top = Path(tempfile.mkdtemp(prefix="pstorefs-code-", dir="/tmp"))
    try:
        top.chmod(0o755)
        yield copy_for_other_users(top)
    finally:
        shutil.rmtree(top, ignore_errors=True)
