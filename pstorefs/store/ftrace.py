"""The ftrace file served by ranges, as the kernel's seq_file serves it: never built whole.

Its size comes from one pass over the records, zone by zone, that keeps nothing per
record (their text's length is counted, not rendered). A read at offset X starts from
the last known state of the merge before X and renders only the records around X; the
states reads pass through are kept as a sparse index (the merge's state every so many
bytes of text, within `INDEX_BUDGET`), so that each part of the file is walked once.
Every reader of the file shares one `FtraceText`: one pass, one index, and the last
rendered windows (`WINDOWS_KEPT`), which a `cat` reading 128 KiB at a time walks
through.

A window is a run of the merged records: each zone's next records (up to `BATCH` in
all) are decoded, and the window ends at the last record of the zone whose decoded
records end first in merged order (`format.ftrace` explains the merge keys), so that
every zone's records before that point are among those decoded.
"""

from __future__ import annotations

import threading
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from pstorefs.format.abi import Abi, ftrace_record_format
from pstorefs.format.ftrace import Names, Records, merge_keys, merge_order, render, text_length
from pstorefs.store.base import RangedBody

BATCH = 4096
"""Records decoded at a time, over all zones: some 400 KB of text."""

ZONE_BATCH = 256
"""Records decoded at a time of each zone, at least: with many zones, fewer would cost
more in steps than in records."""

INDEX_BUDGET = 128 << 10
"""Bytes of index per file, whatever its size: past it, every other entry is dropped
and entries are kept twice as far apart."""

WINDOWS_KEPT = 6
"""Rendered windows kept for the next reads (each reader reads on from the last)."""


class ZoneData(Protocol):
    """One CPU zone's bytes in write order (as `ring_unwrap` gives them), read by ranges."""

    @property
    def size(self) -> int: ...

    def read(self, offset: int, length: int) -> bytes: ...


class InMemory:
    """`ZoneData` over bytes at hand."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    @property
    def size(self) -> int:
        return len(self._data)

    def read(self, offset: int, length: int) -> bytes:
        return self._data[offset:offset + length]


class RingData:
    """`ZoneData` of a ring zone on the device: `[start, datalen)` then `[0, start)` of
    the buffer at `offset`, read through `read` (the store's)."""

    def __init__(self, read: Callable[[int, int], bytes], offset: int, start: int,
                 datalen: int) -> None:
        self._read = read
        self._offset = offset
        self._start = start
        self.size = datalen

    def read(self, offset: int, length: int) -> bytes:
        at = self._start + offset
        if at >= self.size:
            at -= self.size
        first = min(length, self.size - at)
        data = self._read(self._offset + at, first)
        return data + self._read(self._offset, length - first) if length > first else data


class ErasedRing:
    """`ZoneData` of an erased ring zone: its buffer in buffer order up to its last
    written byte (not zero, not 0xFF), then zeros to a whole last record. Found on the
    first asking by reading back from the end, `step` bytes at a time."""

    def __init__(self, read: Callable[[int, int], bytes], offset: int, buffer_size: int,
                 record_size: int, fill: bytes, step: int = 64 << 10) -> None:
        self._read = read
        self._offset = offset
        self._buffer_size = buffer_size
        self._record_size = record_size
        self._fill = fill
        self._step = step
        self._written: int | None = None

    @property
    def written(self) -> int:
        """Bytes up to the last one written."""
        if self._written is None:
            end = self._buffer_size
            while end > 0:
                at = max(0, end - self._step)
                kept = len(self._read(self._offset + at, end - at).rstrip(self._fill))
                if kept:
                    end = at + kept
                    break
                end = at
            self._written = end
        return self._written

    @property
    def size(self) -> int:
        whole = -(-self.written // self._record_size) * self._record_size
        return min(whole, self._buffer_size)

    def read(self, offset: int, length: int) -> bytes:
        stop = min(offset + length, self.written)
        data = self._read(self._offset + offset, stop - offset) if stop > offset else b""
        return data.ljust(length, b"\0")


@dataclass(frozen=True)
class _State:
    """Where the merge stands: each zone's next record, and the largest timestamp of
    its records before that one (-1 before the first)."""

    cursors: tuple[int, ...]
    keys: tuple[int, ...]


class _Rendered(NamedTuple):
    """A window's text, where it starts in the file, and the merge's state after it."""

    start: int
    text: bytes
    after: _State


class _Window(NamedTuple):
    """Each zone's records in one window (a zone may have none) with their merge keys,
    and the state after."""

    parts: list[tuple[Records, list[int]]]
    after: _State


class _Walk:
    """The merged records from a state on, window by window."""

    def __init__(self, text: FtraceText, state: _State) -> None:
        self._text = text
        self._cursors = list(state.cursors)
        self._keys = list(state.keys)
        zones = len(state.cursors)
        self._batch = max(text.batch // zones, min(text.batch, ZONE_BATCH))
        self._buffers: list[tuple[Records, list[int]] | None] = [None] * zones

    def next(self) -> _Window | None:
        """The next window, or None past the last record."""
        text, merged = self._text, len(self._cursors) > 1
        buffers = []
        for zone, buffered in enumerate(self._buffers):
            have = len(buffered[0]) if buffered else 0
            at = self._cursors[zone] + have
            if (not have or have < self._batch // 2) and at < text.counts[zone]:
                more = text.records(zone, at, min(self._batch - have,
                                                  text.counts[zone] - at))
                before = buffered[1][-1] if buffered and buffered[1] else self._keys[zone]
                keys = merge_keys(more.stamps, before) if merged else []
                buffered = (buffered[0] + more, buffered[1] + keys) if buffered \
                    else (more, keys)
            self._buffers[zone] = buffered
            buffers.append(buffered)
        counts = self._cut(buffers)
        if not any(counts):
            return None
        parts = []
        for zone, (buffered, count) in enumerate(zip(buffers, counts, strict=True)):
            if buffered is None or not count:
                parts.append((Records(self._text.abi, b""), []))
                continue
            records, keys = buffered
            parts.append((records.cut(0, count), keys[:count]))
            self._buffers[zone] = (records.cut(count, len(records)), keys[count:])
            self._cursors[zone] += count
            if merged:
                self._keys[zone] = keys[count - 1]
        return _Window(parts, _State(tuple(self._cursors), tuple(self._keys)))

    def _cut(self, buffers: list[tuple[Records, list[int]] | None]) -> list[int]:
        """How many of each zone's decoded records the window takes: all of them up to
        the last of the zone (of those with more records still on the device) whose
        decoded ones end first in merged order, (key, later zone first)."""
        text = self._text
        open_ended = [zone for zone, buffered in enumerate(buffers) if buffered
                      and self._cursors[zone] + len(buffered[0]) < text.counts[zone]]
        if not open_ended or len(buffers) == 1:
            return [len(b[0]) if b else 0 for b in buffers]
        last = min(open_ended, key=lambda z: (buffers[z][1][-1], -z))  # type: ignore[index]
        bound = buffers[last][1][-1]  # type: ignore[index]
        counts = []
        for zone, buffered in enumerate(buffers):
            if buffered is None:
                counts.append(0)
            elif zone == last:
                counts.append(len(buffered[0]))
            elif zone > last:  # first on equal keys
                counts.append(bisect_right(buffered[1], bound))
            else:
                counts.append(bisect_left(buffered[1], bound))
        return counts


class FtraceText(RangedBody):
    """The ftrace file of these CPU zones (in zone order), rendered by ranges."""

    def __init__(self, abi: Abi, zones: Sequence[ZoneData], names: Names, *,
                 batch: int = BATCH, index_budget: int = INDEX_BUDGET) -> None:
        self.abi = abi
        self.zones = zones
        self.names = names
        self.batch = batch
        self.index_budget = index_budget
        self.record_size = ftrace_record_format(abi).size
        self.counts: list[int] = []
        """Each zone's records, known once the size is."""
        self._size: int | None = None
        self._sizing = threading.Lock()
        self._offsets = array("Q")
        """Text offset of each indexed state, rising: the first at 0."""
        self._states = array("Q")
        """Each indexed state: per zone its cursor, then its key (0 at cursor 0)."""
        self._stride = 0
        """How far apart entries are kept at least (grows as the index is thinned)."""
        self._windows: list[_Rendered] = []
        """The windows rendered last, newest last."""
        self._windows_lock = threading.Lock()
        self._rendering = threading.Lock()
        """Held while a window is found and rendered: readers asking for the same
        window at once (the kernel's readahead sends several reads in flight) wait
        for it rather than render it each; rendering holds the GIL anyway."""

    # -- the contract -------------------------------------------------------------------
    @property
    def size(self) -> int:
        if self._size is None:
            with self._sizing:
                if self._size is None:
                    self._size = self._measure()
        return self._size

    def read(self, offset: int, length: int) -> bytes:
        end = min(self.size, offset + length)
        pieces = []
        while offset < end:
            start, text, _ = self._window_at(offset)
            piece = text[offset - start:end - start]
            pieces.append(piece)
            offset += len(piece)
        return b"".join(pieces)

    # -- what the walk reads ------------------------------------------------------------
    def records(self, zone: int, first: int, count: int) -> Records:
        """Records `first` to `first + count` of a zone. The bytes before its first
        whole record (`size % record_size`) are a partly overwritten one, dropped as
        `pstore_ftrace_combine_log` drops them."""
        data = self.zones[zone]
        at = data.size % self.record_size + first * self.record_size
        return Records(self.abi, data.read(at, count * self.record_size))

    # -- the size and the index ------------------------------------------------------
    def _measure(self) -> int:
        """One pass, zone by zone (the size does not depend on the order): the
        records' text counted, `batch` records at a time."""
        self.counts = [zone.size // self.record_size for zone in self.zones]
        total = 0
        for zone, count in enumerate(self.counts):
            for first in range(0, count, self.batch):
                total += text_length(self.records(zone, first, min(self.batch, count - first)),
                                     self.names)
        self._keep(0, self._first_state())
        return total

    def _note(self, offset: int, state: _State) -> None:
        """A window starts at `offset` in `state`: indexed if far enough past the last
        entry (the index grows as reads walk the file, within its budget)."""
        if offset - self._offsets[-1] <= self._stride:
            return
        self._keep(offset, state)
        if len(self._offsets) > max(self.index_budget // (8 * (1 + 2 * len(self.zones))), 2):
            self._thin(len(self.zones))

    def _first_state(self) -> _State:
        return _State((0,) * len(self.zones), (-1,) * len(self.zones))

    def _keep(self, offset: int, state: _State) -> None:
        self._offsets.append(offset)
        self._states.extend(state.cursors)
        self._states.extend(0 if cursor == 0 else max(key, 0)
                            for cursor, key in zip(state.cursors, state.keys, strict=True))

    def _thin(self, zones: int) -> None:
        """Every other index entry dropped: the index stays within its budget."""
        per = 2 * zones
        self._offsets = self._offsets[::2]
        states = array("Q")
        for at in range(0, len(self._states), 2 * per):
            states.extend(self._states[at:at + per])
        self._states = states
        self._stride = (self._offsets[-1] - self._offsets[0]) // max(len(self._offsets) - 1, 1)

    def _state(self, entry: int) -> _State:
        per = 2 * len(self.zones)
        row = self._states[entry * per:(entry + 1) * per]
        cursors = tuple(row[:len(self.zones)])
        keys = tuple(-1 if cursor == 0 else key
                     for cursor, key in zip(cursors, row[len(self.zones):], strict=True))
        return _State(cursors, keys)

    # -- reading ------------------------------------------------------------------------
    def _window_at(self, offset: int) -> _Rendered:
        """The rendered window holding text offset `offset`: one kept, or rendered
        from the nearest known state before it (an index entry, or where a kept window
        ends), the windows between skipped by their length."""
        found = self._kept(offset)
        if found is not None:
            return found
        with self._rendering:
            return self._kept(offset) or self._render_from(offset)

    def _kept(self, offset: int) -> _Rendered | None:
        with self._windows_lock:
            return next((kept for kept in self._windows
                         if kept.start <= offset < kept.start + len(kept.text)), None)

    def _nearest(self, offset: int) -> tuple[int, _State]:
        """The known state closest before `offset`, and its text offset."""
        entry = bisect_right(self._offsets, offset) - 1
        start, state = self._offsets[entry], self._state(entry)
        with self._windows_lock:
            for kept in self._windows:
                end = kept.start + len(kept.text)
                if start < end <= offset:
                    start, state = end, kept.after
        return start, state

    def _render_from(self, offset: int) -> _Rendered:
        start, state = self._nearest(offset)
        walk = _Walk(self, state)
        while (window := walk.next()) is not None:
            self._note(start, state)
            length = sum(text_length(records, self.names) for records, _ in window.parts)
            if start + length > offset:
                kept = _Rendered(start, self._render(window), window.after)
                with self._windows_lock:
                    self._windows.append(kept)
                    del self._windows[:-WINDOWS_KEPT]
                return kept
            start, state = start + length, window.after
        raise RuntimeError(f"ftrace text offset {offset} past its end")

    def _render(self, window: _Window) -> bytes:
        """A window's text: each zone's lines, put in merged order where several zones
        have records in it."""
        texts = [render(records, self.names) if len(records) else b""
                 for records, _ in window.parts]
        if sum(1 for text in texts if text) <= 1:
            return b"".join(texts)
        lines: list[bytes] = []
        for text in reversed(texts):
            lines += text.splitlines(keepends=True)
        order = merge_order([keys for _, keys in window.parts])
        return b"".join(map(lines.__getitem__, order))
