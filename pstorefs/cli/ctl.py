"""`pstorectl`: the store without FUSE, for scripts, containers and initramfs.

    pstorectl probe SOURCE [-o OPTS] [--json[=pretty|lines]]
    pstorectl list SOURCE [-o OPTS] [--json[=pretty|lines]]
    pstorectl cat SOURCE NAME [-o OPTS]
    pstorectl extract SOURCE DIR [-o OPTS]
    pstorectl erase SOURCE (NAME... | --all) [-o OPTS]

Same options, errors and guarantees as the mount; `-o` anywhere; exit 0 ok, 1 error,
2 usage (not run by mount(8), so free to tell a script its misuse apart). A reader
that goes away (`| head`) ends the reading commands as it ends `cat`: by SIGPIPE,
silently; an erase goes on to the end.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
import secrets
import signal
import sys
import time

from pstorefs import __version__
from pstorefs.cli.options import OPTIONS_HELP, ArgumentParser, parse_options
from pstorefs.cli.report import fail, start_logging, stderr_handler
from pstorefs.errors import PstoreError, UsageError
from pstorefs.format.consts import PstoreType
from pstorefs.store import Body, Record, Store, body_chunks, open_store

JSON_FIELDS = ("name", "type", "size", "mtime_ns", "reason", "counter", "compressed",
               "zone_offset", "attributes")
"""The stable fields of `list --json`, one object per record (docs/pstorectl.md)."""

PROBE_FIELDS = ("source", "backend", "format", "abi", "little_endian", "kmsg_size",
                "pmsg_size", "console_size", "ftrace_size", "nr_cpus", "capped", "zones",
                "records", "kernel_parameters", "mount_options", "assumed", "warnings")
"""The stable fields of `probe --json` for pstore/zone (docs/pstorectl.md); the other
back ends give `source`, `backend`, `format`, `abi`, `zones`, `records`,
`kernel_parameters`, `mount_options`, `assumed`, `warnings` and their own parameters."""


_SOURCE_HELP = "block device, MTD device or image file"


def _parser() -> ArgumentParser:
    """Every subcommand takes `-o` and so does `pstorectl` itself, so that `-o` may
    stand anywhere, as documented; the groups are joined in order."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-o", dest="options", action="append", default=[],
                        metavar="OPT[,OPT...]", help="the mount's options (pstorectl --help)")
    p = ArgumentParser(prog="pstorectl", description="Read and erase pstore records offline.",
                       epilog=OPTIONS_HELP + "\nexit status: 0 ok, 1 error, 2 bad usage",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"pstorectl {__version__}")
    p.add_argument("-o", dest="leading_options", action="append", default=[],
                   metavar="OPT[,OPT...]", help="mount options (below); also after the command")
    sub = p.add_subparsers(dest="command", required=True, parser_class=ArgumentParser,
                           metavar="COMMAND")

    def command(name: str, summary: str, description: str) -> ArgumentParser:
        cmd = sub.add_parser(name, parents=[common], help=summary, description=description)
        cmd.add_argument("source", metavar="SOURCE", help=_SOURCE_HELP)
        return cmd

    def json_flag(cmd: ArgumentParser, what: str) -> None:
        # Each form its own flag: `--json SOURCE` must not read SOURCE as a mode.
        cmd.add_argument("--json", "--json=pretty", dest="json", action="store_const",
                         const="pretty", help=f"{what} as JSON, indented")
        cmd.add_argument("--json=lines", dest="json", action="store_const", const="lines",
                         help="the same, one compact object a line (as journalctl -o json)")

    pr = command("probe", "the layout found, as the kernel parameters that give it",
                 "Print the layout SOURCE is read with (detected unless sizes are given): "
                 "the writer's module parameters, then as comments what was found, the -o "
                 "options that pin it and each default taken.")
    json_flag(pr, "one object")
    ls = command("list", "list the records",
                 "List the records, one a line: name, size, time (UTC), reason; with -o "
                 "show_erased also the erased ones whose bytes remain, as erased/NAME.")
    json_flag(ls, "one object per record")
    cat = command("cat", "write one record to stdout",
                  "Write the file NAME, as the mount shows it, to stdout.")
    cat.add_argument("name", metavar="NAME", help="a name as list prints it")
    ex = command("extract", "every record as a file in DIR",
                 "Write every record into DIR (created if needed) as a new file, mode "
                 "0600, with the record's time; nothing is written if a name is taken.")
    ex.add_argument("directory", metavar="DIR", help="where the files go")
    er = command("erase", "erase records, as rm on the mount",
                 "Erase records on SOURCE exactly as rm on the mount does: only what the "
                 "kernel's erase writes, after checking the zone still holds what was "
                 "listed, flushed before it returns.")
    er.add_argument("names", metavar="NAME", nargs="*", help="names as list prints them")
    er.add_argument("--all", action="store_true", help="erase every record")
    return p


def _dump(value: object, mode: str) -> None:
    """`value` as JSON: indented, or with `lines` each element (a list's) compact on a
    line of its own, as `journalctl -o json`, for readers that go line by line."""
    if mode == "pretty":
        json.dump(value, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return
    for item in value if isinstance(value, list) else [value]:
        sys.stdout.write(json.dumps(item, separators=(",", ":")) + "\n")


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


def _probe(store: Store, source: str, json_mode: str | None) -> None:
    layout = {"source": source, **store.layout().as_dict()}
    if json_mode:
        _dump(layout, json_mode)
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
    for note in layout["warnings"]:  # type: ignore[attr-defined]
        print(f"# warning: {note}")


ERASED_PREFIX = "erased/"
"""With `-o show_erased`, erased records are listed and read as `erased/NAME`, as on
the mount."""


_FILE_NAME = re.compile("({})-(.+)-([0-9]+)(?:\\.enc\\.z)?".format(
    "|".join(re.escape(t.file_prefix) for t in PstoreType)))
"""A file name's type, back-end name and number (`store.base.file_name`)."""


def _find(store: Store, name: str) -> Record:
    if name.startswith(ERASED_PREFIX):
        record = next((r for r in store.erased
                       if store.entry(r).name == name.removeprefix(ERASED_PREFIX)), None)
    else:
        record = store.find(name)
    if record is None:
        raise PstoreError(_no_such_record(store, name))
    return record


def _no_such_record(store: Store, name: str) -> str:
    """Names carry `name=`, and pstore/zone's default (blkoops) is not the kernel's
    (pstore_blk): a name asked with another one is told which one this source's names
    carry and the option that gives the kernel's."""
    parsed = _FILE_NAME.fullmatch(name.removeprefix(ERASED_PREFIX))
    if parsed is None or parsed[2] == store.name:
        return f"{name}: no such record (pstorectl list shows the names)"
    kernel = (f"; -o name={store.kernel_name} gives the kernel's names"
              if store.kernel_name and store.kernel_name != store.name else "")
    return (f"{name}: no such record: the names here carry name={store.name} "
            f"({parsed[1]}-{store.name}-N){kernel}")


def _list(store: Store, json_mode: str | None) -> None:
    rows = [_record_json(store, r) for r in store.records]
    for record in store.erased:
        rows.append({**_record_json(store, record),
                     "name": ERASED_PREFIX + store.entry(record).name})
    if json_mode:
        _dump(rows, json_mode)
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
            _write_new(dir_fd, entry.name, store.body(record),
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


def _write_new(dir_fd: int, name: str, body: Body, mtime_ns: int, atime_ns: int) -> None:
    """`body` as the new file `name` of `dir_fd`; FileExistsError if the name is taken."""
    temp = f".{name}.{secrets.token_hex(8)}"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600, dir_fd=dir_fd)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb", closefd=False) as fh:
            for chunk in body_chunks(body):
                fh.write(chunk)
        os.fsync(fd)
        os.utime(fd, ns=(atime_ns, mtime_ns))
        os.link(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
    finally:
        os.close(fd)
        os.unlink(temp, dir_fd=dir_fd)


def _erase(store: Store, names: list[str], everything: bool) -> None:
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
        _say(f"erased {name}")


def _say(line: str) -> None:
    """A line of erase's: a reader that went away stops no erase (the rest of stdout
    goes to /dev/null)."""
    try:
        print(line, flush=True)
    except BrokenPipeError:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno())
        os.close(null)


def ctl(args: list[str]) -> int:
    ns = _parser().parse_args(args)
    try:
        opts = parse_options(ns.leading_options + ns.options)
        if ns.command == "erase" and ns.all == bool(ns.names):
            raise UsageError("erase: give record names or --all, not both or neither")
        if ns.command == "erase" and opts.store.read_only:
            raise UsageError("erase writes, and -o ro forbids it: nothing erased")
    except UsageError as exc:
        return fail("pstorectl", exc, 2)
    if ns.command != "erase":
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `| head` ends it quietly, as cat
    held = start_logging("pstorectl", verbose=opts.verbose)
    config = opts.store
    if ns.command != "erase":
        config = dataclasses.replace(config, read_only=True)
    try:
        store = open_store(ns.source, config)
    except UsageError as exc:
        return fail("pstorectl", exc, 2)
    except (PstoreError, OSError) as exc:
        return fail("pstorectl", exc)
    stderr = stderr_handler("pstorectl", logging.INFO if opts.verbose else logging.WARNING)
    logging.getLogger().handlers[:] = [stderr]
    if not opts.verbose:
        held.replay(stderr)
    try:
        if ns.command == "probe":
            _probe(store, ns.source, ns.json)
        elif ns.command == "list":
            _list(store, ns.json)
        elif ns.command == "cat":
            for chunk in body_chunks(store.body(_find(store, ns.name))):
                sys.stdout.buffer.write(chunk)
        elif ns.command == "extract":
            _extract(store, ns.directory)
        elif store.write_refused:
            raise PstoreError(f"{ns.source}: {store.write_refused}: nothing erased")
        else:
            _erase(store, ns.names, ns.all)
    except (PstoreError, OSError) as exc:
        return fail("pstorectl", exc)
    finally:
        store.close()
    return 0


def main() -> None:
    sys.exit(ctl(sys.argv[1:]))
