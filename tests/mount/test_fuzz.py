"""Hostile images through the real mount: mutants of the kernel's fixtures (the fuzz
harness's, tests/fuzz/harness.py) mount exactly when the store opens them and show
what the store shows."""

from __future__ import annotations

import dataclasses
import errno
import os
import random
from pathlib import Path

from fuzz import harness
from fuzz.harness import config_fields, load_cases, make_config, memoize_system_maps
from helpers.cases import sha256
from helpers.machine import PSTOREFS, holder_pids, mounted, require_fuse, run, unmount
from pstorefs.errors import PstoreError
from pstorefs.store import open_store

CASES = load_cases()
memoize_system_maps()


# -- FUSE level ------------------------------------------------------------------------------
def options_of(config) -> str | None:
    """The -o string for a StoreConfig, or None if it has a field this test cannot spell."""
    defaults = make_config()
    opts = []
    for name in config_fields():
        value = getattr(config, name)
        if name in ("kmsg_size", "pmsg_size", "console_size", "ftrace_size", "nr_cpus",
                    "name", "abi"):
            if value is not None:  # None: not given (detected)
                opts.append(f"{name}={value}")
        elif name == "system_map":
            if value:
                opts.append(f"system_map={value}")
        elif name == "read_only":
            opts.append("ro" if value else "rw")
        elif value != getattr(defaults, name):
            return None
    return ",".join(opts)


def store_view(path: Path, config) -> dict[str, bytes | None] | str:
    """What the store layer shows: name -> bytes (None: read fails), or the refusal."""
    try:
        store = open_store(str(path), dataclasses.replace(config, read_only=True)
                           if "read_only" in config_fields() else config)
    except PstoreError as exc:
        return f"refused: {exc}"
    view: dict[str, bytes | None] = {}
    try:
        for record in store.records:
            try:
                view[store.entry(record).name] = store.read(record)
            except PstoreError:
                continue  # not listed by the mount either (readdir leaves it out)
    finally:
        store.close()
    return view


def test_fuse_mutants(tmp_path: Path) -> None:
    """A sample of mutants through the real mount: it comes up exactly when the store
    opens (else one line, no traceback), lists what the store lists, every file reads as
    the store reads it, the daemon lives on, the image is untouched."""
    require_fuse()
    rng = random.Random(20260602)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    figures = {"mounts": 0, "refused": 0, "files": 0, "failed reads": 0}
    per_case = 2  # of each of the 16 seeds, every back end's
    for n, case in enumerate([c for c in CASES for _ in range(per_case)]):
        m = harness.Mutator(rng, case)
        data = bytes(m.mutate(bytearray(case.image)))
        config = harness.vary_config(rng, case)
        options = options_of(config)
        if options is None:
            config, options = case.config, case.options
        img = tmp_path / f"mutant-{n}.bin"
        img.write_bytes(data)
        before = sha256(img)
        want = store_view(img, config)
        label = f"mutant {n} of {case.id} ({'; '.join(m.log)}) -o {options}"
        if isinstance(want, str):
            r = run([PSTOREFS, str(img), str(mnt), "-o", options])
            assert r.returncode == 1, f"{label}: {want} but pstorefs: {r.returncode} {r.stderr}"
            assert "Traceback" not in r.stderr, f"{label}: {r.stderr}"
            assert want.removeprefix("refused: ") in r.stderr.strip().splitlines()[-1], (
                f"{label}: the mount is refused with another reason than the store's: "
                f"{want} / {r.stderr}")
            assert not os.path.ismount(mnt)
            figures["refused"] += 1
            continue
        with mounted(img, mnt, options) as mp:
            figures["mounts"] += 1
            pids = [p for p in holder_pids(img) if p != os.getpid()]
            assert len(pids) == 1, label
            assert sorted(os.listdir(mp)) == sorted(want), label
            for name, content in want.items():
                try:
                    got = (mp / name).read_bytes()
                except OSError as exc:
                    assert exc.errno == errno.EIO, f"{label}: {name}: {exc}"
                    assert content is None, f"{label}: {name} fails in the mount only"
                    figures["failed reads"] += 1
                    continue
                assert got == content, f"{label}: {name} differs from the store's"
                assert os.stat(mp / name).st_size == len(got), f"{label}: {name}: st_size"
                figures["files"] += 1
            assert os.statvfs(mp).f_namemax >= 255, label
            assert sorted(os.listdir(mp)) == sorted(want), f"{label}: listing changed"
            assert [p for p in holder_pids(img) if p != os.getpid()] == pids, (
                f"{label}: the daemon died")
        unmount(mnt, img)
        assert sha256(img) == before, f"{label}: the image was written to"
    print(f"FUSE fuzz: {figures}")
    assert figures["mounts"] >= len(CASES), figures
