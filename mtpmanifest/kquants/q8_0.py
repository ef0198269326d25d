"""Q8_0: quantize_row_q8_0_ref (32 values -> fp16 d + 32 int8), ggml-quants.c:276-299."""
from __future__ import annotations

import numpy as np

from .common import F32, fp16_bits, u16_bytes

QK = 32
TYPE_SIZE = 34


def _amax(x: np.ndarray) -> np.ndarray:
    """``amax = 0; for j: amax = MAX(amax, fabsf(x[j]))`` per block. np.max agrees except around NaN, where
    the C macro forgets a NaN as soon as a later element compares; those blocks are redone literally."""
    ax = np.abs(x)
    amax = ax.max(axis=1)
    bad = np.isnan(amax)
    if bad.any():
        sub = ax[bad]
        m = np.zeros(sub.shape[0], dtype=F32)
        for j in range(QK):
            m = np.where(m > sub[:, j], m, sub[:, j])
        amax[bad] = m
    return amax


def _roundf_to_i8(v: np.ndarray) -> np.ndarray:
    """``(int8_t) roundf(v)`` on x86-64: round half away from zero, then cvttss2si (NaN/inf -> INT_MIN),
    keeping the low byte."""
    a = np.abs(v)
    fl = np.floor(a)
    r = np.where(a - fl >= F32(0.5), fl + F32(1), fl)
    r = np.copysign(r, v)
    ok = np.isfinite(r) & (np.abs(r) < F32(2147483648.0))
    i = np.where(ok, r, F32(0)).astype(np.int64)
    i = np.where(ok, i, -2147483648)
    return (i & 0xFF).astype(np.uint8)


def quantize_blocks(x: np.ndarray, qw: np.ndarray | None = None) -> np.ndarray:
    """(nb, 32) float32 -> (nb, 34) uint8. The importance matrix is ignored, as in ggml."""
    amax = _amax(x)
    d = amax / F32(127)
    nz = d != 0
    id_ = np.where(nz, F32(1) / np.where(nz, d, F32(1)), F32(0))
    out = np.empty((x.shape[0], TYPE_SIZE), dtype=np.uint8)
    out[:, 0:2] = u16_bytes(fp16_bits(d))
    out[:, 2:] = _roundf_to_i8(x * id_[:, None])
    return out
