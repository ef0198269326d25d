"""Q4_K: 8 sub-blocks of 32 with 6-bit scales and mins, 4-bit quants (qc:1457-1624)."""
from __future__ import annotations

import numpy as np

from .common import QK_K, u16_bytes
from .minmax_k import solve

QK = QK_K
TYPE_SIZE = 144


def quantize_blocks(x: np.ndarray, qw: np.ndarray | None = None) -> np.ndarray:
    """(nb, 256) float32 [+ imatrix (nb, 256)] -> (nb, 144) uint8."""
    L, scales, d_bits, dmin_bits = solve(x, qw, 15, (-1.0, 0.1, 20), clamp_impl=False)
    out = np.empty((x.shape[0], TYPE_SIZE), dtype=np.uint8)
    out[:, 0:2] = u16_bytes(d_bits)
    out[:, 2:4] = u16_bytes(dmin_bits)
    out[:, 4:16] = scales
    for c in range(4):
        lo, hi = L[:, 64 * c: 64 * c + 32], L[:, 64 * c + 32: 64 * c + 64]
        out[:, 16 + 32 * c: 48 + 32 * c] = (lo | (hi << 4)) & 0xFF
    return out
