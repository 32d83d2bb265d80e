"""A sequence whose items are made when asked for, not kept."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterator, Sequence
from typing import TypeVar, overload

T = TypeVar("T")


class LazySequence(Sequence[T]):
    """Indexing (negative indexes and slices too) and iteration over `_item(at)`, for
    the thousands of zones and records a partition has: each made from what little is
    kept of it when it is asked for."""

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def _item(self, at: int) -> T:
        """The item at `at`, 0 <= at < len(self)."""

    @overload
    def __getitem__(self, i: int) -> T: ...
    @overload
    def __getitem__(self, i: slice) -> list[T]: ...

    def __getitem__(self, i: int | slice) -> T | list[T]:
        if isinstance(i, slice):
            return [self._item(at) for at in range(*i.indices(len(self)))]
        at = i + len(self) if i < 0 else i
        if not 0 <= at < len(self):
            raise IndexError(f"{type(self).__name__} index out of range")
        return self._item(at)

    def __iter__(self) -> Iterator[T]:
        return map(self._item, range(len(self)))
