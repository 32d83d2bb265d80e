"""Sources that are not pstore: another filesystem's or a partition table's signature
is refused before anything else is read (`-o force` reads it all the same); a source
with no pstore header anywhere opens read-only, as there is nothing to erase."""

from __future__ import annotations

import logging
import shutil
import struct
import subprocess
from contextlib import closing
from pathlib import Path

import pytest

from helpers.cases import case_by_id
from helpers.machine import require
from pstorefs.errors import SourceError
from pstorefs.store import StoreConfig, open_store

KMSG = case_by_id("kmsg-plain-3oops")


def ext4_image(tmp_path: Path) -> Path:
    require(shutil.which("mkfs.ext4") is not None, "mkfs.ext4 (e2fsprogs)")
    path = tmp_path / "ext4.img"
    with open(path, "wb") as fh:
        fh.truncate(8 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(path)], check=True, timeout=60)
    return path


def dos_image(tmp_path: Path) -> Path:
    """An MBR partition table (one Linux partition) and nothing else."""
    disk = bytearray(8 << 20)
    disk[446:462] = struct.pack("<B3sB3sII", 0, b"\0\2\0", 0x83, b"\0\0\0", 2048, 4096)
    disk[510:512] = b"\x55\xaa"
    path = tmp_path / "dos.img"
    path.write_bytes(bytes(disk))
    return path


@pytest.mark.parametrize(("make", "held"), [(ext4_image, "an ext4 filesystem"),
                                            (dos_image, "a dos partition table")])
@pytest.mark.parametrize("options", [{}, {"kmsg_size": 64}, {"backend": "ramoops"}])
def test_another_signature_is_refused_in_one_line(make, held: str, options: dict,
                                                   tmp_path: Path) -> None:
    path = make(tmp_path)
    before = path.read_bytes()
    with pytest.raises(SourceError) as refused:
        open_store(str(path), StoreConfig(**options))
    message = str(refused.value)
    assert held in message and "\n" not in message and "force" in message
    with closing(open_store(str(path), StoreConfig(force=True, **options))) as store:
        assert list(store.records) == []
        if not options:  # detected: no pstore header anywhere, nothing to erase
            assert store.read_only
    assert path.read_bytes() == before


def test_no_pstore_header_anywhere_opens_read_only(tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "random.img"
    path.write_bytes(bytes(range(256)) * (40 << 10))  # 10 MiB, no signature of anyone's
    with caplog.at_level(logging.WARNING), closing(open_store(str(path), StoreConfig())) as s:
        assert s.read_only and list(s.records) == []
    assert "nothing to erase, so opened read-only" in caplog.text
    with closing(open_store(str(KMSG.image), StoreConfig())) as store:  # a real one: rw
        assert not store.read_only
