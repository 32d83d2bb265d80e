"""systemd where PID 1 need not be systemd: the systemd-pstore builds the tests run,
a unit's ExecStart= lines as systemd would run them, and a journald of the test's own.

Two systemd-pstore builds: Debian 12's (252, the system's) and bookworm-backports'
(254), which `contrib/setup.sh` fetches as Debian packages and extracts with dpkg-deb
into `.cache/systemd-254` (never installed over the system's); it runs on its own
libsystemd-shared through LD_LIBRARY_PATH. They differ where the tests look: 253
dropped the dmesg.txt that 252 rebuilds from every back end's dmesg records (it is now
written for the efi and erst back ends only).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from helpers.machine import require, run

TOP = Path(__file__).parents[2]
BACKPORTS = TOP / ".cache" / "systemd-254"
"""Where contrib/setup.sh extracts bookworm-backports' systemd and libsystemd-shared."""


@dataclass(frozen=True)
class Pstore:
    """One systemd-pstore build, and what it needs to run."""

    version: int
    path: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def writes_dmesg_txt(self) -> bool:
        """Whether it rebuilds dmesg.txt from a pstore/blk partition's dmesg records."""
        return self.version <= 252

    def check(self) -> None:
        require(os.access(self.path, os.X_OK), f"{self.path} (systemd {self.version}: "
                "Debian's package, or contrib/setup.sh for bookworm-backports')")
        if self.env:
            libs = Path(self.env["LD_LIBRARY_PATH"])
            require((libs / f"libsystemd-shared-{self.version}.so").exists(),
                    f"libsystemd-shared-{self.version}.so in {libs} (contrib/setup.sh)")
        else:
            version = run(["systemctl", "--version"]).stdout.split("\n", 1)[0]
            require(version.startswith(f"systemd {self.version} "),
                    f"the system's systemd {self.version} (it has {version!r})")

    def run(self, source: Path | str, archive: Path | str, *,
            timeout: float = 60) -> subprocess.CompletedProcess:
        self.check()
        return run([str(self.path), str(source), str(archive)], timeout=timeout,
                   env={**os.environ, **self.env})


def _backports_libs() -> str:
    found = sorted(BACKPORTS.glob("usr/lib/*/systemd/libsystemd-shared-254.so"))
    return str(found[0].parent if found else BACKPORTS / "usr/lib/systemd")


PSTORES = [Pstore(252, Path("/lib/systemd/systemd-pstore")),
           Pstore(254, BACKPORTS / "lib/systemd/systemd-pstore",
                  {"LD_LIBRARY_PATH": _backports_libs()})]


# -- a unit's commands, as systemd runs them ------------------------------------------------------
def unit_lines(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) of a unit file, continuation lines joined as systemd's
    config parser joins them (the backslash becomes a space; comments in between are
    skipped)."""
    entries = []
    section = ""
    pending = ""
    for raw in text.splitlines():
        if raw.lstrip().startswith(("#", ";")):
            continue
        if raw.endswith("\\"):
            pending += raw[:-1] + " "
            continue
        line = (pending + raw).strip()
        pending = ""
        if line.startswith("["):
            section = line.strip("[]")
        elif "=" in line:
            key, _, value = line.partition("=")
            entries.append((section, key.strip(), value.strip()))
    return entries


def expand_specifiers(value: str, specifiers: Mapping[str, str]) -> str:
    """%x as systemd.unit(5) defines it for the ones given; %% is a %."""
    def one(match: re.Match[str]) -> str:
        letter = match.group(1)
        if letter == "%":
            return "%"
        assert letter in specifiers, f"specifier %{letter} not stood in for"
        return specifiers[letter]
    return re.sub(r"%(.)", one, value)


def expand_environment(words: list[str], env: Mapping[str, str]) -> list[str]:
    """systemd's replace_env_argv: a word that is `$NAME` becomes the value's words;
    within a word `${NAME}` is the value and `$$` a `$`; any other `$` stays."""
    out: list[str] = []
    for word in words:
        whole = re.fullmatch(r"\$([A-Za-z_][A-Za-z0-9_]*)", word)
        if whole:
            out += env.get(whole.group(1), "").split()
            continue
        out.append(re.sub(r"\$(\$|\{([A-Za-z_][A-Za-z0-9_]*)\})",
                          lambda m: "$" if m.group(1) == "$" else env.get(m.group(2), ""),
                          word))
    return out


def environment_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines, as EnvironmentFile= reads them (comments and blanks skipped)."""
    if not path.exists():
        return {}
    pairs = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith(("#", ";")):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value.strip().strip('"')
    return pairs


def service_commands(text: str, specifiers: Mapping[str, str],
                     environment_files: Mapping[str, Path]) -> tuple[list[list[str]],
                                                                      dict[str, str]]:
    """The ExecStart= command lines of a service and the environment they get from
    Environment= and EnvironmentFile= (each file looked up, after its specifiers are
    expanded, in `environment_files`, which stands in for /etc), later settings winning."""
    env: dict[str, str] = {}
    commands = []
    for section, key, value in unit_lines(text):
        if section != "Service":
            continue
        value = expand_specifiers(value, specifiers)
        if key == "Environment":
            for word in shlex.split(value):
                name, _, setting = word.partition("=")
                env[name] = setting
        elif key == "EnvironmentFile":
            name = value.removeprefix("-")
            assert name in environment_files, f"EnvironmentFile={name} not stood in for"
            env |= environment_file(environment_files[name])
        elif key == "ExecStart":
            commands.append(shlex.split(value))
    return [expand_environment(words, env) for words in commands], env


def service_settings(text: str) -> dict[str, str]:
    """The [Service] settings of a unit, the last of each key."""
    return {key: value for section, key, value in unit_lines(text) if section == "Service"}


_SANDBOX = """
set -eu
IFS=:
for dir in $WRITABLE; do mount --bind "$dir" "$dir"; done
unset IFS
mount -o remount,bind,ro /
mount -o remount,bind,ro /sys
umask "$UMASK"
exec setpriv $NNP --inh-caps=-all --bounding-set=-all,$CAPS "$@"
"""


def sandboxed(command: list[str], settings: Mapping[str, str],
              writable: list[Path]) -> tuple[list[str], dict[str, str]]:
    """`command` in what can stand in for the unit's sandbox without systemd: a mount
    namespace of its own (unshare -m), the root and /sys read-only but for `writable`
    (ProtectSystem=strict with RuntimeDirectory= and StateDirectory=,
    ProtectKernelTunables=), UMask=, no capability outside CapabilityBoundingSet= and
    NoNewPrivileges= (setpriv). The rest (device, system call and address family
    filters, MemoryMax=) needs systemd: systemd-analyze checks those settings."""
    assert settings["ProtectSystem"] == "strict"
    caps = ",".join("+" + cap.removeprefix("CAP_").lower()
                    for cap in settings["CapabilityBoundingSet"].split())
    env = {"WRITABLE": ":".join(map(str, writable)), "UMASK": settings["UMask"],
           "NNP": "--nnp" if settings["NoNewPrivileges"] == "yes" else "", "CAPS": caps}
    return ["unshare", "-m", "--propagation", "private", "sh", "-c", _SANDBOX, "sandbox",
            *command], env


def boot_id() -> str:
    """%b: this boot's ID, as systemd prints it (no dashes)."""
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip().replace("-", "")


# -- a journald of the test's own ----------------------------------------------------------------
JOURNALD = "/lib/systemd/systemd-journald"

_WITH_JOURNALD = """
set -eu
mount -t tmpfs -o mode=0755 tmpfs /run/systemd
mount -t tmpfs -o mode=0755 tmpfs /run/log
"$JOURNALD" </dev/null >"$JOURNALD_LOG" 2>&1 &
journald=$!
tries=0
until [ -S /run/systemd/journal/socket ]; do
    tries=$((tries + 1))
    if [ $tries -gt 400 ]; then echo "journald made no socket" >&2; exit 97; fi
    sleep 0.05
done
status=0
"$@" >&2 || status=$?
journalctl --sync >&2
journalctl -D /run/log/journal -o json --all --no-pager
kill "$journald"
wait "$journald" || :
exit $status
"""


def with_journald(command: list[str], log: Path, env: Mapping[str, str] | None = None,
                  timeout: float = 120) -> tuple[subprocess.CompletedProcess,
                                                 list[dict[str, object]]]:
    """Run `command` beside a real systemd-journald started here, without PID 1 being
    systemd: in a mount namespace of its own (unshare -m) with tmpfs on /run/systemd
    (journald binds its sockets itself when none are passed to it) and /run/log (its
    volatile journal); the entries are read back with `journalctl -o json`. The
    command's output goes to stderr."""
    require(os.access(JOURNALD, os.X_OK), JOURNALD)
    result = run(["unshare", "-m", "--propagation", "private", "sh", "-c", _WITH_JOURNALD,
                  "with-journald", *command], timeout=timeout,
                 env={**os.environ, **(env or {}), "JOURNALD": JOURNALD,
                      "JOURNALD_LOG": str(log)})
    entries = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    return result, entries


def field_bytes(value: object) -> bytes:
    """A field of `journalctl -o json`: a string, or a list of byte values for one that
    is not valid UTF-8 text."""
    if isinstance(value, str):
        return value.encode()
    assert isinstance(value, list), value
    return bytes(value)  # type: ignore[arg-type]
