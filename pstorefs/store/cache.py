"""A byte-budgeted LRU cache of decoded record bodies."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable

ITEM_OVERHEAD = 128
"""What each kept body costs beyond its bytes (its key, the bytes object, the entry),
counted against the budget so that many small bodies stay within it too."""


class BodyCache:
    """Keeps the most recently used bodies whose sizes (and `ITEM_OVERHEAD` each) add
    up to at most `budget` bytes, so memory stays fixed whatever the partition holds."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self._used = 0
        self._items: OrderedDict[Hashable, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> bytes | None:
        with self._lock:
            body = self._items.get(key)
            if body is not None:
                self._items.move_to_end(key)
            return body

    def put(self, key: Hashable, body: bytes) -> None:
        if len(body) + ITEM_OVERHEAD > self.budget:
            return
        with self._lock:
            self._pop(key)
            self._items[key] = body
            self._used += len(body) + ITEM_OVERHEAD
            while self._used > self.budget:
                self._pop(next(iter(self._items)))

    def drop(self, key: Hashable) -> None:
        with self._lock:
            self._pop(key)

    def _pop(self, key: Hashable) -> None:
        old = self._items.pop(key, None)
        if old is not None:
            self._used -= len(old) + ITEM_OVERHEAD
