"""ggml's per-block scale solvers (make_qkx2/qkx3, make_qp, make_qx, make_q3), vectorized over lanes.

Every input is element-major: x and weights are (n, B) float32, one column per independent block.
Element-wise work is done on the whole (n, B) array; only the accumulations (``acc += t_i``) and the
Gauss-Seidel sweeps run element by element, in C's order. All arithmetic is float32 with C's
left-to-right association; ints are converted to float at the point of use.
"""
from __future__ import annotations

import numpy as np

from .common import F32, GROUP_MAX_EPS, f32, nearest_int, round_clip_f, running_absmax, seqsum
from .refine import gauss_seidel


_IN_RANGE = F32(4.0e6)      # below nearest_int's exact range (|v| <= 4194303), with margin for rounding


def make_qkx(x: np.ndarray, w: np.ndarray, nmax: int, rmin: float, rdelta: float, nstep: int,
             use_mad: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """make_qkx2_quants / make_qkx3_quants with non-NULL weights (identical then).

    Returns (scale (B,), the_min (B,), L (n, B) int32 in 0..nmax)."""
    n = x.shape[0]
    mn = x[0].copy()
    mx = x[0].copy()
    sum_w = w[0].copy()
    sum_x = sum_w * x[0]
    for i in range(1, n):
        xi = x[i]
        mn = np.where(xi < mn, xi, mn)
        mx = np.where(xi > mx, xi, mx)
        sum_w += w[i]
        sum_x += w[i] * xi
    xmin = mn
    mn = np.where(mn > 0, F32(0), mn)
    live = mx != mn                     # max == min: L = 0, scale 0, the_min = -min

    def err(scale, lf, mn_):
        d = scale * lf
        d += mn_
        d -= x
        if use_mad:
            np.abs(d, out=d)
        else:
            d *= d
        d *= w
        return seqsum(d)

    def levels(iscale, mn_, xm):
        # clamp(nearest_int(iscale*(x - min)), 0, nmax) as float; fast form when every lane is in range
        span = np.maximum(np.abs(mx - mn_), np.abs(xmin - mn_))
        if bool(((np.abs(iscale) * span < _IN_RANGE) | ~live).all()):     # dead lanes are masked later
            return round_clip_f(xm * iscale, 0, nmax)
        return np.clip(nearest_int(xm * iscale), 0, nmax).astype(F32)

    # L is a function of (iscale, min) at the step that produced it, so only those are tracked and L is
    # rebuilt once at the end instead of being copied at every improvement.
    xm = x - mn
    iscale = F32(nmax) / (mx - mn)
    scale = F32(1) / iscale
    best = err(scale, levels(iscale, mn, xm), mn)
    l_iscale, l_mn = iscale, mn
    fmax, frmin, frdelta = F32(nmax), f32(rmin), f32(rdelta)
    for step in range(nstep + 1):
        iscale = ((frmin + frdelta * F32(step)) + fmax) / (mx - mn)
        lf = levels(iscale, mn, xm)
        wl = w * lf
        sum_l = seqsum(wl)
        sum_xl = wl * x
        wl *= lf
        sum_l2 = seqsum(wl)
        sum_xl = seqsum(sum_xl)
        D = sum_w * sum_l2 - sum_l * sum_l
        this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
        this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
        pos_min = this_min > 0
        this_min = np.where(pos_min, F32(0), this_min)
        this_scale = np.where(pos_min, sum_xl / sum_l2, this_scale)
        cur = err(this_scale, lf, this_min)
        upd = live & (D > 0) & (cur < best)
        if upd.any():
            l_iscale = np.where(upd, iscale, l_iscale)
            l_mn = np.where(upd, mn, l_mn)
            best = np.where(upd, cur, best)
            scale = np.where(upd, this_scale, scale)
            mn = np.where(upd, this_min, mn)
            xm = x - mn
    L = levels(l_iscale, l_mn, x - l_mn)
    L = np.where(live, L, F32(0)).astype(np.int32)
    scale = np.where(live, scale, F32(0))
    return scale, -mn, L


def make_qp_quants(x: np.ndarray, nmax: int, qw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """make_qp_quants (scales/mins -> unsigned nmax-level grid). Returns (scale (B,), L (n, B) uint8 values
    as int32, i.e. already wrapped to 0..255)."""
    n = x.shape[0]
    mx = np.zeros(x.shape[1:], dtype=F32)
    for i in range(n):
        mx = np.where(mx > x[i], mx, x[i])          # MAX(max, x[i])
    live = ~(mx < GROUP_MAX_EPS)
    fmax = F32(nmax)
    iscale = fmax / mx
    L0 = nearest_int(iscale * x) & 0xFF             # uint8 store, no clamp
    scale = F32(1) / iscale
    d = x - scale * L0.astype(F32)
    best = seqsum((qw * d) * d)
    for s in (-4, -3, -2, -1, 1, 2, 3, 4):
        iscale_is = (f32(0.1) * F32(s) + fmax) / mx
        scale_is = F32(1) / iscale_is
        lf = np.minimum(nmax, nearest_int(iscale_is * x)).astype(F32)
        d = x - scale_is * lf
        mse = seqsum((qw * d) * d)
        upd = mse < best
        best = np.where(upd, mse, best)
        iscale = np.where(upd, iscale_is, iscale)
    li = np.minimum(nmax, nearest_int(iscale * x))
    lf = li.astype(F32)
    wx = qw * x
    sumlx = seqsum(wx * lf)
    suml2 = seqsum((qw * lf) * lf)
    L = (li & 0xFF).astype(F32)
    L, sumlx, suml2 = gauss_seidel(x, qw, wx, L, sumlx, suml2, live, 0, nmax, qp=True)
    L = L.astype(np.int32)
    scale = np.where(suml2 > 0, sumlx / suml2, F32(0))
    return np.where(live, scale, F32(0)), np.where(live, L, 0)


def make_qx_quants(x: np.ndarray, nmax: int, qw: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """make_qx_quants with rmse_type = 1 (weights qw, or x*x when qw is None).
    Returns (scale (B,), L (n, B) int32 = l + nmax in 0..2*nmax-1; 0 for all-zero blocks)."""
    amax, mx = running_absmax(x)
    live = ~(amax < GROUP_MAX_EPS)
    w = x * x if qw is None else qw
    wx = w * x

    # |iscale*x| <= nmax + 1 wherever max is finite and |max| >= 1e-15, so the fast rounding is exact there
    # (dead lanes are masked at the end); any inf/NaN lane makes every trial take the literal form.
    fast = bool(np.isfinite(amax).all())

    def trial(iscale, levels_only=False):
        if fast:
            lf = round_clip_f(x * iscale, -nmax, nmax - 1)
        else:
            lf = np.clip(nearest_int(x * iscale), -nmax, nmax - 1).astype(F32)
        if levels_only:
            return lf, None, None
        t = wx * lf
        sumlx = seqsum(t)
        np.multiply(w, lf, out=t)
        t *= lf
        return lf, sumlx, seqsum(t)

    # C rebuilds L from iscale whenever a candidate wins; L is a function of the winning iscale, so only
    # that is tracked and L is built once at the end.
    fmax = F32(nmax)
    best_iscale = -fmax / mx
    _, sumlx, suml2 = trial(best_iscale)
    scale = np.where(suml2 != 0, sumlx / suml2, F32(0))
    best = scale * sumlx
    for s in (-9, -8, -7, -6, -5, -4, -3, -2, -1, 1, 2, 3, 4, 5, 6, 7, 8, 9):
        iscale = -(fmax + f32(0.1) * F32(s)) / mx
        _, sumlx, suml2 = trial(iscale)
        upd = (suml2 > 0) & (sumlx * sumlx > best * suml2)
        best_iscale = np.where(upd, iscale, best_iscale)
        scale = np.where(upd, sumlx / suml2, scale)
        best = np.where(upd, scale * sumlx, best)
    L = trial(best_iscale, levels_only=True)[0] + fmax
    return np.where(live, scale, F32(0)), np.where(live, L, F32(0)).astype(np.int32)


def make_q3_quants(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """make_q3_quants with do_rmse = true. Returns (scale (B,), L (n, B) int32 = l + nmax; 0 if all zero)."""
    amax, mx = running_absmax(x)
    live = ~(amax < GROUP_MAX_EPS)
    iscale = -F32(nmax) / mx
    L = np.clip(nearest_int(iscale * x), -nmax, nmax - 1).astype(F32)
    w = x * x
    wx = w * x
    sumlx = seqsum(wx * L)
    suml2 = seqsum((w * L) * L)
    L, sumlx, suml2 = gauss_seidel(x, w, wx, L, sumlx, suml2, live, -nmax, nmax - 1, qp=False)
    scale = np.where(suml2 > 0, sumlx / suml2, F32(0))
    return np.where(live, scale, F32(0)), np.where(live, L.astype(np.int32) + nmax, 0)
