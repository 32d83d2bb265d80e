#!/usr/bin/env python3
"""Coverage-guided fuzz targets for pstorefs' parsers, run by atheris (libFuzzer for
Python, as OSS-Fuzz runs Python projects).

    python tests/fuzz/atheris_targets.py TARGET [libFuzzer flags] [CORPUS_DIR ...]
    python tests/fuzz/atheris_targets.py zone -max_total_time=600 /tmp/corpus tests/fuzz/corpus/zone

TARGET is one of `TARGETS`: zone (pstore/zone headers, recovery and records through
`open_store` on a file of the input), ramoops (with and without ECC), mtdoops,
blockconsole (the input's halves as the first sectors of two 1 MiB tiles), compress
(each decompressor), sw842, reed_solomon, kallsyms (a System.map, plain or gzipped).
The first input byte picks the options. A finding is what pstorefs promises never
happens: an exception other than PstoreError, an output past its limit, a corrected
RS block that is not a codeword; libFuzzer's -timeout and -rss_limit_mb bound each
input. The seeds are tests/fuzz/corpus/TARGET (give a scratch directory first, as
above, so that libFuzzer writes what it finds there and not into the repository).
`PSTOREFS_FUZZ_BREAK=TARGET` makes that target raise on every input (the suite's check
that a finding is reported). Sources live in a memfd: nothing is left behind.
"""

from __future__ import annotations

import contextlib
import os
import sys

import atheris

with atheris.instrument_imports(include=["pstorefs"]):
    from pstorefs.cli.options import parse_options
    from pstorefs.codecs import sw842
    from pstorefs.codecs.compression import CODECS, decompress
    from pstorefs.codecs.reed_solomon import rs_codec
    from pstorefs.errors import PstoreError
    from pstorefs.format.kallsyms import SymbolTable
    from pstorefs.store import open_store
    from pstorefs.store.symbols import load_system_map

SCRATCH = os.memfd_create("pstorefs-atheris")
SOURCE = f"/proc/self/fd/{SCRATCH}"
"""The source each input is written to, opened by path as a file is."""
LIMIT = 1 << 16
"""The output limit the codec targets decode with."""

ZONE_OPTIONS = ("", "kmsg_size=4", "kmsg_size=4,pmsg_size=4,console_size=4,ftrace_size=4",
                "kmsg_size=4,format=blkoops", "kmsg_size=4,erasesize=4096",
                "kmsg_size=4,abi=be32", "kmsg_size=4,show_erased",
                "kmsg_size=4,ftrace_size=8,nr_cpus=2", "abi=i386")
_RAM = "backend=ramoops,record_size=1024,console_size=1024,ftrace_size=1024,pmsg_size=1024"
RAMOOPS_OPTIONS = ("backend=ramoops", f"{_RAM},ecc=0", f"{_RAM},ecc=16", f"{_RAM},ecc=4",
                   f"{_RAM},ecc=1,nr_cpus=2", "backend=ramoops,ecc=16",
                   "backend=ramoops,record_size=512")
MTDOOPS_OPTIONS = ("backend=mtdoops,ro", "backend=mtdoops,erasesize=16384",
                   "backend=mtdoops,record_size=8192,ro", "backend=mtdoops,erasesize=4096")


def _read_all(options: str, data: bytes, *, size: int | None = None,
              runs: tuple[tuple[int, bytes], ...] = ()) -> None:
    """Open a file of `data` (or of `runs` in `size` bytes) with `options` and read
    every record, as `pstorectl cat` of each would."""
    _write(size if runs else len(data), runs or ((0, data),))
    try:
        store = open_store(SOURCE, parse_options([options]).store)
    except PstoreError:
        return
    try:
        for record in store.records:
            with contextlib.suppress(PstoreError):
                entry = store.entry(record)
                body = store.read(record)
                if entry.size != len(body):
                    raise AssertionError(f"{entry.name}: size {entry.size}, read {len(body)}")
                if store.find(entry.name) != record:
                    raise AssertionError(f"find({entry.name!r}) is not its record")
    finally:
        store.close()


def _write(size: int, runs: tuple[tuple[int, bytes], ...]) -> None:
    os.ftruncate(SCRATCH, 0)
    os.ftruncate(SCRATCH, size)
    for at, run in runs:
        os.pwrite(SCRATCH, run, at)


def _pick(data: bytes, choices: tuple[str, ...]) -> tuple[str, bytes]:
    return (choices[data[0] % len(choices)], data[1:]) if data else (choices[0], b"")


def zone(data: bytes) -> None:
    options, image = _pick(data, ZONE_OPTIONS)
    _read_all(options, image)


def ramoops(data: bytes) -> None:
    options, image = _pick(data, RAMOOPS_OPTIONS)
    _read_all(options, image)


def mtdoops(data: bytes) -> None:
    options, image = _pick(data, MTDOOPS_OPTIONS)
    _read_all(options, image)


def blockconsole(data: bytes) -> None:
    half = len(data) // 2
    _read_all("backend=blockconsole", b"", size=2 << 20,
              runs=((0, data[:half]), (1 << 20, data[half:])))


def compress(data: bytes) -> None:
    codec, stream = _pick(data, ("auto", *CODECS))
    got = decompress(stream, LIMIT, codec)
    if got is not None and (len(got[0]) > LIMIT or got[1] not in CODECS):
        raise AssertionError(f"{codec}: {len(got[0])} bytes by {got[1]}, limit {LIMIT}")


def sw842_target(data: bytes) -> None:
    got = sw842.decompress(data, LIMIT)
    if got is not None and len(got) > LIMIT:
        raise AssertionError(f"842: {len(got)} bytes, limit {LIMIT}")


def reed_solomon(data: bytes) -> None:
    """decode_rs8 of a block: its verdict is None or a codeword, changed in as many
    symbols as it says. (Not "at most nroots / 2": like the kernel's, the decoder
    miscorrects what its checks do not catch, e.g. any single error at nroots 1.)"""
    if len(data) < 3:
        return
    nroots = 1 + data[0] % 127
    length = min(1 + data[1], 255 - nroots - 1, len(data) - 2 - nroots)
    if length < 1:
        return
    block, par = data[2:2 + length], data[2 + length:2 + length + nroots]
    codec = rs_codec(nroots)
    got = codec.decode(block, par)
    if got is None:
        return
    if codec.encode(got.data) != got.par:
        raise AssertionError(f"RS({nroots}): {got.corrected} corrected, not a codeword")
    changed = sum(a != b for a, b in zip(block + par, got.data + got.par, strict=True))
    if changed != got.corrected:
        raise AssertionError(f"RS({nroots}): {changed} symbols changed, {got.corrected} said")


def kallsyms(data: bytes) -> None:
    """A System.map of the input through `load_system_map` (gzipped when it says so),
    and lookups of addresses taken from it."""
    _write(len(data), ((0, data),))
    try:
        table = load_system_map(SOURCE)
    except PstoreError:
        table = SymbolTable(data.decode("ascii", "replace").splitlines())
    for at in range(0, min(len(data), 64) - 7, 8):
        address = int.from_bytes(data[at:at + 8], "little")
        table.name_offset(address)
        table.name(address)


TARGETS = {"zone": zone, "ramoops": ramoops, "mtdoops": mtdoops,
           "blockconsole": blockconsole, "compress": compress, "sw842": sw842_target,
           "reed_solomon": reed_solomon, "kallsyms": kallsyms}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: {sys.argv[0]} {{{','.join(TARGETS)}}} [libFuzzer flags] [corpus]")
    target = TARGETS[sys.argv[1]]
    if os.environ.get("PSTOREFS_FUZZ_BREAK") == sys.argv[1]:
        def target(data: bytes) -> None:
            raise RuntimeError("PSTOREFS_FUZZ_BREAK: a finding, on purpose")
    atheris.Setup([sys.argv[0], *sys.argv[2:]], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
