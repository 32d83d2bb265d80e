"""The boot-time unit: verified by systemd-analyze, and its commands run in its order
against a loop device (PID 1 on test machines need not be systemd)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
from pathlib import Path

from conftest import PSTOREFS, case_by_id, require, require_fuse, run, unmount

UNIT = Path(__file__).parent.parent / "contrib" / "systemd" / "pstorefs-archive@.service"
SYSTEMD_PSTORE = "/lib/systemd/systemd-pstore"
STATE_DIR = "/var/lib/systemd/pstore"


def _unit_commands(unit_text: str) -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in
            re.finditer(r"^(ExecStart|ExecStopPost)=(.*)$", unit_text, re.MULTILINE)]


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    require(shutil.which("systemd-analyze") is not None, "systemd-analyze")
    instance = tmp_path / "pstorefs-archive@dev-sdb3.service"
    shutil.copyfile(UNIT, tmp_path / UNIT.name)
    result = run(["systemd-analyze", "verify", str(instance)])
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == ""


def test_unit_commands_archive_and_erase_every_record(tmp_path: Path) -> None:
    require_fuse()
    require(os.access(SYSTEMD_PSTORE, os.X_OK), SYSTEMD_PSTORE)
    case = case_by_id("x86_64-all-fronts")
    image = tmp_path / "image.bin"
    shutil.copyfile(case.image, image)
    loop = run(["losetup", "-f", "--show", str(image)]).stdout.strip()
    require(loop.startswith("/dev/loop"), "a free loop device")
    archive = tmp_path / "archive"
    archive.mkdir()
    instance = run(["systemd-escape", "-p", loop]).stdout.strip()
    runtime = tmp_path / "run" / "pstorefs" / instance  # RuntimeDirectory=, made by systemd
    runtime.mkdir(parents=True)
    options = case.options
    try:
        for kind, line in _unit_commands(UNIT.read_text()):
            line = (line.replace("%f", loop).replace("%i", instance)
                    .replace("/run/pstorefs", str(tmp_path / "run" / "pstorefs"))
                    .replace(STATE_DIR, str(archive))
                    .replace("${PSTOREFS_OPTIONS}", options))
            ignore_failure = line.startswith("-")
            result = run(shlex.split(line.lstrip("-")), timeout=60)
            assert ignore_failure or result.returncode == 0, f"{kind}={line}: {result.stderr}"
        assert not os.path.ismount(runtime)
        archived = {p.name: p.read_bytes() for p in archive.rglob("*") if p.is_file()}
        for name, content in case.files.items():
            assert archived.get(name) == content, f"{name} not archived byte for byte"
        assert "dmesg.txt" in archived  # systemd <= 252 rebuilds it for every back end
        remount = tmp_path / "again"
        remount.mkdir()
        result = run([str(PSTOREFS), loop, str(remount), "-o", options])
        assert result.returncode == 0, result.stderr
        try:
            assert os.listdir(remount) == []
        finally:
            unmount(remount, loop)
    finally:
        if os.path.ismount(runtime):
            unmount(runtime, loop)
        run(["losetup", "-d", loop])
