"""A test-only blockconsole writer: drivers/block/blockconsole.c of Joern Engel's
patches as the seed holds it (../shared/docs/seeds/004_7f47af71f693adfa.txt; "seed N" is
that file's line N), followed function by function on a device held in a bytearray,
and the series' formatting script, Documentation/block/blockconsole/mkblockconsole.

blockconsole was never merged and no kernel-written image of it exists: this writer,
not a kernel, is what pstorefs' reader is checked against. It is written from the C
alone and shares no code with pstorefs.format.blockconsole.

The kernel's concurrency is reduced to one schedule its code allows: a bio completes as
it is submitted (the device is written and `bi_end_io`, where there is one, runs), and
the writeback thread runs its loop when woken (`wake_up_process`), unless a test holds
it back (`stalled`) to model a writeback that lags behind printk. The pad timer is the
test's to fire (`bcon_pad`, "1 s later"). Kept as the code has them, because they shape
the device:

* `bcon_erase_segment`'s bios have no `bi_end_io`, so their `in_flight` never clears:
  only the tile a boot starts in is ever zeroed (seed 1107-1135);
* `bcon_init_first_page` reads `console_bytes` before the new position is stored, so a
  tile the log runs into records the previous tile's index (seed 1044-1075);
* on the wrap, `bcon_advance_write_bytes` rebuilds the first sector in the cache and
  with it drops what the console already put there (seed 1137-1145);
* `bcon_find_end_of_log` leaves tile 0's first 50 bytes in the cache's sector 1, which
  is not cleared before the console writes there (seed 1201).
"""

from __future__ import annotations

CACHE_SIZE = 1024 * 1024
PAGE_SIZE = 4096
PAGE_COUNT = CACHE_SIZE // PAGE_SIZE
SECTOR_SHIFT = 9
SECTOR_COUNT = CACHE_SIZE >> SECTOR_SHIFT
CACHE_SECTOR_MASK = SECTOR_COUNT - 1
CACHE_MASK = CACHE_SIZE - 1
SECTOR_SIZE = 1 << SECTOR_SHIFT
SECTOR_MASK = ~(SECTOR_SIZE - 1)

BLOCKCONSOLE_MAGIC = b"\nLinux blockconsole version 1.1\n"
BCON_UUID_OFS = 32
BCON_ROUND_OFS = 41
BCON_TILE_OFS = 50
BCON_HEADERSIZE = 50
BCON_LONG_HEADERSIZE = 59

U32 = 0xFFFFFFFF
EINVAL = 22


def mkblockconsole(disk: bytearray, uuid: int) -> None:
    """The series' mkblockconsole: `dd if=/dev/zero bs=1M count=1`, then a first sector
    of `echo`, the magic line, the uuid (`hexdump -e '/4 "%08x"'`), `00000000` twice,
    452 spaces and a newline."""
    disk[:CACHE_SIZE] = bytes(CACHE_SIZE)
    sector = (b"\n" + b"Linux blockconsole version 1.1\n" + b"%08x\n" % uuid
              + b"00000000\n" + b"00000000\n" + b" " * 452 + b"\n")
    disk[:len(sector)] = sector


def is_four_byte_hex(data: bytes) -> bool:
    """Seed 1150-1166: eight hex digits and a newline."""
    length = 0
    while length < len(data) and chr(data[length]) in "0123456789abcdefABCDEF" \
            and length < 9:
        length += 1
    return length == 8 and data[8:9] == b"\n"


def bcon_magic_present(data: bytes) -> int:
    """Seed 1168-1181."""
    if data[:len(BLOCKCONSOLE_MAGIC)] != BLOCKCONSOLE_MAGIC:
        return 0
    for ofs in (BCON_UUID_OFS, BCON_ROUND_OFS, BCON_TILE_OFS):
        if not is_four_byte_hex(data[ofs:ofs + 9]):
            return 0
    return 11


class BlockConsole:
    """`struct blockconsole` (seed 944-967) on a block device, as `bcon_create` (seed
    1595-1630) sets it up: one extent over the whole device, so `get_sector` is the
    byte offset. `pages` is the 1 MiB cache (`alloc_pages(GFP_KERNEL, 8)`: 256
    contiguous pages, so `bio_array[i].sector` is `pages[i * 512:]`)."""

    def __init__(self, disk: bytearray) -> None:
        """`bcon_create` + `__bcon_create` (seed 1508-1548)."""
        self.disk = disk
        self.max_bytes = len(disk) & ~CACHE_MASK
        self.console_bytes = 0
        self.write_bytes = 0
        self.round = 0
        self.uuid = 0
        self.pages = bytearray(CACHE_SIZE)
        self.in_flight = [False] * SECTOR_COUNT  # bio_array[i].in_flight
        self.zero_in_flight = [False] * PAGE_COUNT  # zero_bios[i].in_flight
        self.stalled = False
        self.bcon_init_bios()
        self.bcon_init_zero_bio()
        if self.bcon_find_end_of_log():
            raise ValueError("bcon_find_end_of_log: -EINVAL (no blockconsole header)")

    # -- seed 1013-1042 ---------------------------------------------------------------
    @staticmethod
    def __bcon_console_ofs(console_bytes: int) -> int:
        return console_bytes & ~SECTOR_MASK

    def bcon_console_ofs(self) -> int:
        return self.__bcon_console_ofs(self.console_bytes)

    @staticmethod
    def __bcon_console_sector(console_bytes: int) -> int:
        return (console_bytes >> SECTOR_SHIFT) & CACHE_SECTOR_MASK

    def bcon_console_sector(self) -> int:
        return self.__bcon_console_sector(self.console_bytes)

    def bcon_write_sector(self) -> int:
        return (self.write_bytes >> SECTOR_SHIFT) & CACHE_SECTOR_MASK

    def clear_sector(self, sector: int) -> None:
        self.pages[sector:sector + 511] = b" " * 511
        self.pages[sector + 511] = 10

    # -- seed 1044-1075 ---------------------------------------------------------------
    def bcon_init_first_page(self) -> None:
        buf = 0  # page_address(bc->pages)
        tile = (self.console_bytes >> 20) & U32
        self.clear_sector(buf)
        self.pages[buf:buf + len(BLOCKCONSOLE_MAGIC)] = BLOCKCONSOLE_MAGIC
        self.pages[buf + BCON_UUID_OFS:buf + BCON_UUID_OFS + 9] = b"%08x\0" % self.uuid
        self.pages[buf + BCON_ROUND_OFS:buf + BCON_ROUND_OFS + 9] = b"%08x\0" % self.round
        self.pages[buf + BCON_TILE_OFS:buf + BCON_TILE_OFS + 9] = b"%08x\0" % tile
        # replace NUL with newline
        self.pages[buf + BCON_UUID_OFS + 8] = 10
        self.pages[buf + BCON_ROUND_OFS + 8] = 10
        self.pages[buf + BCON_TILE_OFS + 8] = 10

    def bcon_advance_console_bytes(self, nbytes: int) -> None:
        old = self.console_bytes
        new = old + nbytes
        if new >= self.max_bytes:
            new = 0
        if (new & CACHE_MASK) == 0:
            self.bcon_init_first_page()
            new += BCON_LONG_HEADERSIZE
        self.console_bytes = new  # atomic64_cmpxchg: there is no other writer here

    # -- seed 1082-1145 ---------------------------------------------------------------
    def submit_bio(self, ofs: int, data: bytes) -> None:
        """A WRITE bio of `data` at byte `ofs`, completed at once."""
        assert 0 <= ofs and ofs + len(data) <= self.max_bytes
        self.disk[ofs:ofs + len(data)] = data

    def sync_read(self, ofs: int) -> None:
        """One sector at `ofs` into the cache's first sector (`bv_page = bc->pages`);
        reads do not fail here."""
        self.pages[:SECTOR_SIZE] = self.disk[ofs:ofs + SECTOR_SIZE]

    def bcon_erase_segment(self) -> None:
        for i in range(PAGE_COUNT):
            # If the last erase hasn't finished yet, just skip it.
            if self.zero_in_flight[i]:
                continue
            self.zero_in_flight[i] = True  # no bi_end_io: nothing ever clears it
            self.submit_bio(self.write_bytes + i * PAGE_SIZE, bytes(PAGE_SIZE))

    def bcon_advance_write_bytes(self, nbytes: int) -> None:
        self.write_bytes += nbytes
        if self.write_bytes >= self.max_bytes:
            self.write_bytes = 0
            self.round = (self.round + 1) & U32
            self.bcon_init_first_page()

    # -- seed 1183-1223 ---------------------------------------------------------------
    def bcon_find_end_of_log(self) -> int:
        start, end = 0, self.max_bytes
        sec0, sec1 = 0, SECTOR_SIZE  # bio_array[0].sector, bio_array[1].sector
        self.sync_read(0)
        # Second sanity check, out of sheer paranoia
        if not bcon_magic_present(bytes(self.pages[sec0:sec0 + SECTOR_SIZE])):
            return -EINVAL
        # simple_strtoull(..., 16): the 8 digits up to the newline
        self.uuid = int(self.pages[sec0 + BCON_UUID_OFS:sec0 + BCON_UUID_OFS + 8], 16)
        self.round = int(self.pages[sec0 + BCON_ROUND_OFS:sec0 + BCON_ROUND_OFS + 8], 16)
        self.pages[sec1:sec1 + BCON_HEADERSIZE] = self.pages[sec0:sec0 + BCON_HEADERSIZE]
        while True:
            middle = (start + end) // 2
            middle &= ~CACHE_MASK
            if middle == start:
                break
            self.sync_read(middle)
            if (self.pages[sec1:sec1 + BCON_HEADERSIZE]
                    != self.pages[sec0:sec0 + BCON_HEADERSIZE]):
                end = middle  # If the two differ, we haven't written that far yet
            else:
                start = middle
        self.write_bytes = end
        self.console_bytes = end
        self.bcon_advance_console_bytes(0)  # To skip the header
        self.bcon_advance_write_bytes(0)  # To wrap around, if necessary
        self.bcon_erase_segment()
        return 0

    # -- seed 1239-1323 ---------------------------------------------------------------
    def bcon_end_io(self, index: int) -> None:
        # Add padding (a bunch of spaces and a newline) early so bcon_pad only has to
        # advance a pointer.
        self.clear_sector(index * SECTOR_SIZE)
        self.in_flight[index] = False

    def bcon_writesector(self, index: int) -> None:
        if self.in_flight[index]:
            return
        self.in_flight[index] = True
        sector = index * SECTOR_SIZE
        self.submit_bio(self.write_bytes, bytes(self.pages[sector:sector + SECTOR_SIZE]))
        self.bcon_end_io(index)

    def bcon_writeback(self) -> None:
        """One pass of the thread's loop, after `schedule()` returned."""
        while self.bcon_write_sector() != self.bcon_console_sector():
            self.bcon_writesector(self.bcon_write_sector())
            self.bcon_advance_write_bytes(SECTOR_SIZE)
            if self.bcon_write_sector() == 0:
                self.bcon_erase_segment()

    def wake_up_process(self) -> None:
        if not self.stalled:
            self.bcon_writeback()

    # -- seed 1325-1369 ---------------------------------------------------------------
    def bcon_pad(self) -> None:
        """The pad timer, 1 s after the last `bcon_write`."""
        n = SECTOR_SIZE - self.bcon_console_ofs()
        if n != SECTOR_SIZE:
            self.bcon_advance_console_bytes(n)
            self.wake_up_process()

    def bcon_write(self, msg: bytes) -> None:
        """The console's `write`: what printk hands it."""
        while msg:
            console_bytes = self.console_bytes
            i = self.__bcon_console_sector(console_bytes)
            if self.in_flight[i]:
                break
            ofs = self.__bcon_console_ofs(console_bytes)
            n = min(len(msg), SECTOR_SIZE - ofs)
            self.pages[i * SECTOR_SIZE + ofs:i * SECTOR_SIZE + ofs + n] = msg[:n]
            msg = msg[n:]
            self.bcon_advance_console_bytes(n)
        self.wake_up_process()

    # -- seed 1374-1428 ---------------------------------------------------------------
    def bcon_init_bios(self) -> None:
        for i in range(SECTOR_COUNT):
            self.in_flight[i] = False
            self.clear_sector(i * SECTOR_SIZE)

    def bcon_init_zero_bio(self) -> None:
        for i in range(PAGE_COUNT):
            self.zero_in_flight[i] = False

    def blockconsole_panic(self) -> None:
        n = SECTOR_SIZE - self.bcon_console_ofs()
        if n != SECTOR_SIZE:
            self.bcon_advance_console_bytes(n)
        self.bcon_writeback()
