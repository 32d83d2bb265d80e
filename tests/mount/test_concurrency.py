"""Many readers and removers at once, through the real mount, checked against the
kernel's files.

Reader threads (pread at random offsets past the page cache), reader processes
(sequential reads in odd chunk sizes) and `cat` processes read every file again and
again while remover threads and processes race to `rm` the case's erase list. Checked:
no read ever gives a byte the kernel did not show, a file not being removed never goes
missing, each removal succeeds exactly once (the others see ENOENT), the image ends
byte for byte as the kernel's erase left it (no lost or doubled erase), and nothing
hangs (every thread and process has a deadline).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers.cases import ERASE_CASES, Case, case_by_id, expected_after_erase
from helpers.machine import mounted, require_fuse

FIGURES: Counter = Counter()


@pytest.fixture(autouse=True, scope="module")
def _report_figures() -> Iterator[None]:
    yield
    if FIGURES:
        print("\nconcurrency figures: "
              + ", ".join(f"{k}: {v}" for k, v in sorted(FIGURES.items())))


@pytest.fixture(autouse=True)
def _fuse_machine() -> None:
    require_fuse()


def start_image(case: Case) -> tuple[bytes, bytes]:
    """(the image to mount, the image the erase list must leave): image.bin, whose
    records are the fixture's files, and image.bin with exactly the bytes the kernel's
    erase changed (image_before -> image_after, with pstorefs' ftrace deviation)."""
    image = case.image.read_bytes()
    er = case.meta["erase"]
    before = (case.file(er["image_before"])).read_bytes()
    after = expected_after_erase(case)
    want = bytearray(image)
    for i in (i for i in range(len(before)) if before[i] != after[i]):
        assert image[i] == before[i], f"{case.id}: the erase touches a byte image.bin lacks"
        want[i] = after[i]
    return image, bytes(want)


READER = r"""
import hashlib, json, os, random, sys, time
mnt, spec = sys.argv[1], json.loads(sys.argv[2])
want, removable, seed, until = spec["want"], set(spec["removable"]), spec["seed"], spec["until"]
rnd = random.Random(seed)
stats = {"opens": 0, "reads": 0, "bytes": 0, "enoent": 0, "wrong": [], "errors": []}
while time.time() < until:
    names = sorted(want)
    rnd.shuffle(names)
    for name in names:
        path = os.path.join(mnt, name)
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            stats["enoent"] += 1
            if name not in removable:
                stats["wrong"].append(f"{name}: vanished")
            continue
        except OSError as exc:
            stats["errors"].append(f"{name}: open: {exc}")
            continue
        stats["opens"] += 1
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            chunks, total, size = [], 0, want[name][1]
            while total <= size:
                chunk = os.read(fd, rnd.choice((1, 511, 4096, 4097, 65536)))
                stats["reads"] += 1
                if not chunk:
                    break
                chunks.append(chunk)
                total += len(chunk)
            data = b"".join(chunks)
            stats["bytes"] += len(data)
            if hashlib.sha256(data).hexdigest() != want[name][0]:
                stats["wrong"].append(f"{name}: {len(data)} bytes, not the kernel's")
        except OSError as exc:
            stats["errors"].append(f"{name}: read: {exc}")
        finally:
            os.close(fd)
print(json.dumps(stats))
"""

REMOVER = r"""
import json, os, random, sys, time
mnt, names, seed, at = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
rnd = random.Random(seed)
rnd.shuffle(names)
while time.time() < at:
    time.sleep(0.001)
out = {"ok": [], "enoent": 0, "errors": []}
for name in names:
    time.sleep(rnd.random() * 0.03)
    try:
        os.unlink(os.path.join(mnt, name))
        out["ok"].append(name)
    except FileNotFoundError:
        out["enoent"] += 1
    except OSError as exc:
        out["errors"].append(f"{name}: {exc}")
print(json.dumps(out))
"""


def _spawn(code: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _collect(proc: subprocess.Popen, what: str, timeout: float = 120) -> dict:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail(f"{what} hung (no exit after {timeout} s)")
    assert proc.returncode == 0, f"{what}: rc {proc.returncode}: {err[-2000:]}"
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.parametrize("case", ERASE_CASES, ids=lambda c: c.id)
def test_readers_and_removers_at_once(case: Case, tmp_path: Path) -> None:
    image, want_image = start_image(case)
    files = case.files
    er = case.meta["erase"]
    removable = list(er["remove"])
    img = tmp_path / "image.bin"
    img.write_bytes(image)
    mnt = tmp_path / "mnt"
    spec_want = {n: [hashlib.sha256(b).hexdigest(), len(b)] for n, b in files.items()}
    problems: list[str] = []
    tally: Counter = Counter()
    lock = threading.Lock()
    with mounted(img, mnt, case.options) as m:
        assert sorted(os.listdir(m)) == sorted(files)
        t0 = time.time()
        rm_at = t0 + 0.4                # readers are going before the first rm
        until = rm_at + 2.0             # and go on after the last
        spec = json.dumps({"want": spec_want, "removable": removable, "seed": 0,
                           "until": until})
        readers = [_spawn(READER, str(m), spec.replace('"seed": 0', f'"seed": {i}'))
                   for i in range(3)]
        removers = [_spawn(REMOVER, str(m), json.dumps(removable), str(100 + i), str(rm_at))
                    for i in range(2)]

        def thread_reader(seed: int) -> None:
            rnd = random.Random(seed)
            while time.time() < until:
                name = rnd.choice(sorted(files))
                try:
                    fd = os.open(m / name, os.O_RDONLY)
                except FileNotFoundError:
                    with lock:
                        tally["thread ENOENT"] += 1
                        if name not in removable:
                            problems.append(f"thread {seed}: {name} vanished")
                    continue
                try:
                    for _ in range(4):
                        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                        off = rnd.randrange(len(files[name]) + 1)
                        size = rnd.choice((1, 100, 4096, 5000, 70000))
                        got = os.pread(fd, size, off)
                        with lock:
                            tally["thread preads"] += 1
                            tally["bytes compared"] += len(got)
                            if got != files[name][off:off + size]:
                                problems.append(f"thread {seed}: {name}@{off}+{size} wrong")
                except OSError as exc:
                    with lock:
                        problems.append(f"thread {seed}: {name}: {exc}")
                finally:
                    os.close(fd)

        def cat_loop(seed: int) -> None:
            rnd = random.Random(seed)
            while time.time() < until:
                name = rnd.choice(sorted(files))
                r = subprocess.run(["cat", str(m / name)], capture_output=True, timeout=60)
                with lock:
                    tally["cat processes"] += 1
                    if r.returncode == 0:
                        tally["bytes compared"] += len(r.stdout)
                        if r.stdout != files[name]:
                            problems.append(f"cat {name}: {len(r.stdout)} wrong bytes")
                    elif b"No such file" in r.stderr and name in removable:
                        tally["cat ENOENT"] += 1
                    else:
                        problems.append(f"cat {name}: rc {r.returncode} {r.stderr!r}")

        rm_ok: Counter = Counter()

        def thread_remover(seed: int) -> None:
            rnd = random.Random(seed)
            names = removable[:]
            rnd.shuffle(names)
            while time.time() < rm_at:
                time.sleep(0.001)
            for name in names:
                time.sleep(rnd.random() * 0.03)
                try:
                    os.unlink(m / name)
                    with lock:
                        rm_ok[name] += 1
                except FileNotFoundError:
                    with lock:
                        tally["rm ENOENT"] += 1
                except OSError as exc:
                    with lock:
                        problems.append(f"rm {name}: {exc}")

        threads = ([threading.Thread(target=thread_reader, args=(i,)) for i in range(6)]
                   + [threading.Thread(target=cat_loop, args=(50 + i,)) for i in range(2)]
                   + [threading.Thread(target=thread_remover, args=(200 + i,))
                      for i in range(3)])
        for t in threads:
            t.daemon = True
            t.start()
        for t in threads:
            t.join(max(until - time.time(), 0) + 60)
        assert not any(t.is_alive() for t in threads), "a reader or remover thread hung"
        for i, p in enumerate(readers):
            s = _collect(p, f"reader process {i}")
            problems += s["wrong"] + s["errors"]
            tally["process opens"] += s["opens"]
            tally["process reads"] += s["reads"]
            tally["bytes compared"] += s["bytes"]
        for i, p in enumerate(removers):
            s = _collect(p, f"remover process {i}")
            problems += s["errors"]
            for name in s["ok"]:
                rm_ok[name] += 1
            tally["rm ENOENT"] += s["enoent"]
        assert not problems, f"{len(problems)} problems: {problems[:8]}"
        assert rm_ok == Counter({n: 1 for n in removable}), (
            f"each removal must succeed exactly once: {dict(rm_ok)}")
        assert sorted(os.listdir(m)) == sorted(er["names_after"])
        for name in er["names_after"]:
            assert (m / name).read_bytes() == files[name], name
    after = img.read_bytes()
    assert after == want_image, (
        f"{case.id}: the image after the storm is not the kernel's erase "
        f"(first difference at {next(i for i in range(len(after)) if after[i] != want_image[i])})")
    with mounted(img, mnt, case.options) as m:
        assert sorted(os.listdir(m)) == sorted(er["names_after"]), "an erase was lost"
    opens = tally["thread preads"] + tally["process opens"] + tally["cat processes"]
    assert opens > 50, f"too little concurrency to mean anything: {dict(tally)}"
    assert tally["rm ENOENT"] == 5 * len(removable) - len(removable)
    FIGURES.update(tally)
    FIGURES["rm attempts"] += 5 * len(removable)
    FIGURES["rm successes"] += len(removable)
    FIGURES["cases"] += 1


@pytest.mark.parametrize("victim", ["dmesg-pstore_blk-0", "pmsg-pstore_blk-0",
                                    "ftrace-pstore_blk-0", "console-pstore_blk-0"])
def test_one_file_removed_by_many_at_the_same_instant(victim: str, tmp_path: Path) -> None:
    """Sixteen processes rm the same file at once: one succeeds, fifteen get ENOENT, and
    the zone is erased once, exactly."""
    case = case_by_id("x86_64-all-fronts")
    image = case.image.read_bytes()
    img = tmp_path / "image.bin"
    img.write_bytes(image)
    go = time.time() + 1.0
    with mounted(img, tmp_path / "mnt", case.options) as m:
        procs = [_spawn(REMOVER, str(m), json.dumps([victim]), str(i), str(go))
                 for i in range(16)]
        results = [_collect(p, f"remover {i}", 60) for i, p in enumerate(procs)]
        oks = sum(len(r["ok"]) for r in results)
        assert [e for r in results for e in r["errors"]] == []
        assert oks == 1 and sum(r["enoent"] for r in results) == 15, results
        assert victim not in os.listdir(m)
        rest = sorted(set(case.files) - {victim})
        assert sorted(os.listdir(m)) == rest
        for name in rest:
            assert (m / name).read_bytes() == case.files[name]
    after = img.read_bytes()
    changed = [i for i in range(len(image)) if image[i] != after[i]]
    assert changed, "nothing was erased"
    assert all(after[i] == 0 for i in changed)
    with mounted(img, tmp_path / "mnt", case.options) as m:
        assert sorted(os.listdir(m)) == rest
    FIGURES["simultaneous rm of one file"] += 16
    shutil.rmtree(tmp_path / "mnt", ignore_errors=True)


def _read_evicted(path: Path, fd: int | None = None) -> bytes:
    """The file's bytes after the kernel dropped its cached pages (as memory pressure
    would), so that they are asked for again."""
    own = fd is None
    if fd is None:
        fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        chunks, off = [], 0
        while chunk := os.pread(fd, 4096, off):
            chunks.append(chunk)
            off += len(chunk)
        return b"".join(chunks)
    finally:
        if own:
            os.close(fd)


def test_pages_the_kernel_dropped_are_read_again(tmp_path: Path) -> None:
    """A file opened again while the kernel's page cache holds it (stored there at its
    first open) is not read from the store; pages the kernel dropped since are asked
    for and read again: the bytes stay the kernel's files', also through a handle held
    open across the file's rm."""
    case = case_by_id("x86_64-all-fronts")
    img = tmp_path / "image.bin"
    img.write_bytes(case.image.read_bytes())
    victim = "dmesg-pstore_blk-0"
    with mounted(img, tmp_path / "mnt", case.options) as m:
        for name, want in case.files.items():
            assert (m / name).read_bytes() == want, name
        for name, want in case.files.items():
            assert _read_evicted(m / name) == want, name
            assert (m / name).read_bytes() == want, name
        fd = os.open(m / victim, os.O_RDONLY)
        try:
            os.unlink(m / victim)
            assert _read_evicted(m / victim, fd) == case.files[victim]
        finally:
            os.close(fd)
        assert victim not in os.listdir(m)
