"""Erasing on flash: whole erase blocks go to 0xFF, and nothing a block also holds is
lost with it.

NOR/NAND flash can only turn bits from 1 to 0 on a write; an erase block goes back
to all 0xFF as a whole. mtdpstore's and mtdoops' `rm` therefore erase whole blocks.
Where a block holds more than the record removed (mtdpstore with 128 KiB blocks and
64 KiB zones, mtdoops with several pages a block), the kernel loses the neighbours;
here the rest of the block is written back, so a record the user did not remove
survives.

On an MTD character device (/dev/mtdN) the geometry comes from the MEMGETINFO ioctl
and the erase is MEMERASE (include/uapi/mtd/mtd-abi.h), as `flash_erase` does; the
write-back goes in whole pages (`writesize`), as NAND requires. On an image or a block
device the erase is a write of 0xFF bytes and the erase block size is `erasesize=`.
"""

from __future__ import annotations

import fcntl
import platform
import struct
from dataclasses import dataclass

from pstorefs.errors import DeviceError, GeometryError, ReadOnlyError
from pstorefs.store.device import SECTOR_SIZE, Device

ERASED = 0xFF

MTD_INFO_USER = struct.Struct("=B3x5IQ")
"""`struct mtd_info_user { __u8 type; __u32 flags, size, erasesize, writesize, oobsize;
__u64 padding; }`, C-aligned: 3 bytes of padding after `type`, `padding` at 24; 32 bytes
on every ABI."""

ERASE_INFO_USER = struct.Struct("=II")
"""`struct erase_info_user { __u32 start; __u32 length; }`."""


def _ioc(direction: str, nr: int, size: int, machine: str | None = None) -> int:
    """`_IOC(dir, 'M', nr, size)` as the running kernel's ABI encodes it: asm-generic
    (2 direction bits, write 1, read 2, 14 size bits), or powerpc, mips, sparc and
    alpha (3 direction bits, read 2, write 4, 13 size bits)."""
    machine = platform.machine() if machine is None else machine
    if machine.startswith(("ppc", "powerpc", "mips", "sparc", "alpha")):
        bits, size_bits = {"r": 2, "w": 4}[direction], 13
    else:
        bits, size_bits = {"r": 2, "w": 1}[direction], 14
    return bits << (16 + size_bits) | size << 16 | ord("M") << 8 | nr


def memgetinfo(machine: str | None = None) -> int:
    """`MEMGETINFO`: `_IOR('M', 1, struct mtd_info_user)`."""
    return _ioc("r", 1, MTD_INFO_USER.size, machine)


def memerase(machine: str | None = None) -> int:
    """`MEMERASE`: `_IOW('M', 2, struct erase_info_user)`."""
    return _ioc("w", 2, ERASE_INFO_USER.size, machine)


@dataclass(frozen=True)
class MtdInfo:
    """What MEMGETINFO tells of an MTD device (`struct mtd_info_user`)."""

    type: int
    flags: int
    size: int
    erasesize: int
    writesize: int
    oobsize: int

    @classmethod
    def unpack(cls, raw: bytes) -> MtdInfo:
        return cls(*MTD_INFO_USER.unpack(raw)[:6])


def mtd_info(device: Device) -> MtdInfo:
    """The MTD device's geometry, from the MEMGETINFO ioctl."""
    try:
        raw = fcntl.ioctl(device.fd, memgetinfo(), bytes(MTD_INFO_USER.size))
    except OSError as exc:
        raise DeviceError(f"{device.path}: MEMGETINFO failed: {exc.strerror}",
                          exc.errno) from None
    return MtdInfo.unpack(raw)


def erase_block_size(device: Device, given: int | None) -> int | None:
    """The erase block size erases work in: an MTD device's own (which `erasesize=` may
    only repeat), or `erasesize=` for an image or a block device (None: not given)."""
    if not device.is_mtd:
        return given
    info = mtd_info(device)
    if given is not None and given != info.erasesize:
        raise GeometryError(f"erasesize={given}: {device.path} erases in blocks of "
                            f"{info.erasesize} bytes")
    if info.erasesize <= 0 or device.base % info.erasesize:
        raise GeometryError(f"{device.path}: offset={device.base} does not start an erase "
                            f"block of {info.erasesize} bytes")
    return info.erasesize


def erase_keeping(device: Device, offset: int, length: int, erasesize: int) -> None:
    """Erase `[offset, offset + length)` as flash does, and lose nothing else; durable
    once the caller syncs (`Store.erase` does).

    An image or a block device holding a flash dump takes any write: the range alone
    is written with 0xFF, which leaves the block as an erase of it followed by a
    write-back of the rest would, without the moment in between when the neighbours
    exist nowhere. A real MTD device erases whole blocks only: every block the range
    touches is erased, then the bytes outside the range are written back; a power cut
    between the two loses the neighbours (flash gives no smaller erase, and the kernel
    itself does the same without the write-back)."""
    if not device.is_mtd:
        device.write(offset, bytes([ERASED]) * length)
        return
    first = offset // erasesize * erasesize
    end = min(-(-(offset + length) // erasesize) * erasesize, device.size)
    before = device.read(first, end - first)
    unit = max(mtd_info(device).writesize, SECTOR_SIZE)  # whole NAND pages
    _mtd_erase(device, first, end - first)
    kept = bytearray(before)
    stop = min(offset + length, end)
    kept[offset - first:stop - first] = bytes([ERASED]) * (stop - offset)
    for start, run in _programmed_units(bytes(kept), unit):
        device.write(first + start, run)


def _mtd_erase(device: Device, offset: int, length: int) -> None:
    """MEMERASE of whole erase blocks; it returns once the flash is erased."""
    if device.read_only:
        raise ReadOnlyError(f"{device.path}: read-only")
    start = device.base + offset
    if start + length > 1 << 32:
        raise GeometryError(f"{device.path}: erase at {start:#x} lies past the 4 GiB "
                            "MEMERASE reaches")
    try:
        fcntl.ioctl(device.fd, memerase(), ERASE_INFO_USER.pack(start, length))
    except OSError as exc:
        raise DeviceError(f"{device.path}: MEMERASE of {length} bytes at {start:#x} "
                          f"failed: {exc.strerror}", exc.errno, writing=True) from None


def _programmed_units(data: bytes, unit: int) -> list[tuple[int, bytes]]:
    """The runs of whole `unit`-byte pieces of `data` (blocks read from their start)
    that hold anything but erased flash: only they need writing back, and on NAND a
    write must cover whole pages."""
    spans: list[list[int]] = []
    for at in range(0, len(data), unit):
        piece = data[at:at + unit]
        if piece.count(ERASED) == len(piece):
            continue
        if spans and spans[-1][1] == at:
            spans[-1][1] = at + len(piece)
        else:
            spans.append([at, at + len(piece)])
    return [(start, data[start:end]) for start, end in spans]
