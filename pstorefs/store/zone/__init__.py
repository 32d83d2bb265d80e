"""pstore/zone (fs/pstore/zone.c: pstore/blk, mtdpstore, and the blkoops RFC).

Its rooms, in the order a mount goes through them:

* `layout`: where the zones are (`psz_alloc_zones`), from the options (`Geometry`);
* `detect`: the layout found on the source itself when no size is given, in steps:
  `scan` (the headers found), `infer` (the dmesg zones and the checks), `fronts` (the
  pmsg, console and ftrace areas in front of them), and the 128 MiB cap;
* `recovery`: the bytes at every zone start, read once, and the compact listing;
* `store`: `ZoneStore`, in zone.c's order: `psz_recovery` (the records), then
  `psz_pstore_read` (a record's file), then `psz_pstore_erase`.
"""

from pstorefs.store.zone.store import DEFAULT_NAME, OPTIONS, ZoneStore, open_store

__all__ = ["DEFAULT_NAME", "OPTIONS", "ZoneStore", "open_store"]
