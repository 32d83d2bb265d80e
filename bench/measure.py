"""Starting, timing and stopping the filesystems bench/run compares."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
VENV_BIN = Path(sys.executable).parent
PSTOREFS = str(VENV_BIN / "pstorefs")
PSTORECTL = str(VENV_BIN / "pstorectl")
ENV = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
ENV["LC_ALL"] = "C"
"""Every process measured gets this environment: ls sorts and formats the same way on
every filesystem compared, and Python keeps bytecode (in PYTHONPYCACHEPREFIX, which
bench/run points into its work directory) as an installed pstorefs would have it,
rather than compiling pstorefs at every start where PYTHONDONTWRITEBYTECODE is set."""


class BenchError(RuntimeError):
    pass


ONE_CPU = ["taskset", "-c", "0"]
"""The prefix that runs a command, and every process it starts, on CPU 0 alone: the
one-CPU figures, where no wake-up crosses CPUs (bench/run's second ratio column)."""


def pinned(cmd: list[str], pin: bool) -> list[str]:
    return ONE_CPU + cmd if pin else cmd


def timed(cmd: list[str], **kw) -> float:
    """Wall-clock seconds of a command that must succeed."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV,
                          **kw)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise BenchError(f"{cmd[0]} {' '.join(cmd[1:3])}...: rc {proc.returncode}: "
                         f"{proc.stderr.decode(errors='replace')[-500:]}")
    return seconds


def python(script: str, *args: str) -> list[str]:
    return [sys.executable, str(BENCH / script), *args]


def holders(path: str) -> list[int]:
    """Processes holding `path` open (the pstorefs daemon of a mount of it), less
    those whose parent holds it too: the daemon's decoding process."""
    want = os.path.realpath(path)
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == want:
                        pids.append(int(pid))
                        break
    return [pid for pid in pids if _parent(pid) not in pids]


def _parent(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[1])
    except OSError:
        return None


def vm_hwm_kib(pid: int) -> int:
    """The process's peak resident set so far."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise BenchError(f"no VmHWM for pid {pid}")


def private_kib(pid: int) -> int:
    """The process's private (not shared) resident memory."""
    with open(f"/proc/{pid}/smaps_rollup") as fh:
        return sum(int(line.split()[1]) for line in fh if line.startswith("Private_"))


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def first_readdir(mnt: str) -> None:
    """One getdents: the first readdir the filesystem answers."""
    with os.scandir(mnt) as it:
        next(it, None)


@dataclass
class Mount:
    """A filesystem being served at `mnt` by process `pid`."""

    kind: str
    mnt: str
    pid: int
    proc: subprocess.Popen | None = None
    kernel: bool = False
    """A kernel filesystem (no daemon): unmounted with umount(8)."""

    def peak_rss_kib(self) -> int:
        return vm_hwm_kib(self.pid)

    def children_kib(self) -> tuple[int, int] | None:
        """The peak RSS of the daemon's children (pstorefs' decoding process) and what
        of it is private now, not shared with the daemon; None without children."""
        pids = [pid for pid in map(int, filter(str.isdigit, os.listdir("/proc")))
                if _parent(pid) == self.pid]
        sizes = [(vm_hwm_kib(pid), private_kib(pid)) for pid in pids if _alive(pid)]
        return (sum(h for h, _ in sizes), sum(p for _, p in sizes)) if sizes else None

    def stop(self) -> None:
        if self.kernel:
            if os.path.ismount(self.mnt):
                subprocess.run(["umount", self.mnt], check=True, capture_output=True)
            return
        if os.path.ismount(self.mnt):
            if subprocess.run(["fusermount3", "-u", self.mnt],
                              capture_output=True).returncode != 0:
                time.sleep(0.2)
                if subprocess.run(["fusermount3", "-u", self.mnt],
                                  capture_output=True).returncode != 0:
                    subprocess.run(["fusermount3", "-uz", self.mnt], capture_output=True)
        if self.proc is not None:
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.terminate()
                self.proc.wait(timeout=10)
        else:
            end = time.monotonic() + 30
            while _alive(self.pid) and time.monotonic() < end:
                time.sleep(0.01)
            if _alive(self.pid):
                os.kill(self.pid, 15)


def start_pstorefs(image: str, mnt: str, options: str, pin: bool = False
                   ) -> tuple[Mount, float]:
    """`pstorefs IMAGE MNT [-o OPTIONS]` as a user runs it (it returns once the mount
    is live, the daemon serving), then the first readdir: the seconds from the start
    of the command until that readdir answered. With `pin`, on CPU 0 alone."""
    cmd = pinned([PSTOREFS, image, mnt] + (["-o", options] if options else []), pin)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, env=ENV)
    if proc.returncode != 0:
        raise BenchError(f"{' '.join(cmd)}: rc {proc.returncode}: "
                         f"{proc.stderr.decode(errors='replace')}")
    first_readdir(mnt)
    seconds = time.perf_counter() - t0
    pids = holders(image)
    if len(pids) != 1:
        Mount("pstorefs", mnt, -1).stop()
        raise BenchError(f"{image}: expected one pstorefs daemon, found {pids}")
    return Mount("pstorefs", mnt, pids[0]), seconds


def start_noop(index: str, mnt: str, pin: bool = False, store: bool = False,
               erase: str | None = None) -> tuple[Mount, float]:
    """The no-op filesystem, started and waited for the same way (with `store`, its
    `--store` variant, kind "noop-store"; with `erase`, `rm` erasing that image as
    pstorefs does, kind "noop-erase")."""
    read_end, write_end = os.pipe()
    t0 = time.perf_counter()
    argv = ["--store"] * store + ["--erase", erase] * bool(erase) + [index, mnt,
                                                                    str(write_end)]
    proc = subprocess.Popen(pinned(python("noopfs.py", *argv), pin),
                            pass_fds=(write_end,), env=ENV)
    os.close(write_end)
    chunks = []
    while chunk := os.read(read_end, 16):
        chunks.append(chunk)
    os.close(read_end)
    if b"".join(chunks) != b"ok":
        proc.wait(timeout=30)
        raise BenchError(f"noopfs did not start: rc {proc.returncode}")
    first_readdir(mnt)
    seconds = time.perf_counter() - t0
    kind = "noop-store" if store else "noop-erase" if erase else "noop"
    return Mount(kind, mnt, proc.pid, proc), seconds


PEERS = {"squashfuse_ll": "squashfuse", "squashfs": "squashfs-tools"}
"""The peers `cat` is compared with, and the Debian package each needs (the kernel's
squashfs needs only the image mksquashfs builds)."""


def build_squashfs(tree: str, image: str) -> None:
    """A squashfs image of `tree`, gzip as mksquashfs defaults to, built once per run."""
    subprocess.run(["mksquashfs", tree, image, "-comp", "gzip", "-noappend", "-quiet",
                    "-no-progress"], check=True, capture_output=True)


def start_peer(kind: str, image: str, mnt: str, pin: bool = False) -> Mount:
    """Mount the squashfs `image` through `kind` (a key of PEERS), ready once its first
    readdir answered, as pstorefs is; with `pin`, squashfuse_ll's daemon on CPU 0."""
    if kind == "squashfuse_ll":
        subprocess.run(pinned(["squashfuse_ll", image, mnt], pin), check=True,
                       capture_output=True)
        pids = holders(image)
        if len(pids) != 1:
            Mount(kind, mnt, -1).stop()
            raise BenchError(f"{image}: expected one squashfuse_ll daemon, found {pids}")
        mount = Mount(kind, mnt, pids[0])
    else:
        subprocess.run(["mount", "-t", "squashfs", "-o", "loop,ro", image, mnt], check=True,
                       capture_output=True)
        mount = Mount(kind, mnt, -1, kernel=True)
    first_readdir(mnt)
    return mount


def copy_image(src: str, dest: str) -> None:
    shutil.copyfile(src, dest)
    with open(dest, "rb+") as fh:
        os.fsync(fh.fileno())  # the copy's own writeback does not land in the timed rm
