"""ramoops (fs/pstore/ram.c, ram_core.c): a RAM region, or an image of one.

* `detect`: whether a source is a ramoops region, and its layout when no size is given;
* `store`: `RamoopsStore`, which reads the zones as the kernel's probe does and erases
  as `ramoops_pstore_erase`.
"""

from pstorefs.store.ramoops.store import (
    DEFAULT_NAME,
    OPTIONS,
    RamoopsStore,
    detect_layout,
    layout_from_options,
    open_store,
    recognizes,
)

__all__ = ["DEFAULT_NAME", "OPTIONS", "RamoopsStore", "detect_layout", "layout_from_options",
           "open_store", "recognizes"]
