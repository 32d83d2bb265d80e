"""Shared test helpers: the bundled kernel-written cases and real FUSE mounts.

Every case under tests/data/fixtures was written and read back by a real Linux kernel
(see its README.md); these are the oracle. Tests that need FUSE, loop devices or
mount.fuse3 fail when those are missing: a skip would hide a broken machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"
FIXTURES = DATA / "fixtures"
VENV_BIN = Path(sys.executable).parent
PSTOREFS = shutil.which("pstorefs", path=f"{VENV_BIN}:{os.environ.get('PATH', '')}")


@dataclass(frozen=True)
class Case:
    """One kernel-written case: image, the kernel's files, and its case.json."""

    dir: Path
    meta: dict

    @property
    def id(self) -> str:
        return self.meta["id"]

    @property
    def image(self) -> Path:
        return self.dir / "image.bin"

    @property
    def options(self) -> str:
        opts = self.meta["mount_options"]
        if self.meta.get("system_map"):
            opts += f",system_map={self.dir / self.meta['system_map']}"
        return opts

    def option(self, key: str, default: str | None = None) -> str | None:
        pairs = dict(kv.split("=", 1) for kv in self.meta["mount_options"].split(","))
        return pairs.get(key, default)

    @property
    def files(self) -> dict[str, bytes]:
        return {f["name"]: (self.dir / "files" / f["name"]).read_bytes()
                for f in self.meta["files"]}


def load_cases(root: Path = FIXTURES) -> list[Case]:
    return [Case(d, json.loads((d / "case.json").read_text()))
            for d in sorted(root.iterdir()) if (d / "case.json").exists()]


CASES = load_cases()
BACKEND_CASES = load_cases(DATA / "fixtures-backends")
"""The other back ends' kernel-written cases (ramoops, mtdpstore, mtdoops)."""
ERASE_CASES = [c for c in CASES if "erase" in c.meta]


def case_by_id(case_id: str) -> Case:
    return next(c for c in CASES if c.id == case_id)


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
    """Processes holding `path` open: the pstorefs daemon of a mount of it."""
    want = os.path.realpath(path)
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == want:
                        pids.append(int(pid))
                        break
    return pids


def _alive(pid: int) -> bool:
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
    wait_for(lambda: not any(_alive(p) for p in pids), 10)


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


@pytest.fixture
def mnt(tmp_path: Path) -> Path:
    path = tmp_path / "mnt"
    path.mkdir()
    return path


@pytest.fixture
def image_copy(tmp_path: Path):
    """A writable copy of a case's image (or another of its images)."""

    def copy(case: Case, name: str = "image.bin") -> Path:
        dest = tmp_path / f"{case.id}-{name}"
        shutil.copyfile(case.dir / name, dest)
        return dest

    return copy


# -- the zone layout and the expected erase, from case.json alone ---------------------
# Computed independently of pstorefs (mainline pstore/zone: pmsg, console, ftrace per CPU,
# then dmesg zones filling the rest, capped at 128 MiB), so tests can check its writes.

PSZ_SIG = 0x43474244
ZONE_SIG = {"dmesg": PSZ_SIG ^ 0, "console": PSZ_SIG ^ 2, "ftrace": PSZ_SIG ^ 3,
            "pmsg": PSZ_SIG ^ 7}


@dataclass(frozen=True)
class ZoneSpan:
    """One zone of a case's layout: its type name, offset and size in bytes."""

    type: str
    offset: int
    size: int


def zone_layout(case: Case, image_bytes: int | None = None) -> list[ZoneSpan]:
    """Every zone of `case` (with its mount options) on an image of `image_bytes`."""
    def kib(key: str) -> int:
        return max(int(case.option(key, "0") or 0), 0) * 1024

    total = min(image_bytes if image_bytes is not None else case.meta["image_bytes"], 128 << 20)
    zones, offset = [], 0
    for kind in ("pmsg", "console"):
        if size := kib(f"{kind}_size"):
            zones.append(ZoneSpan(kind, offset, size))
            offset += size
    if ftrace := kib("ftrace_size"):
        cpus = int(case.option("nr_cpus", "1") or 1)
        per_cpu = ftrace // cpus
        for cpu in range(cpus):
            zones.append(ZoneSpan("ftrace", offset + cpu * per_cpu, per_cpu))
        offset += ftrace
    kmsg = kib("kmsg_size")
    while kmsg and offset + kmsg <= total:
        zones.append(ZoneSpan("dmesg", offset, kmsg))
        offset += kmsg
    return zones


def expected_after_erase(case: Case) -> bytes:
    """The kernel's image after the case's rm, with pstorefs' planned deviation: removing
    the ftrace file zeroes `datalen` and `start` of every CPU's ftrace zone."""
    img = bytearray((case.dir / case.meta["erase"]["image_after"]).read_bytes())
    if any(name.startswith("ftrace-") for name in case.meta["erase"]["remove"]):
        for zone in zone_layout(case):
            if (zone.type == "ftrace"
                    and int.from_bytes(img[zone.offset:zone.offset + 4], "little")
                    == ZONE_SIG["ftrace"]):
                img[zone.offset + 4:zone.offset + 12] = bytes(8)
    return bytes(img)


def sha256(path: str | os.PathLike) -> str:
    import hashlib
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def two_cpu_ftrace_image(records_per_cpu: int = 100) -> tuple[bytes, str]:
    """x86_64-all-fronts' image with its 64 KiB ftrace area rewritten as two 32 KiB CPU
    zones (nr_cpus=2) of synthetic records, and the mount options that read it.

    Record k (k = 0, 1, ...) is on CPU k % 2 with timestamp k, ip 0xffffffff81000000 +
    16 k and parent ip 0xffffffff82000000 + k // 2, so the merged file alternates CPUs.
    The fixtures were all written with one CPU; this is what tests "rm erases every CPU
    zone" and the merge."""
    import struct
    case = case_by_id("x86_64-all-fronts")
    img = bytearray(case.image.read_bytes())
    area = next(z for z in zone_layout(case) if z.type == "ftrace")
    per_cpu = area.size // 2
    img[area.offset:area.offset + area.size] = bytes(area.size)
    for cpu in range(2):
        recs = b"".join(struct.pack("<QQQ", 0xFFFFFFFF81000000 + 16 * k,
                                    0xFFFFFFFF82000000 + k // 2, (k << 8) | cpu)
                        for k in range(cpu, 2 * records_per_cpu, 2))
        at = area.offset + cpu * per_cpu
        img[at:at + 12] = struct.pack("<Iii", ZONE_SIG["ftrace"], len(recs), len(recs))
        img[at + 12:at + 12 + len(recs)] = recs
    return bytes(img), case.meta["mount_options"].replace("nr_cpus=1", "nr_cpus=2")
