"""Q4_0: 32 values -> fp16 d + 16 bytes of 4-bit quants (d * (q - 8)). Ref path quantize_row_q4_0_ref
(qc:113-147), imatrix path quantize_row_q4_0_impl (qc:2070-2094, make_qx_quants with nmax 8)."""
from __future__ import annotations

import numpy as np

from .legacy import QK, half, impl_symmetric, pack_nibbles, ref_levels_symmetric

TYPE_SIZE = 18
_NMAX = 8


def _assemble(d: np.ndarray, q: np.ndarray) -> np.ndarray:
    out = np.empty((q.shape[0], TYPE_SIZE), dtype=np.uint8)
    out[:, 0:2] = half(d)
    out[:, 2:18] = pack_nibbles(q)
    return out


def quantize_blocks(x: np.ndarray, qw: np.ndarray | None = None) -> np.ndarray:
    """(nb, 32) float32 -> (nb, 18) uint8, the ref path (the imatrix path needs whole rows)."""
    if qw is not None:
        raise ValueError("Q4_0 with an importance matrix works on whole rows: use quantize_rows")
    return _assemble(*ref_levels_symmetric(x, _NMAX))


def quantize_rows(rows: np.ndarray, qw: np.ndarray | None) -> np.ndarray:
    """(r, n_per_row) float32 [+ imatrix (r, n_per_row)] -> (r, n_per_row/32*18) uint8."""
    if qw is None:
        out = quantize_blocks(rows.reshape(-1, QK))
    else:
        out = _assemble(*impl_symmetric(rows, qw, _NMAX))
    return out.reshape(rows.shape[0], -1)
