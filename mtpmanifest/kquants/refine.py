"""The Gauss-Seidel refinement that make_qp_quants and make_q3_quants run after their initial grid search:
up to 5 in-place sweeps over the elements of each block, each element moved to its least-squares level
if that lowers the error. Vectorized over blocks (lanes); sequential over elements, as in C."""
from __future__ import annotations

import numpy as np

from .common import F32, nearest_int


def gauss_seidel(x, w, wx, L, sumlx, suml2, live, lo: int, hi: int, qp: bool):
    """The in-place refinement sweeps of make_qp_quants (qp=True: needs slx > 0 and sl2 > 0, clamps with
    MIN(nmax, .), stores into uint8) and make_q3_quants (qp=False: needs slx > 0, clamps to [lo, hi],
    accepts only if the new sl2 > 0). Up to 5 sweeps over i = 0..n-1, each lane on its own.
    L is float32 (n, B) holding the integer levels; it and the sums are updated in place.

    A lane that changed nothing during a sweep is at a fixed point (the next sweep would repeat the
    same computations), which is C's early exit; such lanes are dropped from later sweeps."""
    n = x.shape[0]
    act = np.flatnonzero(live)
    full = act.size == live.size                # then work on the caller's arrays in place
    if full:
        X, W, WX, Lc, sx, s2 = x, w, wx, L, sumlx, suml2
    else:
        X, W, WX = x[:, act], w[:, act], wx[:, act]
        Lc, sx, s2 = L[:, act], sumlx[act], suml2[act]
    for sweep in range(5):
        changed = np.zeros(act.size, dtype=bool)
        for i in range(n):
            Li = Lc[i]
            slx = sx - WX[i] * Li
            sl2 = s2 - (W[i] * Li) * Li
            q = nearest_int((X[i] * sl2) / slx)
            q = np.minimum(q, hi) if qp else np.minimum(np.maximum(q, lo), hi)
            nf = q.astype(F32)
            cand = (slx > 0) & (nf != Li)
            if qp:
                cand &= sl2 > 0
            idx = np.flatnonzero(cand)
            if idx.size == 0:
                continue
            nf = nf[idx]
            slx = slx[idx] + WX[i, idx] * nf
            sl2 = sl2[idx] + (W[i, idx] * nf) * nf
            sxc = sx[idx]
            acc = (slx * slx) * s2[idx] > (sxc * sxc) * sl2
            if not qp:
                acc &= sl2 > 0
            if acc.any():
                j = idx[acc]
                changed[j] = True
                Lc[i, j] = (q[j] & 0xFF).astype(F32) if qp else nf[acc]
                sx[j] = slx[acc]
                s2[j] = sl2[acc]
        if not full:
            L[:, act] = Lc
            sumlx[act] = sx
            suml2[act] = s2
        if sweep == 4 or not changed.any():
            break
        if changed.mean() < 0.75:
            keep = np.flatnonzero(changed)
            act, Lc, sx, s2 = act[keep], Lc[:, keep], sx[keep], s2[keep]
            X, W, WX = X[:, keep], W[:, keep], WX[:, keep]
            full = False
    return L, sumlx, suml2
