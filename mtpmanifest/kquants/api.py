"""The public entry point: validate shapes, split rows into contiguous chunks and quantize them in a
thread pool (numpy releases the GIL inside its array operations). Rows are independent, so the bytes do
not depend on the chunking or the thread count.

Threads rather than processes: measured on 2 cores with 1024x4096 float32, two threads gave 1.6-1.9x
one thread for Q4_K/Q6_K, while two forkserver processes over shared memory gave 1.0-1.5x (setup and
copies, no gain in the array work); only Q3_K without imatrix, whose refinement sweeps are dominated by
small-array Python overhead, ran faster in processes (~120 vs ~100 MB/s)."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import gguf
import numpy as np

from . import q2_k, q3_k, q4_k, q5_k, q6_k, q8_0
from .legacy_types import Q4_0, Q4_1, Q5_0, Q5_1
from .common import F32

T = gguf.GGMLQuantizationType
# A codec (a module, or a LegacyType) provides QK, TYPE_SIZE and quantize_blocks(blocks (nb, QK), imatrix blocks or None); one whose
# imatrix path needs whole rows (the legacy types: sigma2 is taken over the row) also provides
# quantize_rows(rows (r, n_per_row), imatrix rows or None), which is then used for every chunk.
_MODULES = {T.Q4_0: Q4_0, T.Q4_1: Q4_1, T.Q5_0: Q5_0, T.Q5_1: Q5_1, T.Q8_0: q8_0,
            T.Q2_K: q2_k, T.Q3_K: q3_k, T.Q4_K: q4_k, T.Q5_K: q5_k, T.Q6_K: q6_k}
SUPPORTED: frozenset[T] = frozenset(_MODULES)

# Elements per work item. Large enough that numpy's per-call overhead (thousands of calls per chunk in
# the sequential parts) is small next to the array work, small enough to stay cache-friendly and to
# balance the load across threads.
CHUNK_ELEMS = 1 << 18


def _imatrix_rows(imatrix, data: np.ndarray, n_per_row: int):
    """Return (vectors (k, n_per_row) float32, row -> vector index or None)."""
    im = np.asarray(imatrix, dtype=F32)
    if im.ndim == 1 and im.shape[0] == n_per_row:
        return np.ascontiguousarray(im.reshape(1, n_per_row)), None
    if data.ndim >= 3 and im.shape == data.shape[:-2] + (n_per_row,):
        vecs = np.ascontiguousarray(im.reshape(-1, n_per_row))
        return vecs, np.repeat(np.arange(vecs.shape[0]), data.shape[-2])
    raise ValueError(f"imatrix of shape {im.shape} does not fit data of shape {data.shape}: expected "
                     f"({n_per_row},) or {data.shape[:-2] + (n_per_row,)} (one slice per expert)")


def quantize(data: np.ndarray, qtype, imatrix: np.ndarray | None = None, *, threads: int | None = None) -> np.ndarray:
    """Quantize float32 rows (..., n_per_row) to the bytes ggml_quantize_chunk writes, (..., row_size) uint8.

    imatrix: None; a float32 vector (n_per_row,) used for every row; or, for data (n_expert, rows, n_per_row),
    an array (n_expert, n_per_row) with one slice per expert. Q8_0 ignores it, like ggml."""
    qtype = T(qtype)
    if qtype not in SUPPORTED:
        raise ValueError(f"quantization type {qtype.name} is not supported (supported: "
                         f"{', '.join(sorted(t.name for t in SUPPORTED))})")
    mod = _MODULES[qtype]
    data = np.asarray(data, dtype=F32)
    if data.ndim < 1:
        raise ValueError("data must have at least one dimension")
    n_per_row = data.shape[-1]
    if n_per_row == 0 or n_per_row % mod.QK:
        raise ValueError(f"{qtype.name}: row length {n_per_row} is not a positive multiple of the block size {mod.QK}")
    row_bytes = n_per_row // mod.QK * mod.TYPE_SIZE
    rows = np.ascontiguousarray(data.reshape(-1, n_per_row))
    nrows = rows.shape[0]
    out = np.empty((nrows, row_bytes), dtype=np.uint8)
    vecs = index = None
    if imatrix is not None:
        vecs, index = _imatrix_rows(imatrix, data, n_per_row)
        if qtype == T.Q8_0:
            vecs = index = None

    by_rows = getattr(mod, "quantize_rows", None)

    def work(span: tuple[int, int]) -> None:
        r0, r1 = span
        qw = None
        if vecs is not None:
            sel = vecs[index[r0:r1]] if index is not None else np.broadcast_to(vecs, (r1 - r0, n_per_row))
            qw = np.ascontiguousarray(sel, dtype=F32)
        with np.errstate(all="ignore"):
            if by_rows is not None:
                res = by_rows(rows[r0:r1], qw)
            else:
                qb = None if qw is None else qw.reshape(-1, mod.QK)
                res = mod.quantize_blocks(rows[r0:r1].reshape(-1, mod.QK), qb)
            out[r0:r1] = res.reshape(r1 - r0, row_bytes)

    step = max(1, CHUNK_ELEMS // n_per_row)
    spans = [(r, min(r + step, nrows)) for r in range(0, nrows, step)]
    nthreads = (os.cpu_count() or 1) if threads is None else int(threads)
    if nthreads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    if nthreads == 1 or len(spans) <= 1:
        for span in spans:
            work(span)
    else:
        with ThreadPoolExecutor(min(nthreads, len(spans))) as pool:
            list(pool.map(work, spans))
    return out.reshape(data.shape[:-1] + (row_bytes,))


def dequantize(raw: np.ndarray, qtype) -> np.ndarray:
    """Bytes (..., row_size) -> float32 (..., n_per_row); delegates to gguf.quants.dequantize (which equals
    ggml's dequantize_row_* for these types)."""
    return np.asarray(gguf.quants.dequantize(np.asarray(raw, dtype=np.uint8), T(qtype)), dtype=F32)
