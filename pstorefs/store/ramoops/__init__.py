"""ramoops (fs/pstore/ram.c, ram_core.c): a RAM region, or an image of one.

* `layout`: where the zones are (`ramoops_probe`), from the module parameters;
* `detect`: whether a source is a ramoops region, and its layout when no size is given;
* `store`: `RamoopsStore`, which reads the zones as the kernel's probe does and erases
  as `ramoops_pstore_erase`.
"""

from pstorefs.store.ramoops.detect import detect_layout, layout_from_options, recognizes
from pstorefs.store.ramoops.layout import RamoopsGeometry
from pstorefs.store.ramoops.store import DEFAULT_NAME, OPTIONS, RamoopsStore, open_store

__all__ = ["DEFAULT_NAME", "OPTIONS", "RamoopsGeometry", "RamoopsStore", "detect_layout",
           "layout_from_options", "open_store", "recognizes"]
