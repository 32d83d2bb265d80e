"""The mount options through a real mount (name, ro, uid/gid/umask, allow_other,
fsname, generic options), and how the daemon stops (unmount, signals, foreground)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest

from helpers.cases import expected_after_erase, sha256
from helpers.machine import (
    PSTOREFS,
    SYSTEM_PYTHON,
    holder_pids,
    mounted,
    run,
    unmount,
    wait_for,
)
from helpers.mounts import (
    ALL_FRONTS,
    KMSG,
    assert_same_image,
    check_contents,
    copy_image,
    daemon_pid,
    opts_without,
    proc_mount,
    wait_gone,
)


# -- options --------------------------------------------------------------------------------
def test_default_name_is_blkoops(tmp_path: Path, mnt: Path) -> None:
    img = copy_image(tmp_path, KMSG)
    for opts in (opts_without(KMSG, "name"), None):
        with mounted(img, mnt, opts) as m:
            want = {n.replace("-pstore_blk-", "-blkoops-"): d for n, d in KMSG.files.items()}
            assert sorted(os.listdir(m)) == sorted(want) == [
                "dmesg-blkoops-0", "dmesg-blkoops-1", "dmesg-blkoops-2"]
            for name, data in want.items():
                assert (m / name).read_bytes() == data
    with mounted(img, mnt) as m:
        os.unlink(m / "dmesg-blkoops-0")
        assert sorted(os.listdir(m)) == ["dmesg-blkoops-1", "dmesg-blkoops-2"]
    assert_same_image(img.read_bytes(), expected_after_erase(KMSG), "rm dmesg-blkoops-0")


def test_name_option(tmp_path: Path, mnt: Path) -> None:
    img = copy_image(tmp_path, ALL_FRONTS)
    with mounted(img, mnt, opts_without(ALL_FRONTS, "name") + ",name=crashlog") as m:
        want = {n.replace("-pstore_blk-", "-crashlog-"): d for n, d in ALL_FRONTS.files.items()}
        assert sorted(os.listdir(m)) == sorted(want)
        for name, data in want.items():
            assert (m / name).read_bytes() == data


def test_generic_mount_options_are_ignored(tmp_path: Path, mnt: Path) -> None:
    img = copy_image(tmp_path, ALL_FRONTS)
    noise = ("dev,suid,rw,defaults,noatime,nofail,_netdev,x-systemd.automount,"
             "x-systemd.device-timeout=5,auto,noauto,relatime,exec,nodev,nosuid,async,"
             "nodiratime,comment=pstore")
    t0 = time.time_ns()
    with mounted(img, mnt, noise, extra=("-o", ALL_FRONTS.options)) as m:
        check_contents(ALL_FRONTS, m, t0, time.time_ns())
    # the last of a key wins, over several -o groups
    with mounted(img, mnt, "kmsg_size=4", extra=("-o", ALL_FRONTS.options)) as m:
        assert sorted(os.listdir(m)) == sorted(ALL_FRONTS.files)


def test_ro_option(tmp_path: Path, mnt: Path) -> None:
    img = copy_image(tmp_path, ALL_FRONTS)
    before = sha256(img)
    with mounted(img, mnt, ALL_FRONTS.options + ",ro") as m:
        assert "ro" in proc_mount(m)[2]
        for name in ALL_FRONTS.files:
            with pytest.raises(OSError) as info:
                os.unlink(m / name)
            assert info.value.errno == errno.EROFS, name
        assert sorted(os.listdir(m)) == sorted(ALL_FRONTS.files)
        refusals = _try_every_write(m, "dmesg-pstore_blk-0")
        assert all(code == errno.EROFS for code in refusals.values()), refusals
        assert sorted(os.listdir(m)) == sorted(ALL_FRONTS.files)
    assert sha256(img) == before


def _try_every_write(m: Path, name: str) -> dict[str, int]:
    """Each write operation a user could try on the mount, with the errno it got."""
    path = m / name
    other = sorted(n for n in os.listdir(m) if n != name)[0]
    ops = {
        "open for writing": lambda: open(path, "wb"),
        "open for appending": lambda: open(path, "ab"),
        "open read-write": lambda: open(path, "r+b"),
        "create": lambda: open(m / "new-file", "xb"),
        "truncate": lambda: os.truncate(path, 0),
        "rename": lambda: os.rename(path, m / "renamed"),
        "rename over": lambda: os.rename(path, m / other),
        "chmod": lambda: os.chmod(path, 0o666),
        "chown": lambda: os.chown(path, 1, 1),
        "utime": lambda: os.utime(path, (0, 0)),
        "mkdir": lambda: os.mkdir(m / "dir"),
        "mknod": lambda: os.mknod(m / "node", 0o644 | stat.S_IFREG),
        "setxattr": lambda: os.setxattr(path, "user.test", b"1"),
        "link": lambda: os.link(path, m / "hardlink"),
        "symlink": lambda: os.symlink(name, m / "symlink"),
        "chmod dir": lambda: os.chmod(m, 0o777),
    }
    codes = {}
    for what, op in ops.items():
        try:
            result = op()
        except OSError as exc:
            codes[what] = exc.errno
        else:
            with contextlib.suppress(Exception):
                result.close()
            pytest.fail(f"{what} succeeded on a pstorefs mount")
    return codes


def test_every_other_write_refused(tmp_path: Path, mnt: Path) -> None:
    img = copy_image(tmp_path, ALL_FRONTS)
    before = sha256(img)
    with mounted(img, mnt, ALL_FRONTS.options) as m:
        refusals = _try_every_write(m, "dmesg-pstore_blk-0")
        bad = {w: errno.errorcode.get(c) for w, c in refusals.items()
               if c not in (errno.EPERM, errno.EACCES, errno.EROFS)}
        assert not bad, f"refused with unexpected errnos: {bad}"
        assert sorted(os.listdir(m)) == sorted(ALL_FRONTS.files)
        assert (m / "dmesg-pstore_blk-0").read_bytes() == ALL_FRONTS.files["dmesg-pstore_blk-0"]
        assert stat.S_IMODE(os.stat(m).st_mode) == 0o750
    assert sha256(img) == before


def test_uid_gid_umask(tmp_path: Path, mnt: Path) -> None:
    img = copy_image(tmp_path, KMSG)
    with mounted(img, mnt, KMSG.options + ",uid=1234,gid=4321,umask=027") as m:
        st = os.stat(m)
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1234, 4321, 0o750)
        for name in KMSG.files:
            st = os.stat(m / name)
            assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1234, 4321, 0o440)
    with mounted(img, mnt, KMSG.options + ",umask=0") as m:
        assert stat.S_IMODE(os.stat(m).st_mode) == 0o777
        assert {stat.S_IMODE(os.stat(m / n).st_mode) for n in KMSG.files} == {0o444}
    with mounted(img, mnt, KMSG.options + ",uid=nobody,gid=nogroup,umask=0222") as m:
        st = os.stat(m / "dmesg-pstore_blk-0")
        assert (st.st_uid, st.st_gid) == (65534, 65534)
        assert stat.S_IMODE(st.st_mode) == 0o444
        assert stat.S_IMODE(os.stat(m).st_mode) == 0o555


_PROBE = r"""
import json, os, sys, hashlib
mnt = sys.argv[1]
out = {}
def attempt(key, fn):
    try:
        out[key] = ["ok", fn()]
    except OSError as exc:
        out[key] = ["err", exc.errno]
attempt("listdir", lambda: sorted(os.listdir(mnt)))
for name in sys.argv[2:]:
    p = os.path.join(mnt, name)
    attempt("stat " + name, lambda: os.stat(p).st_size)
    attempt("read " + name, lambda: hashlib.sha256(open(p, "rb").read()).hexdigest())
print(json.dumps(out))
"""


def _as_nobody(mnt: Path, names: list[str]) -> dict[str, list]:
    """The probe as user nobody, by the system's Python: nobody may not reach the
    checkout's `.venv` (a checkout under /root)."""
    r = subprocess.run([str(SYSTEM_PYTHON), "-I", "-c", _PROBE, str(mnt), *names],
                       capture_output=True, text=True, timeout=30, user="nobody",
                       group="nogroup", extra_groups=[], cwd="/")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_allow_other(tmp_path: Path, public_mnt: Path) -> None:
    import hashlib
    img = copy_image(tmp_path, KMSG)
    names = sorted(KMSG.files)
    digests = {n: hashlib.sha256(KMSG.files[n]).hexdigest() for n in names}
    # allow_other and a mode that lets others in: nobody reads everything
    with mounted(img, public_mnt, KMSG.options + ",allow_other,umask=0"):
        got = _as_nobody(public_mnt, names)
        assert got["listdir"] == ["ok", names]
        for n in names:
            assert got[f"read {n}"] == ["ok", digests[n]], n
    # allow_other with group access
    with mounted(img, public_mnt, KMSG.options + ",allow_other,gid=nogroup"):
        got = _as_nobody(public_mnt, names)
        assert got["listdir"] == ["ok", names]
        assert all(got[f"read {n}"] == ["ok", digests[n]] for n in names), got
    # allow_other keeps the kernel's 0750 root:root directory closed to others
    with mounted(img, public_mnt, KMSG.options + ",allow_other"):
        got = _as_nobody(public_mnt, names)
        assert got["listdir"] == ["err", errno.EACCES], got
        assert all(got[f"read {n}"] == ["err", errno.EACCES] for n in names), got
    # without allow_other, FUSE keeps every other user out whatever the modes
    with mounted(img, public_mnt, KMSG.options + ",umask=0"):
        got = _as_nobody(public_mnt, names)
        assert got["listdir"] == ["err", errno.EACCES], got
        for n in names:
            assert got[f"stat {n}"] == ["err", errno.EACCES], got
            assert got[f"read {n}"] == ["err", errno.EACCES], got


def test_fsname_subtype_and_source_path(tmp_path: Path, mnt: Path) -> None:
    img = copy_image(tmp_path, KMSG, as_name="my image,1.bin")
    with mounted(img, mnt, KMSG.options + ",fsname=crashes,subtype=pstorecheck") as m:
        source, fstype, _ = proc_mount(m)
        assert (source, fstype) == ("crashes", "fuse.pstorecheck")
        assert sorted(os.listdir(m)) == sorted(KMSG.files)
    # a relative source shows as its absolute path; commas and spaces survive
    r = run([PSTOREFS, img.name, str(mnt), "-o", KMSG.options], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    try:
        assert proc_mount(mnt)[:2] == (str(img), "fuse.pstorefs")
        assert sorted(os.listdir(mnt)) == sorted(KMSG.files)
    finally:
        unmount(mnt, img)


# -- what the command says -------------------------------------------------------------------
@pytest.mark.parametrize("flags", [(), ("-v",), ("-o", "verbose"), ("--verbose",)])
def test_silent_on_success_and_verbose_says_the_layout(flags: tuple[str, ...], tmp_path: Path,
                                                       mnt: Path) -> None:
    """A mount that succeeds prints nothing (the layout found goes to the log); `-v`,
    `--verbose` or `-o verbose` print it as well."""
    img = copy_image(tmp_path, KMSG)
    r = run([PSTOREFS, str(img), str(mnt), *flags])
    try:
        assert r.returncode == 0 and os.path.ismount(mnt), r.stderr
        assert r.stdout == ""
        if flags:
            assert r.stderr == (f"pstorefs: {img}: layout detected: kmsg_size=64,pmsg_size=0,"
                                "console_size=0,ftrace_size=0,nr_cpus=1\n")
        else:
            assert r.stderr == ""
        assert sorted(os.listdir(mnt)) == ["dmesg-blkoops-0", "dmesg-blkoops-1",
                                           "dmesg-blkoops-2"]
    finally:
        unmount(mnt, img)


def test_sizes_that_contradict_the_headers_warn_in_one_line(tmp_path: Path, mnt: Path) -> None:
    """`kmsg_size=32` on the fixture's 64 KiB zones mounts as asked (the records as
    zones 0, 2, 4), with one line on stderr naming the sizes detection finds."""
    img = copy_image(tmp_path, KMSG)
    before = sha256(img)
    r = run([PSTOREFS, str(img), str(mnt), "-o", "kmsg_size=32,ro"])
    try:
        assert r.returncode == 0 and os.path.ismount(mnt), r.stderr
        lines = r.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"pstorefs: {img}: the sizes given ("), \
            r.stderr
        assert "detection finds kmsg_size=64,pmsg_size=0," in lines[0]
        assert sorted(os.listdir(mnt)) == ["dmesg-blkoops-0", "dmesg-blkoops-2",
                                           "dmesg-blkoops-4"]
    finally:
        unmount(mnt, img)
    assert sha256(img) == before


def test_foreground_logs_the_layout_to_stderr(tmp_path: Path, mnt: Path) -> None:
    """With `-f` stderr is the log: the layout found is its first line."""
    img = copy_image(tmp_path, KMSG)
    proc = subprocess.Popen([PSTOREFS, str(img), str(mnt), "-f"], stderr=subprocess.PIPE,
                            text=True)
    try:
        assert wait_for(lambda: os.path.ismount(mnt) or proc.poll() is not None, 15)
        assert run(["fusermount3", "-u", str(mnt)]).returncode == 0
        assert proc.wait(15) == 0
        assert proc.stderr.readline() == (f"pstorefs: {img}: layout detected: kmsg_size=64,"
                                          "pmsg_size=0,console_size=0,ftrace_size=0,nr_cpus=1\n")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        proc.stderr.close()
        unmount(mnt)


# -- unmounting and signals -------------------------------------------------------------------
@pytest.mark.parametrize("how", ["fusermount3 -u", "umount", "SIGTERM", "SIGINT"])
def test_daemon_stops_cleanly(how: str, tmp_path: Path, mnt: Path) -> None:
    img = copy_image(tmp_path, KMSG)
    with mounted(img, mnt, KMSG.options) as m:
        pid = daemon_pid(img)
        os.unlink(m / "dmesg-pstore_blk-0")
        if how.startswith("SIG"):
            os.kill(pid, getattr(signal, how))
        else:
            r = run([*how.split(), str(m)])
            assert r.returncode == 0, r.stderr
        assert wait_for(lambda: not os.path.ismount(m), 10), f"{how}: still mounted"
        assert wait_gone([pid]), f"{how}: the daemon did not exit"
    assert proc_mount(mnt) is None
    assert_same_image(img.read_bytes(), expected_after_erase(KMSG), f"rm, then {how}")
    with mounted(img, mnt, KMSG.options) as m:  # the lock went with the daemon
        assert sorted(os.listdir(m)) == ["dmesg-pstore_blk-1", "dmesg-pstore_blk-2"]


@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT", "fusermount3 -u"])
@pytest.mark.parametrize("flag", ["-f", "-d"])
def test_foreground(flag: str, how: str, tmp_path: Path, mnt: Path) -> None:
    img = copy_image(tmp_path, KMSG)
    proc = subprocess.Popen([PSTOREFS, str(img), str(mnt), "-o", KMSG.options, flag],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: os.path.ismount(mnt) or proc.poll() is not None, 15)
        assert proc.poll() is None, f"{flag}: exited {proc.returncode}: {proc.stderr.read()}"
        assert os.path.ismount(mnt)
        assert holder_pids(img) == [proc.pid], "-f must serve from the process itself"
        assert (mnt / "dmesg-pstore_blk-1").read_bytes() == KMSG.files["dmesg-pstore_blk-1"]
        os.unlink(mnt / "dmesg-pstore_blk-0")
        if how.startswith("SIG"):
            proc.send_signal(getattr(signal, how))
        else:
            assert run([*how.split(), str(mnt)]).returncode == 0
        rc = proc.wait(15)
        _, err = proc.communicate(timeout=5)
        assert rc == 0, f"{flag} + {how}: exit {rc}: {err}"
        assert "Traceback" not in err, err
        assert not os.path.ismount(mnt) and proc_mount(mnt) is None
        if flag == "-d":
            assert err.strip(), "-d logs nothing"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        unmount(mnt)
    assert_same_image(img.read_bytes(), expected_after_erase(KMSG), f"{flag} + {how}")
