"""How both commands speak: nothing on success but warnings, every error one line.

While a source is opened the store logs what it found (the layout, at INFO) and what it
took for granted (WARNING). Those records are held until the outcome is known: a
failure prints its one line alone, a success its warnings on stderr (as mount(8)'s
"write-protected, mounted read-only") and the rest to the log. `-v` prints them as they
come.
"""

from __future__ import annotations

import logging
import sys


def error_line(exc: BaseException) -> str:
    """`exc` as one line: a PstoreError's text; an OSError as `file: strerror`, without
    Python's "[Errno N]"."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    return str(exc)


def stderr_handler(prog: str, level: int) -> logging.Handler:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{prog}: %(message)s"))
    handler.setLevel(level)
    return handler


class HeldLog(logging.Handler):
    """The records logged while the source is opened, kept for whoever the outcome
    says should get them."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def replay(self, handler: logging.Handler) -> None:
        for record in self.records:
            if record.levelno >= handler.level:
                handler.handle(record)

    def warnings(self, prog: str) -> str:
        """The warnings held, as stderr shows them."""
        return "".join(f"{prog}: {r.getMessage()}\n" for r in self.records
                       if r.levelno >= logging.WARNING)


def start_logging(prog: str, *, verbose: bool, debug: bool = False) -> HeldLog:
    """Hold every record from INFO (DEBUG with `debug`) up; with `verbose`, print each
    on stderr as it comes as well."""
    level = logging.DEBUG if debug else logging.INFO
    held = HeldLog()
    root = logging.getLogger()
    root.setLevel(level)
    root.handlers[:] = [held] + ([stderr_handler(prog, level)] if verbose else [])
    return held


def fail(prog: str, exc: BaseException | str, status: int = 1) -> int:
    """Say why in one line and return the exit status. Records held for the outcome
    are dropped: the line says what matters."""
    sys.stderr.write(f"{prog}: {exc if isinstance(exc, str) else error_line(exc)}\n")
    sys.stderr.flush()
    return status
