"""Q6_K: quantize_row_q6_K_ref (qc:1869-1937) and quantize_row_q6_K_impl with an imatrix (qc:1970-2052).

16 sub-blocks of 16; make_qx_quants(16, 32) per sub-block (weights x*x, or the raw imatrix slice);
int8 sub-scales on the grid -128/max_scale; fp16 d = 1/iscale; 6-bit quants split into ql/qh."""
from __future__ import annotations

import numpy as np

from .common import (F32, GROUP_MAX_EPS, QK_K, as_i8, fp16_bits, fp16_to_f32, from_lanes, nearest_int,
                     running_absmax, to_lanes, u16_bytes)
from .solvers import make_qx_quants

QK = QK_K
TYPE_SIZE = 210


def pack(L: np.ndarray, scales_i8: np.ndarray, d_bits: np.ndarray) -> np.ndarray:
    """L (nb, 256) in 0..63, scales (nb, 16) int8, d (nb,) fp16 bits -> (nb, 210) bytes."""
    nb = L.shape[0]
    out = np.empty((nb, TYPE_SIZE), dtype=np.uint8)
    for h in range(2):
        q = [L[:, 128 * h + 32 * k: 128 * h + 32 * k + 32] for k in range(4)]
        out[:, 64 * h: 64 * h + 32] = ((q[0] & 0xF) | ((q[2] & 0xF) << 4)) & 0xFF
        out[:, 64 * h + 32: 64 * h + 64] = ((q[1] & 0xF) | ((q[3] & 0xF) << 4)) & 0xFF
        qh = (q[0] >> 4) | ((q[1] >> 4) << 2) | ((q[2] >> 4) << 4) | ((q[3] >> 4) << 6)
        out[:, 128 + 32 * h: 128 + 32 * h + 32] = qh & 0xFF
    out[:, 192:208] = scales_i8.view(np.uint8)
    out[:, 208:210] = u16_bytes(d_bits)
    return out


def quantize_blocks(x: np.ndarray, qw: np.ndarray | None = None) -> np.ndarray:
    """(nb, 256) float32 [+ imatrix (nb, 256)] -> (nb, 210) uint8."""
    nb = x.shape[0]
    X = to_lanes(x, 16)                                    # (16, nb*16)
    scales, L = make_qx_quants(X, 32, None if qw is None else to_lanes(qw, 16))
    S = np.ascontiguousarray(scales.reshape(nb, 16).T)     # (16, nb)
    amax, max_scale = running_absmax(S)
    zero = amax < GROUP_MAX_EPS
    iscale = F32(-128) / max_scale
    d_bits = fp16_bits(F32(1) / iscale)
    ysc = as_i8(np.minimum(127, nearest_int(iscale * S)))  # (16, nb)
    d = (fp16_to_f32(d_bits) * ysc.astype(F32)).T.reshape(-1)   # per sub-block, (nb*16,)
    requant = np.clip(nearest_int(X / d), -32, 31) + 32
    L = np.where(d != 0, requant, L)
    out = pack(from_lanes(L.astype(np.uint8)), np.ascontiguousarray(ysc.T), d_bits)
    out[zero] = 0
    return out
