"""Q5_1: 32 values -> fp16 d, fp16 m, 32 high bits + 16 bytes of low nibbles (d * q + m). Ref path
quantize_row_q5_1_ref (qc:231-273; ``(uint8_t)(v + 0.5f)`` with no clamp), imatrix path
quantize_row_q5_1_impl (qc:2242-2278, make_qkx3_quants with nmax 31, rmin -0.9, rdelta 0.05, 36 steps)."""
from __future__ import annotations

import numpy as np

from .legacy import QK, half, impl_affine, pack_5bit, ref_levels_affine

TYPE_SIZE = 24
_NMAX = 31


def _assemble(d: np.ndarray, m: np.ndarray, q: np.ndarray) -> np.ndarray:
    out = np.empty((q.shape[0], TYPE_SIZE), dtype=np.uint8)
    out[:, 0:2] = half(d)
    out[:, 2:4] = half(m)
    out[:, 4:8], out[:, 8:24] = pack_5bit(q)
    return out


def quantize_blocks(x: np.ndarray, qw: np.ndarray | None = None) -> np.ndarray:
    """(nb, 32) float32 -> (nb, 24) uint8, the ref path (the imatrix path needs whole rows)."""
    if qw is not None:
        raise ValueError("Q5_1 with an importance matrix works on whole rows: use quantize_rows")
    return _assemble(*ref_levels_affine(x, _NMAX, clamp=False))


def quantize_rows(rows: np.ndarray, qw: np.ndarray | None) -> np.ndarray:
    """(r, n_per_row) float32 [+ imatrix (r, n_per_row)] -> (r, n_per_row/32*24) uint8."""
    if qw is None:
        out = quantize_blocks(rows.reshape(-1, QK))
    else:
        out = _assemble(*impl_affine(rows, qw, _NMAX))
    return out.reshape(rows.shape[0], -1)
