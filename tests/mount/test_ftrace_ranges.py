"""A large ftrace log through a real mount and through pstorectl: served by ranges, every
read the same slice of the kernel's text (the merge written out as the oracle,
`helpers.ftrace`), with names from a System.map, for readers at once. The kernel-written
fixtures' ftrace files go through the mount in test_cases.py."""

from __future__ import annotations

import os
import random
import subprocess
import threading
from pathlib import Path

from helpers.ftrace import kernel_combine, render_records
from helpers.machine import VENV_BIN, mounted, run
from helpers.zone_writer import ZoneWriter, ftrace_records
from pstorefs.format.abi import X86_64
from pstorefs.format.ftrace import parse_records
from pstorefs.format.kallsyms import SymbolTable
from pstorefs.format.zone import parse_zone_header, ring_unwrap

KIB, MIB = 1 << 10, 1 << 20
PSTORECTL = str(VENV_BIN / "pstorectl")
OPTIONS = "kmsg_size=64,ftrace_size=4096,nr_cpus=3"
MAP = """\
ffffffff81000000 T _stext
ffffffff81000400 T do_work
ffffffff81004000 T caller
ffffffff81008000 T _etext
"""


def ftrace_image(path: Path) -> bytes:
    """Three wrapped CPU zones in a 6 MiB partition (some 5 MB of text), calls spread
    over the CPUs with the counter stepping back now and then; the text expected."""
    w = ZoneWriter(X86_64, 6 * MIB, kmsg_size=64 * KIB, ftrace_size=4 * MIB, nr_cpus=3)
    count = 4 * MIB // 24 * 9 // 8
    per_cpu: list[list[tuple[int, int, int, int]]] = [[], [], []]
    for k in range(count):
        cpu = k * 5 // 3 % 3
        per_cpu[cpu].append((0xFFFFFFFF81000000 + 0x10 * (k % 300),
                             0xFFFFFFFF81004000 + k % 77, k - (k % 7 == 3), cpu))
    for cpu, calls in enumerate(per_cpu):
        w.ftrace_calls(cpu, ftrace_records(X86_64, calls))
    w.save(path)
    zones = []
    for ring in w.ftrace:
        header = parse_zone_header(X86_64, bytes(w.image[ring.spec.offset:]), ring.spec.offset)
        start = ring.spec.offset + 12
        zones.append(parse_records(X86_64, ring_unwrap(bytes(w.image[start:start
                                                                   + ring.buffer_size]),
                                                       header)))
    return render_records(kernel_combine(zones), SymbolTable(MAP.splitlines()), X86_64)


def test_large_ftrace_by_ranges(tmp_path: Path, mnt: Path) -> None:
    img = tmp_path / "image.bin"
    want = ftrace_image(img)
    (tmp_path / "System.map").write_text(MAP)
    options = f"{OPTIONS},system_map={tmp_path / 'System.map'}"
    assert len(want) > 4 * MIB
    with mounted(img, mnt, options) as m:
        path = m / "ftrace-blkoops-0"
        assert path.stat().st_size == len(want)
        fd = os.open(path, os.O_RDONLY)
        try:
            rng = random.Random(14)
            for _ in range(40):
                at, length = rng.randrange(len(want) + 100), rng.randrange(1, 300 * KIB)
                assert os.pread(fd, length, at) == want[at:at + length], (at, length)
        finally:
            os.close(fd)
        got: dict[int, bytes] = {}

        def reader(n: int) -> None:
            with open(path, "rb", buffering=0) as fh:
                fh.seek(n * len(want) // 4)
                tail = b"".join(iter(lambda: fh.read(128 * KIB), b""))
                fh.seek(0)
                got[n] = fh.read(n * len(want) // 4) + tail

        readers = [threading.Thread(target=reader, args=(n,)) for n in range(4)]
        for t in readers:
            t.start()
        for t in readers:
            t.join()
        assert all(got[n] == want for n in range(4))
    cat = subprocess.run([PSTORECTL, "cat", str(img), "ftrace-blkoops-0", "-o", options],
                         capture_output=True, timeout=60)
    assert cat.returncode == 0 and cat.stdout == want
    out = tmp_path / "extracted"
    assert run([PSTORECTL, "extract", str(img), str(out), "-o", options]).returncode == 0
    assert (out / "ftrace-blkoops-0").read_bytes() == want
