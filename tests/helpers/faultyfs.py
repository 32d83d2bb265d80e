"""A test-only FUSE filesystem that serves one image file and injects device faults.

This machine has no device-mapper (no dm-error, dm-flakey, dm-dust), and a loop device
that is open cannot be detached (the detach is deferred to the last close), so faults
are injected one layer down instead: pstorefs mounts a file that lives inside this
filesystem, and every read, write and fdatasync pstorefs issues on its source passes
through here (the file is opened direct_io, so nothing is served from the page cache)
where, by byte range, it can be made to fail:

* `read`:  EIO (or any errno) for a range, or a short read stopping where the range starts;
* `write`: EIO, ENOSPC, ... for a range, or a short write (nothing of the range written);
* `fsync`: an error from fdatasync;
* `vanish`: every operation fails (EIO, ENXIO, ...) as if the USB stick was pulled;
  `vanish_size0` reports the file as empty and reads as end-of-file, as the kernel does
  for a removed disk (its capacity set to 0);
* `stall`: reads of a range, or fdatasync, block until the control changes (a hung
  device);
* `kill`: SIGKILL a given pid just before or just after the Nth write (a power cut at an
  exact write boundary).

Faults are set at run time by rewriting a JSON control file (atomically, `FaultyMount.set`);
it is re-read whenever it changes. Every operation and every injected fault is appended to
a JSON-lines log (writes with their bytes), which the tests read back, e.g. to replay the
write sequence as a power cut would have left it.

    python tests/helpers/faultyfs.py IMAGE MOUNTPOINT --control CTL.json --log LOG.jsonl

The second half of this module is the tests' side: `FaultyMount`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

FILE_INODE = 2


def _errno(value: object, default: int = errno.EIO) -> int:
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        return getattr(errno, value)
    return default


def serve(image: str, mountpoint: str, control: str, log_path: str) -> None:
    import pyfuse3
    import trio

    name = os.fsencode(os.path.basename(image))
    fd = os.open(image, os.O_RDWR | os.O_CLOEXEC)
    log = open(log_path, "a", buffering=1)

    def note(**event: object) -> None:
        log.write(json.dumps(event) + "\n")

    class Control:
        stamp: tuple[int, int] | None = None
        spec: ClassVar[dict] = {}
        writes = 0
        used: ClassVar[dict[int, int]] = {}

        @classmethod
        def get(cls) -> dict:
            try:
                st = os.stat(control)
                stamp = (st.st_mtime_ns, st.st_ino)
            except FileNotFoundError:
                stamp = None
            if stamp != cls.stamp:
                cls.stamp = stamp
                try:
                    cls.spec = json.loads(Path(control).read_text()) if stamp else {}
                except (OSError, ValueError):
                    cls.spec = {}
                cls.used = {}
                cls.writes = 0
            return cls.spec

    def vanished(op: str) -> None:
        spec = Control.get()
        if spec.get("vanish"):
            code = _errno(spec["vanish"])
            note(ev="fault", op=op, fault="vanish", errno=errno.errorcode[code])
            raise pyfuse3.FUSEError(code)

    def rule_for(op: str, off: int, length: int) -> tuple[int, dict] | None:
        for i, rule in enumerate(Control.get().get("faults", [])):
            if op not in rule.get("ops", [rule.get("op")]):
                continue
            start, end = rule.get("start", 0), rule.get("end", 1 << 62)
            if op != "fsync" and not (off < end and start < off + length):
                continue
            times = rule.get("times")
            if times is not None and Control.used.get(i, 0) >= times:
                continue
            Control.used[i] = Control.used.get(i, 0) + 1
            return i, rule
        return None

    async def stall() -> None:
        """Until the control changes: a hung device."""
        stamp = Control.stamp
        while Control.stamp == stamp:
            await trio.sleep(0.05)
            Control.get()

    class FaultyFS(pyfuse3.Operations):
        def __init__(self) -> None:
            super().__init__()
            self.next_fh = 1

        def _attrs(self, inode: int) -> pyfuse3.EntryAttributes:
            a = pyfuse3.EntryAttributes()
            a.st_ino = inode
            now = time.time_ns()
            a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = now
            a.entry_timeout = a.attr_timeout = 0
            if inode == pyfuse3.ROOT_INODE:
                a.st_mode = stat.S_IFDIR | 0o755
                a.st_nlink = 2
            else:
                a.st_mode = stat.S_IFREG | 0o644
                a.st_nlink = 1
                spec = Control.get()
                a.st_size = 0 if spec.get("vanish_size0") else os.fstat(fd).st_size
                a.st_blksize = 512
                a.st_blocks = (a.st_size + 511) // 512
            return a

        async def getattr(self, inode, ctx=None):
            if inode != pyfuse3.ROOT_INODE:
                vanished("getattr")
            return self._attrs(inode)

        async def lookup(self, parent_inode, lookup_name, ctx=None):
            if parent_inode != pyfuse3.ROOT_INODE or lookup_name != name:
                raise pyfuse3.FUSEError(errno.ENOENT)
            vanished("lookup")
            return self._attrs(FILE_INODE)

        async def opendir(self, inode, ctx):
            return inode

        async def readdir(self, fh, start_id, token):
            if start_id < 1:
                pyfuse3.readdir_reply(token, name, self._attrs(FILE_INODE), 1)

        async def releasedir(self, fh):
            return None

        async def open(self, inode, flags, ctx):
            vanished("open")
            fh = self.next_fh
            self.next_fh += 1
            note(ev="open", flags=flags, pid=ctx.pid)
            return pyfuse3.FileInfo(fh=fh, direct_io=True, keep_cache=False)

        async def read(self, fh, off, size):
            vanished("read")
            spec = Control.get()
            if spec.get("vanish_size0"):
                note(ev="fault", op="read", off=off, len=size, fault="eof")
                return b""
            hit = rule_for("read", off, size)
            if hit is not None:
                rule = hit[1]
                if rule.get("stall"):
                    note(ev="fault", op="read", off=off, len=size, fault="stall")
                    await stall()
                    return os.pread(fd, size, off)
                if rule.get("short"):
                    keep = max(rule.get("start", 0) - off, 0)
                    note(ev="fault", op="read", off=off, len=size, fault="short", got=keep)
                    return os.pread(fd, keep, off) if keep else b""
                code = _errno(rule.get("errno"))
                note(ev="fault", op="read", off=off, len=size, fault=errno.errorcode[code])
                raise pyfuse3.FUSEError(code)
            note(ev="read", off=off, len=size)
            return os.pread(fd, size, off)

        async def write(self, fh, off, buf):
            vanished("write")
            spec = Control.get()
            Control.writes += 1
            number = Control.writes
            kill = spec.get("kill")
            if kill and kill.get("at_write") == number and kill.get("when") == "before":
                note(ev="kill", when="before", write=number, off=off, data=buf.hex())
                os.kill(kill["pid"], signal.SIGKILL)
                raise pyfuse3.FUSEError(errno.EIO)
            hit = rule_for("write", off, len(buf))
            if hit is not None:
                rule = hit[1]
                if rule.get("short"):
                    keep = max(rule.get("start", 0) - off, 0)
                    if keep:
                        os.pwrite(fd, buf[:keep], off)
                    note(ev="fault", op="write", off=off, len=len(buf), fault="short",
                         wrote=keep, data=buf[:keep].hex())
                    return keep
                code = _errno(rule.get("errno"))
                note(ev="fault", op="write", off=off, len=len(buf), fault=errno.errorcode[code])
                raise pyfuse3.FUSEError(code)
            written = os.pwrite(fd, buf, off)
            note(ev="write", n=number, off=off, data=buf[:written].hex())
            if kill and kill.get("at_write") == number and kill.get("when") == "after":
                note(ev="kill", when="after", write=number)
                os.kill(kill["pid"], signal.SIGKILL)
            return written

        async def fsync(self, fh, datasync):
            vanished("fsync")
            hit = rule_for("fsync", 0, 0)
            if hit is not None and hit[1].get("stall"):
                note(ev="fault", op="fsync", fault="stall")
                await stall()
            elif hit is not None:
                code = _errno(hit[1].get("errno"))
                note(ev="fault", op="fsync", fault=errno.errorcode[code])
                raise pyfuse3.FUSEError(code)
            os.fdatasync(fd)
            note(ev="fsync")

        async def flush(self, fh):
            vanished("flush")

        async def release(self, fh):
            note(ev="release")

        async def setattr(self, inode, attr, fields, fh, ctx):
            raise pyfuse3.FUSEError(errno.EPERM)

        async def statfs(self, ctx):
            st = pyfuse3.StatvfsData()
            st.f_bsize = st.f_frsize = 512
            st.f_namemax = 255
            return st

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            async def stop() -> None:
                with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    async for _ in signals:
                        pyfuse3.terminate()
                        return
            nursery.start_soon(stop)
            await pyfuse3.main()
            nursery.cancel_scope.cancel()

    pyfuse3.init(FaultyFS(), mountpoint, {"fsname=faultyfs", "subtype=faultyfs"})
    try:
        trio.run(main)
    finally:
        pyfuse3.close(unmount=True)
        os.close(fd)


# == the tests' side ====================================================================
class FaultyMount:
    """`faultyfs` serving `image` at `mountpoint`; `self.file` is the path pstorefs gets."""

    def __init__(self, image: str | os.PathLike, mountpoint: str | os.PathLike) -> None:
        self.image = Path(image)
        self.mountpoint = Path(mountpoint)
        self.control = self.mountpoint.parent / f"{self.mountpoint.name}.control.json"
        self.log = self.mountpoint.parent / f"{self.mountpoint.name}.log.jsonl"
        self.file = self.mountpoint / self.image.name
        self.proc: subprocess.Popen | None = None
        self._version = 0

    def set(self, **spec: object) -> None:
        """Replace the faults (atomically: the next operation sees all of it or none)."""
        self._version += 1
        tmp = self.control.with_suffix(f".tmp{self._version}")
        tmp.write_text(json.dumps(spec))
        os.replace(tmp, self.control)

    def clear(self) -> None:
        self.set()

    def events(self) -> list[dict]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines() if line]

    def faults(self) -> list[dict]:
        return [e for e in self.events() if e["ev"] == "fault"]

    def start(self) -> None:
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        self.clear()
        self.log.write_text("")
        self.proc = subprocess.Popen(
            [sys.executable, __file__, str(self.image), str(self.mountpoint),
             "--control", str(self.control), "--log", str(self.log)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        end = time.monotonic() + 15
        while not os.path.ismount(self.mountpoint):
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(f"faultyfs exited with {self.proc.returncode}: {err}")
            if time.monotonic() > end:
                raise RuntimeError("faultyfs did not mount within 15 s")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(OSError):
            self.clear()
        if self.mounted() or self.proc.poll() is None:
            r = subprocess.run(["fusermount3", "-u", str(self.mountpoint)],
                               capture_output=True, timeout=30)
            if r.returncode != 0:
                subprocess.run(["fusermount3", "-uz", str(self.mountpoint)],
                               capture_output=True, timeout=30)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        if self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None

    def mounted(self) -> bool:
        """In /proc/mounts (a mount whose server died fails os.path.ismount)."""
        want = os.path.realpath(self.mountpoint)
        with open("/proc/mounts") as fh:
            return any(line.split()[1] == want for line in fh)

    def __enter__(self) -> FaultyMount:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def faulty(image: str | os.PathLike, mountpoint: str | os.PathLike) -> Iterator[FaultyMount]:
    with FaultyMount(image, mountpoint) as fm:
        yield fm


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(description="serve IMAGE at MOUNTPOINT with injected faults")
    p.add_argument("image")
    p.add_argument("mountpoint")
    p.add_argument("--control", required=True)
    p.add_argument("--log", required=True)
    a = p.parse_args()
    serve(a.image, a.mountpoint, a.control, a.log)
