#!/usr/bin/env python3
"""Make one kernel-written pstore/blk case: boot a kernel under QEMU (TCG) twice on a
fresh raw partition, once to write oopses into it and once to read them back, and
assemble what the kernel showed into a case directory (the layout of
tests/data/fixtures, see its README.md).

    oracle.py --kernel bzImage --id ID --size 1M --params "pstore_blk.kmsg_size=64 ..." \
        --oopses 3 --out DIR [--modules DIR --insmod "pstore_zone.ko;pstore_blk.ko ..."]

Nothing here is read by the test suite; the suite reads the cases it made.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import tarfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BUILD = Path(os.environ.get("ORACLE_BUILD", "/work/oracle-build"))


def sh(*cmd: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, **kw)


def initramfs(modules: Path | None) -> Path:
    """busybox-static, the /init script, pstat and the given modules, as a gzip cpio."""
    stage = BUILD / "initramfs"
    shutil.rmtree(stage, ignore_errors=True)
    for d in ("bin", "proc", "sys", "dev", "modules"):
        (stage / d).mkdir(parents=True)
    shutil.copy("/bin/busybox", stage / "bin/busybox")
    (stage / "bin/sh").symlink_to("busybox")
    shutil.copy(HERE / "init", stage / "init")
    (stage / "init").chmod(0o755)
    pstat = BUILD / "pstat"
    sh("gcc", "-O2", "-static", "-o", str(pstat), str(HERE / "pstat.c"))
    shutil.copy(pstat, stage / "pstat")
    if modules:
        for ko in modules.iterdir():
            shutil.copy(ko, stage / "modules" / ko.name)
    out = BUILD / "initramfs.cpio.gz"
    files = subprocess.run("find . | sort", shell=True, cwd=stage, check=True,
                           capture_output=True).stdout
    cpio = subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], cwd=stage, input=files,
                          check=True, capture_output=True).stdout
    out.write_bytes(gzip.compress(cpio))
    return out


def boot(kernel: Path, initrd: Path, disks: list[Path], append: str, log: Path) -> float:
    """One QEMU boot to its reboot -f; returns the seconds it took."""
    cmd = ["timeout", "1500", "qemu-system-x86_64", "-accel", "tcg", "-m", "512M", "-smp", "1",
           "-nographic", "-no-reboot", "-kernel", str(kernel), "-initrd", str(initrd),
           "-append", f"console=ttyS0 printk.devkmsg=on panic=-1 {append}"]
    for d in disks:
        cmd += ["-drive", f"file={d},format=raw,if=virtio,cache=writethrough"]
    t = time.monotonic()
    with log.open("wb") as f:
        subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                       check=True)
    return time.monotonic() - t


def sha256(p: Path) -> str:
    h = hashlib.sha256()
    with p.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def size_arg(s: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(s[:-1]) * units[s[-1]] if s[-1] in units else int(s)


def mount_options(params: dict[str, str], nr_cpus: int) -> str:
    """The kernel's pstore_blk parameters as pstorefs mount options (KiB, <= 0 is 0)."""
    opts = []
    for key in ("kmsg_size", "pmsg_size", "console_size", "ftrace_size"):
        opts.append(f"{key}={max(int(params.get(key, '0')), 0)}")
    opts.append("name=pstore_blk")
    if int(params.get("ftrace_size", "0")) > 0:
        opts.append(f"nr_cpus={nr_cpus}")
    return ",".join(opts)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kernel", type=Path, required=True)
    ap.add_argument("--kernel-desc", required=True, help="who wrote it, for case.json")
    ap.add_argument("--id", required=True)
    ap.add_argument("--desc", required=True)
    ap.add_argument("--size", type=size_arg, default=1 << 20)
    ap.add_argument("--params", required=True, help="pstore/pstore_blk kernel parameters")
    ap.add_argument("--oopses", type=int, default=3)
    ap.add_argument("--crash", default="BUG,EXCEPTION")
    ap.add_argument("--filler", default="", help="text:N or random:N lines before each oops")
    ap.add_argument("--rm", default="@first", help="files to rm, comma-separated")
    ap.add_argument("--seed-erased", type=int, metavar="OFFSET",
                    help="hand-write an erased dmesg zone header at OFFSET before the "
                         "writing boot, so the kernel writes the zones after it")
    ap.add_argument("--watch", default="", help='"SKIP COUNT": 4 KiB blocks to watch')
    ap.add_argument("--modules", type=Path, help="folder of .ko files for the initramfs")
    ap.add_argument("--insmod", default="", help='"a.ko args;b.ko args", loaded first')
    ap.add_argument("--sparse", action="store_true",
                    help="keep the images as image.bin.gz (large, mostly empty partitions)")
    ap.add_argument("--fronts", action="store_true",
                    help="pmsg lines and ftrace recording too; keep the partition as the "
                         "reading boot's rm found it (its console zone changes)")
    ap.add_argument("--system-map", type=Path, help="the writer's System.map, kept gzipped")
    ap.add_argument("--uncapped", action="store_true",
                    help='case.json "capped": false: the writer (5.8-5.10) used the whole '
                         'partition, not the first 128 MiB')
    ap.add_argument("--note", action="append", default=[], help="extra README line")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()

    work = BUILD / "runs" / a.id
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    initrd = initramfs(a.modules)
    part, out = work / "part.img", work / "out.img"
    with part.open("wb") as f:
        f.truncate(a.size)
        if a.seed_erased is not None:
            # An erased x86_64 dmesg record as zone.c leaves it (datalen 0, header kept)
            # with time 1 s: recovery starts writing in the zone after it.
            f.seek(a.seed_erased)
            f.write(struct.pack("<Iii", 0x43474244, 0, 0)
                    + struct.pack("<I4xqqB3xIB7x", 0x4DFC3AE5, 1, 0, 0, 0, 2))
    insmod = f'oracle_insmod="{a.insmod}"' if a.insmod else ""
    t_write = boot(a.kernel, initrd, [part], f"{a.params} {insmod} oracle_mode=write "
                   f"oracle_oopses={a.oopses} oracle_crash={a.crash} "
                   f"oracle_filler={a.filler} " + (f'oracle_watch="{a.watch}" ' if a.watch else "")
                   + ("oracle_fronts=1" if a.fronts else ""),
                   work / "write.log")
    if b"nothing reached the disk" in (work / "write.log").read_bytes():
        sys.exit(f"{a.id}: an oops was not written; see {work}/write.log")
    shutil.copy(part, work / "image.bin")

    rm = a.rm
    with out.open("wb") as f:
        f.truncate(a.size * 2 + (64 << 20))
    t_read = boot(a.kernel, initrd, [part, out], f"{a.params} {insmod} oracle_mode=read "
                  f"oracle_rm={rm}" + (" oracle_keep_before=1" if a.fronts else ""),
                  work / "read.log")
    got = work / "got"
    with tarfile.open(out) as t:
        t.extractall(got, filter="data")
    print(f"{a.id}: write boot {t_write:.0f} s, read boot {t_read:.0f} s", file=sys.stderr)

    names = (got / "names_before.txt").read_text().split()
    if not names:
        sys.exit(f"{a.id}: the kernel showed no files; see {work}/*.log")
    before = "image.bin"
    if (got / "sha_before.txt").read_text().strip() != sha256(work / "image.bin"):
        if not (got / "image-before-erase.bin").exists():
            sys.exit(f"{a.id}: the read boot changed the partition before its rm")
        before = "image-before-erase.bin"
    if (got / "rm-errors.txt").exists() and (got / "rm-errors.txt").read_text():
        sys.exit(f"{a.id}: rm failed: {(got / 'rm-errors.txt').read_text()}")
    if (got / "sha_after.txt").read_text().strip() != sha256(part):
        sys.exit(f"{a.id}: the disk after poweroff differs from what the kernel read")
    removed = [n for n in names if n not in (got / "names_after.txt").read_text().split()]
    params = {}
    for line in (got / "params.txt").read_text().splitlines():
        path, _, value = line.partition(" ")
        params[path.split("/")[3] + "." + path.rsplit("/", 1)[1]] = value
    blk = {k.split(".", 1)[1]: v for k, v in params.items() if k.startswith("pstore_blk.")}
    files = []
    for line in (got / "stat.txt").read_text().splitlines():
        name, size, mtime, mode = line.split()
        content = (got / "files" / name).stat().st_size
        files.append({"name": name, "size": int(size),
                      "mtime_ns": int(mtime) if name.startswith("dmesg-") else None,
                      "mode": mode, "content_bytes": content})

    dest = a.out / a.id
    shutil.rmtree(dest, ignore_errors=True)
    (dest / "files").mkdir(parents=True)
    for f in files:
        shutil.copy(got / "files" / f["name"], dest / "files" / f["name"])
    images = {"image.bin": work / "image.bin", "image-after-erase.bin": part}
    if before != "image.bin":
        images[before] = got / before
    for name, src in images.items():
        if a.sparse:
            with src.open("rb") as i, gzip.open(dest / (name + ".gz"), "wb", 9) as o:
                shutil.copyfileobj(i, o, 1 << 20)
        else:
            shutil.copy(src, dest / name)
    uname = (got / "uname.txt").read_text().strip()
    case = {
        "id": a.id, "description": a.desc,
        "kernel": f"{a.kernel_desc}; uname -r {uname.split()[2]}",
        "arch": "x86_64", "image_bytes": a.size,
        "mount_options": mount_options(blk, 1),
        "files": files,
        "erase": {"image_before": before, "remove": removed,
                  "image_after": "image-after-erase.bin",
                  "names_after": (got / "names_after.txt").read_text().split()},
        "kernel_parameters": params,
        "cmdline": (got / "cmdline.txt").read_text().strip(),
    }
    if a.system_map:
        with a.system_map.open("rb") as i, gzip.open(dest / "System.map.gz", "wb", 9) as o:
            shutil.copyfileobj(i, o)
        case["system_map"] = "System.map.gz"
    if a.uncapped:
        case["capped"] = False
    if a.sparse:
        case["sparse_images"] = "gzip"
    (dest / "case.json").write_text(json.dumps(case, indent=2) + "\n")
    comp = params.get("pstore.compress", "?")
    notes = list(a.note)
    if a.fronts:
        notes += ["pmsg, console and ftrace files take the mount time as mtime (mtime_ns null "
                  "in case.json); the ftrace file's stat size is the binary records' size, "
                  "its content the text `cat` gives (content_bytes).",
                  "ftrace was recorded (debugfs pstore/record_ftrace) from before the first oops "
                  "to after the last; a pmsg line was written after each oops."]
    if before != "image.bin":
        notes.append(f"{before} is the disk as the reading boot's rm found it (its console "
                     "zone already holds that boot's messages).")
    if a.system_map:
        notes.append("`System.map.gz` is the writing kernel's symbol map (mount option "
                     "`system_map=`), which the ftrace text needs.")
    notes = "".join(f"- {n}\n" for n in notes)
    (dest / "README.md").write_text(
        f"# {a.id}\n\n{a.desc}\n\n"
        f"- Written and read back by: {case['kernel']}, arch x86_64, QEMU TCG, one CPU.\n"
        f"- Kernel command line (pstore part): `{a.params}`; the kernel reported "
        f"`pstore.compress={comp}`. Module parameters as the kernel showed them are in "
        f"case.json `kernel_parameters`.\n"
        f"- Image: `image.bin{'.gz' if a.sparse else ''}`, {a.size} bytes. `files/` holds what "
        f"the kernel showed in /sys/fs/pstore, byte for byte.\n"
        f"- Writing boot: {a.oopses} oopses (LKDTM {a.crash}), filler `{a.filler or 'none'}` "
        f"written to /dev/kmsg before each.\n"
        f"- Erase: from `{before}`, the kernel's `rm` of {', '.join(removed)} gave "
        f"`image-after-erase.bin`; afterwards it listed "
        f"{', '.join(case['erase']['names_after']) or 'nothing'}.\n"
        f"{notes}"
        f"- Made by contrib/oracle/oracle.py; the read boot's dmesg is `dmesg-read.txt`.\n")
    shutil.copy(got / "dmesg.txt", dest / "dmesg-read.txt")
    print(json.dumps({"id": a.id, "files": [(f["name"], f["size"]) for f in files],
                      "removed": removed, "compress": comp}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
