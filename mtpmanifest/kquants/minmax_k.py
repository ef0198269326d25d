"""The scale+min super-block pipeline shared by Q4_K and Q5_K (8 sub-blocks of 32, 6-bit sub-scales and
sub-mins packed as in get_scale_min_k4, fp16 d and dmin). Ref path qc:1457-1527 / 1644-1729; imatrix path
qc:1553-1624 / 1758-1849. The caller packs the quants."""
from __future__ import annotations

import numpy as np

from .common import (F32, fp16_bits, fp16_to_f32, from_lanes, nearest_int, per_block, running_max,
                     seqsum, seqsum_rows, to_lanes)
from .solvers import make_qkx, make_qp_quants


def pack_scale_min_k4(ls: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """ls, lm (8, nb) ints (uint8 values) -> (nb, 12) bytes, in C's store order (qc:1494-1501)."""
    nb = ls.shape[1]
    q = np.zeros((nb, 12), dtype=np.int64)
    for j in range(4):
        q[:, j] = ls[j]
        q[:, j + 4] = lm[j]
    for j in range(4, 8):
        q[:, j + 4] = ((ls[j] & 0xF) | ((lm[j] & 0xF) << 4)) & 0xFF
        q[:, j - 4] = (q[:, j - 4] | ((ls[j] >> 4) << 6)) & 0xFF
        q[:, j] = (q[:, j] | ((lm[j] >> 4) << 6)) & 0xFF
    return q.astype(np.uint8)


def unpack_scale_min_k4(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """get_scale_min_k4 for j = 0..7: (nb, 12) bytes -> (sc (nb, 8), m (nb, 8)) ints."""
    q = q.astype(np.int64)
    sc = np.empty((q.shape[0], 8), dtype=np.int64)
    m = np.empty_like(sc)
    for j in range(4):
        sc[:, j] = q[:, j] & 63
        m[:, j] = q[:, j + 4] & 63
    for j in range(4, 8):
        sc[:, j] = (q[:, j + 4] & 0xF) | ((q[:, j - 4] >> 6) << 4)
        m[:, j] = (q[:, j + 4] >> 4) | ((q[:, j] >> 6) << 4)
    return sc, m


def solve(x: np.ndarray, qw: np.ndarray | None, nmax: int, ref_params: tuple[float, float, int],
          clamp_impl: bool):
    """(nb, 256) float32 [+ imatrix] -> (L (nb, 256) in 0..nmax, scales (nb, 12) u8, d bits, dmin bits)."""
    X = to_lanes(x, 32)                                           # (32, nb*8)
    if qw is None:
        sum_x2 = seqsum(X * X)
        av_x = np.sqrt(sum_x2 / F32(32))
        W = av_x + np.abs(X)
        scales, mins, L = make_qkx(X, W, nmax, *ref_params, False)
        S, M = per_block(scales, 8), per_block(mins, 8)         # (8, nb)
        max_scale, max_min = running_max(S), running_max(M)
        inv_scale = np.where(max_scale > 0, F32(63) / max_scale, F32(0))
        inv_min = np.where(max_min > 0, F32(63) / max_min, F32(0))
        ls = np.minimum(63, nearest_int(inv_scale * S) & 0xFF)
        lm = np.minimum(63, nearest_int(inv_min * M) & 0xFF)
        d_bits = fp16_bits(max_scale / F32(63))
        dmin_bits = fp16_bits(max_min / F32(63))
    else:
        sum_x2 = seqsum_rows(x * x)                               # over all 256, in memory order
        sigma2 = (F32(2) * sum_x2) / F32(256)
        W = to_lanes(qw, 32) * np.sqrt(np.repeat(sigma2, 8) + X * X)
        sw = per_block(seqsum(W), 8)
        scales, mins, L = make_qkx(X, W, nmax, -0.9, 0.05, 36, False)
        d_block, ls = make_qp_quants(per_block(scales, 8), 63, sw)
        m_block, lm = make_qp_quants(per_block(mins, 8), 63, sw)
        if clamp_impl:
            ls, lm = np.minimum(63, ls), np.minimum(63, lm)
        d_bits, dmin_bits = fp16_bits(d_block), fp16_bits(m_block)
    packed = pack_scale_min_k4(ls, lm)
    sc, m = unpack_scale_min_k4(packed)
    d = (fp16_to_f32(d_bits)[:, None] * sc.astype(F32)).reshape(-1)      # per sub-block lane
    dm = (fp16_to_f32(dmin_bits)[:, None] * m.astype(F32)).reshape(-1)
    requant = np.clip(nearest_int((X + dm) / d), 0, nmax)
    L = np.where(d != 0, requant, L)
    return from_lanes(L.astype(np.uint8)), packed, d_bits, dmin_bits


__all__ = ["solve", "pack_scale_min_k4", "unpack_scale_min_k4"]
