"""pstorectl, the offline tool: same store, same answers as the kernel."""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest

from helpers.blockconsole import wrapped_log
from helpers.cases import CASES, Case, case_by_id
from helpers.machine import VENV_BIN, run
from pstorefs.cli.ctl import JSON_FIELDS

PSTORECTL = str(VENV_BIN / "pstorectl")


def ctl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PSTORECTL, *args], capture_output=True, timeout=60)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_list_json_and_cat_match_the_kernel(case: Case) -> None:
    result = ctl("list", str(case.image), "--json", "-o", case.options)
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [tuple(row) for row in rows] == [JSON_FIELDS] * len(rows)
    by_name = {row["name"]: row for row in rows}
    assert sorted(by_name) == sorted(case.files)
    for f in case.meta["files"]:
        row = by_name[f["name"]]
        assert row["size"] == f["content_bytes"]
        assert row["mtime_ns"] == f["mtime_ns"]
        cat = ctl("cat", str(case.image), f["name"], "-o", case.options)
        assert cat.returncode == 0 and cat.stdout == case.files[f["name"]]


def test_extract_writes_every_record_with_its_mtime(tmp_path: Path) -> None:
    case = case_by_id("x86_64-all-fronts")
    out = tmp_path / "out"
    result = ctl("extract", str(case.image), str(out), "-o", case.options)
    assert result.returncode == 0, result.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == case.files
    for f in case.meta["files"]:
        if f["mtime_ns"] is not None:
            assert os.stat(out / f["name"]).st_mtime_ns == f["mtime_ns"]


def test_erase_writes_what_the_kernel_wrote(tmp_path: Path) -> None:
    case = case_by_id("kmsg-plain-3oops")
    image = tmp_path / "image.bin"
    shutil.copyfile(case.file(case.meta["erase"]["image_before"]), image)
    names = case.meta["erase"]["remove"]
    result = ctl("erase", str(image), *names, names[0], "-o", case.options)
    assert result.returncode == 0, result.stderr
    assert image.read_bytes() == (case.file(case.meta["erase"]["image_after"])).read_bytes()


def test_reading_never_writes(tmp_path: Path) -> None:
    case = case_by_id("kmsg-deflate-3oops")
    image = tmp_path / "image.bin"
    shutil.copyfile(case.image, image)
    image.chmod(0o444)
    for args in (("list",), ("cat", "dmesg-blkoops-0"), ("extract", str(tmp_path / "x"))):
        assert ctl(args[0], str(image), *args[1:]).returncode == 0
    assert image.read_bytes() == case.image.read_bytes()


@pytest.mark.parametrize(("args", "code"), [
    (("list", "/nonexistent"), 1),
    (("cat", "IMAGE", "dmesg-blkoops-9"), 1),
    (("list", "IMAGE", "-o", "kmsg_size=abc"), 2),
    (("list", "IMAGE", "-o", "bogus"), 2),
    (("erase", "IMAGE"), 2),
    (("frobnicate", "IMAGE"), 2),
    (("-o", "bogus", "list", "IMAGE"), 2),
    (("erase", "IMAGE", "--all", "-o", "ro"), 2),
    (("list", "IMAGE", "-o", "record_size=4096"), 2),
])
def test_errors_are_one_line_with_the_documented_exit_code(args: tuple[str, ...], code: int,
                                                           tmp_path: Path) -> None:
    image = tmp_path / "image.bin"
    shutil.copyfile(case_by_id("kmsg-deflate-3oops").image, image)
    before = image.read_bytes()
    result = ctl(*(str(image) if a == "IMAGE" else a for a in args))
    assert result.returncode == code
    err = result.stderr.decode()
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert image.read_bytes() == before


def test_erase_of_the_enc_z_name_of_a_record_that_decodes_is_refused(tmp_path: Path) -> None:
    """`find` answers a `.enc.z` name for a compressed record not decoded yet: the tool
    settles the name before it erases anything."""
    case = case_by_id("kmsg-deflate-3oops")
    image = tmp_path / "image.bin"
    shutil.copyfile(case.image, image)
    for verb in ("erase", "cat"):
        result = ctl(verb, str(image), "dmesg-blkoops-1.enc.z")
        assert result.returncode != 0 and b"no such record" in result.stderr, verb
        assert b"Traceback" not in result.stderr
    assert image.read_bytes() == case.image.read_bytes()


# -- the conventions of the command line --------------------------------------------------
def test_o_may_stand_anywhere() -> None:
    """Before the command, after it, after SOURCE; groups are joined in order, the last
    of a key winning, as on the mount."""
    case = case_by_id("kmsg-plain-3oops")
    image = str(case.image)
    for args in (("-o", "name=pstore_blk", "list", image), ("list", "-o", "name=pstore_blk", image),
                 ("list", image, "-o", "name=pstore_blk"),
                 ("-o", "name=other", "list", image, "-o", "name=pstore_blk")):
        result = ctl(*args, "--json")
        assert result.returncode == 0, (args, result.stderr)
        assert sorted(row["name"] for row in json.loads(result.stdout)) == sorted(case.files)


def test_silent_but_for_the_output_unless_verbose() -> None:
    """The layout found goes to stderr only with `-o verbose`."""
    image = str(case_by_id("kmsg-plain-3oops").image)
    assert ctl("list", image).stderr == b""
    assert ctl("list", image, "-o", "verbose").stderr == (
        f"pstorectl: {image}: layout detected: kmsg_size=64,pmsg_size=0,console_size=0,"
        "ftrace_size=0,nr_cpus=1\n").encode()


def test_errors_keep_what_was_given() -> None:
    """An option the back end does not read is named with its value."""
    result = ctl("list", str(case_by_id("kmsg-plain-3oops").image), "-o", "record_size=4096")
    assert result.stderr == b"pstorectl: record_size=4096: not an option of the zone back end\n"


def test_an_empty_source_is_refused_in_one_line(tmp_path: Path) -> None:
    """Refused as too small before any layout is looked for, so no layout (kmsg_size=0)
    is "detected" and no default said to be taken."""
    empty = tmp_path / "zero.img"
    empty.write_bytes(b"")
    for command in ("list", "probe"):
        result = ctl(command, str(empty))
        assert result.returncode == 1
        assert result.stderr.decode() == (f"pstorectl: {empty} holds 0 bytes; pstore/zone needs "
                                          "at least 4096\n")


def test_an_os_error_is_one_line_without_errno(tmp_path: Path) -> None:
    """`extract` into a path that is a file: the system's words, not Python's."""
    taken = tmp_path / "zero.img"
    taken.write_bytes(b"")
    result = ctl("extract", str(case_by_id("kmsg-plain-3oops").image), str(taken))
    assert result.returncode == 1
    assert result.stderr.decode() == f"pstorectl: {taken}: File exists\n"


def test_a_wrong_record_name_is_told_the_name_in_use(tmp_path: Path) -> None:
    """pstore/zone's files are dmesg-blkoops-N unless `name=` says otherwise, the
    kernel's being dmesg-pstore_blk-N: the error says which, and how to get the
    kernel's; a name of the right form but no record says only that."""
    case = case_by_id("kmsg-plain-3oops")
    image = tmp_path / "image.bin"
    shutil.copyfile(case.image, image)
    for verb in ("cat", "erase"):
        result = ctl(verb, str(image), "dmesg-pstore_blk-0")
        assert result.returncode == 1
        assert result.stderr.decode() == (
            "pstorectl: dmesg-pstore_blk-0: no such record: the names here carry "
            "name=blkoops (dmesg-blkoops-N); -o name=pstore_blk gives the kernel's names\n")
    result = ctl("cat", str(image), "dmesg-pstore_blk-0", "-o", "name=pstore_blk")
    assert result.returncode == 0 and result.stdout == case.files["dmesg-pstore_blk-0"]
    result = ctl("cat", str(image), "dmesg-blkoops-9")
    assert result.stderr == (b"pstorectl: dmesg-blkoops-9: no such record (pstorectl list "
                             b"shows the names)\n")
    assert image.read_bytes() == case.image.read_bytes()


def without_a_reader(*args: str) -> subprocess.CompletedProcess:
    """pstorectl writing to a pipe whose reader is already gone (`| head` done)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run([PSTORECTL, *args], stdout=write_end, stderr=subprocess.PIPE,
                              timeout=60)
    finally:
        os.close(write_end)


def test_a_closed_pipe_ends_reading_quietly() -> None:
    """As `cat | head` ends cat: by SIGPIPE, without a word on stderr."""
    case = case_by_id("kmsg-plain-3oops")
    for args in (("list", str(case.image)), ("list", "--json", str(case.image)),
                 ("probe", str(case.image)), ("cat", str(case.image), "dmesg-blkoops-0")):
        result = without_a_reader(*args)
        assert (result.returncode, result.stderr) == (-signal.SIGPIPE, b""), args


def test_a_closed_pipe_stops_no_erase(tmp_path: Path) -> None:
    case = case_by_id("kmsg-plain-3oops")
    image = tmp_path / "image.bin"
    shutil.copyfile(case.image, image)
    result = without_a_reader("erase", str(image), "--all")
    assert (result.returncode, result.stderr) == (0, b"")
    assert json.loads(ctl("list", "--json", str(image)).stdout) == []


@pytest.mark.parametrize(("command", "arguments"), [
    ("probe", ("--json=lines",)), ("list", ("--json=lines",)), ("cat", ("NAME",)),
    ("extract", ("DIR",)), ("erase", ("NAME", "--all"))])
def test_subcommand_help_describes_it(command: str, arguments: tuple[str, ...]) -> None:
    """What the command does, then each argument with what it takes."""
    result = run([PSTORECTL, command, "--help"])
    assert result.returncode == 0 and not result.stderr
    usage, description, *rest = result.stdout.split("\n\n")
    assert usage.startswith(f"usage: pstorectl {command} ")
    assert len(description.split()) > 8, description
    for argument in ("SOURCE", r"-o OPT\[,OPT\.\.\.\]", *arguments):
        assert re.search(rf"^  {argument} +\S", "\n".join(rest), re.M), argument


def test_list_json_lines_is_one_object_a_line() -> None:
    """`--json=lines`: each record a compact object on its own line (as journalctl -o
    json), the same objects as `--json`'s array."""
    case = case_by_id("x86_64-all-fronts")
    pretty = ctl("list", "--json", str(case.image), "-o", case.options)
    lines = ctl("list", "--json=lines", str(case.image), "-o", case.options)
    assert pretty.returncode == lines.returncode == 0, lines.stderr
    rows = [json.loads(line) for line in lines.stdout.decode().splitlines()]
    assert rows == json.loads(pretty.stdout) and len(rows) == len(case.files)
    assert all(b": " not in line for line in lines.stdout.splitlines())
    assert ctl("list", "--json=pretty", str(case.image), "-o", case.options).stdout == pretty.stdout


@pytest.mark.root
def test_erase_of_a_source_it_may_not_write_says_so(for_others: dict[str, list[str]]) -> None:
    """As a user who may read the image but not write it: one line saying why, nothing
    erased (not the mount's "mounting read-only")."""
    case = case_by_id("kmsg-plain-3oops")
    top = Path(tempfile.mkdtemp(prefix="pstorectl-", dir="/tmp"))
    try:
        top.chmod(0o755)
        image = top / "image.bin"
        shutil.copyfile(case.image, image)
        image.chmod(0o644)
        result = subprocess.run([*for_others["pstorectl"], "erase", str(image), "--all"],
                                capture_output=True, text=True, timeout=60, user="nobody",
                                group="nogroup", extra_groups=[], cwd="/")
        assert result.returncode == 1 and result.stdout == ""
        assert result.stderr == (f"pstorectl: {image}: cannot be opened for writing "
                                 "(Permission denied): nothing erased\n")
        assert image.read_bytes() == case.image.read_bytes()
    finally:
        shutil.rmtree(top)


def pstorectl(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("pstorectl", path=str(VENV_BIN))
    assert exe, "pstorectl is not installed in the venv"
    return run([exe, *args])


# -- what the listing says beyond the kernel's files ----------------------------------
def test_ctl_list_json_attributes() -> None:
    case = case_by_id("kmsg-deflate-3oops")
    proc = pstorectl("list", str(case.image), "--json", "-o", "name=pstore_blk")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert [r["attributes"]["compressor"] for r in rows] == ["deflate"] * 3
    assert [r["reason"] for r in rows] == ["Oops"] * 3


# -- blockconsole ----------------------------------------------------------------------
@pytest.fixture
def written(tmp_path: Path) -> tuple[Path, bytes]:
    return wrapped_log(tmp_path)


def test_pstorectl(written: tuple[Path, bytes]) -> None:
    img, text = written
    ctl = str(VENV_BIN / "pstorectl")
    probe = subprocess.run([ctl, "probe", str(img)], capture_output=True, text=True)
    assert probe.returncode == 0, probe.stderr
    assert "blockconsole-1.1" in probe.stdout
    cat = subprocess.run([ctl, "cat", str(img), "console-blockconsole-0"], capture_output=True)
    assert cat.returncode == 0 and cat.stdout == text
    erase = subprocess.run([ctl, "erase", str(img), "--all"], capture_output=True, text=True)
    assert erase.returncode == 1 and "defines no erase" in erase.stderr


@pytest.mark.root
def test_extract_never_writes_through_or_over_a_name_already_there(tmp_path: Path) -> None:
    """As root into a directory another user owns: a symlink that user planted under a
    record's name is neither followed nor replaced, a root-only file it points at is
    untouched, and nothing is extracted; into an empty directory every file is new,
    0600 whatever the umask, with the record's mtime."""
    case = case_by_id("kmsg-plain-3oops")
    target = tmp_path / "root-only"
    target.write_bytes(b"secret\n")
    target.chmod(0o600)
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chown(shared, 65534, 65534)
    name = sorted(case.files)[0]
    (shared / name).symlink_to(target)
    result = ctl("extract", str(case.image), str(shared), "-o", case.options)
    assert result.returncode == 1
    assert result.stderr.decode().count("\n") == 1 and b"already there" in result.stderr
    assert target.read_bytes() == b"secret\n" and (target.stat().st_mode & 0o777) == 0o600
    assert os.readlink(shared / name) == str(target)
    assert sorted(os.listdir(shared)) == [name], "something was extracted"
    empty = tmp_path / "empty"
    result = subprocess.run(["sh", "-c", 'umask 0; exec "$@"', "sh", PSTORECTL, "extract",
                             str(case.image), str(empty), "-o", case.options],
                            capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(empty)) == sorted(case.files), "temporary files left behind"
    for f in case.meta["files"]:
        st = (empty / f["name"]).lstat()
        assert (st.st_mode & 0o777) == 0o600 and st.st_nlink == 1
        assert st.st_mtime_ns == f["mtime_ns"]
        assert (empty / f["name"]).read_bytes() == case.files[f["name"]]


@pytest.mark.parametrize("kind", ["fifo", "char device", "gzip bomb", "too large",
                                  "truncated gzip", "long line"])
def test_system_map_that_is_not_one_is_refused_quickly(kind: str, tmp_path: Path) -> None:
    """`system_map=` takes regular files of at most 64 MiB of text, gzipped or not: a
    FIFO (which would block), a device, a gzip bomb, a file too large, truncated gzip
    data or a single endless line end in one line and exit 1, never a hang."""
    case = case_by_id("x86_64-all-fronts")
    path = tmp_path / "System.map"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "char device":
        path = Path("/dev/zero")
    elif kind == "gzip bomb":
        with gzip.open(path, "wb", compresslevel=1) as fh:
            for _ in range(80):
                fh.write(bytes(1 << 20))
    elif kind == "too large":
        with open(path, "wb") as fh:
            fh.truncate(65 << 20)
    elif kind == "truncated gzip":
        path.write_bytes(gzip.compress(b"ffffffff81000000 T _stext\n" * 1000)[:100])
    else:
        with gzip.open(path, "wb") as fh:
            fh.write(b"f" * (1 << 20))
    options = f"{case.options},system_map={path}"
    result = ctl("list", str(case.image), "-o", options)  # a hang fails on ctl's timeout
    assert result.returncode == 1, result.stderr
    message = result.stderr.decode()
    assert message.count("\n") == 1 and f"system_map={path}" in message, message
