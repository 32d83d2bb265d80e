"""A byte-budgeted LRU cache of decoded record bodies."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable


class BodyCache:
    """Keeps the most recently used bodies whose sizes add up to at most `budget`
    bytes, so memory stays fixed whatever the partition holds."""

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
        if len(body) > self.budget:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._used -= len(old)
            self._items[key] = body
            self._used += len(body)
            while self._used > self.budget:
                _, evicted = self._items.popitem(last=False)
                self._used -= len(evicted)

    def drop(self, key: Hashable) -> None:
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._used -= len(old)
