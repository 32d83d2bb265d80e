"""The decoding process (`pstorefs.fs.decoder`) in tests: a kernel-written case's store,
the process forked for it, and waiting for what it sends back. A module of its own, as a
test runs it in a process without the capability to raise priorities."""

from __future__ import annotations

import dataclasses
import os
import select
import time
from collections.abc import Iterable, Iterator
from contextlib import closing, contextmanager

from helpers.cases import BACKEND_CASES, CASES
from pstorefs.cli.options import parse_options
from pstorefs.fs.decoder import DecodeProcess, PassKind
from pstorefs.store import Store, open_store


@contextmanager
def case_store(case_id: str) -> Iterator[Store]:
    case = next(c for c in CASES + BACKEND_CASES if c.id == case_id)
    config = dataclasses.replace(parse_options([case.options]).store, read_only=True)
    with closing(open_store(str(case.image), config)) as store:
        yield store


@contextmanager
def decoding(store: Store) -> Iterator[DecodeProcess]:
    decoder = DecodeProcess.fork(store, list(store.records))
    assert decoder is not None
    try:
        yield decoder
    finally:
        decoder.stop()


def until_back(decoder: DecodeProcess, indexes: Iterable[int]) -> None:
    """Take what comes back until none of `indexes` is on its way any more."""
    deadline = time.monotonic() + 30
    while any(decoder.on_the_way(i) for i in indexes):
        assert time.monotonic() < deadline, "a batch never came back"
        select.select([decoder.results], [], [], 0.5)
        decoder.take()


def policies_after(decoder: DecodeProcess, kinds: list[PassKind]) -> list[int]:
    """The process's scheduling policy after each batch of one record, asked for a
    pass of each of `kinds` in turn."""
    policies = []
    for index, kind in enumerate(kinds):
        assert decoder.ask([index], kind)
        until_back(decoder, [index])
        policies.append(os.sched_getscheduler(decoder.pid))
    return policies
