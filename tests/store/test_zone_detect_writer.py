"""Layout detection on layouts the test writer makes (tests/helpers/zone_writer.py):
every zone size, front area and CPU count, erased and wrapped zones, and random layouts
(hypothesis); detection must show what the options the writer used show."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers.detect import (
    KIB,
    MIB,
    Layout,
    check_detected,
    fill_ring,
    oops_text,
    opened,
    records,
    save,
    stream,
    text_base,
    trace,
    wrap_ring,
    zone_header,
)
from helpers.zone_writer import ZoneWriter, deflate
from pstorefs.format.abi import BE64, I386, X86_64, Abi
from pstorefs.format.consts import PstoreType
from pstorefs.store import StoreConfig


# == 2. layouts the test writer makes ======================================================
@dataclass(frozen=True)
class Scenario:
    """An image to detect: its layout, what is written, and whether the layout itself
    (not only the files) must come back."""

    id: str
    layout: Layout
    write: Callable[[ZoneWriter], object]
    exact: bool = True
    abi: Abi = X86_64
    note: str | None = None
    """A piece of `Detection.assumed` that must be there."""
    writer_kw: dict[str, object] = field(default_factory=dict)


def _kmsg_scenarios() -> Iterator[Scenario]:
    for kib in (4, 8, 16, 32, 64, 128, 1024):
        lay = Layout(8 * kib * KIB, kib * KIB)
        yield Scenario(f"kmsg{kib}-3rec", lay, lambda w: records(w, 3, 3000))
        yield Scenario(f"kmsg{kib}-1rec", lay, lambda w: records(w, 1, 2000),
                       exact=kib == 64, note="one dmesg record does not show the zone size")


def _front_scenarios() -> Iterator[Scenario]:
    for pmsg in (0, 8 * KIB):
        for console in (0, 8 * KIB):
            for ftrace in (0, 8 * KIB):
                for wrapped in (False, True):
                    if not (pmsg or console or ftrace) and wrapped:
                        continue

                    def write(w: ZoneWriter, wrapped: bool = wrapped) -> None:
                        for ring, tag in ((w.pmsg, "pmsg"), (w.console, "console")):
                            if ring is not None:
                                (wrap_ring(ring, tag) if wrapped
                                 else fill_ring(ring, 3000, tag))
                        if w.ftrace:
                            trace(w, [0], 400 if wrapped else 40)
                        records(w, 2)

                    name = (f"p{pmsg // KIB}-c{console // KIB}-f{ftrace // KIB}"
                            f"{'-wrapped' if wrapped else ''}")
                    yield Scenario(name, Layout(128 * KIB, 8 * KIB, pmsg, console, ftrace),
                                   write)


def _cpu_scenarios() -> Iterator[Scenario]:
    for cpus in (1, 2, 3, 4, 6, 8):
        lay = Layout(256 * KIB, 8 * KIB, pmsg=4 * KIB, ftrace=64 * KIB, cpus=cpus)
        for wrapped in (False, True):
            per_cpu = 64 * KIB // cpus

            def write(w: ZoneWriter, cpus: int = cpus, wrapped: bool = wrapped,
                      per_cpu: int = per_cpu) -> None:
                assert w.pmsg is not None
                fill_ring(w.pmsg, 100, "pmsg")
                trace(w, range(cpus), per_cpu // 24 + 20 if wrapped else 5)
                records(w, 2)

            yield Scenario(f"cpus{cpus}{'-wrapped' if wrapped else ''}", lay, write)


def _erase_rings(w: ZoneWriter) -> None:
    assert w.pmsg is not None and w.console is not None
    fill_ring(w.pmsg, 2000, "pmsg")
    wrap_ring(w.console, "console")
    trace(w, range(len(w.ftrace)), 30)
    records(w, 3)
    w.pmsg.erase()
    w.console.erase()
    w.ftrace[0].erase()  # the kernel's rm of the ftrace file: CPU 0's zone alone
    w.erase_dmesg(1)


def _full(w: ZoneWriter) -> None:
    for n in range(1, 41):
        w.dmesg(oops_text(n, 5000 if n % 7 == 0 else 1500), time=(1_700_000_000 + n, 0))


def _full_fronts(w: ZoneWriter) -> None:
    assert w.pmsg is not None and w.console is not None
    wrap_ring(w.pmsg, "pmsg")
    wrap_ring(w.console, "console")
    trace(w, range(len(w.ftrace)), 200)
    _full(w)


def _unrecovered(w: ZoneWriter) -> None:
    """Written before recovery: the zones are flushed whole, 0xFF after the data."""
    assert w.pmsg is not None and w.console is not None
    fill_ring(w.pmsg, 100, "pmsg")
    fill_ring(w.console, 5000, "console")
    trace(w, [0], 20)
    w.recover()
    records(w, 2)


def _pmsg_then_console(w: ZoneWriter) -> None:
    assert w.pmsg is not None and w.console is not None
    wrap_ring(w.pmsg, "pmsg")
    records(w, 2)


SCENARIOS = [
    *_kmsg_scenarios(),
    *_front_scenarios(),
    *_cpu_scenarios(),
    # -- areas no record shows ------------------------------------------------------
    Scenario("unused-pmsg-before-dmesg", Layout(256 * KIB, 8 * KIB, pmsg=16 * KIB),
             lambda w: records(w, 2), note="unused pmsg area"),
    Scenario("unused-pmsg-console-before-dmesg",
             Layout(256 * KIB, 8 * KIB, pmsg=16 * KIB, console=16 * KIB),
             lambda w: records(w, 2), exact=False, note="unused pmsg area"),
    Scenario("console-wrapped-then-unused-ftrace",
             Layout(256 * KIB, 16 * KIB, console=16 * KIB, ftrace=16 * KIB),
             lambda w: (wrap_ring(w.console), records(w, 2)),
             note="unused ftrace area"),
    Scenario("pmsg-wrapped-then-unused-console",
             Layout(256 * KIB, 16 * KIB, pmsg=16 * KIB, console=16 * KIB),
             _pmsg_then_console, note="unused console area"),
    Scenario("pmsg-then-unused-6cpu-ftrace",
             Layout(256 * KIB, 8 * KIB, pmsg=4 * KIB, ftrace=64 * KIB, cpus=6),
             lambda w: (fill_ring(w.pmsg, 100), records(w, 2)),
             exact=False, note="unused ftrace area"),
    Scenario("console-wrapped-6cpu-cpu0-silent",
             Layout(256 * KIB, 8 * KIB, console=8 * KIB, ftrace=64 * KIB, cpus=6),
             lambda w: (wrap_ring(w.console), trace(w, range(1, 6), 10),
                        records(w, 2))),
    Scenario("4cpu-only-0-and-2-traced",
             Layout(256 * KIB, 8 * KIB, ftrace=64 * KIB, cpus=4),
             lambda w: (trace(w, [0, 2], 10), records(w, 2)), exact=False,
             note="nr_cpus=2 taken"),
    Scenario("fronts-only-no-dmesg",
             Layout(64 * KIB, 0, pmsg=8 * KIB, console=8 * KIB, ftrace=16 * KIB, cpus=2),
             lambda w: (wrap_ring(w.pmsg), fill_ring(w.console, 100),
                        trace(w, [0, 1], 10)), exact=False),
    Scenario("nothing-written", Layout(256 * KIB, 8 * KIB, pmsg=8 * KIB, ftrace=8 * KIB),
             lambda w: None, exact=False, note="no zone header found"),
    Scenario("flushed-before-recovery",
             Layout(256 * KIB, 16 * KIB, pmsg=8 * KIB, console=16 * KIB, ftrace=8 * KIB),
             _unrecovered, writer_kw={"recovered": False}),
    Scenario("erased-flash-0xff-fill",
             Layout(256 * KIB, 16 * KIB, pmsg=8 * KIB, console=16 * KIB, ftrace=8 * KIB),
             _unrecovered, writer_kw={"recovered": False, "fill": 0xFF}),
    # -- erased zones -----------------------------------------------------------------
    Scenario("dmesg-erased", Layout(256 * KIB, 16 * KIB),
             lambda w: (records(w, 3), w.erase_dmesg(0), w.erase_dmesg(2))),
    Scenario("dmesg-all-erased", Layout(256 * KIB, 16 * KIB),
             lambda w: (records(w, 2), w.erase_dmesg(0), w.erase_dmesg(1))),
    Scenario("rings-erased",
             Layout(256 * KIB, 16 * KIB, pmsg=8 * KIB, console=8 * KIB, ftrace=16 * KIB, cpus=2),
             _erase_rings),
    # -- every dmesg zone written, round-robin wrapped ------------------------------------
    Scenario("full-round-robin", Layout(64 * KIB, 4 * KIB), _full),
    Scenario("full-round-robin-fronts",
             Layout(96 * KIB, 4 * KIB, pmsg=4 * KIB, console=4 * KIB, ftrace=8 * KIB, cpus=2),
             _full_fronts),
    # -- one record larger than the default zone -----------------------------------------
    Scenario("one-record-128k", Layout(1 * MIB, 128 * KIB),
             lambda w: records(w, 1, 100 * KIB), note="kmsg_size=128 taken"),
    Scenario("one-record-256k", Layout(2 * MIB, 256 * KIB),
             lambda w: records(w, 1, 200 * KIB), note="kmsg_size=256 taken"),
    Scenario("one-100k-record-in-256k", Layout(2 * MIB, 256 * KIB),
             lambda w: records(w, 1, 100 * KIB), exact=False, note="kmsg_size=128 taken"),
    # -- other writers ------------------------------------------------------------------
    Scenario("i386-fronts",
             Layout(256 * KIB, 8 * KIB, pmsg=8 * KIB, console=8 * KIB, ftrace=8 * KIB),
             _erase_rings, abi=I386, exact=False),
    Scenario("be64-fronts-wrapped",
             Layout(256 * KIB, 8 * KIB, pmsg=8 * KIB, console=8 * KIB, ftrace=8 * KIB),
             _full_fronts, abi=BE64),
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.id)
def test_writer_layout_detected(tmp_path: Path, scenario: Scenario) -> None:
    w = scenario.layout.writer(scenario.abi, **scenario.writer_kw)
    scenario.write(w)
    _, _, assumed = check_detected(save(w, tmp_path), scenario.layout, exact=scenario.exact)
    if scenario.note is not None:
        assert any(scenario.note in note for note in assumed), assumed


def test_unaligned_ftrace_zones_put_the_dmesg_zones_off_4k(tmp_path: Path) -> None:
    """64 KiB over 6 CPUs: 10922-byte zones, the dmesg zones from 4096 + 65532."""
    lay = Layout(256 * KIB, 8 * KIB, pmsg=4 * KIB, ftrace=64 * KIB, cpus=6)
    w = lay.writer()
    assert [ring.spec.size for ring in w.ftrace] == [10922] * 6
    assert w.dmesg_zones[0].offset == 4096 + 65532
    trace(w, range(6), 3)
    records(w, 3)
    got, _, _ = check_detected(save(w, tmp_path), lay, exact=True)
    assert got["dmesg-blkoops-0"][1] == (4096 + 65532,)
    assert got["ftrace-blkoops-0"][1] == tuple(4096 + 10922 * cpu for cpu in range(6))


def test_overlapping_signature_bytes_hide_no_header(tmp_path: Path) -> None:
    """An erased pmsg ring keeps its text; text ending in `CGB` right before the
    console header `FBGC` reads `CGBF`, the big-endian console signature, overlapping
    the real one: the scan must still find the console header."""
    lay = Layout(128 * KIB, 8 * KIB, pmsg=8 * KIB, console=8 * KIB)
    w = lay.writer()
    assert w.pmsg is not None and w.console is not None
    w.pmsg.write(stream("pmsg", w.pmsg.buffer_size - 3) + b"CGB")
    w.pmsg.erase()
    fill_ring(w.console, 300, "console")
    records(w, 2)
    assert bytes(w.image[8 * KIB - 3:8 * KIB + 4]) == b"CGBFBGC"
    check_detected(save(w, tmp_path), lay, exact=True)


def test_nr_cpus_option_settles_the_cpu_count(tmp_path: Path) -> None:
    """Only CPUs 0 and 2 of 4 traced: 2 and 4 CPUs show the same file, 2 is taken; with
    `nr_cpus=4` (not a size option: the sizes are still detected) the layout is exact."""
    lay = Layout(256 * KIB, 8 * KIB, ftrace=64 * KIB, cpus=4)
    w = lay.writer()
    trace(w, [0, 2], 10)
    records(w, 2)
    path = save(w, tmp_path)
    _, geometry, _ = check_detected(path, lay, exact=False)
    assert geometry.nr_cpus == 2
    _, geometry, assumed = opened(path, StoreConfig(nr_cpus=4, read_only=True))
    assert geometry == lay.geometry()
    assert not any("nr_cpus" in note for note in assumed)


def test_headers_inside_a_record_are_not_zones(tmp_path: Path) -> None:
    """A record's bytes may hold anything, zone headers included: the scan skips the
    data a header claims."""
    lay = Layout(256 * KIB, 16 * KIB, pmsg=8 * KIB)
    w = lay.writer()
    assert w.pmsg is not None
    donor = ZoneWriter(X86_64, 16 * KIB, kmsg_size=4 * KIB)
    donor.dmesg(b"Oops#9 Part1\n" + b"x" * 100)
    fake = bytes(donor.image[:4 * KIB])
    w.pmsg.write(b"pmsg " + zone_header(X86_64, PstoreType.CONSOLE, 8, 8) + b"console!")
    w.dmesg(b"Oops#1 Part1\n" + fake + fake)
    w.dmesg(b"Oops#2 Part1\n" + fake)
    got, _, _ = check_detected(save(w, tmp_path), lay, exact=True)
    assert sorted(got) == ["dmesg-blkoops-0", "dmesg-blkoops-1", "pmsg-blkoops-0"]


# -- the property, over random layouts and records -------------------------------------------
@st.composite
def random_image(draw: st.DrawFn) -> tuple[Layout, ZoneWriter]:
    kmsg = draw(st.sampled_from([4, 8, 16, 32])) * KIB
    pmsg = draw(st.sampled_from([0, 4, 8])) * KIB
    console = draw(st.sampled_from([0, 4, 8])) * KIB
    ftrace = draw(st.sampled_from([0, 4, 8, 16, 64])) * KIB
    cpus = draw(st.integers(1, 6)) if ftrace else 1
    zones = draw(st.integers(1, 6))
    tail = draw(st.integers(0, kmsg // 4096 - 1)) * 4096
    lay = Layout(pmsg + console + ftrace + zones * kmsg + tail, kmsg, pmsg, console,
                 ftrace, cpus)
    abi = draw(st.sampled_from([X86_64, I386]))
    w = lay.writer(abi)
    for ring, tag in ((w.pmsg, "pmsg"), (w.console, "console")):
        if ring is not None:
            fill_ring(ring, draw(st.integers(0, 2 * ring.buffer_size)), tag)
    if w.ftrace:
        per_cpu = w.ftrace[0].buffer_size // abi.ftrace_record_size
        calls = draw(st.lists(st.integers(0, 2 * per_cpu), min_size=cpus, max_size=cpus))
        stamp, base = 1, text_base(abi)
        for cpu, count in enumerate(calls):
            for n in range(count):
                w.ftrace_call(cpu, base + 16 * n, base + 0x8000, stamp)
                stamp += 1
    written = draw(st.integers(0, 2 * zones))
    for n in range(1, written + 1):
        text = oops_text(n, draw(st.integers(100, kmsg)))
        if draw(st.booleans()):
            w.dmesg(deflate(text), compressed=True, time=(1_700_000_000 + n, 0))
        else:
            w.dmesg(text, time=(1_700_000_000 + n, 0))
    for index in draw(st.sets(st.integers(0, zones - 1), max_size=3)):
        if index < min(written, zones):
            w.erase_dmesg(index)
    for ring in (w.pmsg, w.console):
        if ring is not None and ring.datalen and draw(st.booleans()):
            ring.erase()
    if any(r.datalen for r in w.ftrace) and draw(st.booleans()):
        w.ftrace[0].erase()
    return lay, w


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(random_image())
def test_random_layouts_detected(tmp_path: Path, image: tuple[Layout, ZoneWriter]) -> None:
    lay, w = image
    # the ABI is given: with few records it may be undecidable, and that is not layout
    check_detected(save(w, tmp_path, "random.bin"), lay, exact=False, abi=w.abi.name)
