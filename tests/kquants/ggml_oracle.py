"""Test oracle: llama.cpp's own quantizers, called through ctypes on the libggml-base.so that ships
inside the installed llama-cpp-python package.

Mirrors what llama-quantize does: rows go through ``ggml_quantize_chunk`` (whole rows per call, the
same imatrix pointer for every row), and a 3-D expert tensor is quantized expert by expert with
``imatrix + expert * n_per_row``.
"""
from __future__ import annotations

import ctypes
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

_DEQUANT_SYMBOL = {2: "dequantize_row_q4_0", 3: "dequantize_row_q4_1", 6: "dequantize_row_q5_0",
                   7: "dequantize_row_q5_1", 8: "dequantize_row_q8_0", 10: "dequantize_row_q2_K",
                   11: "dequantize_row_q3_K", 12: "dequantize_row_q4_K", 13: "dequantize_row_q5_K",
                   14: "dequantize_row_q6_K"}
_BLOCK = {2: 32, 3: 32, 6: 32, 7: 32, 8: 32, 10: 256, 11: 256, 12: 256, 13: 256, 14: 256}

_lib = None


def library_path() -> Path:
    import llama_cpp

    pkg = Path(llama_cpp.__file__).resolve().parent
    for cand in (pkg / "lib" / "libggml-base.so", pkg / "libggml-base.so"):
        if cand.exists():
            return cand
    hits = sorted(pkg.rglob("libggml-base.so*"))
    if not hits:
        raise FileNotFoundError(f"libggml-base.so not found under {pkg}")
    return hits[0]


def lib() -> ctypes.CDLL:
    global _lib
    if _lib is None:
        so = ctypes.CDLL(str(library_path()))
        f32p, vp, i64 = ctypes.POINTER(ctypes.c_float), ctypes.c_void_p, ctypes.c_int64
        so.ggml_quantize_chunk.argtypes = [ctypes.c_int, f32p, vp, i64, i64, i64, f32p]
        so.ggml_quantize_chunk.restype = ctypes.c_size_t
        so.ggml_row_size.argtypes = [ctypes.c_int, i64]
        so.ggml_row_size.restype = ctypes.c_size_t
        for name in _DEQUANT_SYMBOL.values():
            fn = getattr(so, name)
            fn.argtypes = [vp, f32p, i64]
            fn.restype = None
        _lib = so
    return _lib


def _fptr(a: np.ndarray | None):
    if a is None:
        return None
    return a.ctypes.data_as(ctypes.POINTER(ctypes.c_float))


def row_size(qtype, n_per_row: int) -> int:
    return int(lib().ggml_row_size(int(qtype), int(n_per_row)))


def _chunks(nrows: int, parts: int) -> list[tuple[int, int]]:
    parts = max(1, min(parts, nrows))
    bounds = [nrows * k // parts for k in range(parts + 1)]
    return [(bounds[k], bounds[k + 1]) for k in range(parts) if bounds[k + 1] > bounds[k]]


def quantize_2d(data: np.ndarray, qtype, imatrix: np.ndarray | None = None, threads: int = 1) -> np.ndarray:
    """ggml_quantize_chunk over a (nrows, n_per_row) matrix, optionally split into row chunks run in threads
    (ctypes drops the GIL during the call)."""
    src = np.ascontiguousarray(data, dtype=np.float32)
    nrows, n_per_row = src.shape
    rs = row_size(qtype, n_per_row)
    dst = np.zeros((nrows, rs), dtype=np.uint8)
    qw = None if imatrix is None else np.ascontiguousarray(imatrix, dtype=np.float32).reshape(n_per_row)
    so = lib()

    def run(span):
        r0, r1 = span
        so.ggml_quantize_chunk(int(qtype), _fptr(src), dst.ctypes.data_as(ctypes.c_void_p),
                               r0 * n_per_row, r1 - r0, n_per_row, _fptr(qw))

    spans = _chunks(nrows, threads)
    if len(spans) == 1:
        run(spans[0])
    else:
        with ThreadPoolExecutor(len(spans)) as pool:
            list(pool.map(run, spans))
    return dst


def quantize(data: np.ndarray, qtype, imatrix: np.ndarray | None = None, threads: int = 1) -> np.ndarray:
    """Like llama-quantize: (..., n_per_row) -> (..., row_size) uint8. A 3-D tensor with a 2-D imatrix
    (n_expert, n_per_row) is quantized one expert at a time with that expert's imatrix slice."""
    data = np.asarray(data, dtype=np.float32)
    n_per_row = data.shape[-1]
    if imatrix is not None and np.ndim(imatrix) == 2 and data.ndim == 3:
        out = [quantize_2d(data[e], qtype, imatrix[e], threads) for e in range(data.shape[0])]
        return np.stack(out)
    flat = quantize_2d(data.reshape(-1, n_per_row), qtype, imatrix, threads)
    return flat.reshape(*data.shape[:-1], flat.shape[-1])


def dequantize(raw: np.ndarray, qtype, n_per_row: int | None = None) -> np.ndarray:
    """C dequantize_row_* on (..., row_size) bytes -> (..., n_per_row) float32."""
    qt = int(qtype)
    raw = np.ascontiguousarray(raw, dtype=np.uint8)
    blk = _BLOCK[qt]
    if n_per_row is None:
        n_per_row = raw.shape[-1] // row_size(qt, blk) * blk
    n = raw.size // row_size(qt, n_per_row) * n_per_row
    out = np.empty(n, dtype=np.float32)
    getattr(lib(), _DEQUANT_SYMBOL[qt])(raw.ctypes.data_as(ctypes.c_void_p), _fptr(out), n)
    return out.reshape(*raw.shape[:-1], n_per_row)


__all__ = ["library_path", "row_size", "quantize", "quantize_2d", "dequantize"]
