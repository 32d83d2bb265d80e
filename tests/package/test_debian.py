"""The Debian package (debian/), checked without building it: that it depends on this
Debian release's own packages only, that those satisfy pyproject.toml's pins, and that
it installs what pyproject declares (console scripts, man pages, completion, the
systemd unit). Building and installing it is in README.md ("Install").

The release is the machine's own: Debian 12 (bookworm) here and in CI, which the
package is built for. apt's package lists are read, so they must be there: after
`apt-get update`, as contrib/setup.sh runs on a new machine.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import tomllib
from functools import cache
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from pstorefs import __version__
from pstorefs.cli.ctl import ctl
from pstorefs.cli.mount import mount
from pstorefs.cli.options import OPTIONS_HELP, parse_options
from pstorefs.errors import UsageError
from pstorefs.format.abi import ABI_NAMES
from pstorefs.format.consts import ZoneFormat
from pstorefs.store import BACKENDS

TOP = Path(__file__).parents[2]
DEBIAN = TOP / "debian"
PYPROJECT = tomllib.loads((TOP / "pyproject.toml").read_text())["project"]
COMPLETION = TOP / "contrib" / "bash-completion" / "pstorefs"
UNIT = TOP / "contrib" / "systemd" / "pstorefs-archive@.service"

DEBIAN_NAMES = {"pyfuse3": "python3-pyfuse3", "trio": "python3-trio",
                "construct": "python3-construct", "lz4": "python3-lz4",
                "python-lzo": "python3-lzo", "zstandard": "python3-zstandard",
                "numpy": "python3-numpy"}
"""pyproject's runtime dependencies and the Debian packages that provide them."""


def control_fields() -> list[dict[str, str]]:
    """debian/control's paragraphs (comments dropped, continuation lines joined)."""
    paragraphs = []
    for block in re.split(r"\n\s*\n", (DEBIAN / "control").read_text()):
        fields: dict[str, str] = {}
        key = None
        for line in block.splitlines():
            if line.startswith("#"):
                continue
            if line[:1].isspace() and key:
                fields[key] += " " + line.strip()
            elif line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if fields:
            paragraphs.append(fields)
    return paragraphs


def relation_names(value: str) -> list[str]:
    """Package names of a relation field, alternatives included, substvars left out."""
    return [re.split(r"[\s(\[<]", alternative.strip())[0]
            for relation in value.split(",") if relation.strip()
            and not relation.strip().startswith("${")
            for alternative in relation.split("|")]


def control_relations() -> dict[str, list[str]]:
    source, binary = control_fields()
    return {"Build-Depends": relation_names(source["Build-Depends"]),
            "Depends": relation_names(binary["Depends"]),
            "Recommends": relation_names(binary.get("Recommends", ""))}


@cache
def codename() -> str:
    release = dict(line.split("=", 1) for line in
                   Path("/etc/os-release").read_text().splitlines() if "=" in line)
    assert release.get("ID") == "debian", "these checks read a Debian machine's apt"
    return release["VERSION_CODENAME"].strip('"')


def apt_cache(*args: str) -> str:
    result = subprocess.run(["apt-cache", *args], capture_output=True, text=True,
                            timeout=30, env={**os.environ, "LC_ALL": "C"})
    assert result.returncode == 0, f"apt-cache {shlex.join(args)}: {result.stderr}"
    return result.stdout


def policy(names: list[str]) -> dict[str, tuple[str, str]]:
    """Each real package's apt candidate: (version, its version table's origin lines)."""
    found = {}
    for block in re.split(r"^(?=\S+:$)", apt_cache("policy", *names), flags=re.M):
        match = re.match(r"(\S+):\n\s+Installed: .*\n\s+Candidate: (\S+)", block)
        if match and match.group(2) != "(none)":
            name, version = match.groups()
            table = block.split("Version table:", 1)[1]
            entry = re.search(rf"^ (?:\*\*\*| {{3}}) {re.escape(version)} \d+\n((?: {{8}}.*\n?)*)",
                              table, re.M)
            assert entry, f"{name}: no version table entry for {version}"
            found[name] = version, entry.group(1)
    return found


@cache
def apt_packages() -> tuple[dict[str, tuple[str, str]], dict[str, list[str]]]:
    """The candidates of every package these tests name, and the real packages that
    provide each virtual one (debhelper-compat, dh-sequence-*): three apt-cache runs,
    as each reads all of apt's lists."""
    lists = list(Path("/var/lib/apt/lists").glob(f"*_dists_{codename()}_*Packages*"))
    assert lists, f"apt has no package lists of {codename()}: run apt-get update"
    names = sorted({name for field in control_relations().values() for name in field}
                   | set(DEBIAN_NAMES.values()) | {"python3"})
    real = policy(names)
    virtual = [name for name in names if name not in real]
    providers = {}
    if virtual:
        for block in apt_cache("showpkg", *virtual).split("Package: ")[1:]:
            provided = block.split("Reverse Provides:", 1)[1]
            providers[block.split()[0]] = re.findall(r"^(\S+) \S+", provided, re.M)
        real |= policy(sorted({p for found in providers.values() for p in found}))
    return real, providers


def from_this_release(origin_lines: str) -> bool:
    return re.search(rf" {codename()}(-updates|-security)?/main ", origin_lines) is not None


def upstream_version(debian_version: str) -> Version:
    """`1:4.0.2+dfsg-1+b2` -> 4.0.2: no epoch, Debian revision or repack suffix."""
    version = debian_version.split(":", 1)[-1].rsplit("-", 1)[0]
    return Version(re.split(r"[+~]", version)[0])


def test_control_names_only_packages_of_this_release() -> None:
    real, providers = apt_packages()
    missing = []
    for name in sorted({name for field in control_relations().values() for name in field}):
        choices = [name] if name in real else providers.get(name, [])
        if not any(choice in real and from_this_release(real[choice][1])
                   for choice in choices):
            missing.append(name)
    assert not missing, f"not in Debian {codename()}'s main: {missing}"


def test_pyproject_pins_are_met_by_debian() -> None:
    requirements = [Requirement(r) for r in PYPROJECT["dependencies"]]
    assert {r.name for r in requirements} == set(DEBIAN_NAMES)
    depends = control_relations()["Depends"]
    real = apt_packages()[0]
    python = upstream_version(real["python3"][0])
    environment = {"python_version": f"{python.major}.{python.minor}"}  # Debian's, for markers
    for requirement in requirements:
        package = DEBIAN_NAMES[requirement.name]
        assert package in depends, f"{package} not in debian/control's Depends"
        version = upstream_version(real[package][0])
        if requirement.marker is None or requirement.marker.evaluate(environment):
            assert requirement.specifier.contains(version), (
                f"{requirement}: Debian's {package} is {version}")


def test_upstream_version_parsing() -> None:
    assert upstream_version("4.0.2+dfsg-1+b2") == Version("4.0.2")
    assert upstream_version("2.10.68+dfsg1-2") == Version("2.10.68")
    assert upstream_version("0.22.0-0.2") == Version("0.22.0")
    assert upstream_version("1:2.11-6") == Version("2.11")


def test_the_package_is_this_version() -> None:
    first = (DEBIAN / "changelog").read_text().splitlines()[0]
    assert re.match(rf"pstorefs \({re.escape(__version__)}\) ", first), first


def test_console_scripts_go_to_sbin_with_man_pages_and_completion() -> None:
    """mount.fuse3 runs `pstorefs` with PATH=/usr/sbin:/usr/bin:/sbin:/bin."""
    scripts = set(PYPROJECT["scripts"])
    assert scripts == {"pstorefs", "pstorectl"}
    rules = (DEBIAN / "rules").read_text()
    moved = set(re.findall(r"\$\(PKG\)/usr/bin/(\S+)", re.search(
        r"^\tmv (.*) \$\(PKG\)/usr/sbin/$", rules, re.M).group(1)))
    assert moved == scripts
    manpages = (DEBIAN / "pstorefs.manpages").read_text().split()
    assert sorted(manpages) == sorted(f"man/{name}.8" for name in scripts)
    completion = COMPLETION.read_text()
    assert set(re.findall(r"complete -F \S+ (\S+)", completion)) == scripts
    links = (DEBIAN / "pstorefs.links").read_text().split()
    assert (DEBIAN / "pstorefs.bash-completion").read_text().split() == [
        str(COMPLETION.relative_to(TOP))]
    assert links == ["usr/share/bash-completion/completions/pstorefs",
                     "usr/share/bash-completion/completions/pstorectl"]


@pytest.mark.parametrize("name", ["pstorefs", "pstorectl"])
def test_man_pages_render_without_warnings(name: str) -> None:
    page = TOP / "man" / f"{name}.8"
    result = subprocess.run(["man", "-l", "--warnings", str(page)], capture_output=True,
                            text=True, timeout=30,
                            env={**os.environ, "MANWIDTH": "80", "MAN_KEEP_FORMATTING": ""})
    assert result.returncode == 0 and result.stderr == "", result.stderr
    text = result.stdout
    for section in ("NAME", "SYNOPSIS", "DESCRIPTION", "EXIT STATUS", "SEE ALSO"):
        assert re.search(rf"^{section}$", text, re.M), section
    assert re.search(rf"^\.TH {name.upper()} 8 \S+ \"pstorefs {re.escape(__version__)}\"",
                     page.read_text(), re.M)


def test_packaged_unit_runs_what_the_package_installs() -> None:
    """debian/rules installs contrib's unit unchanged: it names no checkout path, and
    runs /bin/sh, pstorefs by name (systemd's PATH for services holds /usr/sbin, where
    the package puts it, after /usr/local/sbin, where contrib/setup.sh links a
    checkout's) and Debian's systemd-pstore."""
    rules = (DEBIAN / "rules").read_text()
    assert re.search(r"^\tinstall -D -m 644 contrib/systemd/\$\(UNIT\) "
                     r"\$\(PKG\)/lib/systemd/system/\$\(UNIT\)$", rules, re.M), rules
    unit = re.sub(r"^#.*\n", "", UNIT.read_text(), flags=re.M)
    assert "/usr/local" not in unit and "/.venv" not in unit
    commands = re.findall(r"^Exec\w+=-?(\S+)", unit, re.M)
    assert commands == ["/bin/sh"]
    assert re.search(r"^\s+pstorefs \"\$\$source\"", unit, re.M)
    assert "/lib/systemd/systemd-pstore" in unit.split()


def completion_words(variable: str) -> set[str]:
    match = re.search(rf"^{variable}='([^']*)'", COMPLETION.read_text(), re.M)
    assert match, variable
    return set(match.group(1).split())


SAMPLE_VALUES = {"format": "zone", "abi": "le64", "backend": "zone", "name": "x",
                 "system_map": "/dev/null", "uid": "0", "gid": "0", "umask": "022",
                 "fsname": "x", "subtype": "x"}


def test_completion_offers_every_mount_option_and_no_other() -> None:
    names = completion_words("_pstorefs_option_names")
    for name in names:
        key = name.rstrip("=")
        item = f"{key}={SAMPLE_VALUES.get(key, '1')}" if name.endswith("=") else name
        try:
            parse_options([item])
        except UsageError as error:
            pytest.fail(f"completion offers {item}, which pstorefs refuses: {error}")
    helped = set()  # the first column of each option line of `--help`
    for line in OPTIONS_HELP.splitlines():
        if re.match(r"  [a-z_]+(?:[=,]| {2,}|$)", line):
            for token in re.split(r" {2,}", line.strip())[0].split(", "):
                key, equals, _ = token.split()[0].partition("=")
                helped.add(key + equals)
    assert helped <= names, helped - names


def test_completion_values_are_the_codes() -> None:
    assert completion_words("_pstorefs_backends") == {"auto", *BACKENDS}
    assert completion_words("_pstorefs_formats") == {"auto", *(f.value for f in ZoneFormat)}
    assert completion_words("_pstorefs_abis") == {"auto", *ABI_NAMES}


def help_text(command: object, argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit):
        command(argv)  # type: ignore[operator]
    return capsys.readouterr().out


def test_completion_knows_the_commands_and_flags(capsys: pytest.CaptureFixture[str]) -> None:
    completion = COMPLETION.read_text()
    usage = help_text(ctl, ["--help"], capsys)
    listed = usage.split("positional arguments:", 1)[1].split("options:", 1)[0]
    commands = re.findall(r"^ {4}([a-z]+) ", listed, re.MULTILINE)
    assert commands, usage
    assert f"'{' '.join(commands)} -o --help --version'" in completion
    flags = set(re.findall(r"(?<![\w-])(--?[a-z][\w-]*)", help_text(mount, ["--help"], capsys)
                           .split("options:", 1)[1].split("\n\n", 1)[0])) - {"-h"}
    offered = set(re.search(r"COMPREPLY=\(\$\(compgen -W '(-o -f[^']*)'", completion)
                  .group(1).split())
    assert flags | {"-o"} == offered
    for command in commands:
        text = help_text(ctl, [command, "--help"], capsys).split("options:", 1)[1]
        for flag in set(re.findall(r"(?<![\w-])(--[a-z][\w-]*)", text)) - {"--help"}:
            assert re.search(rf"{command}\b.*\) flags\+=' {flag}'", completion), (command, flag)


def test_completion_is_bash() -> None:
    result = subprocess.run(["bash", "-n", str(COMPLETION)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_debians_python_is_admitted() -> None:
    """The package's scripts run /usr/bin/python3, Debian's."""
    version = upstream_version(apt_packages()[0]["python3"][0])
    assert SpecifierSet(PYPROJECT["requires-python"]).contains(version), version
