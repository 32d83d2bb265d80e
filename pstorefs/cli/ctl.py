"""`pstorectl`: the store without FUSE, for scripts, containers and initramfs.

    pstorectl probe SOURCE [-o OPTS] [--json]
    pstorectl list SOURCE [-o OPTS] [--json]
    pstorectl cat SOURCE NAME [-o OPTS]
    pstorectl extract SOURCE DIR [-o OPTS]
    pstorectl erase SOURCE (NAME... | --all) [-o OPTS]

Same options, errors and guarantees as the mount; exit 0 ok, 1 error, 2 usage.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import secrets
import sys
import time

from pstorefs import __version__
from pstorefs.cli.options import OPTIONS_HELP, ArgumentParser, parse_options
from pstorefs.errors import PstoreError, UsageError
from pstorefs.store import Record, Store, open_store

log = logging.getLogger("pstorectl")

JSON_FIELDS = ("name", "type", "size", "mtime_ns", "reason", "counter", "compressed",
               "zone_offset", "attributes")
"""The stable fields of `list --json`, one object per record (docs/pstorectl.md)."""

PROBE_FIELDS = ("source", "backend", "format", "abi", "little_endian", "kmsg_size",
                "pmsg_size", "console_size", "ftrace_size", "nr_cpus", "capped", "zones",
                "records", "kernel_parameters", "mount_options", "assumed")
"""The stable fields of `probe --json` for pstore/zone (docs/pstorectl.md); the other
back ends give `source`, `backend`, `format`, `abi`, `zones`, `records`,
`kernel_parameters`, `mount_options`, `assumed` and their own parameters."""


def _parser() -> ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-o", dest="options", action="append", default=[],
                        metavar="OPT[,OPT...]", help="the mount's options")
    p = ArgumentParser(prog="pstorectl", description="Read and erase pstore records offline.",
                       epilog=OPTIONS_HELP + "\nexit status: 0 ok, 1 error, 2 bad usage",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"pstorectl {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)
    pr = sub.add_parser("probe", parents=[common],
                        help="the layout found, as the kernel parameters that give it")
    pr.add_argument("source", metavar="SOURCE")
    pr.add_argument("--json", action="store_true", help="one JSON object")
    ls = sub.add_parser("list", parents=[common], help="list the records")
    ls.add_argument("source", metavar="SOURCE")
    ls.add_argument("--json", action="store_true", help="a JSON array, one object per record")
    cat = sub.add_parser("cat", parents=[common], help="write one record to stdout")
    cat.add_argument("source", metavar="SOURCE")
    cat.add_argument("name", metavar="NAME")
    ex = sub.add_parser("extract", parents=[common], help="every record as a file in DIR")
    ex.add_argument("source", metavar="SOURCE")
    ex.add_argument("directory", metavar="DIR")
    er = sub.add_parser("erase", parents=[common], help="erase records, as rm on the mount")
    er.add_argument("source", metavar="SOURCE")
    er.add_argument("names", metavar="NAME", nargs="*")
    er.add_argument("--all", action="store_true", help="erase every record")
    return p


def _record_json(store: Store, record: Record) -> dict[str, object]:
    entry = store.entry(record)
    attributes = store.attributes(record)
    return {
        "name": entry.name,
        "type": record.type.file_prefix,
        "size": entry.size,
        "mtime_ns": entry.time_ns,
        "reason": attributes.get("reason"),
        "counter": record.counter,
        "compressed": record.compressed,
        "zone_offset": record.zones[0].offset,
        "attributes": attributes,
    }


def _probe(store: Store, source: str, as_json: bool) -> None:
    layout = {"source": source, **store.layout().as_dict()}
    if as_json:
        json.dump(layout, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return
    print(layout["kernel_parameters"])
    print(f"# {source}: " + ", ".join(
        f"{key} {layout[key]}" for key in ("backend", "format", "abi", "zones", "records")
        if key in layout) + ("" if layout.get("capped", True) else ", past the 128 MiB cap"))
    if layout.get("ftrace_size"):
        # Not `nr_cpus=`: pasted onto a command line that boot parameter limits the CPUs.
        cpus = layout["nr_cpus"]
        print(f"# writer: {cpus} CPU{'s' if cpus != 1 else ''} (nr_cpu_ids), one ftrace "
              "zone each")
    print(f"# mount: -o {layout['mount_options']}")
    for note in layout["assumed"]:  # type: ignore[attr-defined]
        print(f"# assumed: {note}")


ERASED_PREFIX = "erased/"
"""With `-o show_erased`, erased records are listed and read as `erased/NAME`, as on
the mount."""


def _find(store: Store, name: str) -> Record:
    if name.startswith(ERASED_PREFIX):
        record = next((r for r in store.erased
                       if store.entry(r).name == name.removeprefix(ERASED_PREFIX)), None)
    else:
        record = store.find(name)
    if record is None:
        raise PstoreError(f"{name}: no such record")
    return record


def _list(store: Store, as_json: bool) -> None:
    rows = [_record_json(store, r) for r in store.records]
    for record in store.erased:
        rows.append({**_record_json(store, record),
                     "name": ERASED_PREFIX + store.entry(record).name})
    if as_json:
        json.dump(rows, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return
    for row in rows:
        when = ("-" if row["mtime_ns"] is None else
                time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(int(row["mtime_ns"]) // 10**9)))
        print(f"{row['name']:<32} {row['size']:>9}  {when}  {row['reason'] or ''}")


def _extract(store: Store, directory: str) -> None:
    """Every record as a file of `directory`, written as systemd-pstore writes its
    copies: a new temporary file (`O_EXCL|O_NOFOLLOW`, mode 0600 whatever the umask),
    synced, its times set on the descriptor, then linked under its name, which must not
    exist yet. So a name someone else placed there (a file, a symlink to a root-only
    file) is never written through or replaced: it is refused before anything is
    written."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        entries = [(record, store.entry(record)) for record in store.records]
        taken = [e.name for _, e in entries if _exists(e.name, dir_fd)]
        if taken:
            raise PstoreError(f"{directory}: {', '.join(taken)} already there: nothing "
                              "extracted (extract into an empty directory)")
        now = time.time_ns()
        for record, entry in entries:
            _write_new(dir_fd, entry.name, store.read(record),
                       entry.time_ns if entry.time_ns is not None else now, now)
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _exists(name: str, dir_fd: int) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _write_new(dir_fd: int, name: str, body: bytes, mtime_ns: int, atime_ns: int) -> None:
    """`body` as the new file `name` of `dir_fd`; FileExistsError if the name is taken."""
    temp = f".{name}.{secrets.token_hex(8)}"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600, dir_fd=dir_fd)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb", closefd=False) as fh:
            fh.write(body)
        os.fsync(fd)
        os.utime(fd, ns=(atime_ns, mtime_ns))
        os.link(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
    finally:
        os.close(fd)
        os.unlink(temp, dir_fd=dir_fd)


def _erase(store: Store, names: list[str], everything: bool) -> None:
    if everything == bool(names):
        raise UsageError("erase: give record names or --all, not both or neither")
    if everything:
        targets = {}
        for record in store.records:
            try:
                targets[record] = store.entry(record).name
            except PstoreError:
                targets[record] = f"{record.type.file_prefix} record {record.id}"
    else:
        targets = {_find(store, name): name for name in dict.fromkeys(names)}
    for record, name in targets.items():
        store.erase(record)
        print(f"erased {name}")


def ctl(args: list[str]) -> int:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("pstorectl: %(message)s"))
    logging.getLogger().handlers[:] = [handler]
    logging.getLogger().setLevel(logging.WARNING)
    ns = _parser().parse_args(args)
    try:
        opts = parse_options(ns.options)
        config = opts.store
        if ns.command != "erase" and not config.read_only:
            config = dataclasses.replace(config, read_only=True)
        store = open_store(ns.source, config)
        try:
            if ns.command == "probe":
                _probe(store, ns.source, ns.json)
            elif ns.command == "list":
                _list(store, ns.json)
            elif ns.command == "cat":
                sys.stdout.buffer.write(store.read(_find(store, ns.name)))
            elif ns.command == "extract":
                _extract(store, ns.directory)
            else:
                _erase(store, ns.names, ns.all)
        finally:
            store.close()
    except UsageError as exc:
        log.error("%s", exc)
        return 2
    except PstoreError as exc:
        log.error("%s", exc)
        return 1
    except OSError as exc:  # one line, without Python's "[Errno N]"
        where = f"{exc.filename}: " if exc.filename else ""
        log.error("%s%s", where, exc.strerror or exc)
        return 1
    return 0


def main() -> None:
    sys.exit(ctl(sys.argv[1:]))
