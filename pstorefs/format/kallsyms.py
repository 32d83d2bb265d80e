"""Kernel symbol lookup from a System.map, as the writing kernel's kallsyms would answer.

The kernel's ftrace file names functions with `%ps`/`%pS`; offline the only source of
names is the writer's System.map. To print what the kernel printed, the table must hold
what scripts/kallsyms.c put in the image (text symbols only, without
CONFIG_KALLSYMS_ALL) and aliases must be ranked as its `compare_symbols` ranks them.

A System.map is `nm -n vmlinux`, and binutils keeps a MIPS32 kernel's addresses
sign-extended to 64 bits (elf32-mips.c sets `elf_backend_sign_extend_vma`; nm prints
the 64-bit value): `ffffffff801291bc T raise_softirq`, where the writer's `unsigned
long` holds `801291bc`. Arm, i386 and ppc32 maps list 8 digits. So a table is matched
within the writer's word size (`SymbolTable.within`), whatever the map's digits.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass

_TEXT_TYPES = frozenset("TtWw")
_TEXT_RANGES = (("_stext", "_etext"), ("_sinittext", "_einittext"))
_RANGE_MARKS = frozenset(name for pair in _TEXT_RANGES for name in pair)
_IGNORED_PREFIXES = ("__crc_", "__kstrtab_", "__kstrtabns_", "__ksymtab_", "__efistub_",
                     "__kallsyms", "$", ".L", "__compound_literal.")


@dataclass(frozen=True)
class Symbol:
    name: str
    address: int
    size: int


def _linker_provided(name: str) -> bool:
    """`may_be_linker_script_provide_symbol` in scripts/kallsyms.c."""
    if len(name) < 8 or not name.startswith("__"):
        return False
    return (name[2:].startswith(("start_", "stop_", "end_"))
            or name.endswith(("_start", "_end")))


def _rank(entry: tuple[int, str, str, int]) -> tuple[int, int, int, int, int]:
    """Sort key of `compare_symbols`: address, non-weak, not linker-provided, fewer
    leading underscores, then map order."""
    address, kind, name, seq = entry
    return (address, kind in "wW", _linker_provided(name), len(name) - len(name.lstrip("_")), seq)


class SymbolTable:
    """Answers "which function holds this address" like kernel/kallsyms.c."""

    def __init__(self, lines: Iterable[str]) -> None:
        entries: list[tuple[int, str, str, int]] = []
        marks: dict[str, int] = {}
        for seq, line in enumerate(lines):
            parts = line.split()
            if len(parts) < 3:
                continue
            try:
                address = int(parts[0], 16)
            except ValueError:
                continue
            kind, name = parts[1], parts[2]
            if name in _RANGE_MARKS:
                marks.setdefault(name, address)
            if kind in _TEXT_TYPES and not name.startswith(_IGNORED_PREFIXES):
                entries.append((address, kind, name, seq))
        self._ranges = [(marks[a], marks[b]) for a, b in _TEXT_RANGES if a in marks and b in marks]
        kept = [e for e in entries if self._kallsyms_keeps(e[0], e[2])]
        kept.sort(key=_rank)
        self._addresses: list[int] = []
        self._names: list[str] = []
        for address, _kind, name, _seq in kept:
            if self._addresses and self._addresses[-1] == address:
                continue  # an alias ranked lower: kallsyms never prints it
            self._addresses.append(address)
            self._names.append(name)

    def _kallsyms_keeps(self, address: int, name: str) -> bool:
        """`symbol_valid`: inside a text range (end inclusive), but a symbol sharing the
        end address is dropped unless it is the end marker itself."""
        for (start, end), (_s, end_name) in zip(self._ranges, _TEXT_RANGES, strict=False):
            if start <= address <= end:
                return address != end or name == end_name
        return False

    def __len__(self) -> int:
        return len(self._addresses)

    def within(self, bits: int) -> SymbolTable:
        """This table as a `bits`-bit kernel's kallsyms holds it: every address cut to
        the word (a sign-extended MIPS32 map); the table itself where all fit."""
        mask = (1 << bits) - 1
        highest = max((0, *self._addresses[-1:], *(end for _s, end in self._ranges)))
        if highest <= mask:
            return self
        table = SymbolTable(())
        table._ranges = [(start & mask, end & mask) for start, end in self._ranges]
        for address, name in sorted(zip((a & mask for a in self._addresses), self._names,
                                        strict=True), key=lambda pair: pair[0]):
            if not table._addresses or table._addresses[-1] != address:
                table._addresses.append(address)
                table._names.append(name)
        return table

    def lookup(self, address: int) -> Symbol | None:
        """The symbol holding `address`, or None where the kernel finds no name."""
        section = next(((s, e) for s, e in self._ranges if s <= address < e), None)
        if section is None:
            return None
        i = bisect.bisect_right(self._addresses, address) - 1
        if i < 0:
            return None
        start = self._addresses[i]
        end = self._addresses[i + 1] if i + 1 < len(self._addresses) else section[1]
        return Symbol(self._names[i], start, end - start)

    def name(self, address: int) -> str:
        """`%ps`: the bare name, or the kernel's `0x%lx` fallback."""
        symbol = self.lookup(address)
        return symbol.name if symbol else f"0x{address:x}"

    def name_offset(self, address: int) -> str:
        """`%pS`: `name+0xoff/0xsize`, or the kernel's `0x%lx` fallback."""
        symbol = self.lookup(address)
        if symbol is None:
            return f"0x{address:x}"
        return f"{symbol.name}+0x{address - symbol.address:x}/0x{symbol.size:x}"


NO_SYMBOLS = SymbolTable(())
"""The table used without `system_map=`: every address prints as `0x…`."""
