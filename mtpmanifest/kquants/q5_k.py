"""Q5_K: like Q4_K with 5-bit quants (low nibbles in qs, fifth bits in qh), qc:1644-1849."""
from __future__ import annotations

import numpy as np

from .common import QK_K, u16_bytes
from .minmax_k import solve

QK = QK_K
TYPE_SIZE = 176


def quantize_blocks(x: np.ndarray, qw: np.ndarray | None = None) -> np.ndarray:
    """(nb, 256) float32 [+ imatrix (nb, 256)] -> (nb, 176) uint8."""
    L, scales, d_bits, dmin_bits = solve(x, qw, 31, (-0.5, 0.1, 15), clamp_impl=True)
    out = np.empty((x.shape[0], TYPE_SIZE), dtype=np.uint8)
    out[:, 0:2] = u16_bytes(d_bits)
    out[:, 2:4] = u16_bytes(dmin_bits)
    out[:, 4:16] = scales
    qh = np.zeros((x.shape[0], 32), dtype=np.uint8)
    for c in range(4):                                   # L is 0..31: bit 4 -> qh, low nibble -> qs
        l1, l2 = L[:, 64 * c: 64 * c + 32], L[:, 64 * c + 32: 64 * c + 64]
        qh |= ((l1 >> 4) << (2 * c)) | ((l2 >> 4) << (2 * c + 1))
        out[:, 48 + 32 * c: 80 + 32 * c] = (l1 & 0xF) | ((l2 & 0xF) << 4)
    out[:, 16:48] = qh
    return out
