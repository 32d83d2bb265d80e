"""Where the time goes: the store without FUSE, or the daemon under cProfile.

    bench/hotspots.py store IMAGE [-o OPTS] [--top N] [--phase PHASE]
        open_store, then entry() (decodes) / read() / find() / attributes() of every
        record, each phase timed; with --top, the phase's cProfile hot spots.
    bench/hotspots.py handlers IMAGE [-o OPTS]
        `rm`'s requests without FUSE or a device to wait for: LOOKUP and UNLINK of every
        record through `Operations`, on copies in /dev/shm (where fdatasync waits for
        nothing), every size known first; beside them the erase's hand-off alone
        (pstorefs' `Eraser` around one `pwrite`, as the no-op filesystem's stall-safe
        floor has it) and `Store.erase` alone. What is left is pstorefs' own work per file.
    bench/hotspots.py daemon IMAGE [-o OPTS] [--top N] [--workload ls|ls2|cat|rm]
        `pstorefs -f` under cProfile (its main thread: the event loop and FUSE
        dispatch; decoding runs in worker threads, timed by the store phases), driven
        by the workload, then unmounted; prints the hot spots. rm works on a copy.

Run it with the venv's python; PYTHONPATH=DIR profiles another checkout's pstorefs.
Nothing is written to IMAGE; temporary files are removed.
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import io
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import measure


def _stats(prof: cProfile.Profile | str, top: int) -> str:
    out = io.StringIO()
    st = pstats.Stats(prof, stream=out)
    st.sort_stats("cumulative").print_stats(top)
    st.sort_stats("tottime").print_stats(top)
    return out.getvalue()


def store(args: argparse.Namespace) -> None:
    from pstorefs.cli.options import parse_options
    from pstorefs.store import open_store

    config = dataclasses.replace(parse_options(args.options).store, read_only=True)
    phases = {}

    def phase(name, func):
        prof = cProfile.Profile() if args.top and args.phase in (None, name) else None
        t0 = time.perf_counter()
        if prof:
            prof.enable()
        result = func()
        if prof:
            prof.disable()
        phases[name] = time.perf_counter() - t0
        if prof:
            print(f"== {name}\n{_stats(prof, args.top)}")
        return result

    s = phase("open_store", lambda: open_store(args.image, config))
    records = list(s.records)
    names = phase("entry (decode) all", lambda: [s.entry(r).name for r in records])
    phase("entry again (known)", lambda: [s.entry(r) for r in records])
    def each(func, items):
        for item in items:
            func(item)  # nothing kept: memory as the daemon's

    phase("read all", lambda: each(s.read, records))
    phase("find every name", lambda: each(s.find, names))
    phase("attributes all", lambda: each(s.attributes, records))
    s.close()
    n = len(records)
    for name, seconds in phases.items():
        print(f"{name:<24} {seconds:8.3f} s  {seconds / max(n, 1) * 1e6:8.1f} us/record")
    with open("/proc/self/status") as fh:
        hwm = next(line.split()[1] for line in fh if line.startswith("VmHWM:"))
    print(f"{n} records; peak RSS {int(hwm) / 1024:.1f} MiB")


class _Ctx:
    """The request context a handler is given: root's."""

    uid = gid = 0
    umask = 0o022
    pid = os.getpid()


class _WriteAndSync:
    """The no-op filesystem's erase (`floors.Zones`: one `pwrite`, one `fdatasync`) at
    record `n`'s 4 KiB, as pstorefs' `Eraser` expects a store to offer it."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def erase(self, n: int) -> None:
        os.pwrite(self.fd, bytes(4), n * 4096)
        os.fdatasync(self.fd)

    def describe(self) -> str:
        return "the hand-off's scratch copy"


def handlers(args: argparse.Namespace) -> None:
    """`rm`'s two requests per file, as `rm` makes them (LOOKUP then UNLINK of each
    record, through `Operations`), without FUSE, on a copy in /dev/shm, where an
    fdatasync waits for no device. Every size is known first, so no record is decoded;
    no decoding process runs (the read-ahead's batches are spawned, and never run:
    the loop is never idle). Beside them the hand-off alone (`Eraser` around
    `_WriteAndSync`, the stall-safe floor's erase) and `Store.erase` alone: what is
    left after the hand-off is pstorefs' own work per file."""
    import pyfuse3
    import trio

    from pstorefs.cli.options import parse_options
    from pstorefs.fs import Operations, Ownership
    from pstorefs.fs.erase import Eraser
    from pstorefs.store import Store, open_store

    config = parse_options(args.options).store
    tmp = Path(tempfile.mkdtemp(prefix="pstorefs-handlers.", dir="/dev/shm"))
    copy = tmp / "copy.img"

    def opened() -> tuple[Store, list[bytes]]:
        shutil.copyfile(args.image, copy)
        store = open_store(str(copy), config)
        for record in store.records:
            store.entry(record)  # sizes known: no decoding timed
        return store, [store.entry(r).name.encode() for r in store.records]

    async def requests(ops: Operations, names: list[bytes]) -> tuple[float, float]:
        lookups = unlinks = 0.0
        for name in names:
            t0 = time.perf_counter()
            await ops.lookup(pyfuse3.ROOT_INODE, name, _Ctx())  # type: ignore[arg-type]
            t1 = time.perf_counter()
            await ops.unlink(pyfuse3.ROOT_INODE, name, _Ctx())  # type: ignore[arg-type]
            lookups, unlinks = lookups + t1 - t0, unlinks + time.perf_counter() - t1
        return lookups, unlinks

    async def hand_offs(eraser: Eraser, count: int) -> float:
        t0 = time.perf_counter()
        for n in range(count):
            await eraser.erase(n)  # type: ignore[arg-type]
        return time.perf_counter() - t0

    try:
        store, names = opened()
        try:
            lookup, unlink = trio.run(requests, Operations(store, Ownership(),
                                                           read_only=False), names)
        finally:
            store.close()
        fd = os.open(copy, os.O_RDWR)
        try:
            hand_off = trio.run(hand_offs, Eraser(_WriteAndSync(fd)), len(names))  # type: ignore[arg-type]
        finally:
            os.close(fd)
        store, _ = opened()
        try:
            t0 = time.perf_counter()
            for record in list(store.records):
                store.erase(record)
            erase = time.perf_counter() - t0
        finally:
            store.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    n = max(len(names), 1)
    for what, seconds in (("LOOKUP", lookup), ("UNLINK", unlink),
                          ("hand-off alone (Eraser, pwrite+fdatasync)", hand_off),
                          ("Store.erase alone", erase),
                          ("own work: LOOKUP + UNLINK - hand-off", lookup + unlink - hand_off)):
        print(f"{what:<42} {seconds / n * 1e6:8.1f} us/file")
    print(f"{len(names)} records")


def _names_offline(args: argparse.Namespace, tmp: Path) -> list[str]:
    """The file names, from the store on a copy of the image (the mount holds the
    image exclusively), so that the workload does not list the mount first."""
    from pstorefs.cli.options import parse_options
    from pstorefs.store import open_store

    config = dataclasses.replace(parse_options(args.options).store, read_only=True)
    copy = tmp / "names.img"
    shutil.copyfile(args.image, copy)
    try:
        s = open_store(str(copy), config)
        names = [s.entry(r).name for r in s.records]
        s.close()
    finally:
        os.unlink(copy)
    return names


def daemon(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="pstorefs-profile."))
    mnt = tmp / "mnt"
    mnt.mkdir()
    image = args.image
    if args.workload == "rm":
        image = str(tmp / "copy.img")
        measure.copy_image(args.image, image)
    out = tmp / "daemon.prof"
    code = ("import cProfile, sys; from pstorefs.cli.mount import main; "
            f"sys.argv = ['pstorefs', {image!r}, {str(mnt)!r}, '-f'"
            + (f", '-o', {','.join(args.options)!r}" if args.options else "") + "]; "
            f"cProfile.run('main()', {str(out)!r})")
    proc = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.DEVNULL)
    try:
        end = time.monotonic() + 120
        while not os.path.ismount(mnt):
            if proc.poll() is not None or time.monotonic() > end:
                raise SystemExit("the daemon did not mount")
            time.sleep(0.01)
        names = _names_offline(args, tmp) if args.workload in ("cat", "rm") else []
        t0 = time.perf_counter()
        if args.workload in ("ls", "ls2"):
            measure.timed(["ls", "-l", str(mnt)])
            if args.workload == "ls2":
                t0 = time.perf_counter()
                measure.timed(["ls", "-l", str(mnt)])
        elif args.workload == "cat":
            measure.timed(["cat", *names], cwd=str(mnt))
        elif args.workload == "rm":
            measure.timed(["rm", "-f", *names], cwd=str(mnt))
        print(f"{args.workload}: {time.perf_counter() - t0:.3f} s")
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True)
        proc.wait(timeout=120)
    print(_stats(str(out), args.top or 25))
    shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(prog="bench/hotspots.py", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    for name in ("store", "handlers", "daemon"):
        q = sub.add_parser(name)
        q.add_argument("image")
        q.add_argument("-o", dest="options", action="append", default=[])
        if name != "handlers":
            q.add_argument("--top", type=int, default=0)
        if name == "store":
            q.add_argument("--phase", default=None)
        elif name == "daemon":
            q.add_argument("--workload", choices=("ls", "ls2", "cat", "rm"), default="ls")
    args = p.parse_args()
    {"store": store, "handlers": handlers, "daemon": daemon}[args.what](args)


if __name__ == "__main__":
    main()
