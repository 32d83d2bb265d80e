"""Reed-Solomon over GF(2^8), as Linux's lib/reed_solomon computes it.

ramoops protects its zones with `encode_rs8`/`decode_rs8` (Phil Karn's codec, ported by
Thomas Gleixner): symbols of 8 bits, the field built from `gfpoly`, the generator's roots
`alpha^((fcr + i) * prim)`, and `nroots` parity symbols in Karn's `par[]` order (the
codeword is `data || par`, the first symbol the highest power). A block shorter than
`255 - nroots` symbols is a shortened code: the kernel pads it with leading zeros.

The encoder is a table-driven `encode_rs8` in pure Python (ECC detection and erase
need a few blocks). The decoder is `decode_rs.c` (syndromes, Berlekamp-Massey, Chien
search, Forney, and the checks Linux 5.3 added: a root in the padding and an error
pattern whose syndrome differs from the received one are uncorrectable), so that it
corrects exactly what the kernel corrects, counts what it counts, and gives up where it
gives up; it decodes many blocks at once with numpy (`pstorefs.codecs.rs_batch`). No
library matches these rules and parameters as a whole.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache, cached_property
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pstorefs.codecs.rs_batch import BatchDecoder

NN = 255
"""Symbols in a full codeword: `(1 << symsize) - 1` for `symsize` 8."""


@dataclass(frozen=True)
class DecodeResult:
    """What `decode_rs8` leaves: the corrected data and parity, and its return value,
    the number of symbols corrected (data and parity alike)."""

    data: bytes
    par: bytes
    corrected: int


@dataclass(frozen=True)
class SpanResult:
    """`decode_span`'s answer: the data corrected where it could be, the symbols
    corrected and the blocks that could not be (the counts the kernel keeps,
    `corrected_bytes` and `bad_blocks`)."""

    data: bytes
    corrected: int
    bad_blocks: int


class RsCodec:
    """One `init_rs(8, gfpoly, fcr, prim, nroots)` control structure."""

    def __init__(self, nroots: int, *, gfpoly: int = 0x11D, fcr: int = 0, prim: int = 1) -> None:
        if not 0 < nroots < NN or not 0 <= fcr < 256 or not 0 < prim < 256:
            raise ValueError(f"no Reed-Solomon codec with nroots={nroots}, fcr={fcr}, "
                             f"prim={prim}")
        self.nroots, self.fcr, self.prim = nroots, fcr, prim
        self.alpha_to, self.index_of = _field(gfpoly)
        self.genpoly = self._genpoly()
        self._feedback = self._feedback_table()

    def _genpoly(self) -> list[int]:
        """The generator polynomial, index form (`rs_init`)."""
        alpha_to, index_of = self.alpha_to, self.index_of
        gen = [1] + [0] * self.nroots
        root = self.fcr * self.prim
        for i in range(self.nroots):
            gen[i + 1] = 1
            for j in range(i, 0, -1):
                gen[j] = gen[j - 1] ^ (alpha_to[(index_of[gen[j]] + root) % NN]
                                       if gen[j] else 0)
            gen[0] = alpha_to[(index_of[gen[0]] + root) % NN]
            root += self.prim
        return [index_of[g] for g in gen]

    def _feedback_table(self) -> list[int]:
        """For each feedback symbol, what `encode_rs8` XORs into the shifted parity
        register, the register held as one big-endian integer (`par[0]` on top)."""
        table = [0]
        for fb in range(NN):  # the feedback in index form, `index_of[symbol]`
            word = 0
            for k in range(self.nroots):
                word = (word << 8) | self.alpha_to[(fb + self.genpoly[self.nroots - 1 - k]) % NN]
            table.append(word)
        return [table[0]] + [table[1 + self.index_of[symbol]] for symbol in range(1, 256)]

    def encode(self, data: bytes) -> bytes:
        """`encode_rs8(rs, data, len, par, 0)` with `par` zeroed first: the parity."""
        if not 0 <= NN - self.nroots - len(data) < NN:
            raise ValueError(f"{len(data)} bytes do not fit one RS({NN}) block")
        shift = 8 * (self.nroots - 1)
        mask = (1 << (8 * self.nroots)) - 1
        feedback = self._feedback
        par = 0
        for byte in data:
            par = ((par << 8) & mask) ^ feedback[byte ^ (par >> shift)]
        return par.to_bytes(self.nroots, "big")

    def decode(self, data: bytes, par: bytes) -> DecodeResult | None:
        """`decode_rs8(rs, data, par, len, NULL, 0, NULL, 0, NULL)` of one block: the block
        corrected, or None where the kernel returns -EBADMSG (uncorrectable)."""
        return self.decode_many([(data, par)])[0]

    def decode_many(self, words: Sequence[tuple[bytes, bytes]]) -> list[DecodeResult | None]:
        """`decode` of each (data, parity) pair, all blocks in one batch."""
        return self._batch.decode_many(words)

    def decode_span(self, data: bytes, par: bytes, block_size: int) -> SpanResult:
        """`persistent_ram_ecc_old`'s loop: `data` cut in blocks of `block_size` (the last
        may be short), block `i`'s parity at `par[i * nroots:]`; each block decoded, an
        uncorrectable one kept as read."""
        return self._batch.decode_span(data, par, block_size)

    @cached_property
    def _batch(self) -> BatchDecoder:
        """The decoder, made on the first decode: numpy (0.3 s and 13 MiB to import) is
        for regions with ECC, not for every mount (detecting ECC only encodes)."""
        from pstorefs.codecs.rs_batch import BatchDecoder
        return BatchDecoder(self)


@cache
def _field(gfpoly: int) -> tuple[list[int], list[int]]:
    """`alpha_to` and `index_of` of GF(2^8) from `gfpoly` (`index_of[0]` = 255 for
    log(0), `alpha_to[255]` = 0)."""
    alpha_to = [0] * (NN + 1)
    index_of = [0] * (NN + 1)
    index_of[0] = NN
    sr = 1
    for i in range(NN):
        index_of[sr] = i
        alpha_to[i] = sr
        sr <<= 1
        if sr & 0x100:
            sr ^= gfpoly
        sr &= NN
    if sr != 1:
        raise ValueError(f"gfpoly {gfpoly:#x} is not primitive")
    return alpha_to, index_of


@cache
def rs_codec(nroots: int) -> RsCodec:
    """ramoops' codec for `ecc_size` = `nroots`: symsize 8, gfpoly 0x11d, fcr 0, prim 1
    (`persistent_ram_init_ecc`)."""
    return RsCodec(nroots)
