"""pstore/zone (fs/pstore/zone.c: pstore/blk, mtdpstore, and the blkoops RFC).

Its rooms, in the order a mount goes through them:

* `layout`: where the zones are (`psz_alloc_zones`), from the options;
* `detect`: the layout found on the source itself, when no size is given;
* `store`: `ZoneStore`, which lists the records from the zone headers
  (`psz_recovery`), reads them (`psz_pstore_read`) and erases them
  (`psz_pstore_erase`).
"""

from pstorefs.store.zone.store import DEFAULT_NAME, OPTIONS, ZoneStore, open_store

__all__ = ["DEFAULT_NAME", "OPTIONS", "ZoneStore", "open_store"]
