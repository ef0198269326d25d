"""Shared parts of the legacy 32-element quantizers Q4_0, Q4_1, Q5_0 and Q5_1 (ggml-quants.c, "qc").

Without an importance matrix ggml runs ``quantize_row_qX_Y_ref`` over the whole flat array (qc:113-266):
a closed-form scale from the block's signed absolute maximum (Q4_0/Q5_0) or min/max (Q4_1/Q5_1), then
``(int8_t)(v + bias)`` truncation. With one, ``quantize_row_qX_Y_impl`` runs row by row (qc:2070-2290):
``sigma2 = sum_x2 / n_per_row`` over the **whole row** (not per block, unlike the K-quants), weights
``qw[j] * sqrtf(sigma2 + x[j]*x[j])``, then make_qx_quants (Q4_0, Q5_0) or make_qkx3_quants (Q4_1, Q5_1).

Layout here is block-major (nb, 32) for the ref path and element-major lanes (32, nb) for the solvers.
"""
from __future__ import annotations

import numpy as np

from .common import F32, GROUP_MAX_EPS, fp16_bits, from_lanes, nearest_int, seqsum, to_lanes, u16_bytes
from .solvers import make_qkx, make_qx_quants

QK = 32
FLT_MAX = F32(np.finfo(np.float32).max)
_I32_LIMIT = F32(2147483648.0)


# --------------------------------------------------------------------------------------- ref path
def trunc_i8(v: np.ndarray) -> np.ndarray:
    """``(int8_t) v`` (and ``(uint8_t) v``) as the shipped x86-64 build does it: cvttps2dq to int32 (truncation
    toward zero; NaN, inf and |v| >= 2^31 give INT_MIN), then the low byte. Returned as int32 in -128..127."""
    ok = np.abs(v) < _I32_LIMIT                                       # False for NaN and inf
    i = np.where(ok, v, F32(0)).astype(np.int64)
    return ((i & 0xFF) ^ 0x80) - 0x80


def signed_absmax(x: np.ndarray) -> np.ndarray:
    """``amax = max = 0; for j: if (amax < fabsf(v)) { amax = fabsf(v); max = v; }`` over each row of (nb, 32):
    the first element of largest magnitude (NaN never wins; an all-zero block gives +0.0)."""
    ax = np.abs(x)
    ax = np.where(np.isnan(ax), F32(-1), ax)
    idx = ax.argmax(axis=1)                                           # first occurrence, as the strict '<'
    r = np.arange(x.shape[0])
    return np.where(ax[r, idx] > 0, x[r, idx], F32(0))


def block_min_max(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``min = FLT_MAX; max = -FLT_MAX; for j: if (v < min) min = v; if (v > max) max = v;`` per row of (nb, 32).
    The first occurrence wins (the sign of a zero extreme is that of the first zero); NaN is skipped and
    +-inf only replaces the start values when it beats them."""
    nan = np.isnan(x)
    r = np.arange(x.shape[0])
    lo = np.minimum(np.where(nan, FLT_MAX, x).min(axis=1), FLT_MAX)
    hi = np.maximum(np.where(nan, -FLT_MAX, x).max(axis=1), -FLT_MAX)
    mn = np.where(lo == FLT_MAX, FLT_MAX, x[r, (x == lo[:, None]).argmax(axis=1)])
    mx = np.where(hi == -FLT_MAX, -FLT_MAX, x[r, (x == hi[:, None]).argmax(axis=1)])
    return mn, mx


def inverse(d: np.ndarray) -> np.ndarray:
    """``id = d ? 1.0f/d : 0.0f`` (NaN is truthy; -0.0 is not)."""
    nz = d != 0
    return np.where(nz, F32(1) / np.where(nz, d, F32(1)), F32(0))


def ref_levels_symmetric(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """Q4_0 (nmax 8) / Q5_0 (nmax 16) ref: ``d = max / -nmax; xi = MIN(2*nmax-1, (int8_t)(x*id + (nmax+0.5f)))``,
    stored into uint8. Returns (d (nb,), levels (nb, 32) int64 0..255)."""
    d = signed_absmax(x) / F32(-nmax)
    v = x * inverse(d)[:, None]
    v += F32(nmax + 0.5)
    return d, np.minimum(2 * nmax - 1, trunc_i8(v)) & 0xFF


def ref_levels_affine(x: np.ndarray, nlev: int, clamp: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Q4_1 (nlev 15, clamp) / Q5_1 (nlev 31, no clamp) ref: ``d = (max - min)/nlev;
    xi = [MIN(nlev,] (int8_t|uint8_t)((x - min)*id + 0.5f)[)]``. Returns (d, min, levels int64 0..255)."""
    mn, mx = block_min_max(x)
    d = (mx - mn) / F32(nlev)
    v = x - mn[:, None]
    v *= inverse(d)[:, None]
    v += F32(0.5)
    q = trunc_i8(v)
    if clamp:
        q = np.minimum(nlev, q)
    return d, mn, q & 0xFF


# ------------------------------------------------------------------------------------- imatrix path
def _row_sum_sq(rows: np.ndarray) -> np.ndarray:
    """``sum_x2 = 0; for j: sum_x2 += x[j]*x[j]`` over each row, sequentially (rows padded to 8 lanes so
    numpy's row-by-row axis-0 reduction applies; the zero lanes are dropped)."""
    r, n = rows.shape
    lanes = np.zeros((n, max(r, 8)), dtype=F32)
    lanes[:, :r] = rows.T
    lanes *= lanes
    return seqsum(lanes)[:r]


def impl_lanes(rows: np.ndarray, qw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """rows, qw (r, n_per_row) -> (X, W) element-major (32, r*n_per_row/32): the blocks and their weights
    ``qw[j] * sqrtf(sigma2 + xb[j]*xb[j])`` with ``sigma2 = sum_x2/n_per_row`` per row."""
    r, n = rows.shape
    sigma2 = _row_sum_sq(rows) / F32(n)
    X = to_lanes(rows.reshape(-1, QK), QK)
    t = X * X
    t += np.repeat(sigma2, n // QK)
    np.sqrt(t, out=t)
    t *= to_lanes(qw.reshape(-1, QK), QK)
    return X, t


def _fix_nan_levels(X: np.ndarray, L: np.ndarray, live: np.ndarray, lo: int, hi: int, off: int) -> np.ndarray:
    """Where x is NaN in a live block, C stores off + clamp(nearest_int(NaN), lo, hi) (nearest_int reads the
    NaN's payload bits; the solvers' fast rounding does not model that)."""
    pos = np.isnan(X) & live
    if pos.any():
        L = L.copy()
        L[pos] = np.clip(nearest_int(X[pos]), lo, hi) + off
    return L


def impl_symmetric(rows: np.ndarray, qw: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """Q4_0/Q5_0 impl: make_qx_quants(32, nmax, xb, L, 1, weight). Returns (d (nb,), L (nb, 32) in 0..2nmax-1)."""
    X, W = impl_lanes(rows, qw)
    d, L = make_qx_quants(X, nmax, W)
    if np.isnan(X).any():
        amax = np.where(np.isnan(X), F32(0), np.abs(X)).max(axis=0)
        L = _fix_nan_levels(X, L, ~(amax < GROUP_MAX_EPS), -nmax, nmax - 1, nmax)
    return d, from_lanes(L, QK)


def impl_affine(rows: np.ndarray, qw: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Q4_1/Q5_1 impl: make_qkx3_quants(32, nmax, xb, weight, L, &min, Laux, -0.9f, 0.05f, 36, false).
    Returns (d (nb,), m = -the_min (nb,), L (nb, 32) in 0..nmax)."""
    X, W = impl_lanes(rows, qw)
    d, the_min, L = make_qkx(X, W, nmax, -0.9, 0.05, 36, False)
    nan = np.isnan(X)
    if nan.any():
        # C's early exit is ``max <= min`` with min clamped to <= 0, both running from x[0] (a NaN x[0] sticks)
        hi = np.fmax.reduce(X, axis=0)
        lo = np.minimum(np.fmin.reduce(X, axis=0), F32(0))
        L = _fix_nan_levels(X, L, nan[0] | ~(hi <= lo), 0, nmax, 0)
    return d, -the_min, from_lanes(L, QK)


# ------------------------------------------------------------------------------------------ packing
def pack_nibbles(q: np.ndarray) -> np.ndarray:
    """``qs[j] = xi0 | (xi1 << 4)`` (uint8 store) for the 4-bit types: (nb, 32) ints 0..255 -> (nb, 16)."""
    return ((q[:, :16] | (q[:, 16:] << 4)) & 0xFF).astype(np.uint8)


def pack_5bit(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q5_0/Q5_1: ``qs[j] = (xi0 & 15) | ((xi1 & 15) << 4)`` and bit 4 of element k at bit k of the
    little-endian uint32 qh. (nb, 32) ints -> (qh (nb, 4), qs (nb, 16)) uint8."""
    qs = ((q[:, :16] & 0x0F) | ((q[:, 16:] & 0x0F) << 4)).astype(np.uint8)
    qh = np.packbits(((q >> 4) & 1).astype(np.uint8), axis=1, bitorder="little")
    return qh, qs


def half(v: np.ndarray) -> np.ndarray:
    """GGML_FP32_TO_FP16(v) as (nb, 2) little-endian bytes."""
    return u16_bytes(fp16_bits(v))


__all__ = ["QK", "trunc_i8", "signed_absmax", "block_min_max", "ref_levels_symmetric", "ref_levels_affine",
           "impl_symmetric", "impl_affine", "pack_nibbles", "pack_5bit", "half"]
