"""mtdoops (drivers/mtd/mtdoops.c): one record per flash page (`store`)."""

from pstorefs.store.mtdoops.store import (
    DEFAULT_NAME,
    OPTIONS,
    MtdoopsStore,
    open_store,
    recognizes,
)

__all__ = ["DEFAULT_NAME", "OPTIONS", "MtdoopsStore", "open_store", "recognizes"]
