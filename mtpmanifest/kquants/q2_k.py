"""Q2_K: 16 sub-blocks of 16 with 4-bit scale and 4-bit min each, 2-bit quants, fp16 d and dmin.
Ref path qc:891-959 (make_qkx2, MAD), imatrix path qc:1149-1209 (make_qkx3 + make_qp_quants)."""
from __future__ import annotations

import numpy as np

from .common import (F32, QK_K, fp16_bits, fp16_to_f32, from_lanes, nearest_int, pack_2bit, per_block,
                     running_max, seqsum, seqsum_rows, to_lanes, u16_bytes)
from .solvers import make_qkx, make_qp_quants

QK = QK_K
TYPE_SIZE = 84


def quantize_blocks(x: np.ndarray, qw: np.ndarray | None = None) -> np.ndarray:
    """(nb, 256) float32 [+ imatrix (nb, 256)] -> (nb, 84) uint8."""
    nb = x.shape[0]
    X = to_lanes(x, 16)                                            # (16, nb*16)
    zero16 = np.uint16(0)
    if qw is None:
        scales, mins, L = make_qkx(X, np.abs(X), 3, -0.5, 0.1, 15, True)
        S, M = per_block(scales, 16), per_block(mins, 16)        # (16, nb)
        max_scale, max_min = running_max(S), running_max(M)
        ps, pm = max_scale > 0, max_min > 0
        lo = np.where(ps, nearest_int((F32(15) / max_scale) * S) & 0xFF, 0)
        sc = np.where(pm, (lo | (nearest_int((F32(15) / max_min) * M) << 4)) & 0xFF, lo)
        d_bits = np.where(ps, fp16_bits(max_scale / F32(15)), zero16)
        dmin_bits = np.where(pm, fp16_bits(max_min / F32(15)), zero16)
    else:
        sum_x2 = seqsum_rows(x * x)
        sigma2 = sum_x2 / F32(256)
        W = to_lanes(qw, 16) * np.sqrt(np.repeat(sigma2, 16) + X * X)
        sw = per_block(seqsum(W), 16)
        scales, mins, L = make_qkx(X, W, 3, -0.9, 0.05, 36, False)
        dm, Ls = make_qp_quants(per_block(scales, 16), 15, sw)
        mm, Lm = make_qp_quants(per_block(mins, 16), 15, sw)
        d_bits, dmin_bits = fp16_bits(dm), fp16_bits(mm)
        sc = (Ls | (Lm << 4)) & 0xFF
    sc = np.ascontiguousarray(sc.T).astype(np.int64)              # (nb, 16)
    d = (fp16_to_f32(d_bits)[:, None] * (sc & 0xF).astype(F32)).reshape(-1)
    dm = (fp16_to_f32(dmin_bits)[:, None] * (sc >> 4).astype(F32)).reshape(-1)
    requant = np.clip(nearest_int((X + dm) / d), 0, 3)
    L = from_lanes(np.where(d != 0, requant, L).astype(np.uint8))       # 0..3
    out = np.empty((nb, TYPE_SIZE), dtype=np.uint8)
    out[:, 0:16] = sc
    out[:, 16:80] = pack_2bit(L)
    out[:, 80:82] = u16_bytes(d_bits)
    out[:, 82:84] = u16_bytes(dmin_bits)
    return out
