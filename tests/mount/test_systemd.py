"""systemd: the boot-time unit, verified by systemd-analyze and its commands run in its
order against a loop device (PID 1 on test machines need not be systemd), and the real
systemd-pstore archiving a mount under its configurations."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import socket
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from helpers.cases import CASES, ZONE_SIG, Case, case_by_id, zone_layout
from helpers.machine import PSTOREFS, mounted, require, require_fuse, run, unmount
from helpers.mounts import copy_image, zone_changes_allowed

UNIT = Path(__file__).parents[2] / "contrib" / "systemd" / "pstorefs-archive@.service"
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


# -- pstore.conf: what systemd-pstore is told to do with the mount -------------------------------
PSTORE_CONF_D = Path("/etc/systemd/pstore.conf.d")


@contextlib.contextmanager
def pstore_conf(text: str) -> Iterator[None]:
    """A drop-in for systemd-pstore's configuration, removed afterwards (the directory
    too, if the test made it)."""
    made = not PSTORE_CONF_D.exists()
    PSTORE_CONF_D.mkdir(parents=True, exist_ok=True)
    dropin = PSTORE_CONF_D / "zz-pstorefs-test.conf"
    dropin.write_text("[PStore]\n" + text)
    try:
        yield
    finally:
        dropin.unlink()
        if made:
            PSTORE_CONF_D.rmdir()


def _archive_with(conf: str, tmp_path: Path, journal: bool = False
                  ) -> tuple[dict[str, bytes], bytes, bytes, list[dict[str, bytes]]]:
    """Mount a kernel image, run the real systemd-pstore on it under `conf`; the files
    it archived, the image before and after, and what it sent to the journal."""
    require_fuse()
    require(os.access(SYSTEMD_PSTORE, os.X_OK), SYSTEMD_PSTORE)
    case = case_by_id("kmsg-deflate-3oops")
    image = tmp_path / "image.bin"
    shutil.copyfile(case.image, image)
    before = image.read_bytes()
    archive = tmp_path / "archive"
    archive.mkdir()
    mnt = tmp_path / "mnt"
    entries: list[dict[str, bytes]] = []
    with contextlib.ExitStack() as stack:
        stack.enter_context(pstore_conf(conf))
        sink = stack.enter_context(fake_journal()) if journal else None
        stack.enter_context(mounted(image, mnt, "name=pstore_blk"))
        result = run([SYSTEMD_PSTORE, str(mnt), str(archive)], timeout=60)
        assert result.returncode == 0, result.stderr
        if sink is not None:
            entries = sink()
    archived = {p.name: p.read_bytes() for p in archive.rglob("*") if p.is_file()}
    return archived, before, image.read_bytes(), entries


def test_storage_none_touches_nothing(tmp_path: Path) -> None:
    archived, before, after, _ = _archive_with("Storage=none\n", tmp_path)
    assert archived == {} and after == before


def test_unlink_no_archives_and_keeps_the_records(tmp_path: Path) -> None:
    archived, before, after, _ = _archive_with("Unlink=no\n", tmp_path)
    files = case_by_id("kmsg-deflate-3oops").files
    assert all(archived.get(name) == content for name, content in files.items())
    assert after == before


def test_storage_journal_sends_every_record_and_erases(tmp_path: Path) -> None:
    """Storage=journal: each record goes to the journal (FILE= its bytes), no record to
    the archive directory (systemd <= 252 still writes its rebuilt dmesg.txt there), and
    the records are still erased (Unlink=yes)."""
    archived, before, after, entries = _archive_with("Storage=journal\n", tmp_path,
                                                     journal=True)
    files = case_by_id("kmsg-deflate-3oops").files
    assert set(archived) <= {"dmesg.txt"}
    sent = {e[b"MESSAGE"].decode(): e.get(b"FILE") for e in entries if b"MESSAGE" in e}
    for name, content in files.items():
        assert sent.get(f"PStore {name}.") == content, f"{name} not in the journal"
    assert after != before
    for zone in range(3):
        assert struct.unpack_from("<i", after, zone * 65536 + 4)[0] == 0


JOURNAL_SOCKET = Path("/run/systemd/journal/socket")


@contextlib.contextmanager
def fake_journal() -> Iterator[Callable[[], list[dict[str, bytes]]]]:
    """journald's native socket, where PID 1 is not systemd: a datagram socket that
    collects what sd_journal_sendv sends (large entries arrive as a memfd)."""
    require(not JOURNAL_SOCKET.exists(), f"{JOURNAL_SOCKET} free (no journald running)")
    made = [p for p in (JOURNAL_SOCKET.parent.parent, JOURNAL_SOCKET.parent) if not p.exists()]
    JOURNAL_SOCKET.parent.mkdir(parents=True, exist_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(JOURNAL_SOCKET))
    sock.setblocking(False)

    def collect() -> list[dict[str, bytes]]:
        entries = []
        while True:
            try:
                data, fds, _, _ = socket.recv_fds(sock, 1 << 20, 4)
            except BlockingIOError:
                return entries
            for fd in fds:
                with os.fdopen(fd, "rb") as fh:
                    data = fh.read()
            entries.append(_journal_fields(data))

    try:
        yield collect
    finally:
        sock.close()
        JOURNAL_SOCKET.unlink()
        for path in reversed(made):
            path.rmdir()


def _journal_fields(data: bytes) -> dict[str, bytes]:
    """The native protocol: `KEY=value\\n`, or `KEY\\n` + 64-bit LE length + value + `\\n`."""
    fields: dict[str, bytes] = {}
    pos = 0
    while pos < len(data):
        eol = data.index(b"\n", pos)
        line = data[pos:eol]
        if b"=" in line:
            key, _, value = line.partition(b"=")
            pos = eol + 1
        else:
            key = line
            (length,) = struct.unpack_from("<Q", data, eol + 1)
            value = data[eol + 9:eol + 9 + length]
            pos = eol + 9 + length + 1
        fields[key] = value
    return fields


# -- logging once daemonized ----------------------------------------------------------------------
DEV_LOG = Path("/dev/log")


def test_daemon_logs_to_syslog(tmp_path: Path) -> None:
    """Daemonized, pstorefs logs one line per event to /dev/log (syslog, or journald's
    syslog socket), as `pstorefs[PID]: SOURCE: ...`, naming the device and the record;
    the layout found at mount time among them, which the mount did not print."""
    require_fuse()
    require(not DEV_LOG.exists(), f"{DEV_LOG} free (no syslog daemon running)")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(DEV_LOG))
    sock.settimeout(10)
    try:
        case = case_by_id("kmsg-oops-then-panic")
        image = tmp_path / "image.bin"
        shutil.copyfile(case.image, image)
        with mounted(image, tmp_path / "mnt", "name=pstore_blk") as mnt:
            os.unlink(mnt / "dmesg-pstore_blk-0")
            lines = []
            while not any(b"erased dmesg-pstore_blk-0" in line for line in lines):
                lines.append(sock.recv(65536))
    finally:
        sock.close()
        DEV_LOG.unlink()
    text = [line.decode() for line in lines]
    daemon = r"<\d+>pstorefs\[\d+\]: "
    assert all(re.match(daemon, line) for line in text), text
    assert any(re.match(daemon + re.escape(f"{image}: erased dmesg-pstore_blk-0 (zone at 0x0)"),
                        line) for line in text), text
    # the mount's own lines, held while it was not known whether it would succeed
    assert any(re.match(daemon + re.escape(f"{image}: layout detected: kmsg_size="), line)
               for line in text), text
    # <30> is LOG_DAEMON | LOG_INFO
    assert any(line.startswith("<30>") for line in text), text


# -- systemd-pstore --------------------------------------------------------------------------------
def _systemd_version() -> int:
    r = run(["systemctl", "--version"])
    m = re.match(r"systemd (\d+)", r.stdout)
    return int(m.group(1)) if m else 0


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_systemd_pstore_archives_everything(case: Case, tmp_path: Path, mnt: Path) -> None:
    require(os.access(SYSTEMD_PSTORE, os.X_OK), f"{SYSTEMD_PSTORE} (Debian package systemd)")
    img = copy_image(tmp_path, case)
    archive = tmp_path / "archive"
    archive.mkdir()
    with mounted(img, mnt, case.options) as m:
        r = run([SYSTEMD_PSTORE, str(m), str(archive)], timeout=60)
        assert r.returncode == 0, f"systemd-pstore: rc {r.returncode}: {r.stderr}"
        assert os.listdir(m) == [], "systemd-pstore could not remove every record"
    archived = {p.name: p.read_bytes() for p in archive.rglob("*") if p.is_file()}
    for name, content in case.files.items():
        assert archived.get(name) == content, f"{name} missing or different in the archive"
    dmesg = sorted((n for n in case.files if n.startswith("dmesg-")), reverse=True)
    if dmesg and _systemd_version() <= 252:
        # systemd <= 252 rebuilds dmesg.txt as "<name>:\n<content>" blocks, newest first
        want = b"".join(n.encode() + b":\n" + case.files[n] for n in dmesg)
        assert archived.get("dmesg.txt") == want, "dmesg.txt not rebuilt as systemd does"
    assert set(archived) <= set(case.files) | {"dmesg.txt"}
    now = img.read_bytes()
    for z in zone_layout(case):
        sig, datalen = struct.unpack_from("<Ii", now, z.offset)
        if sig == ZONE_SIG[z.type]:
            assert datalen == 0, f"{z.type} zone at {z.offset:#x} still holds a record"
    assert not zone_changes_allowed(case, case.image.read_bytes(), now)
    with mounted(img, mnt, case.options) as m:
        assert os.listdir(m) == [], "records came back after archiving"
