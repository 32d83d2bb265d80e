"""`pstorectl probe`: the options it prints list the same files, what it assumed is
said, a refusal names the option that settles it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from helpers.cases import BACKEND_CASES, CASES, Case
from helpers.detect import (
    KIB,
    MIB,
    PAST_CAP_ALONE,
    case_config,
    past_cap_alone,
    records,
    save,
    sha,
    stale_smaller_zones,
)
from helpers.machine import VENV_BIN
from helpers.zone_writer import ZoneWriter
from pstorefs.cli.ctl import PROBE_FIELDS
from pstorefs.format.abi import X86_64
from pstorefs.store.zone.layout import geometry_from_options

PSTORECTL = str(VENV_BIN / "pstorectl")


# == 7. pstorectl probe ====================================================================
def ctl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PSTORECTL, *args], capture_output=True, text=True, timeout=60)


def extra_options(case: Case) -> list[str]:
    return ["-o", f"system_map={case.dir / case.meta['system_map']}"] \
        if case.meta.get("system_map") else []


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_probe_gives_options_that_list_the_same(case: Case) -> None:
    probe = ctl("probe", str(case.image))
    assert probe.returncode == 0, probe.stderr
    first = probe.stdout.splitlines()[0]
    assert first.startswith("pstore_blk.kmsg_size=")
    assert first == geometry_from_options(case_config(case)).kernel_parameters()
    result = ctl("probe", "--json", str(case.image))
    assert result.returncode == 0, result.stderr
    layout = json.loads(result.stdout)
    assert tuple(layout) == PROBE_FIELDS
    assert layout["kernel_parameters"] == first
    assert layout["source"] == str(case.image)
    detected = ctl("list", "--json", str(case.image), *extra_options(case))
    pinned = ctl("list", "--json", str(case.image), "-o", layout["mount_options"],
                 *extra_options(case))
    assert detected.returncode == pinned.returncode == 0, (detected.stderr, pinned.stderr)
    assert json.loads(detected.stdout) == json.loads(pinned.stdout)
    assert sorted(row["name"].replace("blkoops", "pstore_blk")
                  for row in json.loads(pinned.stdout)) == sorted(case.files)


def test_probe_says_what_it_assumed(tmp_path: Path) -> None:
    w = ZoneWriter(X86_64, MIB, kmsg_size=128 * KIB)
    records(w, 1, 100 * KIB)
    path = save(w, tmp_path)
    text = ctl("probe", str(path))
    assert text.returncode == 0, text.stderr
    assert text.stdout.splitlines()[0].startswith("pstore_blk.kmsg_size=128 ")
    assert "# assumed: one dmesg record" in text.stdout
    layout = json.loads(ctl("probe", "--json", str(path)).stdout)
    assert any("kmsg_size=128 taken" in note for note in layout["assumed"])


def test_probe_refusal_names_the_option(tmp_path: Path) -> None:
    path = stale_smaller_zones(tmp_path, 30 * KIB)
    before = sha(path)
    result = ctl("probe", str(path))
    assert result.returncode == 1 and "kmsg_size=" in result.stderr
    assert "Traceback" not in result.stderr
    assert sha(path) == before


@pytest.mark.parametrize("case", CASES + BACKEND_CASES, ids=lambda c: c.id)
def test_kernel_parameters_are_module_parameters_only(case: Case) -> None:
    """The first line is pasted onto kernel command lines: module parameters only. The
    writer's CPU count is said in a comment and in the mount options, never as
    `nr_cpus=`, the boot parameter that would limit the machine to that many CPUs."""
    probe = ctl("probe", str(case.image))
    assert probe.returncode == 0, probe.stderr
    first, *comments = probe.stdout.splitlines()
    module = first.split()[0].split(".")[0]
    assert all(p.startswith(f"{module}.") for p in first.split()), first
    assert all(line.startswith("# ") for line in comments)
    layout = json.loads(ctl("probe", "--json", str(case.image)).stdout)
    assert layout["kernel_parameters"] == first
    if layout.get("ftrace_size"):
        cpus = layout["nr_cpus"]
        assert f"# writer: {cpus} CPU{'s' if cpus > 1 else ''} (nr_cpu_ids)" in probe.stdout
        assert f",nr_cpus={cpus}" in layout["mount_options"]
    assert not any(line.startswith("nr_cpus=") or " nr_cpus=" in line
                   for line in probe.stdout.splitlines())


def test_probe_says_the_writers_cpus_in_a_comment(tmp_path: Path) -> None:
    path = tmp_path / "blank.img"
    path.write_bytes(bytes(64 * KIB))
    probe = ctl("probe", str(path), "-o", "kmsg_size=4,ftrace_size=8,nr_cpus=2")
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.splitlines()[0] == ("pstore_blk.kmsg_size=4 pstore_blk.pmsg_size=0 "
                                            "pstore_blk.console_size=0 pstore_blk.ftrace_size=8")
    assert "# writer: 2 CPUs (nr_cpu_ids), one ftrace zone each\n" in probe.stdout


def test_probe_json_lines_is_one_line() -> None:
    case = CASES[0]
    pretty = ctl("probe", "--json", str(case.image))
    lines = ctl("probe", "--json=lines", str(case.image))
    assert lines.returncode == pretty.returncode == 0, lines.stderr
    assert lines.stdout.count("\n") == 1
    assert json.loads(lines.stdout) == json.loads(pretty.stdout)


def test_records_past_the_cap_alone(tmp_path: Path) -> None:
    """Linux 5.10's records in zones 32767-32769 of 160 MiB, nothing before them: the
    131068 KiB in front are no pmsg zone (kmalloc gives none that large), so probe and
    list number them as `kmsg_size=4` does, and `erase` hits the right zone."""
    path = past_cap_alone(tmp_path)
    probe = ctl("probe", str(path))
    assert probe.returncode == 0, probe.stderr
    lines = probe.stdout.splitlines()
    assert lines[0] == ("pstore_blk.kmsg_size=4 pstore_blk.pmsg_size=0 "
                        "pstore_blk.console_size=0 pstore_blk.ftrace_size=0")
    assert lines[1].endswith("records 3, past the 128 MiB cap")
    assert any(line.startswith("# assumed: the 131068 KiB before the first dmesg header")
               for line in lines)
    detected = ctl("list", "--json", str(path))
    pinned = ctl("list", "--json", str(path), "-o", "kmsg_size=4")
    assert detected.returncode == pinned.returncode == 0, (detected.stderr, pinned.stderr)
    rows = json.loads(detected.stdout)
    assert rows == json.loads(pinned.stdout)
    assert [(row["name"], row["zone_offset"]) for row in rows] == [
        (f"dmesg-blkoops-{n}", 4 * KIB * n) for n in PAST_CAP_ALONE]
    erased = ctl("erase", str(path), "dmesg-blkoops-32769")
    assert erased.returncode == 0, erased.stderr
    after = json.loads(ctl("list", "--json", str(path), "-o", "kmsg_size=4").stdout)
    assert [row["name"] for row in after] == ["dmesg-blkoops-32767", "dmesg-blkoops-32768"]


def test_probe_warns_of_sizes_that_contradict_the_headers(tmp_path: Path) -> None:
    w = ZoneWriter(X86_64, MIB, kmsg_size=64 * KIB)
    records(w, 3)
    path = save(w, tmp_path)
    before = sha(path)
    probe = ctl("probe", str(path), "-o", "kmsg_size=32")
    assert probe.returncode == 0, probe.stderr
    warnings = [line for line in probe.stdout.splitlines() if line.startswith("# warning: ")]
    assert len(warnings) == 1 and "detection finds kmsg_size=64,pmsg_size=0," in warnings[0]
    layout = json.loads(ctl("probe", "--json", str(path), "-o", "kmsg_size=32").stdout)
    assert [f"# warning: {w}" for w in layout["warnings"]] == warnings
    listed = ctl("list", str(path), "-o", "kmsg_size=32")
    assert listed.returncode == 0
    assert [line.split()[0] for line in listed.stdout.splitlines()] == [
        "dmesg-blkoops-0", "dmesg-blkoops-2", "dmesg-blkoops-4"]
    assert len(listed.stderr.splitlines()) == 1 and "the sizes given (" in listed.stderr
    assert json.loads(ctl("probe", "--json", str(path)).stdout)["warnings"] == []
    assert sha(path) == before


def test_probe_says_a_zone_kmalloc_does_not_give(tmp_path: Path) -> None:
    w = ZoneWriter(X86_64, 16 * MIB, kmsg_size=64 * KIB)
    records(w, 1)
    probe = ctl("probe", str(save(w, tmp_path)), "-o", "kmsg_size=64,pmsg_size=8192")
    assert probe.returncode == 0, probe.stderr
    assert "# warning: a pmsg zone of 8192 KiB: more than the 4 MiB kmalloc gives a zone " \
           "with 4 KiB pages" in probe.stdout
