"""`-o` mount options: the kernel's parameter names, libfuse's, and mount(8)'s noise.

mount(8) and mount.fuse3 hand the helper every option of an fstab line, so the
filesystem-independent ones are accepted and ignored; anything else unknown is an
error, since a mistyped size would otherwise show the wrong records.
"""

from __future__ import annotations

import argparse
import grp
import pwd
from dataclasses import dataclass, field
from typing import Any

from pstorefs.errors import UsageError
from pstorefs.format.abi import resolve_abi
from pstorefs.format.consts import ZoneFormat
from pstorefs.store import BACKENDS, SIZE_OPTIONS, StoreConfig

GENERIC_MOUNT_OPTIONS = frozenset("""
    defaults auto noauto nofail _netdev user nouser users owner noowner group nogroup
    dev nodev suid nosuid exec noexec atime noatime diratime nodiratime relatime
    norelatime strictatime nostrictatime lazytime nolazytime sync async dirsync mand
    nomand iversion noiversion silent loud nosymfollow symfollow bind rbind
""".split())
"""Options of mount(8) that say nothing to pstorefs (see mount(8), FILESYSTEM-INDEPENDENT
MOUNT OPTIONS); mount.fuse3 adds `dev,suid` to every command it runs."""

GENERIC_PREFIXES = ("x-", "X-", "user=", "users=", "comment=", "context=", "fscontext=",
                    "defcontext=",
                    "rootcontext=")


_NUMBER_OPTIONS = ("nr_cpus", "record_size", "ecc", "erasesize", "offset", "size")
"""Integer options besides the pstore/blk sizes; `offset=` and `size=` also take 0x…."""


@dataclass
class MountOptions:
    """Everything the `-o` list can say."""

    store: StoreConfig = field(default_factory=StoreConfig)
    uid: int = 0
    gid: int = 0
    umask: int | None = None
    allow_other: bool = False
    default_permissions: bool = False
    fsname: str | None = None
    subtype: str = "pstorefs"
    verbose: bool = False
    """`-o verbose`, as `-v`: mount.fuse3 drops mount(8)'s `-v` but passes options."""
    sync_before_erase: str | None = None
    """A directory whose filesystem is flushed (syncfs) before each `rm` erases: where
    a program that copies a record and then removes it (systemd-pstore, which does
    not fsync) keeps its copy."""


def _int(name: str, value: str, base: int = 10) -> int:
    try:
        return int(value, base)
    except ValueError:
        unit = " (KiB)" if name in SIZE_OPTIONS else ""
        raise UsageError(f"{name}={value}: not an integer{unit}") from None


def _id(name: str, value: str) -> int:
    number = int(value)
    if number > 0xFFFFFFFE:
        raise UsageError(f"{name}={value}: out of range")
    return number


def _user(value: str) -> int:
    if value.isdigit():
        return _id("uid", value)
    try:
        return pwd.getpwnam(value).pw_uid
    except KeyError:
        raise UsageError(f"uid={value}: no such user") from None


def _group(value: str) -> int:
    if value.isdigit():
        return _id("gid", value)
    try:
        return grp.getgrnam(value).gr_gid
    except KeyError:
        raise UsageError(f"gid={value}: no such group") from None


def parse_options(groups: list[str]) -> MountOptions:
    """Parse every `-o` group (comma-separated `key[=value]`; the last of a key wins)."""
    opts = MountOptions()
    store: dict[str, object] = {}
    for group in groups:
        for item in group.split(","):
            key, has_value, value = item.partition("=")
            if not item or item in GENERIC_MOUNT_OPTIONS or item.startswith(GENERIC_PREFIXES):
                continue
            if key in SIZE_OPTIONS or key in _NUMBER_OPTIONS:
                if not has_value:
                    raise UsageError(f"{key} needs a value")
                store[key] = _int(key, value, 0 if key in ("offset", "size") else 10)
            elif key == "backend" and has_value:
                if value != "auto" and value not in BACKENDS:
                    raise UsageError(f"backend={value}: must be auto, " + ", ".join(BACKENDS))
                store["backend"] = value
            elif key == "name" and has_value:
                if not value or "/" in value or "\0" in value:
                    raise UsageError(f"name={value}: must be a non-empty name without '/'")
                store["name"] = value
            elif key == "system_map" and has_value and value:
                store["system_map"] = value
            elif key == "abi" and has_value:
                if value != "auto":
                    resolve_abi(value)
                store["abi"] = value
            elif key == "format" and has_value:
                if value != "auto" and value not in {f.value for f in ZoneFormat}:
                    raise UsageError(f"format={value}: must be auto, "
                                     + " or ".join(f.value for f in ZoneFormat))
                store["format"] = value
            elif item == "show_erased":
                store["show_erased"] = True
            elif item == "force":
                store["force"] = True
            elif item == "ro":
                store["read_only"] = True
            elif item == "rw":
                store["read_only"] = False
            elif key == "uid" and has_value:
                opts.uid = _user(value)
            elif key == "gid" and has_value:
                opts.gid = _group(value)
            elif key == "umask" and has_value:
                opts.umask = _int(key, value, 8) & 0o777
            elif item == "allow_other":
                opts.allow_other = True
            elif item == "default_permissions":
                opts.default_permissions = True
            elif item == "verbose":
                opts.verbose = True
            elif key == "sync_before_erase" and has_value and value:
                opts.sync_before_erase = value
            elif key == "fsname" and has_value and value:
                opts.fsname = value
            elif key == "subtype" and has_value and value:
                opts.subtype = value
            else:
                raise UsageError(f"unknown mount option '{item}' (see pstorefs --help)")
    if "nr_cpus" in store and int(store["nr_cpus"]) < 1:  # type: ignore[call-overload]
        raise UsageError("nr_cpus must be at least 1")
    for key in ("record_size", "erasesize", "size"):
        if key in store and int(store[key]) <= 0:  # type: ignore[call-overload]
            raise UsageError(f"{key} must be positive")
    for key in ("ecc", "offset"):
        if key in store and int(store[key]) < 0:  # type: ignore[call-overload]
            raise UsageError(f"{key} must not be negative")
    opts.store = StoreConfig(**store)  # type: ignore[arg-type]
    return opts


OPTIONS_HELP = """\
mount options (-o, comma-separated; sizes in KiB as the kernel's module parameters).
With no size option the layout is detected from the partition (pstorectl probe shows
it); once one is given, the others take the kernel's defaults as below:
  kmsg_size=N      size of each dmesg zone (default 64)
  pmsg_size=N      pmsg zone (default 0: off; a size <= 0 turns an area off)
  console_size=N   console zone (default 0)
  ftrace_size=N    ftrace area, split over nr_cpus zones (default 0)
  nr_cpus=N        the writer's nr_cpu_ids: how many ftrace zones (default 1)
  format=auto|zone|blkoops
                   mainline pstore/zone, or the blkoops RFC's 8-byte headers (default auto)
  name=NAME        back-end name in file names (default blkoops; the kernel's: pstore_blk)
  system_map=PATH  the writer's System.map (or .gz): function names in ftrace text
  abi=NAME         the writer's ABI (default auto: detected from the headers):
                   le64 (x86_64, arm64, riscv64), i386, le32 (arm, riscv32, mipsel),
                   be64 (s390x, ppc64), be32 (ppc, mips), be32a4, le32-cpuip1/3 ...
  show_erased      also show erased records whose bytes remain, read-only, in erased/
  backend=auto|zone|ramoops|mtdoops|blockconsole
                   the pstore back end that wrote the source (default auto: recognized)
  offset=N, size=N the region of the source that holds it (bytes; 0x... accepted)
  record_size=N    ramoops, mtdoops: record size in bytes (ramoops also takes its
                   console_size, ftrace_size, pmsg_size in bytes, and ecc=N)
  erasesize=N      flash (mtdpstore, mtdoops) image: erase block in bytes
  force            read a source that holds another filesystem's or a partition
                   table's signature (refused otherwise)
  ro               never write; rm fails with EROFS
  uid=, gid=       owner of the files (default root)
  umask=OCTAL      directory mode 0777 & ~umask, files 0444 & ~umask (default 0750/0444)
  allow_other      let other users in (implies default_permissions)
  default_permissions, fsname=, subtype=   as in libfuse (defaults: SOURCE, pstorefs)
  verbose          as -v: also print what goes to the log (the layout found)
  sync_before_erase=DIR
                   before each rm erases, flush DIR's filesystem (syncfs): a record
                   copied there first (systemd-pstore) is on disk before it is erased
  mount(8) options (defaults, nofail, noauto, _netdev, dev, suid, x-*, ...) are ignored.
"""


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line, with exit status `usage_status`: 1 for
    what mount(8) runs (as every other failure: mount(8) reads 2 as its own system
    error), 2 for pstorectl."""

    def __init__(self, *args: Any, usage_status: int = 2, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.usage_status = usage_status

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(self.usage_status, f"{self.prog}: {message}\n")
