"""systemd: the boot-time unit, checked by systemd-analyze (verify, and its sandbox's
exposure) and run as systemd would run it against a loop device that receives two
crashes in a row (PID 1 on test machines need not be systemd: see `_run_unit`); the real
systemd-pstore, Debian 12's 252 and bookworm-backports' 254, archiving a mount under its
configurations; and a real systemd-journald for Storage=journal."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import socket
import struct
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers.cases import CASES, ZONE_SIG, Case, case_by_id, zone_layout
from helpers.machine import VENV_BIN, mounted, require, require_fuse, run, unmount
from helpers.mounts import copy_image, loop_device, zone_changes_allowed
from helpers.systemd import (
    PSTORES,
    Pstore,
    boot_id,
    field_bytes,
    sandboxed,
    service_commands,
    service_settings,
    unit_lines,
    with_journald,
)

UNIT = Path(__file__).parents[2] / "contrib" / "systemd" / "pstorefs-archive@.service"
MAN = Path(__file__).parents[2] / "man"
SYSTEMD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
"""The PATH systemd 252 gives a system service (where a bare `pstorefs` is looked up)."""
EXPOSURE_CEILING = 2.0
"""`systemd-analyze security`'s overall exposure (0 best, 10 worst) the unit must stay
within; 1.5 when written."""


@pytest.fixture(params=PSTORES, ids=lambda p: f"systemd-{p.version}")
def pstore(request: pytest.FixtureRequest) -> Pstore:
    request.param.check()
    return request.param


def _instance_copy(tmp_path: Path) -> Path:
    shutil.copyfile(UNIT, tmp_path / UNIT.name)
    return tmp_path / "pstorefs-archive@dev-disk-by\\x2dpartuuid-0a1b2c3d\\x2d03.service"


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    """Every directive known, every command there, the man pages it names found
    (the checkout's, as man(1) would find the package's)."""
    require(shutil.which("systemd-analyze") is not None, "systemd-analyze")
    pages = tmp_path / "man" / "man8"
    pages.mkdir(parents=True)
    for page in MAN.glob("*.8"):
        (pages / page.name).symlink_to(page)
    result = run(["systemd-analyze", "verify", str(_instance_copy(tmp_path))],
                 env={**os.environ, "MANPATH": f"{tmp_path / 'man'}:"})
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == ""


def test_unit_sandbox_exposure(tmp_path: Path) -> None:
    require(shutil.which("systemd-analyze") is not None, "systemd-analyze")
    result = run(["systemd-analyze", "security", "--offline=true",
                  f"--threshold={round(EXPOSURE_CEILING * 10)}", str(_instance_copy(tmp_path))])
    level = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert level, result.stdout + result.stderr
    assert float(level.group(1)) <= EXPOSURE_CEILING and result.returncode == 0, result.stdout


def test_unit_is_bound_to_its_device_and_mounts_in_one_process() -> None:
    """BindsTo/After the .device (as systemd-fsck@), a start timeout, and one ExecStart=
    for mount, archive and unmount: systemd makes a mount namespace per process it
    starts, so a FUSE mount made by one command line is not there for the next."""
    service = [(key, value) for section, key, value in unit_lines(UNIT.read_text())
               if section in ("Unit", "Service")]
    assert ("BindsTo", "%i.device") in service
    assert any(key == "After" and "%i.device" in value.split() for key, value in service)
    assert any(key == "TimeoutStartSec" for key, _ in service)
    assert [key for key, _ in service if key.startswith("Exec")] == ["ExecStart"]
    assert not any(key == "ConditionPathExists" for key, _ in service)


def _run_unit(tmp_path: Path, loop: str, pstore: Pstore) -> None:
    """Run the unit's ExecStart= as systemd would for instance `loop`: specifiers and
    variables expanded as systemd expands them (helpers.systemd), the directories it
    makes (RuntimeDirectory=, StateDirectory=) and the variables it sets (PATH,
    INVOCATION_ID, RUNTIME_DIRECTORY, STATE_DIRECTORY) stood in for under tmp_path, /etc
    by tmp_path/etc, and the part of its sandbox that needs no systemd stood in for by
    helpers.systemd.sandboxed (its own mount namespace, a read-only root, CAP_SYS_ADMIN
    only, no new privileges); systemd-analyze checks the rest. systemd-pstore 254
    stands in for /lib/systemd/systemd-pstore, with its LD_LIBRARY_PATH."""
    instance = run(["systemd-escape", "-p", loop]).stdout.strip()
    specifiers = {"i": instance, "f": loop, "t": str(tmp_path / "run"),
                  "S": str(tmp_path / "state"), "b": boot_id()}
    etc = tmp_path / "etc"
    files = {"/etc/default/pstorefs": etc / "default" / "pstorefs",
             f"/etc/pstorefs/{instance}.conf": etc / "pstorefs" / f"{instance}.conf"}
    commands, _ = service_commands(UNIT.read_text(), specifiers, files)
    runtime = tmp_path / "run" / "pstorefs" / instance
    state = tmp_path / "state" / "systemd" / "pstore"
    runtime.mkdir(parents=True, exist_ok=True)
    state.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **pstore.env, "PATH": f"{VENV_BIN}:{SYSTEMD_PATH}",
           "INVOCATION_ID": uuid.uuid4().hex, "RUNTIME_DIRECTORY": str(runtime),
           "STATE_DIRECTORY": str(state)}
    settings = service_settings(UNIT.read_text())
    try:
        for command in commands:
            command = [str(pstore.path) if word == "/lib/systemd/systemd-pstore" else word
                       for word in command]
            command, sandbox_env = sandboxed(command, settings, [runtime, state])
            result = run(command, timeout=90, env=env | sandbox_env)
            assert result.returncode == 0, f"{command}: {result.stderr}"
            assert result.stderr == "", result.stderr
    finally:
        if os.path.ismount(runtime):
            unmount(runtime, loop)
    assert not os.path.ismount(runtime), "the unit left its mount"


def _archived(run_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}


def _dmesg_txt(case: Case) -> bytes:
    """systemd 252's dmesg.txt: every dmesg record as "<name>:\\n<content>", newest first."""
    names = sorted((n for n in case.files if n.startswith("dmesg-")), reverse=True)
    return b"".join(n.encode() + b":\n" + case.files[n] for n in names)


def test_unit_archives_two_crashes_in_a_row(tmp_path: Path, pstore: Pstore) -> None:
    """A partition that held one crash, archived at boot, then another: two archives,
    one per run, each byte for byte what the kernel showed, although both hold a
    dmesg-pstore_blk-0 (systemd-pstore replaces same-named files); the partition is
    left empty. The options come from the instance's file, not the shared one."""
    require_fuse()
    first, second = case_by_id("kmsg-oops-then-panic"), case_by_id("kmsg-deflate-3oops")
    assert first.files["dmesg-pstore_blk-0"] != second.files["dmesg-pstore_blk-0"]
    image = copy_image(tmp_path, first)
    (tmp_path / "etc" / "default").mkdir(parents=True)
    (tmp_path / "etc" / "default" / "pstorefs").write_text("PSTOREFS_OPTIONS=kmsg_size=32\n")
    with loop_device(image) as loop:
        instance = run(["systemd-escape", "-p", loop]).stdout.strip()
        (tmp_path / "etc" / "pstorefs").mkdir()
        (tmp_path / "etc" / "pstorefs" / f"{instance}.conf").write_text(
            f"# this partition\nPSTOREFS_OPTIONS={first.options}\n")
        _run_unit(tmp_path, loop, pstore)
        with open(loop, "r+b") as device:  # the next boot's crash
            device.write(second.image.read_bytes())
            os.fsync(device.fileno())
        _run_unit(tmp_path, loop, pstore)
        after = Path(loop).read_bytes()
    runs = sorted((tmp_path / "state" / "systemd" / "pstore" / boot_id()).iterdir())
    assert len(runs) == 2, runs
    for run_dir in runs:
        assert re.fullmatch(r"\d{8}T\d{6}Z-\w{6}", run_dir.name), run_dir.name
        assert run_dir.stat().st_mode & 0o077 == 0
    wants = []
    for case in (first, second):
        want = dict(case.files)
        if pstore.writes_dmesg_txt:
            want["dmesg.txt"] = _dmesg_txt(case)
        wants.append(want)
    archives = [_archived(run_dir) for run_dir in runs]
    for want in wants:
        assert want in archives, f"no archive holds {sorted(want)} as the kernel showed them"
    assert not zone_changes_allowed(second, second.image.read_bytes(), after)
    for zone in zone_layout(second):
        sig, datalen = struct.unpack_from("<Ii", after, zone.offset)
        assert sig != ZONE_SIG[zone.type] or datalen == 0, f"zone at {zone.offset:#x} kept"


def test_unit_leaves_no_directory_when_there_is_nothing(tmp_path: Path) -> None:
    """A boot without a crash (every boot but a few) leaves no empty run directory."""
    require_fuse()
    case = case_by_id("empty-partition")
    image = copy_image(tmp_path, case)
    (tmp_path / "etc" / "default").mkdir(parents=True)
    (tmp_path / "etc" / "default" / "pstorefs").write_text(f"PSTOREFS_OPTIONS={case.options}\n")
    PSTORES[0].check()
    with loop_device(image) as loop:
        _run_unit(tmp_path, loop, PSTORES[0])
    assert os.listdir(tmp_path / "state" / "systemd" / "pstore") == []


def test_no_erase_before_the_copy_is_on_disk(tmp_path: Path) -> None:
    """`-o sync_before_erase=DIR` (the unit's): `rm` flushes DIR's filesystem first and
    erases nothing if that fails. Here DIR is an ext4 whose disk (a loop device over a
    file on a full tmpfs) cannot take the copy just written into it."""
    require(shutil.which("mkfs.ext4") is not None, "mkfs.ext4 (e2fsprogs)")
    full, archive = tmp_path / "full", tmp_path / "archive"
    full.mkdir()
    archive.mkdir()
    image = copy_image(tmp_path, STORAGE_CASE)
    before = image.read_bytes()
    assert run(["mount", "-t", "tmpfs", "-o", "size=4M", "tmpfs", str(full)]).returncode == 0
    try:
        disk = full / "ext4.img"
        with open(disk, "wb") as sparse:
            sparse.truncate(64 << 20)
        assert run(["mkfs.ext4", "-q", "-F", str(disk)]).returncode == 0
        with loop_device(disk) as loop:
            assert run(["mount", loop, str(archive)]).returncode == 0
            try:
                (archive / "dmesg-pstore_blk-0").write_bytes(os.urandom(16 << 20))
                with mounted(image, tmp_path / "mnt",
                             f"name=pstore_blk,sync_before_erase={archive}") as mnt:
                    with pytest.raises(OSError) as refused:
                        os.unlink(mnt / "dmesg-pstore_blk-0")
                    # what the loop device's failed writes reach syncfs as
                    assert refused.value.errno in (errno.EIO, errno.ENOSPC)
                    assert "dmesg-pstore_blk-0" in os.listdir(mnt)
            finally:
                run(["umount", str(archive)])
    finally:
        run(["umount", str(full)])
    assert image.read_bytes() == before


@pytest.mark.parametrize("what", ["missing", "a file"])
def test_sync_before_erase_needs_a_directory(tmp_path: Path, what: str) -> None:
    """Opened before the source, and named by its option: a bare path would read as
    the source's error in the boot unit's log."""
    image = copy_image(tmp_path, STORAGE_CASE)
    (tmp_path / "mnt").mkdir()
    directory = tmp_path / "archive"
    if what == "a file":
        directory.write_bytes(b"")
    result = run([str(VENV_BIN / "pstorefs"), str(image), str(tmp_path / "mnt"), "-o",
                  f"sync_before_erase={directory}"])
    assert result.returncode == 1
    assert result.stderr == (f"pstorefs: sync_before_erase={directory}: "
                             + ("No such file or directory" if what == "missing"
                                else "Not a directory") + "\n")
    assert not os.path.ismount(tmp_path / "mnt")


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


STORAGE_CASE = case_by_id("kmsg-deflate-3oops")


def _archive_with(conf: str, tmp_path: Path, pstore: Pstore) -> tuple[dict[str, bytes], bytes,
                                                                        bytes]:
    """Mount a kernel image, run the real systemd-pstore on it under `conf`; the files
    it archived, and the image before and after."""
    image = copy_image(tmp_path, STORAGE_CASE)
    before = image.read_bytes()
    archive = tmp_path / "archive"
    archive.mkdir()
    with pstore_conf(conf), mounted(image, tmp_path / "mnt", "name=pstore_blk") as mnt:
        result = pstore.run(mnt, archive)
        assert result.returncode == 0, result.stderr
    return _archived(archive), before, image.read_bytes()


def test_storage_none_touches_nothing(tmp_path: Path, pstore: Pstore) -> None:
    archived, before, after = _archive_with("Storage=none\n", tmp_path, pstore)
    assert archived == {} and after == before


def test_unlink_no_archives_and_keeps_the_records(tmp_path: Path, pstore: Pstore) -> None:
    archived, before, after = _archive_with("Unlink=no\n", tmp_path, pstore)
    files = STORAGE_CASE.files
    assert all(archived.get(name) == content for name, content in files.items())
    assert after == before


def test_storage_journal_sends_every_record_to_journald(tmp_path: Path, pstore: Pstore) -> None:
    """Storage=journal, with a real systemd-journald (helpers.systemd.with_journald):
    each record is in the journal (FILE= its bytes, read back with `journalctl -o json`),
    none in the archive directory (252 still writes its rebuilt dmesg.txt there), and
    the records are erased (Unlink=yes)."""
    image = copy_image(tmp_path, STORAGE_CASE)
    before = image.read_bytes()
    archive = tmp_path / "archive"
    archive.mkdir()
    with pstore_conf("Storage=journal\n"), mounted(image, tmp_path / "mnt",
                                                     "name=pstore_blk") as mnt:
        result, entries = with_journald([str(pstore.path), str(mnt), str(archive)],
                                        tmp_path / "journald.log", env=pstore.env)
    assert result.returncode == 0, result.stderr + (tmp_path / "journald.log").read_text()
    sent = {field_bytes(e["MESSAGE"]): field_bytes(e["FILE"]) for e in entries
            if "FILE" in e and e.get("SYSLOG_IDENTIFIER") == "systemd-pstore"}
    for name, content in STORAGE_CASE.files.items():
        assert sent.get(f"PStore {name}.".encode()) == content, f"{name} not in the journal"
    assert set(_archived(archive)) == ({"dmesg.txt"} if pstore.writes_dmesg_txt else set())
    after = image.read_bytes()
    assert after != before
    for zone in range(3):
        assert struct.unpack_from("<i", after, zone * 65536 + 4)[0] == 0


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
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_systemd_pstore_archives_everything(case: Case, tmp_path: Path, mnt: Path,
                                            pstore: Pstore) -> None:
    img = copy_image(tmp_path, case)
    archive = tmp_path / "archive"
    archive.mkdir()
    with mounted(img, mnt, case.options) as m:
        r = pstore.run(m, archive)
        assert r.returncode == 0, f"systemd-pstore: rc {r.returncode}: {r.stderr}"
        assert os.listdir(m) == [], "systemd-pstore could not remove every record"
    archived = _archived(archive)
    for name, content in case.files.items():
        assert archived.get(name) == content, f"{name} missing or different in the archive"
    dmesg = any(n.startswith("dmesg-") for n in case.files)
    if dmesg and pstore.writes_dmesg_txt:
        assert archived.get("dmesg.txt") == _dmesg_txt(case), "dmesg.txt not rebuilt as 252 does"
    assert set(archived) == set(case.files) | ({"dmesg.txt"} if dmesg and pstore.writes_dmesg_txt
                                               else set())
    now = img.read_bytes()
    for z in zone_layout(case):
        sig, datalen = struct.unpack_from("<Ii", now, z.offset)
        if sig == ZONE_SIG[z.type]:
            assert datalen == 0, f"{z.type} zone at {z.offset:#x} still holds a record"
    assert not zone_changes_allowed(case, case.image.read_bytes(), now)
    with mounted(img, mnt, case.options) as m:
        assert os.listdir(m) == [], "records came back after archiving"
