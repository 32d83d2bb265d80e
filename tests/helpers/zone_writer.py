"""A test-only pstore/zone image writer that follows the kernel's write path
(fs/pstore/zone.c), for layouts and states the kernel-written fixtures do not have.

It is pinned to the kernel by tests/store/test_zone.py::test_writer_rebuilds_fixture:
rebuilding every fixture's records with it gives the fixture image byte for byte.

* `psz_alloc_zones`: pmsg, console, `ftrace_size // nr_cpus`-byte ftrace zones (as many
  as fit in `ftrace_size`), then `(total - pmsg - console - ftrace) // kmsg_size` dmesg
  zones starting right after the real end of the ftrace zones; total capped at 128 MiB.
* `psz_kmsg_write_record`: a fresh zeroed zone buffer, the zone header and
  `struct psz_kmsg_header`, the record's bytes at `sizeof(psz_kmsg_header)`, the whole
  zone written (FLUSH_ALL); zones used round-robin.
* `psz_record_write` (pmsg, console, ftrace): a ring whose `start` is the next write
  position and whose `datalen` is forced to `buffer_size` once it has wrapped; each write
  flushes the data range and the header (FLUSH_PART). Before recovery a zone only gets
  dirty in RAM (whose unwritten bytes are 0xFF) and `recover()` flushes it whole.

Every struct, the zone header included, is built with the writer's `Abi` (its byte order,
`long` size and 64-bit alignment, and where ftrace keeps the CPU), so it writes the image
of any ABI pstorefs reads; only x86_64 and i386 are pinned to kernel images.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from os import PathLike

from pstorefs.format.abi import (
    Abi,
    ftrace_record_format,
    ftrace_record_struct,
    kmsg_header_struct,
    zone_header_struct,
)
from pstorefs.format.consts import (
    PSTORE_KMSG_HEADER_MAGIC,
    PSZ_SIG,
    TS_CPU_SHIFT,
    KmsgDumpReason,
    PstoreType,
)

HEADER = 12
"""sizeof(struct psz_buffer)."""

SZ_128M = 128 << 20

U64_MASK = (1 << 64) - 1
"""The kernel's `u64 ts` drops what `stamp << 8` pushes past 64 bits."""


def deflate(text: bytes, wbits: int = -11) -> bytes:
    """Raw deflate as pstore compresses (windowBits -11 before Linux 6.6, -15 after)."""
    c = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, wbits)
    return c.compress(text) + c.flush()


def ftrace_record(abi: Abi, ip: int, parent_ip: int, stamp: int, cpu: int) -> bytes:
    """`struct pstore_ftrace_record` as fs/pstore/ftrace.c fills it (include/linux/pstore.h
    `pstore_ftrace_write_timestamp`, `pstore_ftrace_encode_cpu`): `ts = stamp << 8 | cpu`,
    or, where the ABI keeps the CPU in `ip` (`PSTORE_CPU_IN_IP`), `ip |= cpu, ts = stamp`."""
    if abi.cpu_in_ip_mask:
        ip, ts = ip | cpu, stamp
    else:
        ts = (stamp << TS_CPU_SHIFT | cpu) & U64_MASK
    return ftrace_record_struct(abi).build({"ip": ip, "parent_ip": parent_ip, "ts": ts})


def ftrace_records(abi: Abi, calls: Iterable[tuple[int, int, int, int]]) -> bytes:
    """`ftrace_record` of each (ip, parent_ip, stamp, cpu), packed many at a time (the
    struct format of the same layout), for zones of millions of records."""
    fmt = ftrace_record_format(abi)
    fields: list[int] = []
    for ip, parent_ip, stamp, cpu in calls:
        if abi.cpu_in_ip_mask:
            fields += (ip | cpu, parent_ip, stamp)
        else:
            fields += (ip, parent_ip, (stamp << TS_CPU_SHIFT | cpu) & U64_MASK)
    count = len(fields) // 3
    return struct.pack(fmt.format[0] + fmt.format[1:] * count, *fields)


def kernel_sizes(mount_options: str) -> dict[str, int]:
    """The zone sizes of a case's `mount_options` (KiB, multiples of 4) in bytes, and
    `nr_cpus`: the keyword arguments of `layout` and `ZoneWriter`."""
    opts = dict(kv.split("=", 1) for kv in mount_options.split(","))
    sizes = {key: int(opts.get(key, 0)) * 1024
             for key in ("kmsg_size", "pmsg_size", "console_size", "ftrace_size")}
    return {**sizes, "nr_cpus": int(opts.get("nr_cpus", 1))}


@dataclass
class ZoneSpec:
    """One zone of the layout."""

    type: PstoreType
    index: int
    offset: int
    size: int


def layout(size: int, *, kmsg_size: int, pmsg_size: int = 0, console_size: int = 0,
           ftrace_size: int = 0, nr_cpus: int = 1, capped: bool = True) -> list[ZoneSpec]:
    """`psz_alloc_zones`: sizes in bytes, zones in the kernel's order; `capped` at 128 MiB
    as since Linux 5.11 (5.8-5.10 used the whole partition)."""
    total = min(size, SZ_128M) if capped else size
    zones: list[ZoneSpec] = []
    off = 0
    for ptype, zsize in ((PstoreType.PMSG, pmsg_size), (PstoreType.CONSOLE, console_size)):
        if zsize:
            assert off + zsize <= total
            zones.append(ZoneSpec(ptype, 0, off, zsize))
            off += zsize
    if ftrace_size:
        per_cpu = ftrace_size // nr_cpus
        for cpu in range(ftrace_size // per_cpu):
            zones.append(ZoneSpec(PstoreType.FTRACE, cpu, off, per_cpu))
            off += per_cpu
    if kmsg_size:
        count = (total - (pmsg_size + console_size + ftrace_size)) // kmsg_size
        for i in range(count):
            zones.append(ZoneSpec(PstoreType.DMESG, i, off, kmsg_size))
            off += kmsg_size
    return zones


class Ring:
    """A pmsg, console or ftrace zone: `psz_record_write` and `psz_zone_write`."""

    def __init__(self, writer: ZoneWriter, spec: ZoneSpec) -> None:
        self.writer = writer
        self.spec = spec
        self.buffer_size = spec.size - HEADER
        self.datalen = 0
        self.start = 0
        self.ram = bytearray(b"\xff" * self.buffer_size)  # psz_init_zone: memset 0xFF
        self.dirty = False

    def write(self, data: bytes) -> None:
        """`psz_record_write`: one record (a pmsg write, a console chunk, an ftrace record)."""
        full = self.datalen >= self.buffer_size
        if len(data) > self.buffer_size:
            data = data[-self.buffer_size:]
        start = self.start
        rem = self.buffer_size - start
        if rem < len(data):
            self._zone_write(data[:rem], start)
            data = data[rem:]
            start = 0
            full = True
        self.start = start + len(data)
        self._zone_write(data, start)
        if full:
            self.datalen = self.buffer_size
            self._flush_meta()

    def _zone_write(self, buf: bytes, off: int) -> None:
        """`psz_zone_write(FLUSH_PART)`: copy into RAM, `datalen = off + len`, then write
        the data range and the header (or only mark the zone dirty before recovery)."""
        wlen = min(len(buf), self.buffer_size - off)
        if wlen:
            self.ram[off:off + wlen] = buf[:wlen]
            self.datalen = off + wlen
        if not self.writer.recovered:
            self.dirty = True
            return
        self.writer.put(self.spec.offset + HEADER + off, bytes(self.ram[off:off + wlen]))
        self._flush_meta()

    def header(self) -> bytes:
        return self.writer.zone_header(self.spec.type, self.datalen, self.start)

    def _flush_meta(self) -> None:
        if not self.writer.recovered:
            self.dirty = True
            return
        self.writer.put(self.spec.offset, self.header())

    def flush_all(self) -> None:
        """FLUSH_ALL: the header and the whole RAM buffer (how a dirty zone is flushed)."""
        self.writer.put(self.spec.offset, self.header() + bytes(self.ram))
        self.dirty = False

    def erase(self) -> None:
        """`psz_record_erase` with no new data this boot: header `sig, 0, 0`."""
        self.datalen = self.start = 0
        self.writer.put(self.spec.offset, self.header())


class ZoneWriter:
    """A pstore/zone partition image being written by a simulated kernel of ABI `abi`.

    Sizes are in bytes. `image` is the partition; `fill` is what it held before.
    """

    def __init__(self, abi: Abi, size: int, *, kmsg_size: int = 64 << 10, pmsg_size: int = 0,
                 console_size: int = 0, ftrace_size: int = 0, nr_cpus: int = 1,
                 fill: int = 0, recovered: bool = True, capped: bool = True) -> None:
        self.abi = abi
        self.image = bytearray(bytes([fill]) * size)
        self.zones = layout(size, kmsg_size=kmsg_size, pmsg_size=pmsg_size,
                            console_size=console_size, ftrace_size=ftrace_size, nr_cpus=nr_cpus,
                            capped=capped)
        self.recovered = recovered
        rings = {z.type: z for z in self.zones if z.type in (PstoreType.PMSG, PstoreType.CONSOLE)}
        self.pmsg = Ring(self, rings[PstoreType.PMSG]) if PstoreType.PMSG in rings else None
        self.console = (Ring(self, rings[PstoreType.CONSOLE])
                        if PstoreType.CONSOLE in rings else None)
        self.ftrace = [Ring(self, z) for z in self.zones if z.type is PstoreType.FTRACE]
        self.dmesg_zones = [z for z in self.zones if z.type is PstoreType.DMESG]
        self.kmsg_write_cnt = 0
        self.oops_counter = 0
        self.panic_counter = 0

    # -- raw access -------------------------------------------------------------
    def put(self, offset: int, data: bytes) -> None:
        self.image[offset:offset + len(data)] = data

    def zone_header(self, ptype: PstoreType, datalen: int, start: int) -> bytes:
        return zone_header_struct(self.abi).build(
            {"sig": PSZ_SIG ^ int(ptype), "datalen": datalen, "start": start})

    def recover(self) -> None:
        """Recovery done: from now on writes reach the disk; dirty zones are flushed whole.
        As `psz_kmsg_recover_meta`, the next dmesg record goes to the zone after the newest
        dmesg header already on the partition (erased ones, datalen 0, count), and the
        counters go on from the largest found."""
        self.recovered = True
        khdr = kmsg_header_struct(self.abi)
        newest = -1
        for i, zone in enumerate(self.dmesg_zones):
            raw = bytes(self.image[zone.offset:zone.offset + HEADER + khdr.sizeof()])
            sig, datalen = int.from_bytes(raw[:4], "little"), int.from_bytes(raw[4:8], "little")
            if sig != PSZ_SIG or not 0 <= datalen <= zone.size - HEADER:
                continue
            kmsg = khdr.parse(raw[HEADER:])
            if kmsg.magic != PSTORE_KMSG_HEADER_MAGIC:
                continue
            if kmsg.tv_sec >= newest:
                newest = kmsg.tv_sec
                self.kmsg_write_cnt = (i + 1) % len(self.dmesg_zones)
            if kmsg.reason == KmsgDumpReason.OOPS:
                self.oops_counter = max(self.oops_counter, kmsg.counter)
            elif kmsg.reason == KmsgDumpReason.PANIC:
                self.panic_counter = max(self.panic_counter, kmsg.counter)
        for ring in (self.pmsg, self.console, *self.ftrace):
            if ring is not None and ring.dirty:
                ring.flush_all()

    # -- dmesg ------------------------------------------------------------------
    def dmesg(self, data: bytes, *, reason: int = KmsgDumpReason.OOPS,
              time: tuple[int, int] = (1_700_000_000, 123_456_789), compressed: bool = False,
              counter: int | None = None) -> int:
        """`psz_kmsg_write_record` of one record (part 1): returns the zone index used.
        `data` is what pstore hands over (deflated already if `compressed`)."""
        zone = self.dmesg_zones[self.kmsg_write_cnt]
        self.kmsg_write_cnt = (self.kmsg_write_cnt + 1) % len(self.dmesg_zones)
        if counter is None:  # psz_write_kmsg_hdr
            if reason == KmsgDumpReason.OOPS:
                self.oops_counter += 1
                counter = self.oops_counter
            elif reason == KmsgDumpReason.PANIC:
                self.panic_counter += 1
                counter = self.panic_counter
            else:
                counter = 0
        buffer_size = zone.size - HEADER
        khdr = kmsg_header_struct(self.abi)
        hlen = khdr.sizeof()
        data = data[:buffer_size - hlen]
        kmsg = khdr.build({"magic": PSTORE_KMSG_HEADER_MAGIC, "tv_sec": time[0],
                           "tv_nsec": time[1], "compressed": int(compressed),
                           "counter": counter, "reason": reason})
        body = kmsg + data
        self.put(zone.offset, self.zone_header(PstoreType.DMESG, len(body), 0)
                 + body + bytes(buffer_size - len(body)))
        return zone.index

    def erase_dmesg(self, index: int) -> None:
        """`psz_kmsg_erase` on pstore/blk: FLUSH_META with `datalen = 0`."""
        zone = self.dmesg_zones[index]
        start = int.from_bytes(self.image[zone.offset + 8:zone.offset + 12],
                               "little" if self.abi.little_endian else "big", signed=True)
        self.put(zone.offset, self.zone_header(PstoreType.DMESG, 0, start))

    # -- ftrace -----------------------------------------------------------------
    def ftrace_call(self, cpu: int, ip: int, parent_ip: int, stamp: int) -> None:
        """One traced call on `cpu`: the record goes to that CPU's zone."""
        self.ftrace[cpu].write(ftrace_record(self.abi, ip, parent_ip, stamp, cpu))

    def ftrace_calls(self, cpu: int, records: bytes) -> None:
        """Many calls on `cpu` (`ftrace_records`), as `ftrace_call` one by one would
        leave the zone: written in pieces of whole records no larger than the ring, whose
        wrap then splits them where it split the records."""
        ring = self.ftrace[cpu]
        size = ftrace_record_format(self.abi).size
        step = ring.buffer_size // size * size
        for at in range(0, len(records), step):
            ring.write(records[at:at + step])

    def save(self, path: str | PathLike[str]) -> None:
        with open(path, "wb") as fh:
            fh.write(self.image)
