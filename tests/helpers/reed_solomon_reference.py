"""The Reed-Solomon decoder pstorefs had before its batch decoder: Linux's
`decode_rs.c` ported step for step, one block at a time (syndromes, Berlekamp-Massey,
Chien search, Forney, and Linux 5.3's checks), kept as the oracle the batch decoder
(`pstorefs.codecs.reed_solomon.RsCodec.decode_many`) must agree with on every block."""

from __future__ import annotations

from pstorefs.codecs.reed_solomon import NN, DecodeResult, RsCodec


class ReferenceDecoder:
    """`decode_rs8` over one `RsCodec`'s field and generator."""

    def __init__(self, codec: RsCodec) -> None:
        self.codec = codec
        prim = codec.prim
        self.iprim = next(i for i in range(1, NN * prim + 2, NN) if i % prim == 0) // prim

    def decode(self, data: bytes, par: bytes) -> DecodeResult | None:
        """`decode_rs8(rs, data, par, len, NULL, 0, NULL, 0, NULL)`: the block corrected,
        or None where the kernel returns -EBADMSG (uncorrectable; nothing changed)."""
        nroots = self.codec.nroots
        length = len(data)
        pad = NN - nroots - length
        if not 0 <= pad < NN - nroots or len(par) != nroots:
            raise ValueError(f"{length}+{len(par)} bytes are not one RS({NN}) block")
        if self.codec.encode(data) == par:  # a codeword: every syndrome is zero
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
        alpha_to, index_of = self.codec.alpha_to, self.codec.index_of
        syn = []
        for i in range(self.codec.nroots):
            step = (self.codec.fcr + i) * self.codec.prim
            value = 0
            for symbol in word:
                value = symbol ^ (alpha_to[(index_of[value] + step) % NN] if value else 0)
            syn.append(index_of[value])
        return syn

    def _locate(self, s: list[int], pad: int) -> tuple[list[int], list[int], list[int]] | None:
        """Berlekamp-Massey, then the Chien search: the error locator (index form), its
        roots and the error locations; None where the kernel gives up."""
        alpha_to, index_of, nroots = self.codec.alpha_to, self.codec.index_of, self.codec.nroots
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
        alpha_to, index_of = self.codec.alpha_to, self.codec.index_of
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
            num2 = alpha_to[(root * (self.codec.fcr - 1) + NN) % NN]
            den = 0
            for i in range(min(deg_lambda, self.codec.nroots - 1) & ~1, -1, -2):
                if lam[i + 1] != NN:
                    den ^= alpha_to[(lam[i + 1] + i * root) % NN]
            values.append(alpha_to[(index_of[num1] + index_of[num2] + NN - index_of[den]) % NN])
        return values

    def _pattern_matches(self, s: list[int], pattern: list[int], locs: list[int]) -> bool:
        """The check Linux 5.3 added: the error pattern's own syndromes must be the
        received word's, or the decoder found a word it cannot stand behind."""
        alpha_to, index_of = self.codec.alpha_to, self.codec.index_of
        for i in range(self.codec.nroots):
            tmp = 0
            for value, loc in zip(pattern, locs, strict=True):
                if value:
                    k = (self.codec.fcr + i) * self.codec.prim * (NN - loc - 1)
                    tmp ^= alpha_to[(index_of[value] + k) % NN]
            if tmp != alpha_to[s[i]]:
                return False
        return True
