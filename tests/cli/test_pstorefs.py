"""The `pstorefs` command line without mounting: help and version."""

from __future__ import annotations

from helpers.machine import PSTOREFS, run
from pstorefs import __version__


def test_help_and_version() -> None:
    r = run([PSTOREFS, "--help"])
    assert r.returncode == 0 and not r.stderr
    for word in ("SOURCE", "MOUNTPOINT", "kmsg_size", "pmsg_size", "console_size",
                 "ftrace_size", "nr_cpus", "name=", "system_map", "abi=", "ro", "uid=",
                 "umask=", "allow_other", "-f"):
        assert word in r.stdout, word
    r = run([PSTOREFS, "--version"])
    assert r.returncode == 0
    assert r.stdout.strip() == f"pstorefs {__version__}"
