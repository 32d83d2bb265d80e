"""ramoops' format: the zone layout rule, the ECC geometry, the record header and
Reed-Solomon, pinned to the kernel's ramoops-ecc16 case."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers.ramoops import ECC16, layout_of
from helpers.reed_solomon_reference import ReferenceDecoder
from pstorefs.codecs.reed_solomon import NN, RsCodec, rs_codec
from pstorefs.errors import GeometryError
from pstorefs.format.consts import PstoreType
from pstorefs.format.ramoops import ecc_geometry, parse_kmsg_hdr
from pstorefs.store.ramoops.layout import RamoopsGeometry


# -- the zone layout rule and the ECC geometry (08-other-backends-verified.md) --------------
def test_dmesg_zone_size_is_aligned_down_not_record_size() -> None:
    spans = RamoopsGeometry(512 << 10, 32768, 65536, 32768, 16384, ecc_size=16).zones()
    dmesg_zones = [s for s in spans if s.type is PstoreType.DMESG]
    assert len(dmesg_zones) == 12 and {s.size for s in dmesg_zones} == {0x8554}
    console = next(s for s in spans if s.type is PstoreType.CONSOLE)
    assert console.offset == 0x63FF0
    assert [s.type for s in spans[12:]] == [PstoreType.CONSOLE, PstoreType.FTRACE,
                                            PstoreType.PMSG]


@pytest.mark.parametrize(("zone", "data", "blocks"), [
    (0x4000, 14532, 114), (0x10000, 58228, 455), (0x8000, 29092, 228), (0x8554, 30312, 237)])
def test_ecc_geometry(zone: int, data: int, blocks: int) -> None:
    g = ecc_geometry(zone, 16)
    assert (g.buffer_size, g.ecc_blocks) == (data, blocks)
    assert g.par_header == zone - 16
    if zone == 0x4000:
        assert (g.par_buffer, g.par_header) == (0x38D0, 0x3FF0)


def test_ftrace_per_cpu_zones_and_room() -> None:
    spans = RamoopsGeometry(65536, 8192, 8192, 8192, 8192, nr_cpus=3).zones()
    ftrace = [s for s in spans if s.type is PstoreType.FTRACE]
    assert [(s.offset, s.size) for s in ftrace] == [(49152, 2730), (51882, 2730),
                                                    (54612, 2730)]  # ALIGN_DOWN(8192 / 3, 2)
    assert spans[-1].type is PstoreType.PMSG and spans[-1].offset == 57342
    with pytest.raises(GeometryError):
        RamoopsGeometry(16384, 8192, 8192, 8192, 8192).zones()
    with pytest.raises(GeometryError):
        RamoopsGeometry(65536, 0, 0, 0, 0).zones()
    with pytest.raises(GeometryError):
        ecc_geometry(40, 16)  # the parity would leave no room for data


# -- the record header (ramoops_read_kmsg_hdr) ---------------------------------------------
@pytest.mark.parametrize(("line", "sec", "nsec", "compressed", "length"), [
    (b"====1795447776.771826-C\n\xb4U", 1795447776, 771826000, True, 24),
    (b"====1795447846.261874-D\nOops", 1795447846, 261874000, False, 24),
    (b"====12.5\nOops", 12, 5000, False, 9),           # the older header, usec any width
    (b"====12.5-X\n\n  Oops", 12, 5000, False, 14),    # \n takes every white space after
    (b"==== 7. 9-C\nx", 7, 9000, True, 12),            # numbers may follow white space
    (b"====-3.1-D\n", -3, 1000, False, 11),
    (b"====1.2-", 1, 2000, False, 7),                  # the old form matches first 2
    (b"====x", 0, 0, False, 0), (b"===", 0, 0, False, 0), (b"", 0, 0, False, 0),
    (b"====1.\x002-C\n", 0, 0, False, 0),              # a C string ends at NUL
])
def test_kmsg_header(line: bytes, sec: int, nsec: int, compressed: bool, length: int) -> None:
    h = parse_kmsg_hdr(line)
    assert (h.tv_sec, h.tv_nsec, h.compressed, h.length) == (sec, nsec, compressed, length)


def test_time_zero_is_the_mount_time_and_huge_times_clamp() -> None:
    assert parse_kmsg_hdr(b"====0.5-C\n").time_ns is None
    assert parse_kmsg_hdr(b"====99999999999999999999.1-D\n").time_ns == (1 << 63) - 1


# -- Reed-Solomon, pinned to the kernel ---------------------------------------------------------
def test_parity_is_the_kernels() -> None:
    """Every header and data block parity of the ecc16 image is what the encoder gives."""
    image = ECC16.image.read_bytes()
    rs = rs_codec(16)
    layout = layout_of(ECC16)
    checked = 0
    for span in layout.zones():
        g = ecc_geometry(span.size, 16)
        base = span.offset
        assert rs.encode(image[base:base + 12]) == image[base + g.par_header:][:16]
        for index in range(g.ecc_blocks):
            at, size = g.block(index)
            block = image[base + 12 + at:base + 12 + at + size]
            assert rs.encode(block) == image[base + g.par_buffer + 16 * index:][:16]
            checked += 1
    assert checked == 16 * 114


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(data=st.binary(min_size=1, max_size=128), nroots=st.sampled_from([2, 8, 16, 32]),
       seed=st.integers(0, 2**32))
def test_decode_corrects_up_to_half_the_roots(data: bytes, nroots: int, seed: int) -> None:
    rs = rs_codec(nroots)
    par = rs.encode(data)
    rnd = random.Random(seed)
    word = bytearray(data + par)
    positions = rnd.sample(range(len(word)), min(rnd.randrange(nroots // 2 + 1), len(word)))
    for pos in positions:
        word[pos] ^= rnd.randrange(1, 256)
    result = rs.decode(bytes(word[:len(data)]), bytes(word[len(data):]))
    assert result is not None
    assert (result.data, result.par, result.corrected) == (data, par, len(positions))


def test_decode_gives_up_beyond_its_power() -> None:
    rs = rs_codec(16)
    rnd = random.Random(3)
    data = bytes(rnd.randrange(256) for _ in range(128))
    par = rs.encode(data)
    refused = 0
    for _ in range(50):
        word = bytearray(data + par)
        for pos in rnd.sample(range(len(word)), 9):
            word[pos] ^= rnd.randrange(1, 256)
        result = rs.decode(bytes(word[:128]), bytes(word[128:]))
        refused += result is None
        assert result is None or result.data != data  # 9 errors: never "fixed" right
    assert refused >= 45


def _damaged(rnd: random.Random, nroots: int, length: int, errors: int) -> tuple[bytes, bytes]:
    """A block of `length` data symbols and its parity with `errors` symbols changed."""
    data = rnd.randbytes(length)
    word = bytearray(data + rs_codec(nroots).encode(data))
    for pos in rnd.sample(range(len(word)), min(errors, len(word))):
        word[pos] ^= rnd.randrange(1, 256)
    return bytes(word[:length]), bytes(word[length:])


def _agree(nroots: int, words: list[tuple[bytes, bytes]]) -> None:
    reference = ReferenceDecoder(rs_codec(nroots))
    for (data, par), got in zip(words, rs_codec(nroots).decode_many(words), strict=True):
        want = reference.decode(data, par)
        assert (got is None) == (want is None), (nroots, len(data))
        if want is not None:
            assert got is not None
            assert (got.data, got.par, got.corrected) == (want.data, want.par, want.corrected)


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(nroots=st.sampled_from([1, 2, 3, 8, 16, 17, 32, 64, 127]), seed=st.integers(0, 2**32))
def test_batch_decoder_agrees_with_the_kernels_port(nroots: int, seed: int) -> None:
    """The batch decoder and the step-for-step port of decode_rs.c agree on every block:
    clean, within the code's power, just past it (where the kernel may still "correct"
    into another codeword, or give up), and garbage; blocks of every length at once."""
    rnd = random.Random(seed)
    t = nroots // 2
    words = [_damaged(rnd, nroots, rnd.randrange(1, NN - nroots + 1),
                      rnd.choice([0, 1, 2, 3, t, t + 1, t + 2, rnd.randrange(nroots + 2), NN]))
             for _ in range(24)]
    _agree(nroots, words)


def test_batch_decoder_agrees_on_errors_in_the_pad_and_parity() -> None:
    """Short blocks whose error pattern points into the kernel's zero pad, and errors in
    the parity alone: the cases the Chien search and the 5.3 checks decide."""
    rnd = random.Random(11)
    for nroots in (2, 16, 64):
        words = []
        for length in (1, 2, 12, 40):
            data = rnd.randbytes(length)
            par = bytearray(rs_codec(nroots).encode(data))
            par[rnd.randrange(nroots)] ^= rnd.randrange(1, 256)
            words.append((data, bytes(par)))
            words += [_damaged(rnd, nroots, length, e) for e in range(1, nroots // 2 + 3)]
        _agree(nroots, words)


def test_decode_span_is_each_block_decoded() -> None:
    """`decode_span` of ramoops' 128-byte blocks (the last short) counts and corrects as
    the port block by block: corrected symbols summed, unrecoverable blocks kept as read."""
    rnd = random.Random(2)
    for nroots in (16, 64, 127):
        lengths = [128] * 40 + [77]
        words = [_damaged(rnd, nroots, n, rnd.choice([0, 1, 3, nroots // 2, nroots]))
                 for n in lengths]
        got = rs_codec(nroots).decode_span(b"".join(d for d, _ in words),
                                           b"".join(p for _, p in words), 128)
        reference = ReferenceDecoder(rs_codec(nroots))
        results = [reference.decode(d, p) for d, p in words]
        assert got.data == b"".join(d if r is None else r.data
                                    for (d, _), r in zip(words, results, strict=True))
        assert got.corrected == sum(r.corrected for r in results if r)
        assert got.bad_blocks == sum(r is None for r in results) > 0


def test_codec_parameters() -> None:
    with pytest.raises(ValueError):
        RsCodec(0)
    with pytest.raises(ValueError):
        rs_codec(16).encode(bytes(240))  # longer than one shortened codeword
