"""The test machine: what a test needs of it (FUSE, root, tools) and real mounts.

Tests that need FUSE, loop devices or mount.fuse3 fail when those are missing: a skip
would hide a broken machine.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from packaging.requirements import Requirement

import pstorefs

VENV_BIN = Path(sys.executable).parent
PSTOREFS = shutil.which("pstorefs", path=f"{VENV_BIN}:{os.environ.get('PATH', '')}")

SYSTEM_PYTHON = Path(sys.base_prefix, "bin", "python{}.{}".format(*sys.version_info[:2]))
"""The interpreter the venv was made from, outside the checkout: what a test runs as
another user, who may not reach a checkout (root's, under /root, mode 0700) nor so its
`.venv`."""


def copy_for_other_users(dest: Path) -> dict[str, list[str]]:
    """This pstorefs and the packages it runs on, copied into `dest` (which another user
    can read), and the commands that run that copy's `pstorefs` and `pstorectl` with
    SYSTEM_PYTHON: so a test can run them as another user wherever the checkout sits."""
    require(os.access(SYSTEM_PYTHON, os.X_OK), f"{SYSTEM_PYTHON}, the venv's own Python")
    shutil.copytree(Path(pstorefs.__file__).parent, dest / "pstorefs",
                    ignore=shutil.ignore_patterns("__pycache__"))
    todo = list(importlib.metadata.requires("pstorefs") or [])
    done: set[str] = set()
    while todo:
        req = Requirement(todo.pop())
        if req.name in done or (req.marker and not req.marker.evaluate({"extra": ""})):
            continue
        done.add(req.name)
        dist = importlib.metadata.distribution(req.name)
        todo += dist.requires or []
        for file in dist.files or []:
            if file.parts[0] != ".." and "__pycache__" not in file.parts:
                (dest / file).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(file.locate(), dest / file)
    return {tool: [str(SYSTEM_PYTHON), "-I", "-c", f"import sys; sys.path.insert(0, "
                   f"{str(dest)!r}); from pstorefs.cli.{module} import main; main()"]
            for tool, module in (("pstorefs", "mount"), ("pstorectl", "ctl"))}


def require(condition: bool, what: str) -> None:
    """Fail, never skip, when a real component of the test machine is missing."""
    if not condition:
        pytest.fail(f"this test needs {what}, and this machine does not have it", pytrace=False)


def require_fuse() -> None:
    require(os.path.exists("/dev/fuse"), "/dev/fuse")
    require(shutil.which("fusermount3") is not None, "fusermount3 (Debian package fuse3)")
    require(PSTOREFS is not None, "pstorefs installed (contrib/setup.sh)")
    require(os.geteuid() == 0, "root (mounts, loop devices, block devices)")


def run(cmd: list[str], timeout: float = 30, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


def wait_for(predicate, timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def holder_pids(path: str | os.PathLike) -> list[int]:
    """Processes holding `path` open: the pstorefs daemon of a mount of it. Not those
    whose parent holds it too: the daemon's decoding process (`pstorefs.fs.decoder`)."""
    want = os.path.realpath(path)
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == want:
                        pids.append(int(pid))
                        break
    return [pid for pid in pids if parent_pid(pid) not in pids]


def parent_pid(pid: int) -> int | None:
    """`pid`'s parent, None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[1])
    except OSError:
        return None


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie does not)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def unmount(mnt: str | os.PathLike, source: str | os.PathLike | None = None) -> None:
    """Unmount and wait until the daemon has exited (its writes done, its lock gone)."""
    pids = holder_pids(source) if source else []
    if os.path.ismount(mnt):
        if run(["fusermount3", "-u", str(mnt)]).returncode != 0:
            run(["fusermount3", "-uz", str(mnt)])
    wait_for(lambda: not os.path.ismount(mnt), 10)
    wait_for(lambda: not any(alive(p) for p in pids), 10)


@contextlib.contextmanager
def mounted(source: str | os.PathLike, mnt: str | os.PathLike, options: str | None = None,
            extra: tuple[str, ...] = ()) -> Iterator[Path]:
    """`pstorefs SOURCE MNT -o OPTIONS` (daemonizing), unmounted on exit."""
    require_fuse()
    os.makedirs(mnt, exist_ok=True)
    cmd = [PSTOREFS, str(source), str(mnt)] + (["-o", options] if options else []) + list(extra)
    proc = run(cmd)
    assert proc.returncode == 0, f"{cmd}: rc {proc.returncode}: {proc.stderr}"
    assert os.path.ismount(mnt), f"{cmd} returned 0 but {mnt} is not mounted"
    try:
        yield Path(mnt)
    finally:
        unmount(mnt, source)
