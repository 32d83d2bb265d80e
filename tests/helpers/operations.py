"""Driving `pstorefs.fs.Operations` without a mount: a duck-typed request context, the
cases the adapter tests use, errno checks and whole-file reads."""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path

import pyfuse3
import pytest

from helpers.cases import Case, case_by_id
from pstorefs.fs import Operations

ROOT = pyfuse3.ROOT_INODE
KMSG = case_by_id("kmsg-deflate-3oops")


ALL_FRONTS = case_by_id("x86_64-all-fronts")


@dataclass
class Ctx:
    """Duck-typed `pyfuse3.RequestContext`: what the kernel tells about the caller."""

    uid: int = 0
    gid: int = 0
    pid: int = os.getpid()
    umask: int = 0o022


CTX = Ctx()


@dataclass
class Mounted:
    """An `Operations` over a store opened on an image copy, as the CLI builds it."""

    ops: Operations
    image: Path
    case: Case
    t_before: int
    t_after: int


async def expect_errno(code: int, coro) -> None:
    with pytest.raises(pyfuse3.FUSEError) as info:
        await coro
    assert info.value.errno == code, (
        f"errno {errno.errorcode.get(info.value.errno)} != {errno.errorcode[code]}")


async def read_all(ops: Operations, inode: int, limit: int = 8 << 20) -> bytes:
    """The whole file in 4 KiB reads, as the kernel asks for it (at most `limit` bytes)."""
    fi = await ops.open(inode, os.O_RDONLY, CTX)
    try:
        chunks, off = [], 0
        while off <= limit and (chunk := await ops.read(fi.fh, off, 4096)):
            chunks.append(chunk)
            off += len(chunk)
        return b"".join(chunks)
    finally:
        await ops.release(fi.fh)
