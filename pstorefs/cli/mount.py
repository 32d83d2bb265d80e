"""`pstorefs SOURCE MOUNTPOINT [-o OPTS] [-f] [-d] [-v]`: mount a pstore partition.

Returns once the mount is live: the filesystem is mounted in the foreground
(`pyfuse3.init`), then the process daemonizes and the parent exits 0 only after the
daemon reports it is serving, so `mount`, fstab and scripts can use it at once.

As mount(8) expects of a helper: silent on success but for warnings (the layout found
goes to the log: syslog once daemonized, stderr with `-f`; and to `-v`), and every
failure, a usage error too, one line on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import logging
import logging.handlers
import os
import signal
import sys
from collections.abc import Callable, Iterator

import pyfuse3
import trio

from pstorefs import __version__
from pstorefs.cli.options import OPTIONS_HELP, ArgumentParser, MountOptions, parse_options
from pstorefs.cli.report import HeldLog, fail, start_logging, stderr_handler
from pstorefs.errors import PstoreError, SourceError
from pstorefs.fs import Operations, Ownership
from pstorefs.store import open_store

log = logging.getLogger("pstorefs")

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def _parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="pstorefs",
        description="Mount a pstore/blk partition (or an image of it): each crash record "
                    "the kernel left there is a file; rm erases it on the device.",
        epilog=OPTIONS_HELP + "\nexit status: 0 mounted, 1 error (bad usage too, as mount(8) "
                              "expects of a helper)",
        formatter_class=argparse.RawDescriptionHelpFormatter, usage_status=1,
    )
    p.add_argument("source", metavar="SOURCE", help="block device or image file")
    p.add_argument("mountpoint", metavar="MOUNTPOINT", help="an existing directory")
    p.add_argument("-o", dest="options", action="append", default=[], metavar="OPT[,OPT...]",
                   help="mount options (below)")
    p.add_argument("-f", "--foreground", action="store_true", help="stay in the foreground")
    p.add_argument("-d", "--debug", action="store_true", help="debug logging (implies -f)")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="also print what goes to the log (the layout found); through "
                        "mount(8): -o verbose")
    p.add_argument("--version", action="version", version=f"pstorefs {__version__}")
    return p


def _log_to_syslog(held: HeldLog) -> None:
    """Once daemonized, log lines go to syslog/journald (or nowhere if neither runs),
    starting with those of the mount (the layout found)."""
    root = logging.getLogger()
    handler: logging.Handler = logging.NullHandler()
    # Without /dev/log, SysLogHandler would try to connect again, and fail, on every
    # record (some 200 us each, and a traceback formatted for nobody): no handler then.
    if os.path.exists("/dev/log"):
        try:
            handler = logging.handlers.SysLogHandler(
                address="/dev/log", facility=logging.handlers.SysLogHandler.LOG_DAEMON)
            handler.setFormatter(logging.Formatter(f"pstorefs[{os.getpid()}]: %(message)s"))
        except OSError:
            pass
    logging.raiseExceptions = False  # a syslog that goes away later costs no tracebacks
    root.handlers[:] = [handler]
    held.replay(handler)


def _log_to_stderr(held: HeldLog, level: int, replay: bool) -> None:
    """In the foreground stderr is the log: the mount's lines (unless `-v` printed them
    already), then the daemon's."""
    handler = stderr_handler("pstorefs", level)
    logging.getLogger().handlers[:] = [handler]
    if replay:
        held.replay(handler)


@contextlib.contextmanager
def _libfuse_stderr() -> Iterator[list[str]]:
    """fd 2 into a memory file while libfuse mounts, and its lines (libfuse's own,
    `fuse: failed to open /dev/fuse: ...`, and those of the fusermount3 it runs for a
    user, `fusermount3: ...`) in the list yielded once done, so that a failure is still
    one line. A file, not a pipe: nothing can block on it."""
    sys.stderr.flush()
    saved = os.dup(2)
    sink = os.memfd_create("libfuse-stderr", os.MFD_CLOEXEC)
    lines: list[str] = []
    os.dup2(sink, 2)
    try:
        yield lines
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        said = os.pread(sink, 4096, 0).decode(errors="replace")
        os.close(sink)
        for line in said.splitlines():
            for prefix in ("fuse: ", "fusermount3: "):
                line = line.removeprefix(prefix)
            if line.strip():
                lines.append(line.strip())


def _fuse_options(source: str, opts: MountOptions, read_only: bool) -> set[str]:
    def escape(value: str) -> str:
        return value.replace("\\", "\\\\").replace(",", "\\,")

    fsname = opts.fsname or os.path.abspath(source)
    fuse = {f"fsname={escape(fsname)}", f"subtype={escape(opts.subtype)}",
            "nodev", "nosuid", "noexec"}
    if read_only:
        fuse.add("ro")
    if opts.allow_other:
        fuse |= {"allow_other", "default_permissions"}
    if opts.default_permissions:
        fuse.add("default_permissions")
    return fuse


def _daemonize(notice: str) -> Callable[[str], None]:
    """Fork into the background; the calling process stays behind and exits with the
    daemon's verdict, printing `notice` (the warnings) once it is "ok". Returns the
    daemon's `report(verdict)`: "ok", or an error line."""
    read_end, write_end = os.pipe()
    if child := os.fork():
        os.close(write_end)
        chunks = []
        while chunk := os.read(read_end, 4096):
            chunks.append(chunk)
        verdict = b"".join(chunks).decode(errors="replace")
        os.waitpid(child, 0)
        if verdict == "ok":
            sys.stderr.write(notice)
            sys.stderr.flush()
            os._exit(0)
        sys.stderr.write(f"pstorefs: {verdict or 'the daemon died before the mount was ready'}\n")
        sys.stderr.flush()
        os._exit(1)
    os.close(read_end)
    os.setsid()
    if os.fork():
        os._exit(0)
    os.chdir("/")
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)

    def report(verdict: str) -> None:
        os.write(write_end, verdict.encode())
        os.close(write_end)

    return report


async def _serve(report: Callable[[str], None] | None) -> None:
    async def stop_on_signal() -> None:
        with trio.open_signal_receiver(*_STOP_SIGNALS) as signals:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
            async for signum in signals:
                log.info("signal %s: unmounting", signal.Signals(signum).name)
                pyfuse3.terminate()
                return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(stop_on_signal)
        if report:
            report("ok")
        await pyfuse3.main()
        nursery.cancel_scope.cancel()


def _syncer(directory: str) -> Callable[[], None]:
    """What `-o sync_before_erase=DIR` runs before each erase: syncfs(2) on DIR's
    filesystem (data and metadata, renames included; os has no syncfs). DIR is opened
    now, so that a missing one fails the mount (naming the option), not the first `rm`."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise SourceError(f"sync_before_erase={directory}: {exc.strerror}") from None
    libc = ctypes.CDLL(None, use_errno=True)

    def sync() -> None:
        if libc.syncfs(fd) != 0:
            code = ctypes.get_errno()
            raise OSError(code, f"syncfs {directory}: {os.strerror(code)}; not erasing")
        log.debug("%s: flushed before erasing", directory)

    return sync


def mount(args: list[str]) -> int:
    ns = _parser().parse_args(args)
    try:
        opts = parse_options(ns.options)
    except PstoreError as exc:
        return fail("pstorefs", exc)
    verbose = ns.verbose or ns.debug or opts.verbose
    held = start_logging("pstorefs", verbose=verbose, debug=ns.debug)
    try:
        if not os.path.isdir(ns.mountpoint):
            raise SourceError(f"{ns.mountpoint}: mount point does not exist or is not a directory")
        before_erase = opts.sync_before_erase and _syncer(opts.sync_before_erase)
        store = open_store(ns.source, opts.store)
    except (PstoreError, OSError) as exc:
        return fail("pstorefs", exc)
    if store.write_refused:
        log.warning("%s: %s: mounting read-only", ns.source, store.write_refused)
    log.debug("%s", store.describe())
    read_only = store.read_only
    ops = Operations(store, Ownership(opts.uid, opts.gid, opts.umask), read_only=read_only,
                     show_erased=opts.store.show_erased, before_erase=before_erase or None)
    # Held back until the event loop listens for them: a SIGTERM between mounting
    # and serving must still unmount.
    signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        with _libfuse_stderr() as libfuse_said:
            pyfuse3.init(ops, ns.mountpoint, _fuse_options(ns.source, opts, read_only))
    except RuntimeError as exc:  # pyfuse3's "fuse_session_mount failed": libfuse said why
        store.close()
        return fail("pstorefs", f"cannot mount {ns.source} on {ns.mountpoint}: "
                                + ("; ".join(libfuse_said) or str(exc)))
    for line in libfuse_said:
        log.warning("%s", line)
    try:
        if ns.foreground or ns.debug:
            report = None
            _log_to_stderr(held, logging.DEBUG if ns.debug else logging.INFO, not verbose)
        else:
            report = _daemonize("" if verbose else held.warnings("pstorefs"))
            _log_to_syslog(held)
        ops.start_decoder()  # the daemon's own child, before any thread starts
        trio.run(_serve, report)
    finally:
        # Unmount even after a crash: an empty directory is safer for readers such as
        # systemd-pstore than a dead mount ("Transport endpoint is not connected").
        pyfuse3.close(unmount=True)
        ops.close()
        store.close()
    return 0


def main() -> None:
    sys.exit(mount(sys.argv[1:]))
