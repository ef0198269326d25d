"""Numeric primitives shared by the quantizers: float32 constants, ggml's nearest_int, sequential sums,
fp16 conversion, integer narrowing and running maxima.

Array convention in this package: per-sub-block data is laid out element-major, shape (n, B) -- the
element index inside a (sub-)block first, the B independent (sub-)blocks second -- so that the
sequential loops that C runs inside a block become n numpy operations over B lanes.
"""
from __future__ import annotations

import numpy as np

F32 = np.float32
GROUP_MAX_EPS = F32(1e-15)
QK_K = 256
_MAGIC = F32(12582912.0)


def f32(v) -> np.float32:
    """A C float literal (``0.1f`` is ``f32(0.1)``: the double rounded once to float)."""
    return F32(v)


def round_clip_f(v: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """float32(clamp(nearest_int(v), lo, hi)) via np.rint (round half to even, like the 12582912 trick):
    equal to the literal form only where v is finite and |v| <= 4194303 -- callers check that per lane
    first. v is overwritten (it must be a temporary)."""
    np.rint(v, out=v)
    return np.clip(v, lo, hi, out=v)


def nearest_int(v: np.ndarray) -> np.ndarray:
    """ggml's nearest_int: ``bits(v + 12582912.f) & 0x7fffff) - 0x400000`` as int32, literally (round half
    to even in range, the same garbage as C out of range)."""
    t = np.asarray(v, dtype=F32) + _MAGIC
    return (t.view(np.int32) & 0x007FFFFF) - 0x00400000


def _seqsum_loop(a: np.ndarray) -> np.ndarray:
    acc = np.zeros(a.shape[1:], dtype=F32)
    for i in range(a.shape[0]):
        acc += a[i]
    return acc


def _reduce_is_sequential() -> bool:
    """numpy reduces axis 0 of a C-contiguous (n, B) array row by row (``out += a[i]``), which is C's
    order; it switches to pairwise summation when the reduced axis becomes the inner loop (B == 1).
    Checked once on data where the order shows, so a numpy that does otherwise falls back to the loop."""
    rng = np.random.default_rng(12345)
    for n, b in ((8, 8), (16, 9), (32, 64), (256, 8)):
        a = (rng.standard_normal((n, b)) * np.exp(rng.standard_normal((n, b)) * 4)).astype(F32)
        if not np.array_equal(np.add.reduce(a, axis=0, initial=0.0), _seqsum_loop(a)):
            return False
    return True


_FAST_REDUCE = _reduce_is_sequential()


def seqsum(a: np.ndarray) -> np.ndarray:
    """``acc = 0.f; for i: acc += a[i]`` over axis 0 of an (n, B) float32 array, in float32."""
    if _FAST_REDUCE and a.ndim == 2 and a.shape[1] >= 8 and a.flags.c_contiguous and a.dtype == F32:
        return np.add.reduce(a, axis=0, initial=0.0)
    return _seqsum_loop(a)


def seqsum_rows(a: np.ndarray) -> np.ndarray:
    """The same sequential sum over the last axis of a (B, n) array (for per-super-block sums)."""
    return seqsum(np.ascontiguousarray(a.reshape(-1, a.shape[-1]).T)).reshape(a.shape[:-1])


def running_max(a: np.ndarray) -> np.ndarray:
    """``m = 0; for i: if (a[i] > m) m = a[i];`` over axis 0 (strict '>', first occurrence wins)."""
    m = np.zeros(a.shape[1:], dtype=F32)
    for i in range(a.shape[0]):
        m = np.where(a[i] > m, a[i], m)
    return m


def running_absmax(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``amax = max = 0; for i: if (|a| > amax) { amax = |a|; max = a; }`` over axis 0.
    Returns (amax, signed max)."""
    amax = np.zeros(a.shape[1:], dtype=F32)
    mx = np.zeros(a.shape[1:], dtype=F32)
    for i in range(a.shape[0]):
        ax = np.abs(a[i])
        upd = ax > amax
        amax = np.where(upd, ax, amax)
        mx = np.where(upd, a[i], mx)
    return amax, mx


def fp16_bits(v: np.ndarray) -> np.ndarray:
    """GGML_FP32_TO_FP16 (round to nearest even, subnormals, overflow to inf) as uint16 bits."""
    return np.asarray(v, dtype=F32).astype(np.float16).view(np.uint16)


def fp16_to_f32(bits: np.ndarray) -> np.ndarray:
    """GGML_FP16_TO_FP32 (exact)."""
    return np.asarray(bits, dtype=np.uint16).view(np.float16).astype(F32)


def u16_bytes(bits: np.ndarray) -> np.ndarray:
    """(B,) uint16 -> (B, 2) little-endian bytes."""
    return np.ascontiguousarray(bits, dtype="<u2").view(np.uint8).reshape(-1, 2)


def as_u8(v: np.ndarray) -> np.ndarray:
    """Store an int into ``uint8_t`` (wraps modulo 256)."""
    return (np.asarray(v).astype(np.int64) & 0xFF).astype(np.uint8)


def as_i8(v: np.ndarray) -> np.ndarray:
    """Store an int into ``int8_t`` (wraps modulo 256, two's complement)."""
    return as_u8(v).view(np.int8)


def to_lanes(x: np.ndarray, n: int) -> np.ndarray:
    """(nb, QK) super-blocks -> (n, nb*QK/n) element-major sub-blocks (sub-block s = blk*(QK/n) + j)."""
    return np.ascontiguousarray(x.reshape(-1, n).T)


def from_lanes(lanes: np.ndarray, qk: int = QK_K) -> np.ndarray:
    """Inverse of :func:`to_lanes`: (n, B) -> (nb, qk)."""
    return np.ascontiguousarray(lanes.T).reshape(-1, qk)


def per_block(v: np.ndarray, nsub: int) -> np.ndarray:
    """(B,) sub-block values -> (nsub, nb) element-major over the sub-blocks of each super-block."""
    return np.ascontiguousarray(v.reshape(-1, nsub).T)


def pack_2bit(L: np.ndarray) -> np.ndarray:
    """(nb, 256) values 0..3 -> (nb, 64) bytes: qs[32h + l] = L[128h+l] | L[128h+l+32]<<2 | ..+64<<4 | ..+96<<6."""
    out = np.empty((L.shape[0], 64), dtype=np.uint8)
    for h in range(2):
        b = 128 * h
        v = L[:, b:b + 32] | (L[:, b + 32:b + 64] << 2) | (L[:, b + 64:b + 96] << 4) | (L[:, b + 96:b + 128] << 6)
        out[:, 32 * h: 32 * h + 32] = v & 0xFF
    return out
