"""Fixtures of the fs tier: `open_ops`, an `Operations` over a store opened on an image
copy, as the CLI builds it."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from helpers.cases import Case
from helpers.operations import Mounted
from pstorefs.cli.options import parse_options
from pstorefs.fs import Operations, Ownership
from pstorefs.store import open_store


@pytest.fixture
def open_ops(tmp_path: Path):
    """`open_ops(case, image=..., extra=..., ownership=...)` -> Mounted; closed at the end."""
    stores = []

    def factory(case: Case, image: str = "image.bin", extra: str = "",
                ownership: Ownership | None = None, path: Path | None = None) -> Mounted:
        if path is None:
            path = tmp_path / f"{case.id}-{len(stores)}-{image}"
            case.copy(image, path)
        opts = parse_options([case.options + ("," + extra if extra else "")])
        store = open_store(str(path), opts.store)
        stores.append(store)
        t_before = time.time_ns()
        ops = Operations(store, ownership or Ownership(opts.uid, opts.gid, opts.umask),
                         read_only=store.read_only)
        return Mounted(ops, path, case, t_before, time.time_ns())

    yield factory
    for store in stores:
        store.close()
