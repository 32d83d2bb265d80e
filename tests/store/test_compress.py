"""pstore's compressors before Linux 6.6 (pstorefs/codecs/compression.py, sw842.py).

No stream here comes from a writer of our own: the deflate, zstd, LZO and LZ4 streams
are made by the reference libraries' compressors (zlib, libzstd, liblzo2's lzo1x_1,
liblz4: the algorithms the kernel's crypto API runs, with its parameters), the 842
streams by the kernel's own sw842_compress(). Only the 842 bomb is packed by hand, to
test the output limit, not decoding.
"""

from __future__ import annotations

import tracemalloc
import zlib
from base64 import b64decode
from collections.abc import Callable
from contextlib import closing

import lz4.block
import lzo
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers.cases import CASES, Case, case_by_id
from helpers.detect import case_config
from pstorefs.codecs import compression as decompress_module
from pstorefs.codecs import sw842
from pstorefs.codecs.compression import (
    _ZSTD_MAGIC,
    CODECS,
    _zstd_stdlib,
    _zstd_zstandard,
    decompress,
)
from pstorefs.store import StoreConfig, open_store

try:
    from compression import zstd
except ImportError:
    from backports import zstd
import zstandard  # the fallback decoder, which Debian 12 ships: tested beside the stdlib's

CASE = case_by_id("kmsg-deflate-3oops")
# A kernel-written dmesg text (Linux 6.1), beginning "Oops#1 Part1\n".
TEXT = (CASE.dir / "files" / "dmesg-pstore_blk-0").read_bytes()
# Linux 6.6+'s output limit for the default 64 KiB dmesg zone: 3 * (65536 - 12 - 40).
LIMIT = 3 * 65484


def deflate(text: bytes, wbits: int = -11) -> bytes:
    """crypto/deflate.c before 6.6: Z_DEFAULT_COMPRESSION, raw, windowBits 11,
    memLevel MAX_MEM_LEVEL; platform.c since 6.6: windowBits 15."""
    packer = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, wbits, 9)
    return packer.compress(text) + packer.flush()


# The reference compressors, as the kernel's crypto algorithms call them.
COMPRESSORS: dict[str, Callable[[bytes], bytes]] = {
    "deflate": deflate,
    "zstd": lambda text: zstd.compress(text, 3),  # crypto/zstd.c ZSTD_DEF_LEVEL 3
    "lzo": lambda text: lzo.compress(text, 1, False),  # lzo1x_1_compress, no header
    "lz4": lambda text: lz4.block.compress(text, store_size=False),  # LZ4_compress_default
}

# The 842 streams: output of the kernel's sw842_compress() from torvalds/linux
# lib/842/842_compress.c at 2cc2c3cb54de578666d905537e4c15969caf0dc5 (the version
# with the CRC trailer), compiled in userspace with a shim for its kernel helpers
# (hashtable, crc32_be, unaligned big-endian access). crypto/testmgr.h holds no 842
# vectors: testmgr.c's alg_test_descs[], kept sorted by name, starts at
# "adiantum(xchacha12,aes)", with no "842" entry. So the kernel's compressor is the
# oracle.
# _KERNEL_842_OOPS is TEXT[:3001] (all 26 regular templates, I2/I4/I8 indexes past
# their ring sizes, short data); _KERNEL_842_MIXED is MIXED (repeat, zeros, short
# data); _KERNEL_842_BARE is BARE, a text without the dump header.
_KERNEL_842_OOPS = b64decode(
    "Ant7g5kZiQKAGFydDEKPDU+AtkBAQEBgXGADAwMDAwXSBMA0tzq8EDsyuQHNpb24gNi4xUFlpqbFrC2gZDY0"
    "IChkZWIDSwtxa1srk3AZWxAbGlzdHM5cyD5A3FwG9yZykgKGdjExlpiZFyIygYmlhbiAxMi5RuYFpiaFbI8p"
    "MXUxKSBh6XGQwWEAUdOVSBsZDKgiQmludQujS2OZAzFhyBEPCpuKQEBkXGhgUkBGAxIFNNUCBQUgIqKmqCov"
    "oiyFOQU1JQyAzwGgWtnOTItMkcBkYGRsWmJiWgMTYpCjw2PluASEmBcG0Ay6QIbeVtbWVkIGxpA3Mp0QMbe3"
    "OYG9sZT10dHlTAYEDgwtzSxnq24gcHN0Txsq+9N8AUAeW5kYmc9K3CUbHR8gBibGsuZHluZAsTOelbgQAI3R"
    "vcmWTlIystLkAVgcjrA7HinpCSU9TLXALk3uzSyMr8BwaHlzaWNhbAECkgppA2sLgg6Cqytr549gWZZdpa2w"
    "C1lODIwOiBbC2sraQGDxmYMplsbdstMEvBhvG6hxOWZiZgsy6QOrmwziWUKxTHkyyZ5NMmuTYhgcszGb8nFk"
    "LzMzMvoIHJlcxMjsysgUVsjuEMWpe/x8/Uvv8/f7KA4rMGZKzBwhL3TJmHyNxAREpCYoKi2DueMJo9YPZ8wf"
    "T9g/qKqpMTBTwg0JVVGBicJZDZfOmDqdsqGVHKllTyqKezFmZmQ3MMq2VecPDojCJRWSvJZhHpDCRSWEmy7t"
    "GJBcNJMYaiWwxE5hOp7CfWmTzJ7k+yf3b79l5N8MFr4bDYyiZRco1nRgpywAgKEV4ZWN1dCMpAiNKyAylJA4"
    "OTe6MoGN0aW9uOiBhd8NLss8rWVs6mm4WGQGRS449XJlc2Ujc6FwU8cvNoEDoiaBJOiBRRU1VIAKbowtzIwu"
    "TIAgUEMgKGk0NAGCMsEBWQKCSBJWCwgMTk5NgFJYQISSnqZAAxLjE2LjItZAsrE0sLcWmjzU2LTEgMDGhfDF"
    "5lDJNAoSgGW+kDdHNjOgECMwuboQKimolY2FsaWJyKwuny3EDq5iaW5nICtUCssmWWKanJ5AiHZXTu92QgKZ"
    "GpeXGJqajIE1Ieg32Axsrm5t7kFHgzc+WyBjPwFxgYHJsbHK6cgZcXGIHU7gyLHgttqWVtf3VWZmBblXpGvt"
    "vaFthYmxlIQHp6fNqzb4Tw3zALlTk5NTaYCynBkYHRAHJbW+hZ9mhUGDDlqwm2zKH8vP+zMPp0MxMzc1VVoK"
    "OoHRAnGbyDNUCBXA0sjOykDM3upm5kezY+fbT+AMTEJsYGS6QNiiJ0X3BmWj0gVamLMzMhuQAbWF4X2FyY2g"
    "a+4MzdObqXgxvK5e97O1kCAYmRmbmi6QPATg2L1BBVK4CG3tzM0s7q5WlnMtmAC03XTogV0IgeJKhAqoZbMW"
    "FcTMa0sWscVCAgCsTNSYwM98xOMwTM3urc3qaasdTVAtdJps2QMKlF5oyMxqxHFJo6zViOGZK6FEeStkyg5M"
    "jGxyVqrmuMXUdCdmFnjP6z0QMiGlybTbsM4OCezhSLnJCYGhmcmhimgUkFNRElTSzrKS7pZDS+RuvS+Y2bFf"
    "vub8BoaGhobLpAghQ1BJOiBF7iNjyQOlNAQMbQysbW5ur26xcmlmaQsbC6NLe3K6GlziouizYvY2Q0ODkwWz"
    "oKGoJIONSU0RQfjrKUqvRjU5QjAgp1zE0ICgrsYWaEnoaQRTICkK52Of0CGpmYG/St06hEVMdXtKzzAxRkZF"
    "MSIKIcEHnOZmlvcGJBbu3hAhJWFAZ8GPX6Jb/Bw81/lz3ueenhNTkzOM9KUZBhPNn5r6Tk46qgA3NNnHt92P"
    "f8MfkCYAP0x9QXj7/jPgQ2Njc4/lf6iKeXnzsDARFMIk9yaGJyk0QwsDZ98/GQDP1n7z+VCZscHef534hqYY"
    "yJXDbMc1GRoYPWLbbmv5obUcFKD/YWDmvJzlsNn8xRhoyKYoME5xhsXVKHZ7OmJ6GkKa3JCWFBDcsDkgSlz+"
    "RkpyswS0mJS3jjBKHRDk0NV0eKeiBIUEVUIMr2CCQolNLaGBngikbBHJGCSUsFkmYJpOwZChkcqUzk3d7FWs"
    "IFdKCi15YyQVLaEYa7uYwMi9kjySZJck2SfJRY+bBobuiTddNzt4gUneF2aW5nIEZdAoEDowsTYykAG1lbW9"
    "yeSBhxm84B4MWZmZTE5OCsZbxGLMzMs1sl0WdhaybmJkYrkRd8X1JlI5srk7S6gXIHRhYhNjKQNpE3uRHkgY"
    "XTbY26VmBt26iWkxOxLuN7vrb8LMTNJmuh3CkIiQmKRFRY4UyCQyNDaXIdHh8gkQoy4psVGUwUDAtvdE96SZ"
    "sxcKshLjU0MRdcXnZ5E9Pj9BUEpKGhcWSK6o6RNJSnJZfPxiw4dKSaqsJuGrGTWiFMTQ5XcIdEYRKKGQJCgi"
    "8LZhGo7CPSGEi06tQ4LaCyno2Fmzo4TKa6TX3Nqm5kAAAAAAAA=="
)
_KERNEL_842_MIXED = b64decode(
    "AoMLc0sZGZkCgBydDIKAADmxbBEjeHiROTk5Pv/ZFlOnsTSBhbiA2LjEuMQHJkWmRAUGRgAyNi0xMS0xNgFI"
    "UeGx8tkBApjMC4wMDAwUzrpAht7a2qVGQgbGluZQHRAxt7c5t7YBlPXR0eVMwIAuDC3NLGeroCBwc3RvcmVf"
    "K9N7eXMjy3BZGJnPStwfIvr8/sTYBrLmR5bmRiZwHpW4EDg5ujehyZYKDhIQsMQBTDhYrLCzWgEJJT1MtcHJ"
    "vE7NLIytrg0AeXNpY2FsIFICCmkDawuB0FSm5yenpz9E0I0dJSlrKA4MjA6IFttZSNpAYPDdw43HRylpg8GG"
    "XJWmcszEzMy6IgdXNhi2UKy25bst+XDLjZ795gcpZmPyc+XSrqZmbXAQOTK5srk7MqWQK3GdlZw0WlLn6Onq"
    "l19naGZfkGDMNjftP3HobeI/39L/AAECmBgjuw73hiJPLDzemHq9swzkMxMJDh9yNiWYGJOyG2H+7MO2L5jM"
    "xuY7MfmQCYszMyG5g15ksSaJ4lEAxAYFlny0Yg8IxCYViF0Kcm8PrEPiF6SOSuJ3FMRWLZd8vDocAAAlzvAA"
    "B0YWlsIfUnU1nYAAAAAA"
)
_KERNEL_842_BARE = b64decode(
    "A3N5AyOra4EAGhlYWRlciBpA3EDo0NLmQOgGV4dCwgb25sA8kDu3uTI5lwApubyBkdW1wAQNDKwsjK5EBWlu"
    "C2hpcyADoyvDoWEDe3AbHkgd29yZHNBcFAACBSAwQFBpA4QEhUh0MDQ6QeICIlITFBUWkLjAyNSGxw0HpD5A"
    "QkUiMkJSbsZHMuCvTkSeZYAA"
)
MIXED = b"Panic#3 Part2\n" + bytes(64) + b"x" * 600 + TEXT[200:900] + bytes(16) + b"tail!"
BARE = b"no dump header in this text, only words.\n" * 4
KERNEL_842 = [(_KERNEL_842_OOPS, TEXT[:3001]), (_KERNEL_842_MIXED, MIXED),
              (_KERNEL_842_BARE, BARE)]


def stream(codec: str, text: bytes = TEXT) -> bytes:
    return COMPRESSORS[codec](text)


def pack_bits(fields: list[tuple[int, int]]) -> bytes:
    """(value, width) fields MSB first, zero-padded to a byte: only for the 842 bomb."""
    value = nbits = 0
    for field, width in fields:
        value, nbits = value << width | field, nbits + width
    pad = -nbits % 8
    return (value << pad).to_bytes((nbits + pad) // 8, "big")


def test_codec_names() -> None:
    assert CODECS == ("deflate", "zstd", "lzo", "lz4", "842")


@pytest.mark.parametrize("codec", sorted(COMPRESSORS))
@pytest.mark.parametrize("text", [TEXT, b"Oops#1 Part1\nshort\n"], ids=["kernel", "short"])
def test_reference_streams_decode_and_are_detected(codec: str, text: bytes) -> None:
    data = stream(codec, text)
    assert decompress(data, LIMIT, codec) == (text, codec)
    assert decompress(data, LIMIT) == (text, codec)


def test_deflate_of_both_kernel_eras() -> None:
    for wbits in (-11, -15):  # crypto/deflate.c before 6.6, platform.c since
        assert decompress(deflate(TEXT, wbits), LIMIT) == (TEXT, "deflate")


def unsized_zstd(text: bytes, window_log: int) -> bytes:
    """A level-3 frame with no content size: what 5.8-5.15 kernels (zstd 1.3.1, whose
    ZSTD_getParams leaves contentSizeFlag 0) wrote, with their 2 MiB window."""
    option = zstd.CompressionParameter
    packer = zstd.ZstdCompressor(options={option.compression_level: 3,
                                          option.window_log: window_log,
                                          option.content_size_flag: 0})
    return packer.compress(text) + packer.flush()


def test_zstd_frames_of_both_kernel_eras() -> None:
    old = unsized_zstd(TEXT, 21)
    assert zstd.get_frame_info(old).decompressed_size is None
    assert decompress(old, LIMIT) == (TEXT, "zstd")
    new = stream("zstd")  # 5.16+: the size in the header, a single segment
    assert zstd.get_frame_info(new).decompressed_size == len(TEXT)
    assert decompress(new, LIMIT) == (TEXT, "zstd")


def test_zstd_windows_beyond_the_kernels_are_refused() -> None:
    assert decompress(unsized_zstd(TEXT, 22), LIMIT, "zstd") is None


def test_lz4hc_decodes_as_lz4() -> None:
    data = lz4.block.compress(TEXT, mode="high_compression", store_size=False)
    assert decompress(data, LIMIT, "lz4hc") == (TEXT, "lz4")
    assert decompress(data, LIMIT) == (TEXT, "lz4")


@pytest.mark.parametrize(("data", "text"), KERNEL_842, ids=["oops", "mixed", "bare"])
def test_kernel_842_streams(data: bytes, text: bytes) -> None:
    assert sw842.decompress(data, len(text)) == text
    assert sw842.decompress(data, len(text) - 1) is None
    assert decompress(data, LIMIT, "842") == (text, "842")


def test_842_is_detected() -> None:
    for data, text in KERNEL_842[:2]:
        assert decompress(data, LIMIT) == (text, "842")


def test_crc32_be_is_the_kernels() -> None:
    """lib/crc32.c crc32_be(0, ...): polynomial 0x04c11db7 MSB first, seed 0, no final
    xor, here bit by bit as its CRC_BE_BITS == 1 loop does (the kernel's 842 streams
    above check it too: their CRC trailer must match)."""
    def bitwise(data: bytes) -> int:
        crc = 0
        for byte in data:
            crc ^= byte << 24
            for _ in range(8):
                crc = (crc << 1 ^ (0x04C11DB7 if crc & 0x80000000 else 0)) & 0xFFFFFFFF
        return crc
    for data in (b"", b"123456789", TEXT[:1000], bytes(range(256))):
        assert sw842.crc32_be(data) == bitwise(data)


@pytest.mark.parametrize("reason", [b"Oops", b"Panic", b"Emergency", b"Shutdown",
                                    b"Unknown", b"Restart", b"Halt", b"Poweroff"])
def test_every_dump_header_is_evidence(reason: bytes) -> None:
    text = reason + b"#12 Part3\n<0>[   1.000000] Kernel panic\n"
    assert decompress(stream("lz4", text), LIMIT) == (text, "lz4")


@pytest.mark.parametrize("codec", ["zstd", "lzo", "lz4"])
@pytest.mark.parametrize("text", [BARE, b"oops#1 part1\n", b"Oops#1 Part1 no newline",
                                  b"Reboot#1 Part1\n", b" Oops#1 Part1\n"])
def test_without_the_dump_header_only_a_named_codec_decodes(codec: str, text: bytes) -> None:
    data = stream(codec, text)
    assert decompress(data, LIMIT) is None
    assert decompress(data, LIMIT, codec) == (text, codec)


def test_bare_842_needs_its_name() -> None:
    assert decompress(_KERNEL_842_BARE, LIMIT) is None
    assert decompress(_KERNEL_842_BARE, LIMIT, "842") == (BARE, "842")


def test_deflate_is_kept_without_the_dump_header() -> None:
    """What a 6.6+ kernel would show, so pstorefs shows it too."""
    assert decompress(deflate(BARE), LIMIT) == (BARE, "deflate")


def test_a_codec_with_the_header_wins_over_deflate_without(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The detection rule itself, with stand-in decoders (no real stream decodes
    under two codecs)."""
    outputs = dict.fromkeys(CODECS, None)
    monkeypatch.setattr(decompress_module, "_DECODERS",
                        {name: lambda data, limit, name=name: outputs[name]
                         for name in CODECS})
    outputs.update(deflate=b"garbage", lz4=b"Oops#1 Part1\ntext")
    assert decompress(b"x", LIMIT) == (b"Oops#1 Part1\ntext", "lz4")
    outputs.update(deflate=b"Panic#1 Part1\ntext")
    assert decompress(b"x", LIMIT) == (b"Panic#1 Part1\ntext", "deflate")
    outputs.update(deflate=None, lz4=b"garbage", lzo=b"more garbage")
    assert decompress(b"x", LIMIT) is None


def test_unknown_codec_name() -> None:
    with pytest.raises(ValueError, match="unknown compressor"):
        decompress(stream("lz4"), LIMIT, "lzma")


def all_streams() -> list[tuple[str, bytes, bytes]]:
    """(codec, stream, text) for every codec, 842 from the kernel's vectors."""
    return ([(codec, stream(codec), TEXT) for codec in sorted(COMPRESSORS)]
            + [("842", data, text) for data, text in KERNEL_842])


@pytest.mark.parametrize(("codec", "data", "text"), all_streams())
def test_output_limit_is_exact(codec: str, data: bytes, text: bytes) -> None:
    assert decompress(data, len(text), codec) == (text, codec)
    assert decompress(data, len(text) - 1, codec) is None
    assert decompress(data, -1, codec) is None


@pytest.mark.parametrize(("codec", "data", "text"), all_streams())
def test_truncated_streams(codec: str, data: bytes, text: bytes) -> None:
    end = len(data.rstrip(b"\0")) if codec == "842" else len(data)  # 842: padding aside
    assert decompress(data[:0], LIMIT, codec) is None
    for keep in sorted({1, 2, end // 3, end // 2, end - 1}):
        assert decompress(data[:keep], LIMIT, codec) is None, keep
        assert decompress(data[:keep], LIMIT) is None, keep


@pytest.mark.parametrize(("data", "text"), KERNEL_842, ids=["oops", "mixed", "bare"])
def test_842_zero_padding_is_optional(data: bytes, text: bytes) -> None:
    """sw842_compress pads to a multiple of 8 bytes with zeros after the CRC; the
    decoder stops at the CRC, so a stream cut in its padding still decodes."""
    assert sw842.decompress(data, LIMIT) == text
    assert len(data) % 8 == 0
    for cut in range(1, 8):
        got = sw842.decompress(data[:-cut], LIMIT)
        assert got in (text, None)
        if data[-cut:] != bytes(cut):
            assert got is None
    assert sw842.decompress(data + bytes(8), LIMIT) is None  # beyond the padding


def test_an_lz4_block_cut_after_a_literal_run_is_a_block() -> None:
    """LZ4 blocks have no end mark or checksum: a cut right after a literal run is
    itself a valid block, of a prefix of the text (LZ4_decompress_safe in the kernel
    takes it too). Every other cut fails."""
    data = stream("lz4")
    for keep in range(1, len(data), 7):
        got = decompress(data[:keep], LIMIT, "lz4")
        assert got is None or (TEXT.startswith(got[0]) and len(got[0]) < len(TEXT))


@pytest.mark.parametrize(("codec", "data", "text"),
                         [s for s in all_streams() if s[0] != "deflate"])
def test_trailing_garbage(codec: str, data: bytes, text: bytes) -> None:
    for tail in (b"garbage!", b"\x01", bytes(8)):
        assert decompress(data + tail, LIMIT, codec) is None, tail
        assert decompress(data + tail, LIMIT) is None, tail


def test_deflate_ignores_bytes_after_its_final_block() -> None:
    """As the kernel's inflate does, and as pstorefs always did."""
    assert decompress(deflate(TEXT) + b"garbage!", LIMIT) == (TEXT, "deflate")


@pytest.mark.parametrize(("data", "text"), KERNEL_842, ids=["oops", "mixed", "bare"])
def test_corrupt_842_never_gives_other_text(data: bytes, text: bytes) -> None:
    """Its CRC refuses any output but the text; a flipped index bit may still point at
    equal bytes in the ring and give the text itself."""
    refused = 0
    for at in range(0, len(data), 3):
        for bit in (0x01, 0x80):
            bad = bytearray(data)
            bad[at] ^= bit
            got = sw842.decompress(bytes(bad), LIMIT)
            assert got in (None, text), (at, bit)
            refused += got is None
    assert refused > 0.9 * 2 * len(range(0, len(data), 3))


@pytest.mark.parametrize(("codec", "data", "text"), all_streams())
def test_corrupt_streams_never_raise(codec: str, data: bytes, text: bytes) -> None:
    """Flipped bits in the body: deflate, LZO, LZ4 and zstd as the kernel writes it (no
    checksum) may decode to other text, of at most the limit; 842 only to the text."""
    for at in range(len(data) // 4, 3 * len(data) // 4, max(1, len(data) // 200)):
        bad = bytearray(data)
        bad[at] ^= 0x10
        for got in (decompress(bytes(bad), LIMIT, codec), decompress(bytes(bad), LIMIT)):
            assert got is None or len(got[0]) <= LIMIT
            assert got is None or codec != "842" or got[0] == text


BOMB_SIZE = 2 << 20  # ten times LIMIT


def bombs() -> list[tuple[str, bytes]]:
    zeros = bytes(BOMB_SIZE)
    return [("deflate", deflate(zeros, -15)),
            ("zstd", zstd.compress(zeros, 3)),
            ("zstd", unsized_zstd(zeros, 21)),  # no size in its header
            ("lzo", stream("lzo", zeros)),
            ("lz4", stream("lz4", zeros)),
            # zeros, then "the last 8 bytes 64 (63) times more" 4095 (1) times, end, CRC
            ("842", pack_bits([(0x1C, 5)] + [(0x1B, 5), (63, 6)] * 4095
                              + [(0x1B, 5), (62, 6), (0x1E, 5), (sw842.crc32_be(zeros), 32)]))]


@pytest.mark.parametrize(("codec", "bomb"), bombs(),
                         ids=["deflate", "zstd", "zstd-unsized", "lzo", "lz4", "842"])
def test_bombs_stop_at_the_limit(codec: str, bomb: bytes) -> None:
    assert len(bomb) < 24 << 10
    assert decompress(bomb, BOMB_SIZE, codec) == (bytes(BOMB_SIZE), codec)  # a real one
    tracemalloc.start()
    try:
        assert decompress(bomb, LIMIT, codec) is None
        assert decompress(bomb, LIMIT) is None
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * LIMIT, peak


LIMITS = st.integers(min_value=0, max_value=1 << 17)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=4096), limit=LIMITS,
       codec=st.sampled_from(["auto", *CODECS]))
def test_random_bytes_never_raise(data: bytes, limit: int, codec: str) -> None:
    got = decompress(data, limit, codec)
    assert got is None or (len(got[0]) <= limit and got[1] in CODECS)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(which=st.sampled_from(all_streams()), edits=st.lists(
    st.tuples(st.integers(min_value=0), st.integers(min_value=1, max_value=255)),
    min_size=1, max_size=8), cut=st.integers(min_value=0, max_value=16))
def test_damaged_streams_never_raise(which: tuple[str, bytes, bytes],
                                     edits: list[tuple[int, int]], cut: int) -> None:
    codec, data, text = which
    bad = bytearray(data[:len(data) - cut] if cut < len(data) else data)
    for at, xor in edits:
        bad[at % len(bad)] ^= xor
    for got in (decompress(bytes(bad), LIMIT, codec), decompress(bytes(bad), len(text))):
        assert got is None or len(got[0]) <= LIMIT


def test_kernel_deflate_fixture_reads_as_before() -> None:
    """The kernel-written deflate records still give the kernel's bytes."""
    options = dict(kv.split("=", 1) for kv in CASE.meta["mount_options"].split(","))
    config = StoreConfig(**{key: value if key == "name" else int(value)
                            for key, value in options.items()}, read_only=True)
    files = CASE.files
    with closing(open_store(str(CASE.image), config)) as store:
        names = set()
        for record in store.records:
            name = store.entry(record).name
            names.add(name)
            assert store.read(record) == files[name], name
        assert names == set(files)


# zstd through both decoders: the standard library's (or its backport), which
# pstorefs takes where importable, and python-zstandard's, its fallback (Debian 12's).
ZSTD_DECODERS = {"stdlib": _zstd_stdlib, "zstandard": _zstd_zstandard}


def empty_declared_bomb(blocks: int = 64) -> bytes:
    """A frame that declares no content (single segment, content size 0), then RLE
    blocks of 128 KiB of zeros: the case python-zstandard's decompress() returns
    without decoding, so only libzstd's own checks bound the second pass."""
    header = _ZSTD_MAGIC + bytes([0x20, 0])
    def rle(last: int) -> bytes:
        return (last | 1 << 1 | (128 << 10) << 3).to_bytes(3, "little") + b"\0"
    return header + rle(0) * (blocks - 1) + rle(1)


def zstd_cases() -> list[tuple[str, bytes, int, bytes | None]]:
    """(id, frame, limit, the text or None): the kernels' frames above and the ways
    they are refused, and frames that python-zstandard's own compressor writes."""
    old, new = unsized_zstd(TEXT, 21), stream("zstd")
    packer = zstandard.ZstdCompressor(level=3, write_content_size=False)
    empty = stream("zstd", b"")
    bomb = unsized_zstd(bytes(BOMB_SIZE), 21)
    cases = [("unsized", old, LIMIT, TEXT), ("sized", new, LIMIT, TEXT),
             ("unsized-exact", old, len(TEXT), TEXT), ("sized-exact", new, len(TEXT), TEXT),
             ("unsized-over", old, len(TEXT) - 1, None), ("sized-over", new, len(TEXT) - 1, None),
             ("unsized-limit-0", old, 0, None), ("negative-limit", new, -1, None),
             ("window-22", unsized_zstd(TEXT, 22), LIMIT, None),
             ("zstandard-unsized", packer.compress(TEXT), LIMIT, TEXT),
             ("zstandard-sized", zstandard.ZstdCompressor(level=3).compress(TEXT), LIMIT, TEXT),
             ("empty", empty, LIMIT, b""), ("empty-cut", empty[:-1], LIMIT, None),
             ("empty-garbage", empty + b"x", LIMIT, None),
             ("bomb", bomb, LIMIT, None), ("bomb-real", bomb, BOMB_SIZE, bytes(BOMB_SIZE)),
             ("bomb-declared-empty", empty_declared_bomb(), BOMB_SIZE, None),
             ("two-frames", new + new, LIMIT, None), ("not-zstd", stream("lz4"), LIMIT, None)]
    for frame_id, frame in (("unsized", old), ("sized", new)):
        cases += [(f"{frame_id}-cut-{keep}", frame[:keep], LIMIT, None)
                  for keep in (0, 4, 6, len(frame) // 2, len(frame) - 1)]
        cases += [(f"{frame_id}-tail-{tail.hex()}", frame + tail, LIMIT, None)
                  for tail in (b"garbage!", b"\x01", bytes(8))]
    return cases


@pytest.mark.parametrize(("frame", "limit", "text"),
                         [case[1:] for case in zstd_cases()], ids=[c[0] for c in zstd_cases()])
@pytest.mark.parametrize("decoder", sorted(ZSTD_DECODERS))
def test_both_zstd_decoders_give_the_same_verdicts(decoder: str, frame: bytes, limit: int,
                                                   text: bytes | None) -> None:
    assert ZSTD_DECODERS[decoder](frame, limit) == text


def test_zstandard_decodes_through_decompress(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where neither compression.zstd nor backports.zstd is importable."""
    monkeypatch.setitem(decompress_module._DECODERS, "zstd", _zstd_zstandard)
    assert decompress(unsized_zstd(TEXT, 21), LIMIT) == (TEXT, "zstd")
    assert decompress(stream("zstd"), LIMIT) == (TEXT, "zstd")
    assert decompress(stream("zstd", BARE), LIMIT) is None
    assert decompress(stream("zstd", BARE), LIMIT, "zstd") == (BARE, "zstd")


@pytest.mark.parametrize("bomb", [zstd.compress(bytes(BOMB_SIZE), 3),
                                  unsized_zstd(bytes(BOMB_SIZE), 21), empty_declared_bomb()],
                         ids=["sized", "unsized", "declared-empty"])
def test_zstandard_bombs_stop_at_the_limit(bomb: bytes) -> None:
    tracemalloc.start()
    try:
        assert _zstd_zstandard(bomb, LIMIT) is None
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * LIMIT, peak


@settings(max_examples=200, deadline=None)
@given(edits=st.lists(st.tuples(st.integers(min_value=0), st.integers(min_value=1,
                                                                      max_value=255)),
                      min_size=1, max_size=8),
       sized=st.booleans(), limit=LIMITS)
def test_damaged_frames_never_raise_through_zstandard(edits: list[tuple[int, int]],
                                                      sized: bool, limit: int) -> None:
    bad = bytearray(stream("zstd") if sized else unsized_zstd(TEXT, 21))
    for at, xor in edits:
        bad[4 + at % (len(bad) - 4)] ^= xor  # past the magic, which only selects zstd
    got = _zstd_zstandard(bytes(bad), limit)
    assert got is None or len(got) <= limit


KERNEL_CASES = [c for c in CASES if "kernel_parameters" in c.meta]
"""tests/data/kernels: each names the compressor its kernel ran (`pstore.compress`)."""


@pytest.mark.parametrize("case", KERNEL_CASES, ids=lambda c: c.id)
def test_kernel_written_records_name_the_kernels_compressor(case: Case) -> None:
    """Every record a kernel compressed decodes to the kernel's own text with the
    compressor it ran (an lz4hc record as lz4, see compression.py); the kernel's
    uncompressed records (`none`, or a dump that did not fit compressed) stay so."""
    want = case.compressor
    files = case.files
    with closing(open_store(str(case.image), case_config(case))) as store:
        records = list(store.records)
        assert records
        for record in records:
            name = store.entry(record).name
            assert store.read(record) == files[name], name
            assert store.compressor(record) == (want if record.compressed else None), name
        if want is None:
            assert not any(r.compressed for r in records)

