"""What the `pstorefs` CLI refuses to mount, in one line and writing nothing: bad
arguments and options, unusable sources, a source already in use; and a read-only
source mounted read-only."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers.cases import expected_after_erase, sha256
from helpers.machine import PSTOREFS, VENV_BIN, mounted, require, run, unmount
from helpers.mounts import KMSG, assert_same_image, copy_image, loop_device, proc_mount


def assert_refused(cmd: list[str], *, image: Path | None = None, mnt: Path | None = None,
                   **kw) -> str:
    """The command fails with one clear line on stderr and exit status 1 (what mount(8)
    expects of a helper, for bad usage too), mounts nothing, writes nothing."""
    before = sha256(image) if image else None
    r = run(cmd, timeout=30, **kw)
    was_mounted = bool(mnt) and os.path.ismount(mnt)
    if was_mounted:
        unmount(mnt)
    out = r.stderr + r.stdout
    assert r.returncode != 0, f"{cmd}: accepted (rc 0): {out!r}"
    assert r.returncode == 1, f"{cmd}: exit status {r.returncode}, not 1: {out!r}"
    assert not was_mounted, f"{cmd}: failed but left a mount"
    assert "Traceback" not in out, f"{cmd}: traceback:\n{out}"
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"{cmd}: want one line on stderr, got {r.stderr!r}"
    if image:
        assert sha256(image) == before, f"{cmd}: the image was modified"
    return lines[0]


# -- bad input ---------------------------------------------------------------------------------
KOPTS = KMSG.options
PSTORECTL = str(VENV_BIN / "pstorectl")


def _bad_inputs() -> dict[str, object]:
    """label -> function(tmp, img, mnt) -> the command line."""
    k = lambda v: re.sub(r"kmsg_size=[^,]*", f"kmsg_size={v}", KOPTS)  # noqa: E731

    def small(tmp: Path, img: Path, mnt: Path) -> list[str]:
        (tmp / "small.bin").write_bytes(img.read_bytes()[:4095])
        return [PSTOREFS, str(tmp / "small.bin"), str(mnt), "-o", KOPTS]

    def empty(tmp: Path, img: Path, mnt: Path) -> list[str]:
        (tmp / "empty.bin").write_bytes(b"")
        return [PSTOREFS, str(tmp / "empty.bin"), str(mnt), "-o", KOPTS]

    def mnt_is_file(tmp: Path, img: Path, mnt: Path) -> list[str]:
        (tmp / "file").write_bytes(b"x")
        return [PSTOREFS, str(img), str(tmp / "file"), "-o", KOPTS]

    def cli(*extra: str, source: str | None = None):
        return lambda tmp, img, mnt: [PSTOREFS, source or str(img), str(mnt), *extra]

    return {
        "missing source": lambda tmp, img, mnt: [PSTOREFS, str(tmp / "nope"), str(mnt),
                                                 "-o", KOPTS],
        "source is a directory": lambda tmp, img, mnt: [PSTOREFS, str(tmp), str(mnt),
                                                        "-o", KOPTS],
        "source is a character device": cli("-o", KOPTS, source="/dev/null"),
        "empty source": empty,
        "source smaller than 4 KiB": small,
        "missing mount point": lambda tmp, img, mnt: [PSTOREFS, str(img), str(tmp / "nomnt"),
                                                      "-o", KOPTS],
        "mount point is a file": mnt_is_file,
        "unknown option": cli("-o", KOPTS + ",bogus_option=1"),
        "unknown flag option": cli("-o", KOPTS + ",bogus"),
        "kmsg_size=abc": cli("-o", k("abc")),
        "kmsg_size without value": cli("-o", "kmsg_size"),
        "kmsg_size=0": cli("-o", k("0")),
        "kmsg_size=-4": cli("-o", k("-4")),
        "every size off": cli("-o", "kmsg_size=0,pmsg_size=-1,console_size=0,ftrace_size=0"),
        "kmsg_size larger than the image": cli("-o", k("4096")),
        "pmsg_size larger than the image": cli("-o", KOPTS + ",pmsg_size=2048"),
        "no room left for dmesg": cli("-o", KOPTS + ",console_size=1024"),
        "ftrace too small for nr_cpus": cli("-o", "kmsg_size=0,ftrace_size=4,nr_cpus=1024"),
        "nr_cpus=0": cli("-o", KOPTS + ",nr_cpus=0"),
        "nr_cpus=abc": cli("-o", KOPTS + ",nr_cpus=abc"),
        "abi=vax": cli("-o", KOPTS + ",abi=vax"),
        "uid=nosuchuser": cli("-o", KOPTS + ",uid=nosuchuser"),
        "gid=nosuchgroup": cli("-o", KOPTS + ",gid=nosuchgroup"),
        "umask=9": cli("-o", KOPTS + ",umask=9"),
        "name with a slash": cli("-o", KOPTS + ",name=a/b"),
        "missing system_map": cli("-o", KOPTS + ",system_map=/nonexistent/System.map"),
        "system_map not a System.map": lambda tmp, img, mnt: [
            PSTOREFS, str(img), str(mnt), "-o", f"{KOPTS},system_map={img}"],
        "no arguments": lambda tmp, img, mnt: [PSTOREFS],
        "one argument": lambda tmp, img, mnt: [PSTOREFS, str(img)],
        "extra argument": lambda tmp, img, mnt: [PSTOREFS, str(img), str(mnt), str(mnt),
                                                 "-o", KOPTS],
        "unknown flag": cli("-x"),
    }


BAD_INPUTS = _bad_inputs()


@pytest.mark.parametrize("label", list(BAD_INPUTS))
def test_bad_input_refused(label: str, tmp_path: Path, mnt: Path) -> None:
    img = copy_image(tmp_path, KMSG)
    cmd = BAD_INPUTS[label](tmp_path, img, mnt)
    assert_refused(cmd, image=img, mnt=mnt)
    assert proc_mount(mnt) is None


def test_unreadable_source_refused(public_mnt: Path, for_others: dict[str, list[str]]
                                  ) -> None:
    """As a user that may not read the source (root reads everything)."""
    top = public_mnt.parent
    img = copy_image(top, KMSG, as_name="secret.bin")
    img.chmod(0o600)
    before = sha256(img)
    line = assert_refused([*for_others["pstorefs"], str(img), str(public_mnt), "-o", KOPTS],
                          image=img, mnt=public_mnt, user="nobody", group="nogroup",
                          extra_groups=[], cwd="/")
    assert "denied" in line.lower() or "cannot" in line.lower(), line
    assert sha256(img) == before


def test_empty_source_refused_before_any_layout(tmp_path: Path, mnt: Path) -> None:
    """A 0-byte source is refused as such, not after a layout "detected" on it."""
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    for verbose in ((), ("-v",)):
        r = run([PSTOREFS, str(empty), str(mnt), *verbose])
        assert r.returncode == 1 and r.stderr == (
            f"pstorefs: {empty} holds 0 bytes; pstore/zone needs at least 4096\n"), r.stderr


def test_mount_as_a_user_fails_in_one_line(public_mnt: Path, for_others: dict[str, list[str]]
                                           ) -> None:
    """A user's mount that libfuse refuses (here /dev/fuse; elsewhere fusermount3: no
    write access to root's mount point) ends in pstorefs' one line, which carries
    libfuse's reason in place of pyfuse3's "fuse_session_mount failed": not libfuse's own
    lines, nor the warning that the image is mounted read-only, nor the layout found."""
    top = public_mnt.parent
    img = copy_image(top, KMSG, as_name="readable.bin")
    img.chmod(0o644)
    line = assert_refused([*for_others["pstorefs"], str(img), str(public_mnt)], image=img,
                          mnt=public_mnt, user="nobody", group="nogroup", extra_groups=[],
                          cwd="/")
    assert line.startswith(f"pstorefs: cannot mount {img} on {public_mnt}: "), line
    reason = line.split(f"{public_mnt}: ", 1)[1]
    assert "fuse_session_mount failed" not in reason and not reason.startswith("fuse"), line
    assert "/dev/fuse" in reason or "mountpoint" in reason, line


def test_unbound_loop_device_refused(tmp_path: Path, mnt: Path) -> None:
    """A loop device with nothing behind it (size 0). Its node is made here, on a minor
    `losetup -f` never hands out while lower ones are free, so no other test can bind it
    in the meantime."""
    import fcntl
    require(os.path.exists("/dev/loop-control"), "loop devices (/dev/loop-control)")
    minor = 200 + os.getpid() % 50
    node = tmp_path / "loop-unbound"
    os.mknod(node, 0o600 | stat.S_IFBLK, os.makedev(7, minor))
    try:
        assert_refused([PSTOREFS, str(node), str(mnt), "-o", KOPTS], mnt=mnt)
    finally:
        ctl = os.open("/dev/loop-control", os.O_RDWR)
        try:
            with contextlib.suppress(OSError):
                fcntl.ioctl(ctl, 0x4C81, minor)  # LOOP_CTL_REMOVE
        finally:
            os.close(ctl)


def test_second_mount_of_the_same_image_refused(tmp_path: Path, mnt: Path) -> None:
    img = copy_image(tmp_path, KMSG)
    mnt2 = tmp_path / "mnt2"
    mnt2.mkdir()
    with mounted(img, mnt, KOPTS) as m:
        line = assert_refused([PSTOREFS, str(img), str(mnt2), "-o", KOPTS], mnt=mnt2)
        assert "use" in line, line
        # through another path to the same file, too
        link = tmp_path / "link.bin"
        link.symlink_to(img)
        assert_refused([PSTOREFS, str(link), str(mnt2), "-o", KOPTS], mnt=mnt2)
        hard = tmp_path / "hard.bin"
        os.link(img, hard)
        assert_refused([PSTOREFS, str(hard), str(mnt2), "-o", KOPTS + ",ro"], mnt=mnt2)
        # the first mount is unharmed
        assert (m / "dmesg-pstore_blk-2").read_bytes() == KMSG.files["dmesg-pstore_blk-2"]
        os.unlink(m / "dmesg-pstore_blk-0")
    assert_same_image(img.read_bytes(), expected_after_erase(KMSG), "first mount's rm")


def test_image_and_its_loop_device_are_one_source(tmp_path: Path, mnt: Path) -> None:
    img = copy_image(tmp_path, KMSG)
    mnt2 = tmp_path / "mnt2"
    mnt2.mkdir()
    with loop_device(img) as dev:
        # the image mounted directly: its loop device is refused
        with mounted(img, mnt, KOPTS) as m:
            assert_refused([PSTOREFS, dev, str(mnt2), "-o", KOPTS], image=img, mnt=mnt2)
            assert sorted(os.listdir(m)) == sorted(KMSG.files)
        # the loop device mounted: the image, and a second loop device on it, are refused
        with mounted(dev, mnt, KOPTS) as m:
            assert_refused([PSTOREFS, str(img), str(mnt2), "-o", KOPTS], image=img, mnt=mnt2)
            assert_refused([PSTOREFS, dev, str(mnt2), "-o", KOPTS], image=img, mnt=mnt2)
            with loop_device(img) as dev2:
                assert_refused([PSTOREFS, dev2, str(mnt2), "-o", KOPTS], image=img, mnt=mnt2)
            assert sorted(os.listdir(m)) == sorted(KMSG.files)
            assert proc_mount(m)[:2] == (dev, "fuse.pstorefs")


def test_exclusive_holder_of_the_device_refused(tmp_path: Path, mnt: Path) -> None:
    img = copy_image(tmp_path, KMSG)
    with loop_device(img) as dev:
        fd = os.open(dev, os.O_RDONLY | os.O_EXCL)
        try:
            line = assert_refused([PSTOREFS, dev, str(mnt), "-o", KOPTS], image=img, mnt=mnt)
            assert "use" in line or "busy" in line.lower(), line
        finally:
            os.close(fd)
        with mounted(dev, mnt, KOPTS) as m:
            # and pstorefs holds it exclusively in turn
            with pytest.raises(OSError) as info:
                os.close(os.open(dev, os.O_RDONLY | os.O_EXCL))
            assert info.value.errno == errno.EBUSY
            assert sorted(os.listdir(m)) == sorted(KMSG.files)


@contextlib.contextmanager
def held_exclusively(dev: str) -> Iterator[None]:
    """Another process holds `dev` open O_EXCL, as a mounted filesystem or the kernel's
    pstore_blk would."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import os, sys; os.open(sys.argv[1], os.O_RDONLY | os.O_EXCL);"
         " print('held', flush=True); sys.stdin.read()", dev],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        yield
    finally:
        holder.communicate(timeout=30)


def test_image_of_a_held_loop_device_is_not_written(tmp_path: Path, mnt: Path) -> None:
    """The image behind a loop device another holds exclusively is refused for writing,
    by the mount and by `pstorectl erase`, as the loop device itself is; it is still
    read (ro, `pstorectl list`). Once the holder is gone, the erase writes."""
    img = copy_image(tmp_path, KMSG)
    name = sorted(KMSG.files)[0]
    with loop_device(img) as dev:
        with held_exclusively(dev):
            line = assert_refused([PSTOREFS, str(img), str(mnt), "-o", KOPTS], image=img,
                                  mnt=mnt)
            assert f"backs {dev}, which is in use" in line, line
            line = assert_refused([PSTORECTL, "erase", str(img), name, "-o", KOPTS], image=img)
            assert f"backs {dev}, which is in use" in line, line
            listed = run([PSTORECTL, "list", str(img), "-o", KOPTS])
            assert listed.returncode == 0 and name in listed.stdout, listed.stderr
            with mounted(img, mnt, KOPTS + ",ro") as m:
                assert sorted(os.listdir(m)) == sorted(KMSG.files)
        # ours now: the loop device is held in turn while the image may be written
        with mounted(img, mnt, KOPTS) as m:
            with pytest.raises(OSError) as info:
                os.close(os.open(dev, os.O_RDONLY | os.O_EXCL))
            assert info.value.errno == errno.EBUSY
            os.unlink(m / name)
    assert name not in run([PSTORECTL, "list", str(img), "-o", KOPTS]).stdout


@pytest.mark.parametrize("how", ["losetup -r", "blockdev --setro", "immutable image"])
def test_read_only_source_mounts_read_only(how: str, tmp_path: Path, mnt: Path) -> None:
    img = copy_image(tmp_path, KMSG)
    before = sha256(img)
    with contextlib.ExitStack() as stack:
        if how == "immutable image":
            require(shutil.which("chattr") is not None, "chattr (e2fsprogs)")
            r = run(["chattr", "+i", str(img)])
            require(r.returncode == 0, f"chattr +i on {tmp_path} ({r.stderr.strip()})")
            stack.callback(run, ["chattr", "-i", str(img)])
            source = str(img)
        else:
            source = stack.enter_context(loop_device(img, *(["-r"] if "-r" in how else [])))
            if "setro" in how:
                assert run(["blockdev", "--setro", source]).returncode == 0
                stack.callback(run, ["blockdev", "--setrw", source])
        r = run([PSTOREFS, source, str(mnt), "-o", KOPTS])
        assert r.returncode == 0, r.stderr
        stack.callback(unmount, mnt, source)
        lines = [line for line in r.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and "read-only" in lines[0], f"want one warning: {r.stderr!r}"
        assert "Traceback" not in r.stderr
        assert os.path.ismount(mnt) and "ro" in proc_mount(mnt)[2]
        for name in KMSG.files:
            with pytest.raises(OSError) as info:
                os.unlink(mnt / name)
            assert info.value.errno == errno.EROFS
        assert sorted(os.listdir(mnt)) == sorted(KMSG.files)
        for name, data in KMSG.files.items():
            assert (mnt / name).read_bytes() == data
    assert sha256(img) == before
