"""Q4_1: 32 values -> fp16 d, fp16 m + 16 bytes of 4-bit quants (d * q + m). Ref path
quantize_row_q4_1_ref (qc:150-185), imatrix path quantize_row_q4_1_impl (qc:2143-2171, make_qkx3_quants
with nmax 15, rmin -0.9, rdelta 0.05, 36 steps; m = -the_min)."""
from __future__ import annotations

import numpy as np

from .legacy import QK, half, impl_affine, pack_nibbles, ref_levels_affine

TYPE_SIZE = 20
_NMAX = 15


def _assemble(d: np.ndarray, m: np.ndarray, q: np.ndarray) -> np.ndarray:
    out = np.empty((q.shape[0], TYPE_SIZE), dtype=np.uint8)
    out[:, 0:2] = half(d)
    out[:, 2:4] = half(m)
    out[:, 4:20] = pack_nibbles(q)
    return out


def quantize_blocks(x: np.ndarray, qw: np.ndarray | None = None) -> np.ndarray:
    """(nb, 32) float32 -> (nb, 20) uint8, the ref path (the imatrix path needs whole rows)."""
    if qw is not None:
        raise ValueError("Q4_1 with an importance matrix works on whole rows: use quantize_rows")
    return _assemble(*ref_levels_affine(x, _NMAX, clamp=True))


def quantize_rows(rows: np.ndarray, qw: np.ndarray | None) -> np.ndarray:
    """(r, n_per_row) float32 [+ imatrix (r, n_per_row)] -> (r, n_per_row/32*20) uint8."""
    if qw is None:
        out = quantize_blocks(rows.reshape(-1, QK))
    else:
        out = _assemble(*impl_affine(rows, qw, _NMAX))
    return out.reshape(rows.shape[0], -1)
