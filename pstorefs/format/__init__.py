"""On-disk structures of pstore/zone, per ABI.  Pure: no I/O, imports only construct.

The kernel writes its structs host-endian and host-aligned (fs/pstore/zone.c packs
nothing), so every layout here is built per `Abi`.
"""
