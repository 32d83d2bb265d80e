"""Reed-Solomon decoding of many blocks at once with numpy, as Linux's `decode_rs.c`
decodes each (`pstorefs.codecs.reed_solomon`): what makes correcting a whole ramoops
region with ECC cost seconds, not minutes.

Each block is a row (data right-aligned: the leading zeros are the kernel's pad of a
shortened block). The code is linear, so a row's parity is the XOR of one table entry
per symbol, and its syndromes follow from the difference between that parity and the
one read; rows without errors stop there. The others run the kernel's
Berlekamp-Massey, Chien search, Forney and Linux 5.3's checks side by side, with
polynomials first kept short (few errors per block, the common case) and, for the
rows that outgrow them, the kernel's own length: the same corrections, counts and
refusals as the kernel, block for block (tests/format/test_ramoops.py holds it to the
step-for-step port in tests/helpers/reed_solomon_reference.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from pstorefs.codecs.reed_solomon import NN, DecodeResult, RsCodec, SpanResult

_DETECT_ROWS = 1024
"""Blocks checked per step: the parity table's gather holds 8 KiB per 128-byte block."""
_NARROW = 5
"""Coefficients of the first pass's polynomials: up to 4 errors per block decoded
there; a block with more takes the second, whose polynomials are the kernel's."""
_NARROW_ROWS = 4096
_FULL_ROWS = 256
"""Blocks per pass step, so that the Chien search's table stays within a few MiB."""


@dataclass
class _Rows:
    """Blocks decoded together: data (right-aligned), parity, each block's length,
    syndromes; `counts` as `_decode_rows` returns them."""

    data: np.ndarray
    par: np.ndarray
    lengths: np.ndarray
    syn: np.ndarray
    counts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))


class BatchDecoder:
    """The tables of one `RsCodec`, and its blocks decoded many at a time."""

    def __init__(self, codec: RsCodec) -> None:
        self.codec = codec
        self.nroots, self.fcr, self.prim = codec.nroots, codec.fcr, codec.prim
        self._exp = np.array(codec.alpha_to[:NN], np.uint8)
        self._log = np.array(codec.index_of, np.int32)
        logs = self._log[:, None] + self._log[None, :]
        self._mul = np.where((self._log[:, None] == NN) | (self._log[None, :] == NN), 0,
                             self._exp[logs % NN]).astype(np.uint8)
        self._inv = np.array([0] + [codec.alpha_to[(NN - codec.index_of[x]) % NN]
                                    for x in range(1, 256)], np.uint8)
        self._parity_tables: dict[int, np.ndarray] = {}
        self._chien_tables: dict[tuple[int, int], np.ndarray] = {}
        self._syndrome_table = self._make_syndrome_table()

    def decode_many(self, words: Sequence[tuple[bytes, bytes]]) -> list[DecodeResult | None]:
        """`decode` of each (data, parity) pair, all blocks in one batch."""
        for data, par in words:
            if not 0 <= NN - self.nroots - len(data) < NN - self.nroots or \
                    len(par) != self.nroots:
                raise ValueError(f"{len(data)}+{len(par)} bytes are not one RS({NN}) block")
        if not words:
            return []
        width = max(len(data) for data, _ in words)
        rows = np.zeros((len(words), width), np.uint8)
        for row, (data, _) in zip(rows, words, strict=True):
            row[width - len(data):] = np.frombuffer(data, np.uint8)
        lengths = np.array([len(data) for data, _ in words])
        par = np.frombuffer(b"".join(p for _, p in words), np.uint8).reshape(-1, self.nroots)
        fixed, fixed_par, counts = self._decode_rows(rows, lengths, par.copy())
        return [None if count < 0 else
                DecodeResult(row[width - length:].tobytes(), p.tobytes(), int(count))
                for row, p, length, count in zip(fixed, fixed_par, lengths, counts, strict=True)]

    def decode_span(self, data: bytes, par: bytes, block_size: int) -> SpanResult:
        """`persistent_ram_ecc_old`'s loop: `data` cut in blocks of `block_size` (the last
        may be short), block `i`'s parity at `par[i * nroots:]`; each block decoded, an
        uncorrectable one kept as read."""
        nroots = self.nroots
        count = -(-len(data) // block_size)
        if len(par) != count * nroots or not 0 < block_size <= NN - nroots:
            raise ValueError(f"{len(data)} bytes in {block_size}-byte blocks do not match "
                             f"{len(par)} bytes of parity")
        if not count:
            return SpanResult(data, 0, 0)
        rows = np.zeros((count, block_size), np.uint8)
        flat = rows.reshape(-1)
        tail = len(data) - (count - 1) * block_size
        whole = np.frombuffer(data, np.uint8)
        flat[:(count - 1) * block_size] = whole[:(count - 1) * block_size]
        rows[-1, block_size - tail:] = whole[len(data) - tail:]
        lengths = np.full(count, block_size)
        lengths[-1] = tail
        parity = np.frombuffer(par, np.uint8).reshape(count, nroots).copy()
        fixed, _, counts = self._decode_rows(rows, lengths, parity)
        out = bytearray(fixed[:-1].tobytes())
        out += fixed[-1, block_size - tail:].tobytes()
        return SpanResult(bytes(out), int(counts[counts > 0].sum()), int((counts < 0).sum()))

    # -- the batch: one block per row, right-aligned (leading zeros are the kernel's pad) --
    def _decode_rows(self, rows: np.ndarray, lengths: np.ndarray,
                     par: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Decode every row in place: the rows, the parities and each row's count
        (symbols corrected, -1 where uncorrectable). Clean rows cost one parity each;
        the others are decoded together, first with short polynomials (a few errors
        each, the common case), then those that need it with the kernel's full ones."""
        counts = np.zeros(len(rows), np.int64)
        bad_parts, syn_parts = [], []
        for at in range(0, len(rows), _DETECT_ROWS):
            diff = self._parity(rows[at:at + _DETECT_ROWS]) ^ par[at:at + _DETECT_ROWS]
            bad = np.flatnonzero(diff.any(axis=1))
            bad_parts.append(bad + at)
            syn_parts.append(self._syndromes(diff[bad]))
        todo = np.concatenate(bad_parts)
        syn = np.concatenate(syn_parts)
        for width, group in dict.fromkeys(((min(_NARROW, self.nroots + 1), _NARROW_ROWS),
                                           (self.nroots + 1, _FULL_ROWS))):
            undecided = []
            for at in range(0, len(todo), group):
                sub = todo[at:at + group]
                batch = _Rows(rows[sub], par[sub], lengths[sub], syn[at:at + group])
                over = self._berlekamp_chien_forney(batch, width, narrow=width <= self.nroots)
                rows[sub], par[sub], counts[sub] = batch.data, batch.par, batch.counts
                undecided.append(at + np.flatnonzero(over))
            left = np.concatenate(undecided) if undecided else np.zeros(0, np.intp)
            todo, syn = todo[left], syn[left]
            if not len(todo):
                break
        return rows, par, counts

    def _parity(self, rows: np.ndarray) -> np.ndarray:
        """Each row's parity as `encode` computes it: the XOR of each symbol's own
        parity (the code is linear), one table gather per column."""
        return self._gather_xor(self._parity_table(rows.shape[1]), rows)

    def _syndromes(self, diff: np.ndarray) -> np.ndarray:
        """The syndromes (poly form) of each row's word, from the difference between its
        parity and the parity of its data: the word less that remainder is a codeword."""
        return self._gather_xor(self._syndrome_table, diff)

    def _gather_xor(self, table: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """`XOR over j of table[j][rows[:, j]]`, the table's rows `nroots` symbols padded
        to 64-bit words: what a linear map of the rows' symbols is, column by column."""
        columns = np.ascontiguousarray(rows.T)
        acc = np.zeros((len(rows), table.shape[2]), np.uint64)
        buf = np.empty_like(acc)
        for column, part in zip(columns, table, strict=True):
            np.take(part, column, axis=0, out=buf)
            acc ^= buf
        return acc.view(np.uint8)[:, :self.nroots]

    def _words(self, symbols: np.ndarray) -> np.ndarray:
        """Tables of `nroots` symbols (last axis) as 64-bit words."""
        padded = np.zeros((*symbols.shape[:-1], -(-self.nroots // 8) * 8), np.uint8)
        padded[..., :self.nroots] = symbols
        return padded.view(np.uint64)

    def _parity_table(self, width: int) -> np.ndarray:
        """For each of `width` columns and each symbol there, its parity."""
        table = self._parity_tables.get(width)
        if table is None:
            unit = np.array([np.frombuffer(self.codec.encode(b"\x01" + bytes(width - 1 - j)),
                                           np.uint8) for j in range(width)])
            table = self._parity_tables[width] = self._words(
                self._mul[:, unit].transpose(1, 0, 2))
        return table

    def _make_syndrome_table(self) -> np.ndarray:
        """For each parity position and each symbol there, its syndromes."""
        nroots = self.nroots
        roots = (self.fcr + np.arange(nroots)) * self.prim
        powers = self._exp[(roots[None, :] * (nroots - 1 - np.arange(nroots))[:, None]) % NN]
        return self._words(self._mul[:, powers].transpose(1, 0, 2))

    def _single_error(self, syn: np.ndarray) -> np.ndarray:
        """The rows whose syndromes are one geometric sequence `S_i = S_0 * Y**i`, all
        nonzero: for them the kernel's Berlekamp-Massey ends at `1 + Y x` (its first
        two steps give it, every later discrepancy is 0), so it need not run."""
        if self.nroots < 2:  # one syndrome: no sequence to tell
            return np.zeros(len(syn), bool)
        logs = self._log[syn]
        step = (logs[:, 1] - logs[:, 0]) % NN
        expected = (logs[:, :1] + step[:, None] * np.arange(self.nroots)) % NN
        return (logs != NN).all(axis=1) & (logs == expected).all(axis=1)

    def _berlekamp_massey(self, syn: np.ndarray, width: int, *,
                          narrow: bool) -> tuple[np.ndarray, np.ndarray]:
        """`decode_rs.c`'s Berlekamp-Massey for every row at once: the error locators
        (poly form) kept to `width` coefficients, the kernel keeping `nroots + 1`; where
        `narrow`, the rows whose polynomials would outgrow `width` (the mask returned)
        are left for a wider pass."""
        mul, inv = self._mul, self._inv
        count = len(syn)
        lam = np.zeros((count, width), np.uint8)
        lam[:, 0] = 1
        b = lam.copy()
        b_over = np.zeros(count, bool)
        over = np.zeros(count, bool)
        el = np.zeros(count, np.int64)
        for r in range(1, self.nroots + 1):
            n = min(r, width)
            discr = np.bitwise_xor.reduce(mul[lam[:, :n], syn[:, r - 1::-1][:, :n]], axis=1)
            xb = np.zeros_like(b)
            xb[:, 1:] = b[:, :-1]
            nz = discr != 0
            if narrow:
                xb_over = b_over | (b[:, -1] != 0)
                over |= nz & xb_over
            t = lam ^ mul[discr[:, None], xb]
            grow = nz & (2 * el <= r - 1)
            b = np.where(grow[:, None], mul[lam, inv[discr][:, None]], xb)
            if narrow:
                b_over = ~grow & xb_over
            el = np.where(grow, r - el, el)
            lam = np.where(nz[:, None], t, lam)
        return lam, over

    def _chien_table(self, width: int, j: int) -> np.ndarray:
        """`lam_j * x**j` at every point of the Chien search over a `width`-symbol block
        (one row per value of `lam_j`)."""
        key = (width, j)
        table = self._chien_tables.get(key)
        if table is None:
            points = ((np.arange(NN - self.nroots - width, NN) + 1) * self.prim) % NN
            table = self._chien_tables[key] = np.ascontiguousarray(
                self._mul[:, self._exp[(points * j) % NN]])
        return table

    def _berlekamp_chien_forney(self, rows: _Rows, width: int, *, narrow: bool) -> np.ndarray:
        """`decode_rs.c` from the syndromes on, for every row at once (see
        `_berlekamp_massey` for `width` and `narrow`, and the mask returned): sets
        `rows.counts` and corrects `rows` in place."""
        mul, log, exp = self._mul, self._log, self._exp
        nroots, count = self.nroots, len(rows.syn)
        syn = rows.syn
        lam = np.zeros((count, width), np.uint8)
        lam[:, 0] = 1
        over = np.zeros(count, bool)
        single = self._single_error(syn)
        if single.any():
            lam[single, 1] = mul[syn[single, 1], self._inv[syn[single, 0]]]
        rest = np.flatnonzero(~single)
        lam[rest], over[rest] = self._berlekamp_massey(syn[rest], width, narrow=narrow)
        nonzero = lam != 0
        deg = width - 1 - np.argmax(nonzero[:, ::-1], axis=1)
        # Chien: the roots at the block's own positions; a root in the pad fails the
        # kernel's decode, as does a count other than the degree (repeated or missing)
        pad = NN - nroots - rows.lengths
        first = NN - nroots - rows.data.shape[1]
        locs = np.arange(first, NN)
        points = ((locs + 1) * self.prim) % NN
        value_at = lam[:, 0, None] ^ np.zeros(len(locs), np.uint8)
        for j in range(1, width):
            value_at ^= np.take(self._chien_table(rows.data.shape[1], j), lam[:, j], axis=0)
        is_root = (value_at == 0) & (locs[None, :] >= pad[:, None])
        ok = (is_root.sum(axis=1) == deg) & (deg > 0) & ~over
        is_root &= ok[:, None]
        row_of, at = np.nonzero(is_root)
        root = points[at].astype(np.int32)
        root[root == 0] = NN
        loc = locs[at]
        # Forney
        omega = np.zeros((count, width - 1), np.uint8)
        for i in range(width - 1):
            j = np.arange(i + 1)
            omega[:, i] = np.bitwise_xor.reduce(mul[syn[:, i - j], lam[:, j]], axis=1)
        omega[np.arange(width - 1)[None, :] >= deg[:, None]] = 0
        powers = np.arange(width - 1)
        o_log = log[omega[row_of]]
        num1_terms = exp[(o_log + powers * root[:, None]) % NN]
        num1_terms[o_log == NN] = 0
        num1 = np.bitwise_xor.reduce(num1_terms, axis=1) if width > 1 else \
            np.zeros(len(row_of), np.uint8)
        num2 = exp[(root * (self.fcr - 1)) % NN]
        lam_pad = np.zeros((count, width + 1), np.uint8)
        lam_pad[:, :width] = lam
        top = np.minimum(deg[row_of], nroots - 1) & ~1
        even = np.arange(0, width, 2)
        l_log = log[lam_pad[row_of[:, None], even[None, :] + 1]]
        den_terms = exp[(l_log + even * root[:, None]) % NN]
        den_terms[(l_log == NN) | (even[None, :] > top[:, None])] = 0
        den = np.bitwise_xor.reduce(den_terms, axis=1)
        value = exp[(log[num1] + log[num2] + NN - log[den]) % NN]
        value[num1 == 0] = 0
        # Linux 5.3's check: the pattern's syndromes are the word's (one error whose
        # syndromes are geometric passes it: they are its own)
        check = ~single[row_of]
        v_log = log[value[check]]
        k = ((self.fcr + np.arange(nroots)) * self.prim)[None, :] * (NN - loc[check] - 1)[:, None]
        contrib = exp[(v_log[:, None] + k) % NN]
        contrib[value[check] == 0] = 0
        matches = np.ones(count, bool)
        if check.any():
            checked = row_of[check]
            starts = np.flatnonzero(np.r_[True, checked[1:] != checked[:-1]])
            pattern = np.bitwise_xor.reduceat(contrib, starts, axis=0)
            matches[checked[starts]] = (pattern == syn[checked[starts]]).all(axis=1)
        good = ok & matches
        keep = good[row_of]
        row_of, loc, value = row_of[keep], loc[keep], value[keep]
        in_data = loc < NN - nroots
        np.bitwise_xor.at(rows.data, (row_of[in_data], loc[in_data] - first), value[in_data])
        np.bitwise_xor.at(rows.par, (row_of[~in_data], loc[~in_data] - (NN - nroots)),
                          value[~in_data])
        rows.counts = np.where(good, np.bincount(row_of[value != 0], minlength=count), -1)
        return over
