"""Q3_K: 16 sub-blocks of 16, signed 6-bit sub-scales, 3-bit quants as 2 low bits (qs) + 1 high bit (hmask).
Ref path qc:1229-1303 (make_q3_quants), imatrix path qc:1355-1437 (make_qx_quants twice)."""
from __future__ import annotations

import numpy as np

from .common import (F32, QK_K, as_i8, fp16_bits, fp16_to_f32, from_lanes, nearest_int, pack_2bit, per_block,
                     running_absmax, seqsum, seqsum_rows, to_lanes, u16_bytes)
from .solvers import make_q3_quants, make_qx_quants

QK = QK_K
TYPE_SIZE = 110


def pack_scales(l6: np.ndarray) -> np.ndarray:
    """(16, nb) values 0..63 -> (nb, 12) bytes in C's store order."""
    q = np.zeros((l6.shape[1], 12), dtype=np.int64)
    for j in range(16):
        lj = l6[j].astype(np.int64)
        if j < 8:
            q[:, j] = lj & 0xF
        else:
            q[:, j - 8] = (q[:, j - 8] | ((lj & 0xF) << 4)) & 0xFF
        q[:, 8 + j % 4] = (q[:, 8 + j % 4] | ((lj >> 4) << (2 * (j // 4)))) & 0xFF
    return q.astype(np.uint8)


def unpack_scales(q: np.ndarray) -> np.ndarray:
    """(nb, 12) bytes -> (nb, 16) signed sub-scales (decoded 6-bit value - 32)."""
    q = q.astype(np.int64)
    sc = np.empty((q.shape[0], 16), dtype=np.int64)
    for j in range(16):
        lo = q[:, j] & 0xF if j < 8 else q[:, j - 8] >> 4
        sc[:, j] = (lo | (((q[:, 8 + j % 4] >> (2 * (j // 4))) & 3) << 4)) - 32
    return sc


def quantize_blocks(x: np.ndarray, qw: np.ndarray | None = None) -> np.ndarray:
    """(nb, 256) float32 [+ imatrix (nb, 256)] -> (nb, 110) uint8."""
    nb = x.shape[0]
    X = to_lanes(x, 16)                                            # (16, nb*16)
    if qw is None:
        scales, L = make_q3_quants(X, 4)
        S = per_block(scales, 16)
        _, max_scale = running_absmax(S)
        nz = max_scale != 0
        iscale = F32(-32) / max_scale
        l6 = np.clip(as_i8(nearest_int(iscale * S)).astype(np.int64), -32, 31) + 32
        packed = pack_scales(l6)
        packed[~nz] = 0
        d_bits = np.where(nz, fp16_bits(F32(1) / iscale), np.uint16(0))
    else:
        sum_x2 = seqsum_rows(x * x)
        sigma2 = (F32(2) * sum_x2) / F32(256)
        W = to_lanes(qw, 16) * np.sqrt(np.repeat(sigma2, 16) + X * X)
        sw = seqsum(W)
        scales, L = make_qx_quants(X, 4, W)
        d_block, Ls = make_qx_quants(per_block(scales, 16), 32, per_block(sw, 16))
        packed = pack_scales(Ls)
        d_bits = fp16_bits(d_block)
    sc = unpack_scales(packed)
    d = (fp16_to_f32(d_bits)[:, None] * sc.astype(F32)).reshape(-1)
    requant = np.clip(nearest_int(X / d), -4, 3) + 4
    L = from_lanes(np.where(d != 0, requant, L).astype(np.uint8))       # 0..7
    high = (L > 3).view(np.uint8)
    L -= high << 2
    hmask = np.zeros((nb, 32), dtype=np.uint8)
    for k in range(8):
        hmask |= high[:, 32 * k: 32 * k + 32] << k
    out = np.empty((nb, TYPE_SIZE), dtype=np.uint8)
    out[:, 0:32] = hmask
    out[:, 32:96] = pack_2bit(L)
    out[:, 96:108] = packed
    out[:, 108:110] = u16_bytes(d_bits)
    return out
