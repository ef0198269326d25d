"""ggml's per-block scale solvers (make_qkx2/qkx3, make_qp, make_qx, make_q3), vectorized over lanes.

Every input is element-major: x and weights are (n, B) float32, one column per independent block.
Element-wise work is done on the whole (n, B) array; only the accumulations (``acc += t_i``) and the
Gauss-Seidel sweeps run element by element, in C's order. All arithmetic is float32 with C's
left-to-right association; ints are converted to float at the point of use.
"""
from __future__ import annotations

import numpy as np

from .common import F32, GROUP_MAX_EPS, f32, nearest_int, running_absmax, seqsum


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
    mn = np.where(mn > 0, F32(0), mn)
    live = mx != mn                     # max == min: L = 0, scale 0, the_min = -min

    def err(scale, lf, mn_):
        d = (scale * lf + mn_) - x
        d = np.abs(d) if use_mad else d * d
        return seqsum(w * d)

    iscale = F32(nmax) / (mx - mn)
    scale = F32(1) / iscale
    L = np.clip(nearest_int(iscale * (x - mn)), 0, nmax)
    best = err(scale, L.astype(F32), mn)
    fmax, frmin, frdelta = F32(nmax), f32(rmin), f32(rdelta)
    for step in range(nstep + 1):
        iscale = ((frmin + frdelta * F32(step)) + fmax) / (mx - mn)
        la = np.clip(nearest_int(iscale * (x - mn)), 0, nmax)
        lf = la.astype(F32)
        wl = w * lf
        sum_l = seqsum(wl)
        sum_l2 = seqsum(wl * lf)
        sum_xl = seqsum(wl * x)
        D = sum_w * sum_l2 - sum_l * sum_l
        this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
        this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
        pos_min = this_min > 0
        this_min = np.where(pos_min, F32(0), this_min)
        this_scale = np.where(pos_min, sum_xl / sum_l2, this_scale)
        cur = err(this_scale, lf, this_min)
        upd = live & (D > 0) & (cur < best)
        if upd.any():
            L = np.where(upd, la, L)
            best = np.where(upd, cur, best)
            scale = np.where(upd, this_scale, scale)
            mn = np.where(upd, this_min, mn)
    L = np.where(live, L, 0)
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
    L = li & 0xFF
    for _ in range(5):
        changed = False
        for i in range(n):
            Li = L[i]
            Lf = Li.astype(F32)
            slx = sumlx - wx[i] * Lf
            sl2 = suml2 - (qw[i] * Lf) * Lf
            new_l = np.minimum(nmax, nearest_int((x[i] * sl2) / slx))
            cand = live & (slx > 0) & (sl2 > 0) & (new_l != Li)
            if not cand.any():
                continue
            nf = new_l.astype(F32)
            slx = slx + wx[i] * nf
            sl2 = sl2 + (qw[i] * nf) * nf
            acc = cand & ((slx * slx) * suml2 > (sumlx * sumlx) * sl2)
            if acc.any():
                changed = True
                L[i] = np.where(acc, new_l & 0xFF, Li)
                sumlx = np.where(acc, slx, sumlx)
                suml2 = np.where(acc, sl2, suml2)
        if not changed:
            break
    scale = np.where(suml2 > 0, sumlx / suml2, F32(0))
    return np.where(live, scale, F32(0)), np.where(live, L, 0)


def make_qx_quants(x: np.ndarray, nmax: int, qw: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """make_qx_quants with rmse_type = 1 (weights qw, or x*x when qw is None).
    Returns (scale (B,), L (n, B) int32 = l + nmax in 0..2*nmax-1; 0 for all-zero blocks)."""
    amax, mx = running_absmax(x)
    live = ~(amax < GROUP_MAX_EPS)
    w = x * x if qw is None else qw
    wx = w * x

    def trial(iscale):
        l = np.clip(nearest_int(iscale * x), -nmax, nmax - 1)
        lf = l.astype(F32)
        return l, seqsum(wx * lf), seqsum((w * lf) * lf)

    fmax = F32(nmax)
    l, sumlx, suml2 = trial(-fmax / mx)
    L = l + nmax
    scale = np.where(suml2 != 0, sumlx / suml2, F32(0))
    best = scale * sumlx
    for s in (-9, -8, -7, -6, -5, -4, -3, -2, -1, 1, 2, 3, 4, 5, 6, 7, 8, 9):
        l, sumlx, suml2 = trial(-(fmax + f32(0.1) * F32(s)) / mx)
        upd = (suml2 > 0) & (sumlx * sumlx > best * suml2)
        L = np.where(upd, l + nmax, L)
        scale = np.where(upd, sumlx / suml2, scale)
        best = np.where(upd, scale * sumlx, best)
    return np.where(live, scale, F32(0)), np.where(live, L, 0)


def make_q3_quants(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """make_q3_quants with do_rmse = true. Returns (scale (B,), L (n, B) int32 = l + nmax; 0 if all zero)."""
    n = x.shape[0]
    amax, mx = running_absmax(x)
    live = ~(amax < GROUP_MAX_EPS)
    iscale = -F32(nmax) / mx
    L = np.clip(nearest_int(iscale * x), -nmax, nmax - 1)
    w = x * x
    wx = w * x
    lf = L.astype(F32)
    sumlx = seqsum(wx * lf)
    suml2 = seqsum((w * lf) * lf)
    for _ in range(5):
        changed = False
        for i in range(n):
            Li = L[i]
            Lf = Li.astype(F32)
            slx = sumlx - wx[i] * Lf
            sl2 = suml2 - (w[i] * Lf) * Lf
            new_l = np.clip(nearest_int((x[i] * sl2) / slx), -nmax, nmax - 1)
            cand = live & (slx > 0) & (new_l != Li)
            if not cand.any():
                continue
            nf = new_l.astype(F32)
            slx = slx + wx[i] * nf
            sl2 = sl2 + (w[i] * nf) * nf
            acc = cand & (sl2 > 0) & ((slx * slx) * suml2 > (sumlx * sumlx) * sl2)
            if acc.any():
                changed = True
                L[i] = np.where(acc, new_l, Li)
                sumlx = np.where(acc, slx, sumlx)
                suml2 = np.where(acc, sl2, suml2)
        if not changed:
            break
    scale = np.where(suml2 > 0, sumlx / suml2, F32(0))
    return np.where(live, scale, F32(0)), np.where(live, L + nmax, 0)
