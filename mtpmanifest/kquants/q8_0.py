"""Q8_0: quantize_row_q8_0_ref (32 values -> fp16 d + 32 int8), ggml-quants.c:276-299.

``amax = max|x|; d = amax/127; id = d ? 1/d : 0; qs = (int8_t) roundf(x*id)``, all float32."""
from __future__ import annotations

import numpy as np

from .common import F32, fp16_bits, u16_bytes

QK = 32
TYPE_SIZE = 34
_BELOW_HALF = F32(0.49999997)      # the one |v| where floor(|v| + 0.5f) != roundf(|v|) (for |v| < 2^23)


def _amax_literal(ax: np.ndarray) -> np.ndarray:
    """``amax = 0; for j: amax = MAX(amax, fabsf(x[j]))`` with MAX(a,b) = a > b ? a : b (a NaN is
    forgotten as soon as a later element is compared)."""
    m = np.zeros(ax.shape[0], dtype=F32)
    for j in range(ax.shape[1]):
        m = np.where(m > ax[:, j], m, ax[:, j])
    return m


def _roundf_to_i8(v: np.ndarray) -> np.ndarray:
    """``(int8_t) roundf(v)`` on x86-64, literally: round half away from zero, convert with cvttss2si
    (NaN, inf and out-of-range give INT_MIN), keep the low byte."""
    a = np.abs(v)
    fl = np.floor(a)
    r = np.copysign(np.where(a - fl >= F32(0.5), fl + F32(1), fl), v)
    ok = np.isfinite(r) & (np.abs(r) < F32(2147483648.0))
    i = np.where(ok, np.where(ok, r, F32(0)).astype(np.int64), -2147483648)
    return (i & 0xFF).astype(np.uint8)


def quantize_blocks(x: np.ndarray, qw: np.ndarray | None = None) -> np.ndarray:
    """(nb, 32) float32 -> (nb, 34) uint8. The importance matrix is ignored, as in ggml."""
    ax = np.abs(x)
    amax = ax.view(np.int32).max(axis=1).view(F32)     # |x| >= 0: int order == float order; NaN sorts last
    nan = np.isnan(amax)
    if nan.any():
        amax[nan] = _amax_literal(ax[nan])
    d = amax / F32(127)
    nz = d != 0
    id_ = np.where(nz, F32(1) / np.where(nz, d, F32(1)), F32(0))
    out = np.empty((x.shape[0], TYPE_SIZE), dtype=np.uint8)
    out[:, 0:2] = u16_bytes(fp16_bits(d))
    # Fast path: |x*id| <= 127.00002 whenever amax and id are finite, so roundf == floor(|v| + 0.5f)
    # except at 0.49999997, and the int8 conversion is in range.
    good = np.isfinite(id_) & np.isfinite(amax)
    a = ax * id_[:, None]
    tie_below = a == _BELOW_HALF
    a += F32(0.5)
    q = a.astype(np.int8)                               # truncation == floor for a >= 0
    if tie_below.any():
        q[tie_below] = 0
    neg = (x < 0).view(np.int8)                          # sign of x*id == sign of x (id >= 0)
    q ^= -neg
    q += neg                                             # two's-complement negation where x < 0
    out[:, 2:] = q.view(np.uint8)
    if not good.all():
        out[~good, 2:] = _roundf_to_i8(x[~good] * id_[~good, None])
    return out
