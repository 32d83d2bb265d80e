"""Decoding ahead in a process of its own, so that the event loop never shares the GIL
with the decoding (docs/decode-process.md has the measurements that chose this).

Threads decode beside the loop, but each record then passes the GIL back and forth
between them, and every pass wakes a thread on the other CPU: on two CPUs that cost
as much as the decoding saved. A forked process decodes while the loop answers, with
nothing shared but two pipes: indexes go one way, decoded records the other.

The process only reads the source, and only what the daemon asks it for. Whatever it
does not deliver in time (it stalls on the device, dies, or a record is too large or
ranged) the daemon decodes itself, as it does without it, so a stall never reaches a
request beyond `DECODER_PATIENCE`.
"""

from __future__ import annotations

import contextlib
import ctypes
import enum
import fcntl
import logging
import os
import resource
import select
import signal
import struct
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pstorefs.store import Decoded, Store

if TYPE_CHECKING:
    from pstorefs.fs.listing import Files

log = logging.getLogger(__name__)

SHIP_LIMIT = 1 << 20
"""Bodies larger than this are left to the daemon: the pipe would carry more than the
page cache takes in one piece (`STORE_IN_KERNEL`)."""

RESULTS_PIPE = 1 << 20
REQUESTS_PIPE = 4096
"""Pipe sizes: room for a batch of read-ahead's bodies on the way back, and for a few
batches of indexes on the way there (more would only queue work a jump made stale)."""

_F_SETPIPE_SZ = 1031
_PR_SET_PDEATHSIG = 1
_CAP_SYS_NICE = 23

SEND_AT = 256 << 10
SEND_PARTS = 512
"""The results of a batch go back together (one wake-up of the daemon for them all),
in writes of about this many bytes, or of this many pieces (writev takes 1,024)."""

AWAKE = 0.002
"""How long the process stays awake (spinning) for the next batch of a reader's pass,
where it may run on more than one CPU. A CPU it leaves idle between batches is where
the scheduler wakes the reader or the daemon, apart from the other: every request
then wakes the daemon on another CPU, which costs more than decoding
(docs/decode-process.md). Batches of a reader's pass come every 2 ms or so."""

REMOVAL_POLICY = os.SCHED_IDLE
"""The scheduling policy a batch of `rm *` is decoded at (other batches: `SCHED_BATCH`).
Between its lookups the daemon waits for each erase's sync: at `SCHED_IDLE` the
process decodes in that time and gives its CPU up at once to whatever wakes there, where
at `SCHED_BATCH` the daemon's threads and `rm` often waited for it
(docs/erase-handoff.md). A pass of lookups alone (`stat *`) has no such waits: there
the process would fall behind. Used only where the process may go back to
`SCHED_BATCH` (`_may_leave_idle`)."""


class PassKind(enum.Enum):
    """What the pass a batch is asked for does with its records, which decides how the
    process decodes it."""

    LOOKUP = 0
    """Looks them up only (`stat *`): decoded at `SCHED_BATCH`, then the process sleeps."""
    READ = 0xFFFFFFFF
    """Opens them (`cat *`, systemd-pstore): the process then stays awake (`AWAKE`)."""
    REMOVE = 0xFFFFFFFE
    """Removes them (`rm *`): decoded at `REMOVAL_POLICY`."""


_MARKS = (PassKind.READ.value, PassKind.REMOVE.value)
"""Each kind but LOOKUP is marked in the requests by its value before the batch; no
index reaches them (`DecodeProcess.fork`)."""

_HEADER = struct.Struct("<IIBB")
"""A decoded record: its index, its body's length, flags, and its compressor's name's
length; the name and the body follow."""
_RAW = 1
_LEFT = 2
"""Flags: undecodable, sent raw (`Decoded.undecodable`); not decoded here, left to
the daemon."""


class DecodeProcess:
    """The daemon's side: ask for indexes (`ask`), take what came back (`take`)."""

    def __init__(self, pid: int, requests: int, results: int) -> None:
        self.pid = pid
        self.results = results
        """The pipe decoded records arrive on (to wait on it)."""
        self._requests = requests
        self._asked: set[int] = set()
        """Indexes asked for, not back yet, and waited for."""
        self._outstanding = 0
        """Records asked for and not back yet, waited for or not."""
        self.behind = False
        """Given up on (`give_up`) and not caught up yet: ask nothing meanwhile."""
        self._buffer = bytearray(256 << 10)
        self._have = 0
        """Bytes read into `_buffer` and not yet taken."""
        self.alive = True
        self._stopped = False

    @classmethod
    def fork(cls, store: Store, records: Files) -> DecodeProcess | None:
        """Start the process for `records` of `store`: to be called with no other
        thread running (a lock held across the fork would stay held in the child).
        None where it cannot help (`Store.decodes_elsewhere`) or the fork failed."""
        if not store.decodes_elsewhere or len(records) >= min(_MARKS):
            return None
        requests_read, requests = os.pipe2(os.O_CLOEXEC)
        results, results_write = os.pipe2(os.O_CLOEXEC)
        for fd, size in ((requests, REQUESTS_PIPE), (results_write, RESULTS_PIPE)):
            with contextlib.suppress(OSError):  # a smaller pipe only means less ahead
                fcntl.fcntl(fd, _F_SETPIPE_SZ, size)
        parent = os.getpid()
        try:
            pid = os.fork()
        except OSError as exc:
            log.warning("no decoding process (%s): decoding in threads", exc)
            for fd in (requests_read, requests, results, results_write):
                os.close(fd)
            return None
        if pid == 0:  # the child
            try:
                os.close(requests)
                os.close(results)
                _serve(store, records, requests_read, results_write, parent)
            finally:
                os._exit(0)
        os.close(requests_read)
        os.close(results_write)
        os.set_blocking(requests, False)
        os.set_blocking(results, False)
        return cls(pid, requests, results)

    @property
    def usable(self) -> bool:
        """Whether to ask it: alive, and not behind."""
        return self.alive and not self.behind

    def ask(self, indexes: Sequence[int], kind: PassKind = PassKind.LOOKUP) -> bool:
        """Have these records decoded, in this order, for a pass of that `kind`. False
        if not asked: the process is gone, or so far behind that its requests pipe is
        full (it is then `behind`); the daemon decodes them itself."""
        if not self.usable:
            return False
        if not indexes:
            return True
        words = list(indexes) if kind is PassKind.LOOKUP else [kind.value, *indexes]
        try:  # a batch is far below PIPE_BUF: written whole, or not at all
            os.write(self._requests, struct.pack(f"<{len(words)}I", *words))
        except BlockingIOError:
            self.behind = True
            return False
        except OSError:  # the process died: decode in the daemon from now on
            self._end()
            return False
        self._asked.update(indexes)
        self._outstanding += len(indexes)
        return True

    def on_the_way(self, index: int) -> bool:
        """Whether `index` was asked for and has not come back yet."""
        return index in self._asked

    def give_up(self) -> None:
        """Wait for none of what was asked: it is late (the device stalls). What comes
        back is still taken, and nothing more is asked until all of it is back."""
        self._asked.clear()
        self.behind = True

    def take(self) -> list[tuple[int, Decoded | None]]:
        """What came back since, without waiting: each index with its decoded record,
        None for one left to the daemon."""
        taken: list[tuple[int, Decoded | None]] = []
        while self.alive:
            with memoryview(self._buffer) as free:
                try:
                    count = os.readv(self.results, [free[self._have:]])
                except BlockingIOError:
                    break
            if count == 0:  # the process ended
                self._end()
                break
            self._have += count
            self._parse(taken)
        return taken

    def _parse(self, taken: list[tuple[int, Decoded | None]]) -> None:
        """Take every whole message in the buffer, keep the partial one at its start,
        and grow the buffer for a message that will not fit."""
        buffer, at = self._buffer, 0
        while self._have - at >= _HEADER.size:
            index, length, flags, name_length = _HEADER.unpack_from(buffer, at)
            end = at + _HEADER.size + name_length + length
            if end - at > len(buffer):
                buffer.extend(bytes(end - at - len(buffer)))
            if end > self._have:
                break
            self._asked.discard(index)
            self._outstanding -= 1
            if flags & _LEFT:
                taken.append((index, None))
            else:
                with memoryview(buffer) as view:  # one copy of the body, not two
                    name = bytes(view[at + _HEADER.size:end - length]).decode() or None
                    body = bytes(view[end - length:end])
                taken.append((index, Decoded(body, name, bool(flags & _RAW))))
            at = end
        if self._outstanding <= 0:
            self.behind = False
        if at:
            buffer[:self._have - at] = buffer[at:self._have]
            self._have -= at

    def _end(self) -> None:
        self.alive = False
        self._asked.clear()

    def stop(self) -> None:
        """End the process (it holds nothing that needs a clean end) and reap it. It
        may take as long as a device read it is blocked in does not return."""
        if self._stopped:
            return
        self._stopped = True
        self._end()
        for fd in (self._requests, self.results):
            os.close(fd)
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)


def _serve(store: Store, records: Files, requests: int, results: int,
           parent: int) -> None:
    """The process: decode each index asked for and send it back, until the daemon
    closes the requests pipe, dies, or stops reading."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # it died before the line above
        return
    _close_all_but({0, 1, 2, store.device.fd, requests, results})
    with contextlib.suppress(OSError):  # the readers and the loop come first
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    policy = os.sched_getscheduler(0)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    spins = _cpus() > 1
    os.set_blocking(requests, not spins)
    idles = _may_leave_idle()
    pending = b""
    awake = False  # by read, not by batch: a plain batch read with a reader's costs AWAKE
    while chunk := _next_requests(requests, awake and spins):
        pending += chunk
        whole = len(pending) - len(pending) % 4
        indexes = [index for (index,) in struct.iter_unpack("<I", pending[:whole])]
        awake = PassKind.READ.value in indexes
        removing = PassKind.REMOVE.value in indexes and not awake
        wanted = REMOVAL_POLICY if removing else os.SCHED_BATCH
        if idles and wanted != policy:
            try:
                os.sched_setscheduler(0, wanted, os.sched_param(0))
                policy = wanted
            except OSError:  # not expected (`_may_leave_idle`): switch no more
                idles = False
        parts: list[bytes] = []
        size = 0
        for index in indexes:
            if index in _MARKS:
                continue
            message = _message(store, records, index)
            parts += message
            size += sum(map(len, message))
            if size >= SEND_AT or len(parts) >= SEND_PARTS:
                if not _sent(results, parts):
                    return
                parts, size = [], 0
        if parts and not _sent(results, parts):
            return
        pending = pending[whole:]


def _next_requests(requests: int, awake: bool) -> bytes:
    """The next requests (b"" once the daemon closed the pipe); `awake`: asked for
    without sleeping for up to `AWAKE` first. The pipe is non-blocking where the
    process may spin."""
    until = time.monotonic() + AWAKE if awake else 0.0
    readable = select.poll()
    readable.register(requests, select.POLLIN)
    while True:
        try:
            return os.read(requests, REQUESTS_PIPE)
        except BlockingIOError:
            if time.monotonic() >= until:
                readable.poll()


def _may_leave_idle() -> bool:
    """Whether the process may go back from `SCHED_IDLE` to `SCHED_BATCH`: the kernel
    lets it only with CAP_SYS_NICE in the initial user namespace (a container's root
    has it in its own only), or an RLIMIT_NICE that allows its nice value (`can_nice`);
    an unprivileged daemon has neither."""
    try:
        with open("/proc/self/uid_map") as fh:
            initial = fh.read().split() == ["0", "0", str(2**32 - 1)]
        with open("/proc/self/status") as fh:
            effective = next(int(line.split()[1], 16) for line in fh
                             if line.startswith("CapEff:"))
    except (OSError, StopIteration, ValueError):
        initial, effective = False, 0
    if initial and effective & (1 << _CAP_SYS_NICE):
        return True
    allowed = resource.getrlimit(resource.RLIMIT_NICE)[0]
    nice = os.getpriority(os.PRIO_PROCESS, 0)
    return allowed == resource.RLIM_INFINITY or 20 - nice <= allowed


def _cpus() -> float:
    """How many CPUs the process may keep busy: those its affinity allows, fewer where
    a cgroup (v2) caps its CPU time (`CPUQuota=`, a container's `cpu.max`). Spinning
    within a cap of one CPU or less would take the daemon's own time."""
    cpus: float = len(os.sched_getaffinity(0))
    try:
        with open("/proc/self/cgroup") as fh:
            group = next(line[3:].strip() for line in fh if line.startswith("0::"))
    except (OSError, StopIteration):
        return cpus
    path = "/sys/fs/cgroup" + group.rstrip("/")
    while path.startswith("/sys/fs/cgroup/"):
        with contextlib.suppress(OSError, ValueError):
            with open(f"{path}/cpu.max") as fh:
                quota, period = fh.read().split()
            if quota != "max":
                cpus = min(cpus, int(quota) / int(period))
        path = os.path.dirname(path)
    return cpus


def _message(store: Store, records: Files, index: int) -> list[bytes]:
    """The message for record `index`: decoded, or left to the daemon (which meets
    and reports whatever failed here)."""
    try:
        decoded = store.decode(records[index])
    except Exception:
        decoded = None
    body = decoded.body if decoded is not None else None
    if decoded is None or not isinstance(body, bytes) or len(body) > SHIP_LIMIT:
        return [_HEADER.pack(index, 0, _LEFT, 0)]
    name = (decoded.compressor or "").encode()
    flags = _RAW if decoded.undecodable else 0
    return [_HEADER.pack(index, len(body), flags, len(name)) + name, body]


def _sent(fd: int, parts: list[bytes]) -> bool:
    """Write all of `parts` (a blocking pipe may take them in pieces); False once the
    daemon stopped reading."""
    try:
        written = os.writev(fd, parts)
        if written < sum(map(len, parts)):  # joined only for the rare short write
            rest = memoryview(b"".join(parts))[written:]
            while rest:
                rest = rest[os.write(fd, rest):]
    except BrokenPipeError:
        return False
    return True


def _close_all_but(keep: set[int]) -> None:
    """Close what was inherited and is not needed: /dev/fuse would keep the mount's
    connection alive after the daemon died, the daemon's report pipe would keep the
    mount command waiting, loop devices held would stay held."""
    for fd in map(int, os.listdir("/proc/self/fd")):
        if fd not in keep:
            with contextlib.suppress(OSError):
                os.close(fd)
