"""blockconsole (the unmerged patch series): a console log in tiles (`store`)."""

from pstorefs.store.blockconsole.store import (
    DEFAULT_NAME,
    OPTIONS,
    BlockConsoleStore,
    open_store,
    recognizes,
)

__all__ = ["DEFAULT_NAME", "OPTIONS", "BlockConsoleStore", "open_store", "recognizes"]
