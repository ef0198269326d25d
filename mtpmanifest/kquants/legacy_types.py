"""Q4_0, Q4_1, Q5_0 and Q5_1 as one parametrized codec: 32 values per block, an fp16 scale d (and,
for the affine _1 types, an fp16 minimum m), then 4-bit nibbles or 4-bit nibbles plus a 32-bit high
plane. Ref paths quantize_row_q{4,5}_{0,1}_ref, imatrix paths quantize_row_q{4,5}_{0,1}_impl
(make_qx_quants for _0 with nmax 8/16; make_qkx3_quants for _1 with nmax 15/31, rmin -0.9,
rdelta 0.05, 36 steps; m = -the_min)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .legacy import QK, half, impl_affine, impl_symmetric, pack_5bit, pack_nibbles, ref_levels_affine, ref_levels_symmetric


@dataclass(frozen=True)
class LegacyType:
    name: str
    TYPE_SIZE: int
    nmax: int
    affine: bool  # d * q + m (the _1 types) rather than d * (q - offset)
    five_bit: bool
    clamp: bool = True  # ref path clamps levels (Q5_1's ``(uint8_t)(v + 0.5f)`` does not)
    QK: int = QK

    def _assemble(self, d: np.ndarray, *rest: np.ndarray) -> np.ndarray:
        *m, q = rest
        out = np.empty((q.shape[0], self.TYPE_SIZE), dtype=np.uint8)
        out[:, 0:2] = half(d)
        pos = 2
        if self.affine:
            out[:, 2:4] = half(m[0])
            pos = 4
        for part in (pack_5bit(q) if self.five_bit else (pack_nibbles(q),)):
            out[:, pos:pos + part.shape[1]] = part
            pos += part.shape[1]
        return out

    def quantize_blocks(self, x: np.ndarray, qw: np.ndarray | None = None) -> np.ndarray:
        """(nb, 32) float32 -> (nb, TYPE_SIZE) uint8, the ref path (the imatrix path needs whole rows)."""
        if qw is not None:
            raise ValueError(f"{self.name} with an importance matrix works on whole rows: use quantize_rows")
        levels = ref_levels_affine(x, self.nmax, clamp=self.clamp) if self.affine else ref_levels_symmetric(x, self.nmax)
        return self._assemble(*levels)

    def quantize_rows(self, rows: np.ndarray, qw: np.ndarray | None) -> np.ndarray:
        """(r, n_per_row) float32 [+ imatrix (r, n_per_row)] -> (r, n_per_row / 32 * TYPE_SIZE) uint8."""
        if qw is None:
            out = self.quantize_blocks(rows.reshape(-1, QK))
        else:
            out = self._assemble(*(impl_affine if self.affine else impl_symmetric)(rows, qw, self.nmax))
        return out.reshape(rows.shape[0], -1)


Q4_0 = LegacyType("Q4_0", 18, 8, affine=False, five_bit=False)
Q4_1 = LegacyType("Q4_1", 20, 15, affine=True, five_bit=False)
Q5_0 = LegacyType("Q5_0", 22, 16, affine=False, five_bit=True)
Q5_1 = LegacyType("Q5_1", 24, 31, affine=True, five_bit=True, clamp=False)
