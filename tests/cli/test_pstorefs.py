"""The `pstorefs` command line without mounting: help, version, usage errors."""

from __future__ import annotations

import pytest

from helpers.machine import PSTOREFS, run
from pstorefs import __version__


def test_help_and_version() -> None:
    r = run([PSTOREFS, "--help"])
    assert r.returncode == 0 and not r.stderr
    for word in ("SOURCE", "MOUNTPOINT", "kmsg_size", "pmsg_size", "console_size",
                 "ftrace_size", "nr_cpus", "name=", "system_map", "abi=", "ro", "uid=",
                 "umask=", "allow_other", "-f", "-v", "verbose"):
        assert word in r.stdout, word
    r = run([PSTOREFS, "--version"])
    assert r.returncode == 0
    assert r.stdout.strip() == f"pstorefs {__version__}"


@pytest.mark.parametrize("args", [[], ["/dev/null"], ["-x", "a", "b"], ["a", "b", "c"],
                                  ["a", "b", "-o", "bogus"], ["a", "b", "-o", "kmsg_size=abc"],
                                  ["a", "b", "-o", "uid=nosuchuser"]],
                         ids=["no arguments", "one argument", "unknown flag", "extra argument",
                              "unknown option", "bad value", "unknown user"])
def test_usage_errors_are_one_line_and_exit_1(args: list[str]) -> None:
    """What mount(8) runs exits 1 on bad usage as on any failure (sshfs does too):
    mount(8) reads 2 as its own system error."""
    r = run([PSTOREFS, *args])
    assert r.returncode == 1 and r.stdout == ""
    assert len(r.stderr.splitlines()) == 1 and r.stderr.startswith("pstorefs: "), r.stderr
