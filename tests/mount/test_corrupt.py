"""Corrupt and mutated images through a real mount: the sound records read as the
kernel showed them, the others are left out or fail with EIO, the daemon lives,
nothing is written."""

from __future__ import annotations

import errno
import os
import random
import struct
from pathlib import Path

import pytest

from helpers.cases import CASES, ZONE_SIG, Case, sha256, zone_layout
from helpers.machine import PSTOREFS, holder_pids, mounted, run, unmount
from helpers.mounts import I386, KMSG, PLAIN, daemon_pid, dmesg_offsets


# -- corrupt images -------------------------------------------------------------------------------
def used_dmesg_zones(case: Case) -> list[int]:
    img = case.image.read_bytes()
    return [off for off in dmesg_offsets(case)
            if struct.unpack_from("<Ii", img, off) [0] == ZONE_SIG["dmesg"]
            and struct.unpack_from("<i", img, off + 4)[0] > 0]


def zone_end(case: Case, name: str) -> int:
    """Where the zone(s) of the kernel's file `name` end."""
    kind, _, index = name.partition("-pstore_blk-")
    zones = [z for z in zone_layout(case) if z.type == kind]
    if kind == "dmesg":
        zones = [zones[int(index)]]
    return max(z.offset + z.size for z in zones)


def corrupt_variants(case: Case) -> dict[str, bytes]:
    img = case.image.read_bytes()
    z0, z1 = used_dmesg_zones(case)[:2]
    sec, comp, reason = (4, 16, 24) if case.meta["arch"] == "i386" else (8, 24, 32)
    out: dict[str, bytes] = {}

    def variant(label: str, at: int, fmt: str, value: int) -> None:
        b = bytearray(img)
        struct.pack_into(fmt, b, at, value)
        out[label] = bytes(b)

    variant("datalen past the zone", z0 + 4, "<i", 0x7FFFFFFF)
    variant("negative datalen", z0 + 4, "<i", -5)
    variant("start past the zone", z0 + 8, "<i", 1 << 30)
    b = bytearray(img)
    for i in range(z1 + 60, z1 + 400):
        b[i] ^= 0x5A
    out["garbled compressed payload"] = bytes(b)
    variant("bad dmesg magic", z0 + 12, "<I", 0x12345678)
    variant("compressed flag 7", z0 + 12 + comp, "<B", 7)
    variant("negative timestamp", z0 + 12 + sec, "<q", -1)
    variant("unknown reason", z0 + 12 + reason, "<I", 99)
    out["image cut inside a zone"] = img[:z1 + 1000]
    rnd = random.Random(7)
    b = bytearray(img)
    for _ in range(2000):
        b[rnd.randrange(len(b))] = rnd.randrange(256)
    out["2000 random byte flips"] = bytes(b)
    out["random bytes"] = rnd.randbytes(len(img))
    return out


CORRUPT_CASES = [KMSG, PLAIN, I386]
CORRUPT_LABELS = list(corrupt_variants(KMSG))


@pytest.mark.parametrize("label", CORRUPT_LABELS)
@pytest.mark.parametrize("case", CORRUPT_CASES, ids=lambda c: c.id)
def test_corrupt_image(case: Case, label: str, tmp_path: Path, mnt: Path) -> None:
    data = corrupt_variants(case)[label]
    bad = tmp_path / "bad.bin"
    bad.write_bytes(data)
    before = sha256(bad)
    z = dmesg_offsets(case)
    zone0_name = f"dmesg-pstore_blk-{z.index(used_dmesg_zones(case)[0])}"
    hdr_sec = 4 if case.meta["arch"] == "i386" else 8
    hlen = 28 if case.meta["arch"] == "i386" else 40
    with mounted(bad, mnt, case.options) as m:
        pid = daemon_pid(bad)
        got: dict[str, bytes | None] = {}
        for name in os.listdir(m):
            try:
                got[name] = (m / name).read_bytes()
                assert os.stat(m / name).st_size == len(got[name]), name
            except OSError as exc:
                assert exc.errno == errno.EIO, f"{name}: {exc}"
                got[name] = None
        assert os.path.ismount(m) and holder_pids(bad) == [pid], "the daemon died"
        assert sorted(os.listdir(m)) == sorted(got)
        want = case.files
        if label in ("datalen past the zone", "negative datalen", "start past the zone",
                     "bad dmesg magic", "compressed flag 7", "negative timestamp",
                     "unknown reason"):
            # only zone 0's header changed: every other record is intact
            for name, content in want.items():
                if name != zone0_name:
                    assert got.get(name) == content, f"{label}: {name}"
        if label in ("datalen past the zone", "negative datalen", "bad dmesg magic"):
            assert zone0_name not in got and zone0_name + ".enc.z" not in got
        if label == "start past the zone":  # dmesg zones have no ring start: kept
            assert got.get(zone0_name) == want[zone0_name]
        if label == "negative timestamp":
            assert got.get(zone0_name) == want[zone0_name]
            (nsec,) = struct.unpack_from("<i" if case.meta["arch"] == "i386" else "<q",
                                         data, z[0] + 12 + hdr_sec + 8)
            assert os.stat(m / zone0_name).st_mtime_ns == -1_000_000_000 + nsec
        compressed = data[z[0] + 12 + (16 if case.meta["arch"] == "i386" else 24)] != 0
        if label == "unknown reason":
            text = want[zone0_name]
            if case is PLAIN:  # the prefix line names the reason
                assert text.startswith(b"Oops: Total ")
                text = b"Unknown" + text[len(b"Oops"):]
            assert got.get(zone0_name) == text
        if label == "compressed flag 7":
            assert compressed
            if case is PLAIN:  # not deflate data: shown raw, as the kernel does
                (datalen,) = struct.unpack_from("<i", data, z[0] + 4)
                raw = data[z[0] + 12 + hlen:z[0] + 12 + datalen]
                assert got.get(zone0_name + ".enc.z") == raw
            else:
                assert got.get(zone0_name) == want[zone0_name]
        if label == "garbled compressed payload":
            zone1 = [o for o in z if struct.unpack_from("<i", data, o + 4)[0] > 0][1]
            index = z.index(zone1)
            name = f"dmesg-pstore_blk-{index}"
            (datalen,) = struct.unpack_from("<i", data, zone1 + 4)
            if data[zone1 + 12 + (16 if case.meta["arch"] == "i386" else 24)]:
                raw = data[zone1 + 12 + hlen:zone1 + 12 + datalen]
                assert name not in got
                assert got.get(name + ".enc.z") == raw, "the .enc.z holds the raw bytes"
            for other, content in want.items():
                if other != name:
                    assert got.get(other) == content, other
        if label == "image cut inside a zone":
            # records in the zones left whole read as before; the cut zone is not used
            for name, content in want.items():
                if zone_end(case, name) <= len(data):
                    assert got.get(name) == content, name
                else:
                    assert name not in got and name + ".enc.z" not in got, name
    assert sha256(bad) == before, f"{label}: the image was modified by reading it"


def test_mutated_images(tmp_path: Path, mnt: Path) -> None:
    """Random byte changes anywhere in any case: the mount comes up (or is refused in one
    line), every file reads or fails with EIO, the daemon lives, nothing is written."""
    rnd = random.Random(11)
    cases = [c for c in CASES if c.meta["files"]]
    for i in range(20):
        case = rnd.choice(cases)
        data = bytearray(case.image.read_bytes())
        for _ in range(rnd.choice((1, 10, 100, 1000))):
            data[rnd.randrange(len(data))] = rnd.randrange(256)
        bad = tmp_path / f"mutant-{i}.bin"
        bad.write_bytes(data)
        before = sha256(bad)
        r = run([PSTOREFS, str(bad), str(mnt), "-o", case.options])
        assert "Traceback" not in r.stderr, f"mutant {i} of {case.id}: {r.stderr}"
        if r.returncode != 0:
            assert len(r.stderr.strip().splitlines()) == 1, r.stderr
            assert not os.path.ismount(mnt)
            continue
        try:
            pid = daemon_pid(bad)
            for name in os.listdir(mnt):
                try:
                    content = (mnt / name).read_bytes()
                except OSError as exc:
                    assert exc.errno == errno.EIO, f"{name}: {exc}"
                else:
                    assert os.stat(mnt / name).st_size == len(content), name
            assert os.path.ismount(mnt) and holder_pids(bad) == [pid], f"mutant {i}: died"
        finally:
            unmount(mnt, bad)
        assert sha256(bad) == before, f"mutant {i} of {case.id} was written to"
