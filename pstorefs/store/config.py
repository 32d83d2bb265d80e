"""What opening a source needs: the options, in the writing kernel's names and units."""

from __future__ import annotations

from dataclasses import dataclass

from pstorefs.format.consts import ZoneFormat

SIZE_OPTIONS = ("kmsg_size", "pmsg_size", "console_size", "ftrace_size")
"""The pstore/blk layout options; with none of them given, the layout is detected."""

BACKENDS = ("zone", "ramoops", "mtdoops", "blockconsole")
"""`backend=` values: pstore/zone (pstore/blk, mtdpstore), ramoops, mtdoops, blockconsole."""


@dataclass(frozen=True)
class StoreConfig:
    """The options of a mount or of pstorectl, as given (None: not given).

    Sizes keep the back end's kernel units: pstore/blk's `kmsg_size`, `pmsg_size`,
    `console_size`, `ftrace_size` are KiB; ramoops' `record_size`, `console_size`,
    `ftrace_size`, `pmsg_size` and mtdoops' `record_size` are bytes. For pstore/zone, a
    size left None is detected when every size is None; once one is given, the others
    take the kernel's values for "not set" (kmsg 64, the rest off), as the kernel
    trusts its parameters. `name` None is the back end's own name."""

    kmsg_size: int | None = None
    pmsg_size: int | None = None
    console_size: int | None = None
    ftrace_size: int | None = None
    nr_cpus: int | None = None
    record_size: int | None = None
    ecc: int | None = None
    erasesize: int | None = None
    backend: str = "auto"
    offset: int = 0
    size: int | None = None
    name: str | None = None
    abi: str = "auto"
    format: str = "auto"
    read_only: bool = False
    system_map: str | None = None
    show_erased: bool = False
    force: bool = False

    @property
    def layout_given(self) -> bool:
        return any(getattr(self, key) is not None for key in SIZE_OPTIONS)

    @property
    def zone_format(self) -> ZoneFormat | None:
        return None if self.format == "auto" else ZoneFormat(self.format)

    def name_or(self, default: str) -> str:
        return default if self.name is None else self.name
