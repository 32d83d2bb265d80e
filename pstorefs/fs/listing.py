"""The directory's listing: which records have a file, how long a listing waits for
the device, and when the kernel's cached copy of a listing must be dropped.

Kept apart from the handlers because each part is a policy of its own, and because
all but the listing itself (`Listing.reply`) can be tested without FUSE or a device.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence

import pyfuse3
import trio

from pstorefs.fs.errors import in_thread, logged
from pstorefs.fs.read_ahead import decode_ahead
from pstorefs.store import UNSIZED, Entry, Record, Store

log = logging.getLogger(__name__)

DIRECTORY_PATIENCE = 2.0
"""How long a lookup or a listing waits for one record's name and size. The kernel
holds the directory's lock across both, so a record whose sectors stall the device
would stall every name: past this, the lookup answers with the size still unknown
(0, valid for no time, so that stat() and reads ask `getattr`), and the listing leaves
the record out, while the read goes on in its thread and is kept."""

LISTING_REFRESH = 1.0
"""How long after a listing that left records out the kernel is told to drop it (the
kernel caches a reply after it arrived)."""

READDIR_BATCH = 256
"""Entries a listing decodes ahead at a time (a reply holds some 100 to 200)."""


class Files:
    """The records behind the files, by index from 0: the store's (not copied: a store
    may make each record when asked for it), then with `show_erased` the erased ones.
    One index for both, so that an inode is an index plus a constant."""

    def __init__(self, live: Sequence[Record], erased: list[Record]) -> None:
        self._live = live
        self._erased = erased

    def __len__(self) -> int:
        return len(self._live) + len(self._erased)

    def __getitem__(self, index: int) -> Record:
        n = len(self._live)
        return self._live[index] if index < n else self._erased[index - n]

    def index(self, record: Record) -> int:
        try:
            return self._live.index(record)
        except ValueError:
            return len(self._live) + self._erased.index(record)


class Listed:
    """Which record indexes still have their file (`rm` takes them out), a byte each:
    a partition may hold tens of thousands of records."""

    def __init__(self, count: int) -> None:
        self._on = bytearray(b"\x01") * count
        self._count = count

    def __contains__(self, index: int) -> bool:
        return 0 <= index < len(self._on) and self._on[index] == 1

    def __len__(self) -> int:
        return self._count

    def discard(self, index: int) -> None:
        if index in self:
            self._on[index] = 0
            self._count -= 1

    def next(self, start: int, limit: int, stop: int) -> list[int]:
        """Up to `limit` listed indexes from `start` on and before `stop`, in order."""
        found: list[int] = []
        at = start
        while len(found) < limit and (at := self._on.find(1, at, stop)) >= 0:
            found.append(at)
            at += 1
        return found


async def entry_within(store: Store, record: Record, inode: int) -> Entry | None:
    """The record's entry, or None if the device does not give it within
    `DIRECTORY_PATIENCE` (its read goes on, and is kept)."""
    known = store.entry(record, wait=False)
    if known is not None or store.unsized(record) is not None:
        return known  # an unsized record's size is worth no wait: getattr waits for it
    with trio.move_on_after(DIRECTORY_PATIENCE):
        return await in_thread(store, store.entry, record, abandon_on_cancel=True)
    log.warning("%s: record %d: the device has not answered in %g s; its size is "
                "given later", store.describe(), inode, DIRECTORY_PATIENCE)
    return None


def kernel_caches_listing(show_erased: bool, release: str | None = None) -> bool:
    """Whether the root's listing is left to the kernel's cache: OPENDIR answered with
    ENOSYS (once per mount; Linux 5.1 and later, `release` the running one) has the
    kernel cache it (FOPEN_CACHE_DIR, fuse_do_open's default then) and drop that cache
    when an unlink changes the directory; readdir is then asked with fh 0. Only
    without `erased/`: with two directories, readdir must tell them by their handles."""
    if show_erased:
        return False
    try:
        found = tuple(int(part) for part in (release or os.uname().release).split(".")[:2])
    except ValueError:
        return False
    return found >= (5, 1)


class Listing:
    """Listings with patience, and what the kernel keeps of them: a record the device
    does not give in time is left out (`left_out`), and once it is found the kernel's
    cached listing is dropped, so that the next `ls` shows it."""

    def __init__(self, store: Store, files: Files, listed: Listed, *,
                 kernel_caches: bool, changed_ns: int) -> None:
        self._store = store
        self._files = files
        self._listed = listed
        self.kernel_caches = kernel_caches
        """Whether the kernel caches the listing (`kernel_caches_listing`)."""
        self.changed_ns = changed_ns
        """The root's mtime and ctime, moved on by `forget`."""
        self.left_out: set[int] = set()
        """Records a listing left out (unreadable or stalled)."""
        self._forget_pending = False
        self._notify_limiter = trio.CapacityLimiter(1)
        """Its own thread for telling the kernel to drop a listing: never waits behind
        decodes stuck on a stalled device."""

    async def reply(self, indexes: range, start: int,
                    add: Callable[[int, Entry], bool]) -> bool:
        """`add` the entries of the listed records of `indexes` from `start` on, in
        batches decoded ahead: whether the reply had room for all. If the device
        stalled on any, the kernel's listing is dropped a while later (`forget_later`):
        its read goes on, and once done, the next listing should show it."""
        start = max(start, indexes.start)
        room, stalled = True, False
        while room and (batch := self._listed.next(start, READDIR_BATCH, indexes.stop)):
            start = batch[-1] + 1
            room, stall = await self._reply_batch(batch, add)
            stalled = stalled or stall
        if stalled:
            self.forget_later()
        return room

    async def _reply_batch(self, indexes: list[int],
                           add: Callable[[int, Entry], bool]) -> tuple[bool, bool]:
        """`add` those records' entries, decoded ahead: whether the reply had room for
        all, and whether the device stalled on any.

        A record left out (unreadable, or stalled past `DIRECTORY_PATIENCE`, when the
        batch's others are left out too rather than waited for one by one) is noted in
        `left_out`, so that finding it again refreshes the kernel's listing. An
        `unsized` one is listed at once, its size unknown (`UNSIZED`), not decoded."""
        unsized = {index: name for index in indexes
                   if self._store.entry(record := self._files[index], wait=False) is None
                   and (name := self._store.unsized(record)) is not None}
        with trio.move_on_after(DIRECTORY_PATIENCE) as patience:
            await decode_ahead(self._store, (self._files[index] for index in indexes
                                             if index not in unsized))
        if patience.cancelled_caught:
            log.warning("%s: the device has not answered in %g s: records not read yet "
                        "are left out of this listing", self._store.describe(),
                        DIRECTORY_PATIENCE)
        stalled = patience.cancelled_caught
        for index in indexes:
            record = self._files[index]
            if index in unsized:
                self.left_out.discard(index)
                if not add(index, Entry(unsized[index], UNSIZED, record.time_ns)):
                    return False, stalled
                continue
            try:
                entry = (self._store.entry(record, wait=False) if patience.cancelled_caught
                         else await entry_within(self._store, record,
                                                 pyfuse3.ROOT_INODE + 1 + index))
                stalled = stalled or entry is None
            except pyfuse3.FUSEError:
                entry = None  # unreadable: logged
            if entry is None:
                self.left_out.add(index)
                continue
            self.left_out.discard(index)
            if not add(index, entry):
                return False, stalled
        return True, stalled

    def found_again(self, index: int) -> bool:
        """Whether a listing left out the record a lookup now found with its size: the
        kernel's listing must then be dropped (`forget`) before the lookup replies."""
        if index not in self.left_out:
            return False
        self.left_out.discard(index)
        return True

    async def forget(self) -> None:
        """Have the kernel drop the listing it cached, so that the next one asks again.

        Dropping its pages is not enough: a listing that left every record out has
        none, and the kernel keeps serving it (Linux 6.18) until an opendir finds the
        root's mtime changed (fuse_readdir_cached), which it asks for once the
        attributes are invalid. So the mtime moves on first."""
        if not self.kernel_caches:
            return
        self.changed_ns = max(time.time_ns(), self.changed_ns + 1)
        try:
            await trio.to_thread.run_sync(pyfuse3.invalidate_inode, pyfuse3.ROOT_INODE, False,
                                          limiter=self._notify_limiter)
        except OSError as exc:
            log.debug("dropping the kernel's listing: %s", exc)

    def forget_later(self) -> None:
        """`forget` a while after the listing just replied (once the kernel has cached
        it: `LISTING_REFRESH`), one pending at a time."""
        if self._forget_pending or not self.kernel_caches:
            return
        self._forget_pending = True

        async def later() -> None:
            try:
                await trio.sleep(LISTING_REFRESH)
                await self.forget()
            finally:
                self._forget_pending = False

        trio.lowlevel.spawn_system_task(logged(later))
