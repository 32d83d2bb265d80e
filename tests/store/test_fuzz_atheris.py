"""The coverage-guided fuzz targets (tests/fuzz/atheris_targets.py), run briefly: each
target starts from its corpus (tests/fuzz/corpus/TARGET), runs for a few seconds under
libFuzzer's time and memory limits and finds nothing; and a target that breaks is
reported, with the input saved. The long runs are the README's (tests/fuzz/README.md).
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.machine import require

FUZZ = Path(__file__).parents[1] / "fuzz"
TARGETS_PY = FUZZ / "atheris_targets.py"
CORPUS = FUZZ / "corpus"
TARGETS = ("zone", "ramoops", "mtdoops", "blockconsole", "compress", "sw842",
           "reed_solomon", "kallsyms")
SECONDS = 2


def _atheris(target: str, tmp_path: Path, *extra: str,
             env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess, Path]:
    require(importlib.util.find_spec("atheris") is not None,
            "atheris (pip install atheris: a test dependency, pyproject.toml [test])")
    scratch = tmp_path / "found"
    scratch.mkdir()
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    r = subprocess.run([sys.executable, str(TARGETS_PY), target, f"-max_total_time={SECONDS}",
                        "-timeout=20", "-rss_limit_mb=1024", f"-artifact_prefix={artifacts}/",
                        *extra, str(scratch), str(CORPUS / target)],
                       capture_output=True, text=True, timeout=300,
                       env={**os.environ, **(env or {})})
    return r, artifacts


def test_every_target_has_a_corpus() -> None:
    assert sorted(p.name for p in CORPUS.iterdir()) == sorted(TARGETS)
    for target in TARGETS:
        files = list((CORPUS / target).iterdir())
        assert files and all(f.stat().st_size <= 64 << 10 for f in files), target


@pytest.mark.parametrize("target", TARGETS)
def test_target_runs_clean(tmp_path: Path, target: str) -> None:
    """A few seconds of coverage-guided fuzzing: the corpus loads, inputs run, nothing
    is found."""
    r, artifacts = _atheris(target, tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    done = re.search(r"Done (\d+) runs in", r.stderr)
    assert done and int(done.group(1)) > 10, r.stderr[-3000:]
    assert "INITED" in r.stderr and not list(artifacts.iterdir()), r.stderr[-3000:]


def test_a_finding_is_reported_and_saved(tmp_path: Path) -> None:
    """A target that raises (`PSTOREFS_FUZZ_BREAK` names it): atheris stops with a
    failure, the exception on stderr and the input saved."""
    r, artifacts = _atheris("reed_solomon", tmp_path,
                            env={"PSTOREFS_FUZZ_BREAK": "reed_solomon"})
    out = r.stdout + r.stderr  # atheris prints the exception on stdout
    assert r.returncode != 0, out[-3000:]
    assert "Uncaught Python exception" in out and "PSTOREFS_FUZZ_BREAK" in out, out[-3000:]
    assert [p.name[:6] for p in artifacts.iterdir()] == ["crash-"], r.stderr[-3000:]
