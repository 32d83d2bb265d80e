"""Every ABI through the store: whole images written by the test writer for each ABI
(dmesg, pmsg, console, ftrace of several CPUs) and read back, named or detected."""

from __future__ import annotations

from contextlib import closing
from pathlib import Path

import pytest

from helpers.abis import ALL, WANT_ALIASES, calls
from helpers.zone_writer import ZoneWriter, deflate
from pstorefs.format.abi import ABIS, BE32, BE32A4, BE64, Abi
from pstorefs.format.consts import PSZ_SIG, PstoreType
from pstorefs.store import Store, StoreConfig, open_store
from pstorefs.store.zone.store import ZoneStore

KIB = 1024


# == whole images, every ABI ================================================================
CONFIG = {"kmsg_size": 4, "pmsg_size": 4, "console_size": 4, "ftrace_size": 16, "nr_cpus": 4}
PLAIN = b"Oops#1 Part1\n" + b"<4>[   12.345678] a line of the oops\n" * 20
PACKED = b"Oops#2 Part1\n" + b"<4>[   13.000001] another oops line\n" * 40
PMSG = b"pmsg line\n" * 30
CONSOLE = b"[    0.000000] console line\n" * 30


def cpus_of(abi: Abi) -> tuple[int, ...]:
    return (0, 1) if abi.cpu_in_ip_mask == 0x1 else (0, 1, 2, 3)


def image(abi: Abi) -> ZoneWriter:
    """dmesg (plain and deflated), pmsg, console and 4 CPU zones of ftrace, as a kernel
    of that ABI writes them."""
    w = ZoneWriter(abi, 64 * KIB, kmsg_size=4 * KIB, pmsg_size=4 * KIB, console_size=4 * KIB,
                   ftrace_size=16 * KIB, nr_cpus=4)
    assert w.pmsg is not None and w.console is not None
    w.dmesg(PLAIN, time=(1_700_000_001, 5))
    w.dmesg(deflate(PACKED), compressed=True, time=(1_700_000_002, 999_999_999))
    w.pmsg.write(PMSG)
    w.console.write(CONSOLE)
    for cpu, ip, parent, stamp in calls(abi, 40, cpus_of(abi)):
        w.ftrace_call(cpu, ip, parent, stamp)
    return w


def expected_files(abi: Abi) -> dict[str, bytes]:
    """What the kernel would show: `CPU:%d ts:%llu %08lx  %08lx  %ps <- %pS` with the
    CPU and time decoded as the ABI keeps them, `ip` printed as stored."""
    lines = []
    for cpu, ip, parent, stamp in calls(abi, 40, cpus_of(abi)):
        shown = ip | cpu if abi.cpu_in_ip_mask else ip
        lines.append(f"CPU:{cpu} ts:{stamp} {shown:08x}  {parent:08x}  "
                     f"0x{shown:x} <- 0x{parent:x}\n".encode())
    return {"dmesg-blkoops-0": b"Oops: Total 1 times\n" + PLAIN,
            "dmesg-blkoops-1": PACKED,
            "pmsg-blkoops-0": PMSG,
            "console-blkoops-0": CONSOLE,
            "ftrace-blkoops-0": b"".join(lines)}


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[Abi, Path]:
    out = {}
    for abi in ALL:
        path = tmp_path_factory.mktemp("abis") / f"{abi.name}.bin"
        image(abi).save(path)
        out[abi] = path
    return out


def listing(store: Store) -> dict[str, bytes]:
    return {store.entry(r).name: store.read(r) for r in store.records}


@pytest.mark.parametrize("abi", ALL, ids=lambda a: a.name)
def test_image_zone_headers_follow_the_byte_order(images: dict[Abi, Path], abi: Abi) -> None:
    raw = images[abi].read_bytes()
    w = image(abi)
    assert w.pmsg is not None and w.console is not None
    for zone in (w.pmsg.spec, w.console.spec, w.ftrace[0].spec, w.dmesg_zones[1]):
        sig = (PSZ_SIG ^ int(zone.type)).to_bytes(4, "little" if abi.little_endian else "big")
        assert raw[zone.offset:zone.offset + 4] == sig, zone
    dmesg = w.dmesg_zones[0].offset
    assert raw[dmesg:dmesg + 4] == (b"DBGC" if abi.little_endian else b"CGBD")


@pytest.mark.parametrize("abi", ALL, ids=lambda a: a.name)
def test_explicit_abi_reads_every_file(images: dict[Abi, Path], abi: Abi) -> None:
    with closing(open_store(str(images[abi]),
                            StoreConfig(**CONFIG, read_only=True, abi=abi.name))) as store:
        assert isinstance(store, ZoneStore) and store.abi is abi
        assert listing(store) == expected_files(abi)


@pytest.mark.parametrize("abi", ALL, ids=lambda a: a.name)
def test_auto_detects_every_abi(images: dict[Abi, Path], abi: Abi) -> None:
    """Needs ZoneStore to detect with `detect_abi` (the switch)."""
    with closing(open_store(str(images[abi]),
                            StoreConfig(**CONFIG, read_only=True, abi="auto"))) as store:
        assert isinstance(store, ZoneStore) and store.abi is abi
        assert listing(store) == expected_files(abi)


@pytest.mark.parametrize("alias", sorted(WANT_ALIASES))
def test_alias_reads_its_abis_image(images: dict[Abi, Path], alias: str) -> None:
    """Needs open_store to take `abi=` through `resolve_abi` (the switch)."""
    abi = ABIS[WANT_ALIASES[alias]]
    with closing(open_store(str(images[abi]),
                            StoreConfig(**CONFIG, read_only=True, abi=alias))) as store:
        assert isinstance(store, ZoneStore) and store.abi is abi
        assert listing(store) == expected_files(abi)


@pytest.mark.parametrize("abi", [BE64, BE32, BE32A4], ids=lambda a: a.name)
def test_big_endian_erase_writes_the_kernels_bytes(tmp_path: Path, abi: Abi) -> None:
    w = image(abi)
    path = tmp_path / "image.bin"
    w.save(path)
    with closing(open_store(str(path), StoreConfig(**CONFIG, abi=abi.name))) as store:
        for record in store.records:
            if record.type in (PstoreType.DMESG, PstoreType.PMSG):
                store.erase(record)
    w.erase_dmesg(0)
    w.erase_dmesg(1)
    assert w.pmsg is not None
    w.pmsg.erase()
    assert path.read_bytes() == bytes(w.image)
