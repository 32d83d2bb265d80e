"""The decoding process alone, without FUSE (`pstorefs.fs.decoder`): what it sends back
is what the store decodes, byte for byte, from kernel-written images; what it cannot
send is left to the daemon; it is not started where erases reach other records; and
it ends with the daemon, however the daemon ends."""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from contextlib import closing
from pathlib import Path

import pytest
import trio

from helpers.cases import CASES
from helpers.decoding import case_store, decoding, policies_after, until_back
from helpers.machine import alive, require
from helpers.zone_writer import ZoneWriter
from pstorefs.cli.options import parse_options
from pstorefs.format.abi import X86_64
from pstorefs.fs import ReadAhead
from pstorefs.fs.decoder import REMOVAL_POLICY, DecodeProcess, PassKind
from pstorefs.fs.listing import Files, Listed
from pstorefs.store import Decoded, RangedBody, open_store
from pstorefs.store.device import Device
from pstorefs.store.zone.layout import Geometry
from pstorefs.store.zone.store import ZoneStore


def everything_back(decoder: DecodeProcess, count: int) -> dict[int, Decoded | None]:
    """Ask for records 0..count-1 and wait until each came back."""
    decoder.ask(range(count))  # type: ignore[arg-type]
    got: dict[int, Decoded | None] = {}
    deadline = time.monotonic() + 30
    while len(got) < count:
        assert time.monotonic() < deadline, f"{count - len(got)} records never came back"
        select.select([decoder.results], [], [], 0.5)
        got.update(decoder.take())
    assert not any(decoder.on_the_way(index) for index in range(count))
    return got


@pytest.mark.parametrize("case_id", [
    "linux6.12-all-fronts",  # dmesg, pmsg, console; ftrace, which is ranged
    "linux6.1-zstd-3oops",
    "linux5.10-lz4-3oops",
    "kmsg-plain-3oops",
    "ramoops-all-fronts",
])
def test_it_sends_back_what_the_store_decodes(case_id: str) -> None:
    with case_store(case_id) as store, decoding(store) as decoder:
        got = everything_back(decoder, len(store.records))
        for index, record in enumerate(store.records):
            want = store.decode(record)
            if isinstance(want.body, RangedBody):
                assert got[index] is None, f"{record}: a ranged body is the daemon's"
            else:
                assert got[index] == want, record
        assert {type(r.body) for r in map(store.decode, store.records)} >= {bytes}


def test_an_undecodable_record_comes_back_raw_and_flagged(tmp_path: Path) -> None:
    w = ZoneWriter(X86_64, 4 * 4096, kmsg_size=4096)
    w.dmesg(b"Oops#1 Part1\nplain\n")
    w.dmesg(b"\x78\x9c not deflate at all", compressed=True)
    path = tmp_path / "bad.bin"
    path.write_bytes(bytes(w.image))
    with closing(ZoneStore(Device(str(path), read_only=True), Geometry(kmsg_size=4096),
                           name="pstore_blk")) as store, decoding(store) as decoder:
        got = everything_back(decoder, len(store.records))
        flags = [got[i].undecodable for i in range(len(store.records))]  # type: ignore[union-attr]
        assert flags == [False, True]
        store.adopt(store.records[1], got[1])  # type: ignore[arg-type]
        assert store.entry(store.records[1], wait=False).name.endswith(".enc.z")


def test_a_record_it_cannot_read_is_left_to_the_daemon() -> None:
    with case_store("kmsg-deflate-3oops") as store, decoding(store) as decoder:
        got = everything_back(decoder, len(store.records) + 2)  # two past the end
        assert got[len(store.records)] is None and got[len(store.records) + 1] is None


@pytest.mark.parametrize("case_id", ["mtdoops-4k-pages", "mtdpstore-erase64k", "ramoops-ecc16"])
def test_none_where_it_cannot_decode_for_the_store(case_id: str) -> None:
    """Flash erases whole blocks: the process would read beside an erase it cannot see.
    ramoops with ECC learns each record's ECC counts as it decodes: its attributes."""
    with case_store(case_id) as store:
        assert not store.decodes_elsewhere
        assert DecodeProcess.fork(store, list(store.records)) is None


def test_a_thousand_records_at_once_come_back() -> None:
    """More pieces than one writev takes (1,024): sent in several."""
    with case_store("kmsg-deflate-3oops") as store, decoding(store) as decoder:
        got = everything_back(decoder, 1000)
        assert [got[i] is None for i in range(len(store.records), 1000)] == \
            [True] * (1000 - len(store.records))
        assert all(got[i] == store.decode(r) for i, r in enumerate(store.records))


def cpu_seconds(pid: int) -> float:
    """The CPU time `pid` used so far (user and system)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_after(decoder: DecodeProcess, indexes: list[int], kind: PassKind,
              window: float = 0.5) -> float:
    """The share of one CPU the process used in the `window` after sending back a
    batch asked for a pass of that `kind`."""
    assert decoder.ask(indexes, kind)
    until_back(decoder, indexes)
    before = cpu_seconds(decoder.pid)
    time.sleep(window)
    return (cpu_seconds(decoder.pid) - before) / window


@pytest.mark.parametrize("cpus", [2, 1])
def test_after_a_readers_batch_it_stays_awake_for_the_next(monkeypatch, cpus: int) -> None:
    """After a batch of a reader's pass (`PassKind.READ`) the process spins for `AWAKE`
    rather than sleeping, keeping its CPU busy, so that the scheduler keeps the reader
    and the daemon together on another; after any other batch it sleeps at once. With
    a single CPU to run on it never spins: it would take that CPU from them."""
    require(len(os.sched_getaffinity(0)) >= cpus, f"{cpus} CPUs")
    monkeypatch.setattr("pstorefs.fs.decoder.AWAKE", 2.0)  # read by the forked process
    allowed = os.sched_getaffinity(0)
    os.sched_setaffinity(0, sorted(allowed)[:cpus])
    try:
        with case_store("linux6.12-kmsg8-deflate-5oops") as store:
            decoder = DecodeProcess.fork(store, list(store.records))
    finally:
        os.sched_setaffinity(0, allowed)
    assert decoder is not None
    try:
        asleep = cpu_after(decoder, [0, 1], PassKind.LOOKUP)
        spinning = cpu_after(decoder, [2, 3], PassKind.READ)
    finally:
        decoder.stop()
    assert asleep < 0.1
    if cpus > 1:  # a share of a CPU even beside other work (SCHED_BATCH, as fair as any)
        assert spinning > 0.3, f"awake, it used {spinning:.0%} of a CPU"
    else:
        assert spinning < 0.1, f"on one CPU, it used {spinning:.0%} of it"


async def test_each_pass_asks_for_its_kind_of_batch(tmp_path: Path, monkeypatch) -> None:
    """`cat *` opens each record it looks up: a reader's batches. `rm *` removes each:
    a remover's. `stat *` only looks them up: lookups' batches, even right after a `cat`
    of a few records or an `rm` of one, which asked no batch of their own (large
    records: few to a batch): what they did is not the next pass's. (A synthetic
    partition: a pass needs several batches.)"""
    monkeypatch.setattr("pstorefs.fs.read_ahead.READ_AHEAD_BYTES", 1)  # a record a batch
    w = ZoneWriter(X86_64, 128 * 4096, kmsg_size=4096)
    for n in range(128):
        w.dmesg(f"Oops#{n} Part1\n".encode() * 8)
    path = tmp_path / "many.bin"
    path.write_bytes(bytes(w.image))
    with closing(ZoneStore(Device(str(path), read_only=True), Geometry(kmsg_size=4096),
                           name="pstore_blk")) as store, decoding(store) as decoder:
        records = list(store.records)
        for record in records:  # sizes known: each batch stops after a record
            store.entry(record)
        asked: list[PassKind] = []
        ask = decoder.ask

        def recording(indexes: list[int], kind: PassKind = PassKind.LOOKUP) -> bool:
            asked.append(kind)
            return ask(indexes, kind)

        decoder.ask = recording  # type: ignore[method-assign]
        listed = Listed(len(records))
        read_ahead = ReadAhead(store, Files(records, []), listed, len(records))
        read_ahead.decoder = decoder
        last = len(records) - 1
        passes = [("cat *", range(last), PassKind.READ), ("cat", range(3), PassKind.READ),
                  ("rm", [last], PassKind.REMOVE), ("stat *", range(last), PassKind.LOOKUP),
                  ("rm *", range(last), PassKind.REMOVE)]
        for what, indexes, kind in passes:
            asked.clear()
            for index in indexes:
                read_ahead.requested(index)
                if kind is PassKind.READ:
                    read_ahead.requested(index, opened=True)
                if kind is PassKind.REMOVE:
                    listed.discard(index)
                    read_ahead.removed()
                until_back(decoder, range(len(records)))
            if len(indexes) > 3:
                assert len(asked) > 3, (what, asked)
                assert asked == [kind] * len(asked), (what, asked)


@pytest.mark.root
def test_a_removers_batches_are_decoded_at_idle_priority() -> None:
    """`rm *`'s batches are decoded at `SCHED_IDLE`, so that the process gives its CPU
    up at once to `rm`, the daemon and the erase; every other pass's at `SCHED_BATCH`,
    as lookups alone have nothing to wait for meanwhile (the process would fall
    behind them), and a reader's pass wants it awake beside them. (Root: coming back
    from `SCHED_IDLE` takes CAP_SYS_NICE.)"""
    require(os.geteuid() == 0, "root (CAP_SYS_NICE)")
    assert REMOVAL_POLICY == os.SCHED_IDLE
    kinds = [PassKind.REMOVE, PassKind.LOOKUP, PassKind.REMOVE, PassKind.READ]
    with case_store("linux6.12-kmsg8-deflate-5oops") as store, decoding(store) as decoder:
        assert policies_after(decoder, kinds) == [
            os.SCHED_IDLE, os.SCHED_BATCH, os.SCHED_IDLE, os.SCHED_BATCH]


WITHOUT_CAP_SYS_NICE = {
    "setpriv": ["setpriv", "--bounding-set", "-sys_nice", "--inh-caps", "-sys_nice"],
    "setpriv at nice -20": ["nice", "-n", "-20", "setpriv", "--bounding-set", "-sys_nice",
                            "--inh-caps", "-sys_nice"],
    "a user namespace's root": ["unshare", "--user", "--map-root-user"],
}
"""Root without CAP_SYS_NICE where the kernel checks it: dropped (also at nice -20,
which lowering the nice value cannot probe), or held in a user namespace only."""


@pytest.mark.root
@pytest.mark.parametrize("how", WITHOUT_CAP_SYS_NICE)
def test_without_the_right_to_come_back_it_never_idles(how: str) -> None:
    """Coming back from `SCHED_IDLE` takes CAP_SYS_NICE in the initial user namespace
    (or an RLIMIT_NICE allowing the process's nice value), which an unprivileged or
    containerized daemon lacks: there a remover's batch is decoded at `SCHED_BATCH`,
    lest the process stay idle for the reader after it."""
    command = WITHOUT_CAP_SYS_NICE[how]
    for tool in sorted({"nice", "setpriv", "unshare"} & set(command)):
        require(shutil.which(tool) is not None, f"{tool} (coreutils, util-linux)")
    require(os.geteuid() == 0, "root (to drop a capability)")
    script = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "from helpers.decoding import case_store, decoding, policies_after\n"
        "from pstorefs.fs.decoder import PassKind\n"
        "with case_store('linux6.12-kmsg8-deflate-5oops') as store, "
        "decoding(store) as decoder:\n"
        "    print(policies_after(decoder, [PassKind.REMOVE, PassKind.READ]))\n")
    tests = str(Path(__file__).resolve().parents[1])
    done = subprocess.run([*command, sys.executable, "-c", script, tests],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str([os.SCHED_BATCH, os.SCHED_BATCH])


def test_once_given_up_nothing_is_asked_until_all_is_back() -> None:
    """A process gone slow (a stalled device) is not asked for more, so that no request
    waits for it again, until what it was asked for came back."""
    with case_store("linux6.12-kmsg8-deflate-5oops") as store, decoding(store) as decoder:
        assert decoder.ask([0, 1, 2]) and decoder.on_the_way(2)
        decoder.give_up()
        assert not decoder.on_the_way(2) and not decoder.usable
        assert not decoder.ask([3])
        deadline = time.monotonic() + 30
        while not decoder.usable:
            assert time.monotonic() < deadline, "never caught up"
            select.select([decoder.results], [], [], 0.5)
            decoder.take()
        assert decoder.ask([3]) and decoder.on_the_way(3)


def test_adopting_never_waits_for_an_erase(tmp_path: Path) -> None:
    """An erase holds the store while its device syncs; what the process sent back
    meanwhile is not kept (the loop must not wait for the device), and is once the
    erase ended."""
    case = next(c for c in CASES if c.id == "linux6.12-kmsg8-deflate-5oops")
    image = case.copy("image.bin", tmp_path / "image.bin")
    config = parse_options([case.options]).store
    with closing(open_store(str(image), config)) as store:
        records = list(store.records)
        decoded = store.decode(records[1])
        syncing, release = threading.Event(), threading.Event()
        sync = store.device.sync

        def slow_sync() -> None:
            syncing.set()
            release.wait(30)
            sync()

        store.device.sync = slow_sync  # type: ignore[method-assign]
        erase = threading.Thread(target=store.erase, args=(records[0],))
        erase.start()
        try:
            assert syncing.wait(10)
            began = time.monotonic()
            assert not store.adopt(records[1], decoded)
            assert time.monotonic() - began < 1
            assert store.entry(records[1], wait=False) is None
        finally:
            release.set()
            erase.join(30)
        assert store.adopt(records[1], decoded)
        assert store.body(records[1], wait=False) == decoded.body


def test_stop_reaps_it_and_a_dead_one_is_decoded_without() -> None:
    with case_store("kmsg-deflate-3oops") as store:
        decoder = DecodeProcess.fork(store, list(store.records))
        assert decoder is not None and alive(decoder.pid)
        os.kill(decoder.pid, signal.SIGKILL)
        os.waitpid(decoder.pid, 0)
        decoder.ask([0])  # a closed pipe: nothing is waited for
        select.select([decoder.results], [], [], 5)
        assert decoder.take() == [] and not decoder.alive and not decoder.on_the_way(0)
        decoder.stop()
        with pytest.raises(ChildProcessError):
            os.waitpid(decoder.pid, os.WNOHANG)


CHILD = """
import sys
from pstorefs.cli.options import parse_options
from pstorefs.fs.decoder import DecodeProcess
from pstorefs.store import open_store
store = open_store(sys.argv[1], parse_options([sys.argv[2] + ",ro"]).store)
decoder = DecodeProcess.fork(store, list(store.records))
print(decoder.pid, flush=True)
sys.stdin.read()
"""


def test_it_dies_with_the_daemon() -> None:
    """A daemon killed (SIGKILL: no clean-up runs) takes its decoding process along."""
    case = next(c for c in CASES if c.id == "kmsg-deflate-3oops")
    daemon = subprocess.Popen([sys.executable, "-c", CHILD, str(case.image), case.options],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert daemon.stdout is not None
    pid = int(daemon.stdout.readline())
    assert alive(pid)
    daemon.kill()
    daemon.wait()
    deadline = time.monotonic() + 5
    while alive(pid):
        assert time.monotonic() < deadline, "the decoding process outlived its daemon"
        time.sleep(0.01)


async def test_read_ahead_uses_it_and_waits_for_what_is_on_its_way() -> None:
    """A pass in order is decoded by the process; a request for a record on its way
    waits for it rather than decoding it again."""
    with case_store("linux6.12-kmsg8-deflate-5oops") as store, decoding(store) as decoder:
        records = list(store.records)
        read_ahead = ReadAhead(store, Files(records, []), Listed(len(records)),
                               len(records))
        read_ahead.decoder = decoder
        read_ahead.requested(0)
        read_ahead.requested(1)
        assert all(decoder.on_the_way(i) for i in range(2, len(records)))
        with trio.fail_after(10):
            for index in range(2, len(records)):
                await read_ahead.arrived(index, body=True)
                assert store.body(records[index], wait=False) == store.decode(
                    records[index]).body
