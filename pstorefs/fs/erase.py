"""Handing `rm`'s erase to a thread at the cost of no event-loop round trip while the
device answers fast, and of no frozen mount when it stalls.

An erase (a header read, its writes, one fdatasync) is durable before `unlink` replies.
With `rm` of many files nothing else is asked meanwhile, and a thread hop costs more
than the erase: waking a sleeping thread on the other CPU is most of a FUSE round trip
here, and awaiting one through trio sleeps the loop thread until the worker wakes it
through the loop. So the loop thread blocks on a lock the worker releases when done, for
at most `ERASE_PATIENCE`: asleep, holding neither the GIL nor a CPU the worker wants
(yielding the CPU in a loop instead cost more: the GIL then passed between the two
threads at every system call of the erase). An erase slower than that is awaited as any
thread is, the loop serving lookups and reads meanwhile, and so is every erase after it
until one is fast again: a stalled device holds the loop `ERASE_PATIENCE` once. An erase
under way is never abandoned, not even when the handler is cancelled (the mount ending
on another handler's exception): the store is closed only after it, never under a
half-written erase.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from typing import Any

import trio

from pstorefs.fs.errors import fuse_error
from pstorefs.store import Record, Store

ERASE_PATIENCE = 0.005
"""How long the event loop may stand still (asleep) waiting for one erase: a
disk that answers syncs in a tenth of a millisecond to a few; past this, the device
is taken as slow and its erases are awaited while the loop serves other requests."""


class Eraser:
    """Erases `store`'s records for `unlink`, one at a time (the caller serializes)."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.fast = True
        """Whether the last erase ended within `ERASE_PATIENCE`: the next one is then
        waited for on the loop thread."""

    async def erase(self, record: Record) -> None:
        """`store.erase(record)` in a worker thread, durable when this returns; its
        errors become the FUSEError `unlink` answers with."""
        token = trio.lowlevel.current_trio_token()
        guard = threading.Lock()
        done = threading.Lock()
        done.acquire()
        """Released by the worker once the erase is over: what the loop thread waits on."""
        result: list[Any] = []
        """The erase's outcome (trio's `outcome.Outcome`), once the worker is done."""
        woken: list[trio.Event] = []

        def deliver(got: Any) -> None:  # in the worker thread
            with guard:
                result.append(got)
                waiter = woken[0] if woken else None
            done.release()
            if waiter is not None:
                with contextlib.suppress(trio.RunFinishedError):
                    token.run_sync_soon(waiter.set)

        began = time.monotonic()
        trio.lowlevel.start_thread_soon(functools.partial(self._store.erase, record), deliver)
        if self.fast:  # the patience counts from `began`: a thread may have been started
            done.acquire(timeout=max(0.0, ERASE_PATIENCE - (time.monotonic() - began)))
        if not result:
            ended = trio.Event()
            with guard:
                if not result:
                    woken.append(ended)
            if woken:
                with trio.CancelScope(shield=True):  # a cancelled handler waits too
                    await ended.wait()
        self.fast = time.monotonic() - began < ERASE_PATIENCE
        try:
            result[0].unwrap()
        except Exception as exc:
            raise fuse_error(exc, self._store) from None
