"""Who may `rm`: root and the files' owner (`uid=`), as only root may in the kernel's
0750 root-owned /sys/fs/pstore. Modes that let other users in (`allow_other`,
`umask=0`, `gid=`) let them read the records, never erase them (EPERM), and nothing is
written."""

from __future__ import annotations

import pwd
import shutil
import subprocess
from pathlib import Path

from helpers.cases import case_by_id, sha256
from helpers.machine import mounted, require

KMSG = case_by_id("kmsg-plain-3oops")
NOBODY = pwd.getpwnam("nobody")


def rm_as_nobody(path: Path) -> subprocess.CompletedProcess[str]:
    """`rm` run as user nobody (setpriv: no Python, nothing of the checkout needed)."""
    require(shutil.which("setpriv") is not None, "setpriv (util-linux)")
    return subprocess.run(["setpriv", f"--reuid={NOBODY.pw_uid}", f"--regid={NOBODY.pw_gid}",
                           "--clear-groups", "rm", "-f", str(path)],
                          capture_output=True, text=True, timeout=30)


def test_other_users_read_but_never_erase(tmp_path: Path, public_mnt: Path) -> None:
    img = tmp_path / "image.bin"
    img.write_bytes(KMSG.image.read_bytes())
    before = sha256(img)
    name = sorted(KMSG.files)[0]
    with mounted(img, public_mnt, KMSG.options + ",allow_other,umask=0") as m:
        result = rm_as_nobody(m / name)
        assert result.returncode != 0
        assert "Operation not permitted" in result.stderr, result.stderr
        assert (m / name).read_bytes() == KMSG.files[name], "the record went"
    assert sha256(img) == before, "written to"
    # the files' owner may erase, as root may
    with mounted(img, public_mnt, KMSG.options + f",allow_other,uid={NOBODY.pw_uid}") as m:
        result = rm_as_nobody(m / name)
        assert result.returncode == 0, result.stderr
        assert name not in [p.name for p in m.iterdir()]
    assert sha256(img) != before
