"""Loading the writing kernel's System.map (plain or gzipped)."""

from __future__ import annotations

import gzip

from pstorefs.errors import SourceError
from pstorefs.format.kallsyms import SymbolTable


def load_system_map(path: str) -> SymbolTable:
    try:
        with open(path, "rb") as raw:
            gzipped = raw.read(2) == b"\x1f\x8b"
        opener = gzip.open if gzipped else open
        with opener(path, "rt", encoding="ascii", errors="replace") as fh:
            table = SymbolTable(fh)
    except (OSError, EOFError) as exc:
        raise SourceError(f"system_map={path}: cannot read: {exc}") from None
    if not len(table):
        raise SourceError(f"system_map={path}: no kernel text symbols in it "
                          "(is it a System.map?)")
    return table
