"""Q5_0: 32 values -> fp16 d + 32 high bits + 16 bytes of low nibbles (d * (q - 16)). Ref path
quantize_row_q5_0_ref (qc:187-229), imatrix path quantize_row_q5_0_impl (qc:2188-2225, make_qx_quants
with nmax 16)."""
from __future__ import annotations

import numpy as np

from .legacy import QK, half, impl_symmetric, pack_5bit, ref_levels_symmetric

TYPE_SIZE = 22
_NMAX = 16


def _assemble(d: np.ndarray, q: np.ndarray) -> np.ndarray:
    out = np.empty((q.shape[0], TYPE_SIZE), dtype=np.uint8)
    out[:, 0:2] = half(d)
    out[:, 2:6], out[:, 6:22] = pack_5bit(q)
    return out


def quantize_blocks(x: np.ndarray, qw: np.ndarray | None = None) -> np.ndarray:
    """(nb, 32) float32 -> (nb, 22) uint8, the ref path (the imatrix path needs whole rows)."""
    if qw is not None:
        raise ValueError("Q5_0 with an importance matrix works on whole rows: use quantize_rows")
    return _assemble(*ref_levels_symmetric(x, _NMAX))


def quantize_rows(rows: np.ndarray, qw: np.ndarray | None) -> np.ndarray:
    """(r, n_per_row) float32 [+ imatrix (r, n_per_row)] -> (r, n_per_row/32*22) uint8."""
    if qw is None:
        out = quantize_blocks(rows.reshape(-1, QK))
    else:
        out = _assemble(*impl_symmetric(rows, qw, _NMAX))
    return out.reshape(rows.shape[0], -1)
