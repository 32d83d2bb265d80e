"""The ftrace file served by ranges (`pstorefs.store.ftrace`): every kernel fixture's text
byte for byte however it is read, any range equal to the same slice of the whole text
(the kernel's merge written out as the oracle, `helpers.ftrace`), memory that does not
grow with the zones, one pass shared by concurrent readers, and ABI detection that reads
a bounded sample."""

from __future__ import annotations

import threading
import tracemalloc
from contextlib import closing
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers.abis import ALL
from helpers.cases import CASES, Case
from helpers.ftrace import kernel_combine, render_records
from helpers.zone import config
from helpers.zone_writer import ZoneWriter, ftrace_record, ftrace_records
from pstorefs.format.abi import X86_64, Abi, ftrace_record_format
from pstorefs.format.abi_detect import FTRACE_SAMPLE
from pstorefs.format.consts import PstoreType
from pstorefs.format.ftrace import Names, parse_records
from pstorefs.format.kallsyms import NO_SYMBOLS, SymbolTable
from pstorefs.format.zone import parse_zone_header, ring_unwrap
from pstorefs.store import RangedBody, Store, StoreConfig, open_store
from pstorefs.store import ftrace as ranged
from pstorefs.store.zone import store as zone_store

KIB, MIB = 1 << 10, 1 << 20
FTRACE_CASES = [c for c in CASES if any(n.startswith("ftrace-") for n in c.files)]

SYMBOLS = SymbolTable(["ffffffff81000000 T _stext", "ffffffff81000100 T do_work",
                       "ffffffff81000400 T caller", "ffffffff81010000 T _etext",
                       "c0000000 T _stext32", "c0001000 T work32"])


def ftrace_body(store: Store) -> RangedBody:
    record = next(r for r in store.records if r.type is PstoreType.FTRACE)
    body = store.body(record)
    assert isinstance(body, RangedBody)
    return body


def read_in(body: RangedBody, step: int) -> bytes:
    return b"".join(body.read(at, step) for at in range(0, body.size, step))


# -- the kernel's text ---------------------------------------------------------------------
def test_fixtures_with_ftrace_exist() -> None:
    assert {c.id for c in FTRACE_CASES} >= {"x86_64-all-fronts", "x86_64-all-fronts-wrapped",
                                            "i386-all-fronts"}


@pytest.mark.parametrize("case", FTRACE_CASES, ids=lambda c: c.id)
def test_fixture_text_read_by_ranges_is_the_kernels(case: Case) -> None:
    """With its System.map (the names as the kernel printed them), read whole, in odd
    steps and backwards."""
    name = next(n for n in case.files if n.startswith("ftrace-"))
    kernel = case.files[name]
    with closing(open_store(str(case.image), config(case, read_only=True))) as store:
        body = ftrace_body(store)
        assert body.size == len(kernel) == store.entry(store.find(name)).size  # type: ignore[arg-type]
        for step in (1 << 20, 4096, 977):
            assert read_in(body, step) == kernel
        tail = [body.read(at, 5000) for at in range(body.size - 5000, -1, -5000)]
        assert b"".join(reversed(tail)) == kernel[len(kernel) % 5000:]
        assert body.read(body.size, 10) == b"" and body.read(body.size + 99, 1) == b""


# -- any range is the same slice of the whole ----------------------------------------------
def zone_bytes(abi: Abi, calls: list[tuple[int, int, int]], cpu: int, junk: int) -> bytes:
    """A zone's bytes in write order: `junk` bytes of a partly overwritten record first
    (addresses cut to the ABI's `unsigned long`)."""
    top = (1 << 8 * abi.long_size) - 1
    return bytes(range(junk)) + b"".join(ftrace_record(abi, ip & top, parent & top, stamp, cpu)
                                         for ip, parent, stamp in calls)


def oracle(abi: Abi, zones: list[bytes], symbols: SymbolTable) -> bytes:
    return render_records(kernel_combine([parse_records(abi, z) for z in zones]), symbols, abi)


ADDRESSES = st.sampled_from([0xFFFFFFFF81000104, 0xFFFFFFFF81000420, 0xC0001010, 0x1234, 0])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_any_range_is_a_slice_of_the_whole(data: st.DataObject) -> None:
    """Zones of records out of order and with equal timestamps (merge blocks, ties),
    windows and an index far smaller than the file (many windows, the index thinned):
    every read equals the oracle's slice, in any order."""
    abi = data.draw(st.sampled_from(ALL))
    zones = []
    for cpu in range(data.draw(st.integers(1, 4))):
        calls = data.draw(st.lists(st.tuples(ADDRESSES, ADDRESSES, st.integers(0, 30)),
                                   max_size=40))
        junk = data.draw(st.integers(0, ftrace_record_format(abi).size - 1))
        zones.append(zone_bytes(abi, calls, cpu & (abi.cpu_in_ip_mask or 255), junk))
    symbols = data.draw(st.sampled_from([NO_SYMBOLS, SYMBOLS]))
    whole = oracle(abi, zones, symbols)
    text = ranged.FtraceText(abi, [ranged.InMemory(z) for z in zones], Names(symbols),
                             batch=data.draw(st.integers(1, 16)),
                             index_budget=data.draw(st.integers(0, 400)))
    assert text.size == len(whole)
    for _ in range(data.draw(st.integers(1, 12))):
        offset = data.draw(st.integers(0, len(whole) + 5))
        length = data.draw(st.integers(0, len(whole) + 5))
        assert text.read(offset, length) == whole[offset:offset + length]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(nr_cpus=st.integers(1, 3), calls=st.integers(100, 1500), seed=st.integers(0, 2**32),
       data=st.data())
def test_wrapped_rings_through_the_store(nr_cpus: int, calls: int, seed: int,
                                         data: st.DataObject,
                                         tmp_path_factory: pytest.TempPathFactory) -> None:
    """Rings the writer wrapped (a record split at the end): the store's ranged text is
    the kernel's merge of the zones as the format layer unwraps them."""
    tmp = tmp_path_factory.mktemp("wrapped")
    w = ZoneWriter(X86_64, 64 * KIB, kmsg_size=4 * KIB, ftrace_size=12 * KIB,
                   nr_cpus=nr_cpus)
    per_cpu: list[list[tuple[int, int, int, int]]] = [[] for _ in range(nr_cpus)]
    for k in range(calls):  # the counter stepped back now and then, as CPUs race
        cpu = (k * 7 + seed) % nr_cpus
        per_cpu[cpu].append((0xFFFFFFFF81000100 + 4 * (k % 5), 0xFFFFFFFF81000400,
                             max(k - (seed >> k % 8 & 3), 0), cpu))
    for cpu, cpu_calls in enumerate(per_cpu):
        w.ftrace_calls(cpu, ftrace_records(X86_64, cpu_calls))
    w.save(tmp / "image.bin")
    unwrapped = []
    for ring in w.ftrace:
        header = parse_zone_header(X86_64, bytes(w.image[ring.spec.offset:]), ring.spec.offset)
        start = ring.spec.offset + 12
        unwrapped.append(ring_unwrap(bytes(w.image[start:start + ring.buffer_size]), header))
    whole = oracle(X86_64, unwrapped, NO_SYMBOLS)
    cfg = StoreConfig(kmsg_size=4, ftrace_size=12, nr_cpus=nr_cpus, abi="le64",
                      read_only=True)
    with closing(open_store(str(tmp / "image.bin"), cfg)) as store:
        body = ftrace_body(store)
        assert body.size == len(whole)
        for _ in range(6):
            offset = data.draw(st.integers(0, len(whole)))
            assert body.read(offset, 3000) == whole[offset:offset + 3000]
        assert store.read(next(r for r in store.records if r.type is PstoreType.FTRACE)) \
            == whole


# -- bounded memory ------------------------------------------------------------------------
MEMORY_CEILING = 8 * MIB
"""What sizing and reading the whole ftrace file may allocate at its peak, whatever the
zones' size: windows kept, one being rendered, the index."""


def big_ftrace_image(path: Path, ftrace_mib: int) -> None:
    """Two CPU zones of `ftrace_mib` MiB in all, each wrapped, calls interleaved."""
    w = ZoneWriter(X86_64, (ftrace_mib + 1) * MIB, kmsg_size=64 * KIB,
                   ftrace_size=ftrace_mib * MIB, nr_cpus=2)
    count = ftrace_mib * MIB // 24 * 9 // 8
    functions = [0xFFFFFFFF81000000 + 0x40 * k for k in range(512)]
    for cpu in range(2):
        w.ftrace_calls(cpu, ftrace_records(X86_64, [
            (functions[s % 512], functions[s * 3 % 512] + 8, s, cpu)
            for s in range(cpu, count, 2)]))
    w.save(path)


@pytest.mark.parametrize("ftrace_mib", [2, 16])
def test_memory_does_not_grow_with_the_zones(ftrace_mib: int, tmp_path: Path) -> None:
    """Sizing the file and reading all of it, 128 KiB at a time as the kernel asks,
    allocates at most MEMORY_CEILING at once, for 2 MiB of records as for 16 (some
    60 MB of text)."""
    big_ftrace_image(tmp_path / "image.bin", ftrace_mib)
    cfg = StoreConfig(kmsg_size=64, ftrace_size=ftrace_mib * 1024, nr_cpus=2, read_only=True)
    with closing(open_store(str(tmp_path / "image.bin"), cfg)) as store:
        record = next(r for r in store.records if r.type is PstoreType.FTRACE)
        tracemalloc.start()
        try:
            body = store.body(record)
            assert isinstance(body, RangedBody)
            size = store.entry(record).size
            read = sum(len(body.read(at, 128 * KIB)) for at in range(0, size, 128 * KIB))
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert read == size > 3 * ftrace_mib * MIB
    assert peak < MEMORY_CEILING, f"{peak / MIB:.1f} MiB for {size / MIB:.0f} MiB of text"


# -- one pass for every reader -------------------------------------------------------------
def test_concurrent_readers_share_one_pass_and_one_index(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Two readers asking at once get the same body: the size is counted once, and a
    window both read is rendered once; each still gets its own ranges."""
    big_ftrace_image(tmp_path / "image.bin", 2)
    passes: list[int] = []
    renders: list[int] = []
    measure, render = ranged.FtraceText._measure, ranged.FtraceText._render
    gate = threading.Barrier(2)

    def counted_measure(self: ranged.FtraceText) -> int:
        passes.append(1)
        return measure(self)

    def counted_render(self: ranged.FtraceText, window: object) -> bytes:
        renders.append(1)
        return render(self, window)  # type: ignore[arg-type]

    monkeypatch.setattr(ranged.FtraceText, "_measure", counted_measure)
    monkeypatch.setattr(ranged.FtraceText, "_render", counted_render)
    cfg = StoreConfig(kmsg_size=64, ftrace_size=2048, nr_cpus=2, read_only=True)
    with closing(open_store(str(tmp_path / "image.bin"), cfg)) as store:
        record = next(r for r in store.records if r.type is PstoreType.FTRACE)
        got: dict[int, tuple[object, int, bytes]] = {}

        def reader(n: int) -> None:
            gate.wait()
            body = store.body(record)
            assert isinstance(body, RangedBody)
            got[n] = (body, store.entry(record).size, body.read(1000 * n, 50_000))

        threads = [threading.Thread(target=reader, args=(n,)) for n in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        rendered = len(renders)
        whole = store.read(record)
    assert got[0][0] is got[1][0]
    assert len(passes) == 1
    assert rendered == 1, "the window both read was rendered once"
    assert got[0][1] == got[1][1] == len(whole)
    assert got[0][2] == whole[:50_000] and got[1][2] == whole[1000:51_000]


# -- ABI detection reads a sample ----------------------------------------------------------
def test_abi_detection_reads_a_bounded_sample(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    big_ftrace_image(tmp_path / "image.bin", 16)
    seen: list[list[bytes]] = []
    detect = zone_store.detect_abi

    def spy(**kw: object) -> object:
        seen.append(list(kw["ftrace_zones"]))  # type: ignore[call-overload]
        return detect(**kw)  # type: ignore[arg-type]

    monkeypatch.setattr(zone_store, "detect_abi", spy)
    cfg = StoreConfig(kmsg_size=64, ftrace_size=16 * 1024, nr_cpus=2, read_only=True)
    with closing(open_store(str(tmp_path / "image.bin"), cfg)) as store:
        assert store.layout().abi == "le64"
    zones, = seen
    assert len(zones) == 2 and all(len(z) == FTRACE_SAMPLE for z in zones)


# -- the writer's bulk records -------------------------------------------------------------
@settings(max_examples=30, deadline=None)
@given(st.sampled_from(ALL), st.integers(0, 700), st.integers(0, 3))
def test_writer_bulk_calls_are_one_call_at_a_time(abi: Abi, count: int, cpu: int) -> None:
    """`ftrace_calls` leaves the image `ftrace_call` by `ftrace_call` leaves (the latter
    pinned to the kernel images): the bench's 96 MiB zones are written the fast way."""
    calls = [(0xC0001000 + 16 * k, 0xC0002000 + k, 5 * k) for k in range(count)]
    one, bulk = (ZoneWriter(abi, 32 * KIB, kmsg_size=4 * KIB, ftrace_size=8 * KIB, nr_cpus=4)
                 for _ in range(2))
    for ip, parent, stamp in calls:
        one.ftrace_call(cpu, ip, parent, stamp)
    bulk.ftrace_calls(cpu, ftrace_records(abi, [(*call, cpu) for call in calls]))
    assert bulk.image == one.image
