"""Decoding records before they are asked for, so that their requests are answered
from the store's cache: the next records of a pass in listing order (`ReadAhead`, in
the decoding process where there is one, `pstorefs.fs.decoder`), and the entries of
a listing's batch (`decode_ahead`, on worker threads).

A policy apart from the handlers, so that what it decodes when can be tested against
a store without FUSE.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING

import trio

from pstorefs.fs.decoder import DecodeProcess, PassKind
from pstorefs.fs.errors import ABANDON_ON_CANCEL, logged
from pstorefs.store import Decoded, Record, Store

if TYPE_CHECKING:
    from pstorefs.fs.listing import Files, Listed

DECODE_THREADS = max(1, min(2, os.cpu_count() or 1))
"""Worker threads decoding ahead at once: zlib and the other codecs release the GIL,
so two decode side by side while the event loop answers."""

READ_AHEAD = 32
READ_AHEAD_BYTES = 512 << 10
"""At most how many records, and how many bytes of them, are decoded ahead of lookups
and opens in listing order: well within what the store's cache keeps
(`pstorefs.store.base.DEFAULT_CACHE_BUDGET`)."""

DECODER_PATIENCE = 0.05
"""How long a lookup or open waits for a record the decoding process has on the way
before decoding it in the daemon (the process may be stalled on the device); then the
other records on their way are not waited for either."""


async def decode_ahead(store: Store, records: Iterable[Record], *,
                       bodies: bool = False) -> None:
    """Have `store` know the entries of `records` (with `bodies`, have their bodies at
    hand), decoding what it does not on `DECODE_THREADS` worker threads at
    once. Errors are left for the record's own request to report; if this is
    cancelled, the threads stop after the record each is on."""
    if bodies:
        missing = [r for r in records if store.body(r, wait=False) is None]
    else:
        missing = [r for r in records if store.entry(r, wait=False) is None]
    decode = store.body if bodies else store.entry
    stop = threading.Event()

    def run(part: list[Record]) -> None:
        for record in part:
            if stop.is_set():
                return
            with contextlib.suppress(Exception):
                decode(record)

    in_thread = functools.partial(trio.to_thread.run_sync, **{ABANDON_ON_CANCEL: True})
    try:
        async with trio.open_nursery() as nursery:
            for n in range(min(DECODE_THREADS, len(missing))):
                nursery.start_soon(in_thread, run, missing[n::DECODE_THREADS])
    finally:
        stop.set()


class ReadAhead:
    """Lookups or opens in listing order (`cat *`, `rm *`, systemd-pstore): decode the
    next records in the background, up to `READ_AHEAD` of them or `READ_AHEAD_BYTES`
    of known sizes, so that their lookups and opens are answered from memory. Only a
    request for the record after the previous one starts it, one batch at a time; a
    request elsewhere starts the count again there."""

    def __init__(self, store: Store, files: Files, listed: Listed, stop: int) -> None:
        """Read ahead among `files` those still `listed`, before index `stop`."""
        self._store = store
        self.decoder: DecodeProcess | None = None
        """Where to read ahead while it is `usable`, rather than on worker threads."""
        self._arrival = trio.Event()
        """Set (and made anew) each time records come back from `decoder`."""
        self._receiving = False
        self._files = files
        self._listed = listed
        self._stop = stop
        self._last = -2
        """The index asked for last."""
        self._end = -1
        """The last index of the pass read ahead so far."""
        self._busy = False
        self._opened = False
        """Whether a record was opened, not only looked up, since the last batch."""
        self._removed = False
        """Whether a record was removed since the last batch."""

    @property
    def busy(self) -> bool:
        """Whether a batch is being decoded (the next starts only after it)."""
        return self._busy

    def requested(self, index: int, *, opened: bool = False) -> None:
        """Record `index` is looked up, or `opened`: read ahead of it if in order. What
        the pass did since the last batch tells the decoding process how to decode the
        next (`PassKind`): records opened, a reader's (`cat *`); else records removed,
        `rm *`'s; else lookups alone. A request out of order starts another pass,
        which has done nothing yet."""
        if index not in (self._last, self._last + 1):
            self._opened = self._removed = False
        self._opened |= opened
        batch = self._next_batch(index)
        if not batch:
            return
        kind = (PassKind.READ if self._opened else
                PassKind.REMOVE if self._removed else PassKind.LOOKUP)
        self._opened = self._removed = False
        if self.decoder is not None and self.decoder.usable:
            if not self._receiving:
                self._receiving = True
                trio.lowlevel.spawn_system_task(logged(functools.partial(self._receive,
                                                                         self.decoder)))
            if self.decoder.ask([ahead for ahead in batch if self._store.body(
                    self._files[ahead], wait=False) is None], kind):
                self._end = batch[-1]
                return
        self._end, self._busy = batch[-1], True

        async def run() -> None:
            try:
                await decode_ahead(self._store, map(self._files.__getitem__, batch),
                                   bodies=True)
            finally:
                self._busy = False

        trio.lowlevel.spawn_system_task(logged(run))

    def removed(self) -> None:
        """A record was removed (`rm`): the next batch is a remover's."""
        self._removed = True

    async def arrived(self, index: int, *, body: bool) -> None:
        """If record `index` is on its way from the decoding process and not known yet
        (its entry, or with `body` its body), wait for it, up to `DECODER_PATIENCE`."""
        decoder = self.decoder
        if decoder is None or not decoder.on_the_way(index):
            return
        known = self._store.body if body else self._store.entry
        if known(self._files[index], wait=False) is not None:
            return
        with trio.move_on_after(DECODER_PATIENCE):
            while decoder.on_the_way(index):
                await self._arrival.wait()
        if decoder.on_the_way(index):  # behind (a stalled device): wait for none of it
            decoder.give_up()

    async def _receive(self, decoder: DecodeProcess) -> None:
        """Have the store keep what the decoding process sends back, as it comes: in
        the loop's idle time, not in a request's. Should this fail, the process is
        ended, and the daemon decodes on threads."""
        try:
            while decoder.alive:
                await trio.lowlevel.wait_readable(decoder.results)
                self._adopt(decoder.take())
                self._arrival.set()
                self._arrival = trio.Event()
        except Exception:
            decoder.stop()
            raise
        finally:
            self._arrival.set()

    def _adopt(self, taken: list[tuple[int, Decoded | None]]) -> None:
        for index, decoded in taken:
            if decoded is not None:
                self._store.adopt(self._files[index], decoded)

    def _next_batch(self, index: int) -> list[int]:
        """The indexes to decode now that `index` is asked for (none if out of order,
        busy, or far enough ahead already)."""
        in_order = index == self._last + 1
        self._last = index
        if not self._end - READ_AHEAD <= index <= self._end + 1:
            self._end = index  # a new pass, or a jump: read ahead from here on
        if index < 0 or not in_order or self._busy or index + READ_AHEAD // 2 <= self._end:
            return []
        batch, size = [], 0
        for ahead in range(max(index + 1, self._end + 1), min(index + READ_AHEAD + 1,
                                                                 self._stop)):
            if ahead in self._listed:
                batch.append(ahead)
                entry = self._store.entry(self._files[ahead], wait=False)
                size += entry.size if entry else 0
                if size > READ_AHEAD_BYTES:
                    break
        return batch
