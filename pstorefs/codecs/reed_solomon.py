"""Reed-Solomon over GF(2^8), as Linux's lib/reed_solomon computes it.

ramoops protects its zones with `encode_rs8`/`decode_rs8` (Phil Karn's codec, ported by
Thomas Gleixner): symbols of 8 bits, the field built from `gfpoly`, the generator's roots
`alpha^((fcr + i) * prim)`, and `nroots` parity symbols in Karn's `par[]` order (the
codeword is `data || par`, the first symbol the highest power). A block shorter than
`255 - nroots` symbols is a shortened code: the kernel pads it with leading zeros.

The decoder is `decode_rs.c` step for step (syndromes, Berlekamp-Massey, Chien search,
Forney, and the checks Linux 5.3 added: a root in the padding and an error pattern
whose syndrome differs from the received one are uncorrectable), so that it corrects
exactly what the kernel corrects, counts what it counts, and gives up where it gives up.
The same pure-Python port serves every ramoops `ecc=` value; no library matches these
rules and parameters as a whole.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

NN = 255
"""Symbols in a full codeword: `(1 << symsize) - 1` for `symsize` 8."""


@dataclass(frozen=True)
class DecodeResult:
    """What `decode_rs8` leaves: the corrected data and parity, and its return value,
    the number of symbols corrected (data and parity alike)."""

    data: bytes
    par: bytes
    corrected: int


class RsCodec:
    """One `init_rs(8, gfpoly, fcr, prim, nroots)` control structure."""

    def __init__(self, nroots: int, *, gfpoly: int = 0x11D, fcr: int = 0, prim: int = 1) -> None:
        if not 0 < nroots < NN or not 0 <= fcr < 256 or not 0 < prim < 256:
            raise ValueError(f"no Reed-Solomon codec with nroots={nroots}, fcr={fcr}, "
                             f"prim={prim}")
        self.nroots, self.fcr, self.prim = nroots, fcr, prim
        self.alpha_to, self.index_of = _field(gfpoly)
        self.iprim = next(i for i in range(1, NN * prim + 2, NN) if i % prim == 0) // prim
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
        """`decode_rs8(rs, data, par, len, NULL, 0, NULL, 0, NULL)`: the block corrected,
        or None where the kernel returns -EBADMSG (uncorrectable; nothing changed)."""
        nroots = self.nroots
        length = len(data)
        pad = NN - nroots - length
        if not 0 <= pad < NN - nroots or len(par) != nroots:
            raise ValueError(f"{length}+{len(par)} bytes are not one RS({NN}) block")
        if self.encode(data) == par:  # a codeword: every syndrome is zero
            return DecodeResult(data, par, 0)
        s = self._syndromes(data + par)
        found = self._locate(s, pad)
        if found is None:
            return None
        lam, roots, locs = found
        pattern = self._error_values(s, lam, roots)
        if not self._pattern_matches(s, pattern, locs):
            return None
        fixed_data, fixed_par = bytearray(data), bytearray(par)
        for value, loc in zip(pattern, locs, strict=True):
            if loc < NN - nroots:
                fixed_data[loc - pad] ^= value
            else:
                fixed_par[loc - pad - length] ^= value
        return DecodeResult(bytes(fixed_data), bytes(fixed_par),
                            sum(1 for value in pattern if value))

    def _syndromes(self, word: bytes) -> list[int]:
        """The syndromes `word(alpha^((fcr + i) * prim))`, index form."""
        alpha_to, index_of = self.alpha_to, self.index_of
        syn = []
        for i in range(self.nroots):
            step = (self.fcr + i) * self.prim
            value = 0
            for symbol in word:
                value = symbol ^ (alpha_to[(index_of[value] + step) % NN] if value else 0)
            syn.append(index_of[value])
        return syn

    def _locate(self, s: list[int], pad: int) -> tuple[list[int], list[int], list[int]] | None:
        """Berlekamp-Massey, then the Chien search: the error locator (index form), its
        roots and the error locations; None where the kernel gives up."""
        alpha_to, index_of, nroots = self.alpha_to, self.index_of, self.nroots
        lam = [1] + [0] * nroots
        b = [index_of[x] for x in lam]
        el = 0
        for r in range(1, nroots + 1):
            discr = 0
            for i in range(r):
                if lam[i] and s[r - i - 1] != NN:
                    discr ^= alpha_to[(index_of[lam[i]] + s[r - i - 1]) % NN]
            discr = index_of[discr]
            if discr == NN:
                b = [NN, *b[:nroots]]
                continue
            t = [lam[0]] + [lam[i + 1] ^ (alpha_to[(discr + b[i]) % NN] if b[i] != NN else 0)
                            for i in range(nroots)]
            if 2 * el <= r - 1:
                el = r - el
                b = [NN if x == 0 else (index_of[x] - discr + NN) % NN for x in lam]
            else:
                b = [NN, *b[:nroots]]
            lam = t
        lam = [index_of[x] for x in lam]
        deg_lambda = max((i for i, x in enumerate(lam) if x != NN), default=0)
        if deg_lambda == 0:
            return None
        reg = lam[:]
        roots: list[int] = []
        locs: list[int] = []
        k = self.iprim - 1
        for i in range(1, NN + 1):
            q = 1
            for j in range(deg_lambda, 0, -1):
                if reg[j] != NN:
                    reg[j] = (reg[j] + j) % NN
                    q ^= alpha_to[reg[j]]
            if q == 0:
                if k < pad:
                    return None  # a root in the padding: an impossible location
                roots.append(i)
                locs.append(k)
                if len(roots) == deg_lambda:
                    break
            k = (k + self.iprim) % NN
        if len(roots) != deg_lambda:
            return None
        return lam, roots, locs

    def _error_values(self, s: list[int], lam: list[int], roots: list[int]) -> list[int]:
        """Forney's algorithm: the error value at each root (0 where there is none)."""
        alpha_to, index_of = self.alpha_to, self.index_of
        deg_lambda = len(roots)
        omega = []
        for i in range(deg_lambda):
            tmp = 0
            for j in range(i, -1, -1):
                if s[i - j] != NN and lam[j] != NN:
                    tmp ^= alpha_to[(s[i - j] + lam[j]) % NN]
            omega.append(index_of[tmp])
        values = []
        for root in roots:
            num1 = 0
            for i in range(deg_lambda - 1, -1, -1):
                if omega[i] != NN:
                    num1 ^= alpha_to[(omega[i] + i * root) % NN]
            if num1 == 0:
                values.append(0)
                continue
            num2 = alpha_to[(root * (self.fcr - 1) + NN) % NN]
            den = 0
            for i in range(min(deg_lambda, self.nroots - 1) & ~1, -1, -2):
                if lam[i + 1] != NN:
                    den ^= alpha_to[(lam[i + 1] + i * root) % NN]
            values.append(alpha_to[(index_of[num1] + index_of[num2] + NN - index_of[den]) % NN])
        return values

    def _pattern_matches(self, s: list[int], pattern: list[int], locs: list[int]) -> bool:
        """The check Linux 5.3 added: the error pattern's own syndromes must be the
        received word's, or the decoder found a word it cannot stand behind."""
        alpha_to, index_of = self.alpha_to, self.index_of
        for i in range(self.nroots):
            tmp = 0
            for value, loc in zip(pattern, locs, strict=True):
                if value:
                    k = (self.fcr + i) * self.prim * (NN - loc - 1)
                    tmp ^= alpha_to[(index_of[value] + k) % NN]
            if tmp != alpha_to[s[i]]:
                return False
        return True


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
