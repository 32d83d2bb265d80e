"""The flash back ends' cases (tests/data/fixtures-backends/mtd*) and a test-only
mtdoops page builder, following `mtdoops_write`."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

from helpers.cases import DATA, Case
from pstorefs.format.mtdoops import MTDOOPS_KERNMSG_MAGIC_v1, MTDOOPS_KERNMSG_MAGIC_v2

BACKEND_FIXTURES = DATA / "fixtures-backends"
FLASH_CASES = [Case(d, json.loads((d / "case.json").read_text()))
               for d in sorted(BACKEND_FIXTURES.glob("mtd*")) if (d / "case.json").exists()]
MTDOOPS = next(c for c in FLASH_CASES if c.id == "mtdoops-4k-pages")
MTDPSTORE = [c for c in FLASH_CASES if c.id.startswith("mtdpstore-")]

PAGE = 4096
BLOCK = 65536


T0 = 1_795_447_981_477_755_835


def mtdoops_page(seq: int, text: bytes, *, timestamp: int | None = T0, nul: bool = True,
                 little: bool = True, magic: int | None = None,
                 record_size: int = PAGE) -> bytes:
    """Test-only: a page as `mtdoops_write` leaves it: `struct mtdoops_hdr` (v2 with a
    timestamp, v1 without), the text (`kmsg_dump_get_buffer`, NUL-terminated since
    5.10; `nul=False` for older kernels), the rest of the 0xFF-memset buffer."""
    order = "<" if little else ">"
    if magic is None:
        magic = MTDOOPS_KERNMSG_MAGIC_v1 if timestamp is None else MTDOOPS_KERNMSG_MAGIC_v2
    header = struct.pack(f"{order}II", seq, magic)
    if magic == MTDOOPS_KERNMSG_MAGIC_v2:
        header += struct.pack(f"{order}q", timestamp or 0)
    page = header + text + (b"\0" if nul else b"")
    assert len(page) <= record_size
    return page.ljust(record_size, b"\xff")


def flash_image(pages: dict[int, bytes], size: int = 1 << 20,
                record_size: int = PAGE) -> bytes:
    """Test-only: blank flash (0xFF) with `pages` at their page indexes."""
    img = bytearray(b"\xff" * size)
    for index, page in pages.items():
        img[index * record_size:(index + 1) * record_size] = page
    return bytes(img)


def text(n: int) -> bytes:
    return f"<4>[   {n}.000000] test-only oops {n}\n".encode() * (n + 1)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write(tmp_path: Path, img: bytes, name: str = "flash.img") -> Path:
    path = tmp_path / name
    path.write_bytes(img)
    return path


def erased_pages(img: bytes, *pages: int) -> bytes:
    out = bytearray(img)
    for page in pages:
        out[page * PAGE:(page + 1) * PAGE] = b"\xff" * PAGE
    return bytes(out)
