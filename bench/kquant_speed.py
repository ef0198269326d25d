"""Speed of mtpmanifest.kquants.quantize against llama.cpp's ggml_quantize_chunk (C, through ctypes on the
libggml-base.so inside llama-cpp-python), on the same float32 matrices, for Q8_0 and Q2_K..Q6_K with and
without an importance matrix.

ggml is timed single-threaded (what one llama-quantize worker does per chunk) and over N threads on N
contiguous row spans (ctypes drops the GIL), so the ratio can be read both ways. Times are wall clock,
best of --repeat runs; the bytes of the two implementations are compared on every run.

    python bench/kquant_speed.py                       # 4096x4096 and 2048x5632, all types
    python bench/kquant_speed.py --shapes 256x4096 --types Q4_K,Q6_K --repeat 1
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import gguf
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "kquants"))
import ggml_oracle  # noqa: E402

from mtpmanifest import kquants  # noqa: E402

T = gguf.GGMLQuantizationType
ALL_TYPES = ["Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]


def best_time(fn, repeat: int):
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def parse_shape(text: str) -> tuple[int, int]:
    rows, cols = text.lower().split("x")
    return int(rows), int(cols)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="4096x4096,2048x5632", help="comma-separated ROWSxCOLS")
    ap.add_argument("--types", default=",".join(ALL_TYPES))
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                    help="threads for mtpmanifest and for the threaded ggml run (default: all cores)")
    ap.add_argument("--repeat", type=int, default=2, help="runs per measurement; the best is reported")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    types = [T[name.strip()] for name in args.types.split(",") if name.strip()]
    shapes = [parse_shape(s) for s in args.shapes.split(",") if s.strip()]
    n = args.threads
    rng = np.random.default_rng(args.seed)
    warm = rng.standard_normal((64, 4096), dtype=np.float32)
    for qtype in types:                                                 # load the library, init tables,
        ggml_oracle.quantize(warm, qtype)                                # fault in numpy's code paths
        kquants.quantize(warm, qtype, threads=n)

    head = (f"{'type':<5} {'imatrix':<7} {'shape':>9} {'ours ' + str(n) + 't':>10} {'ggml 1t':>9} "
            f"{'ggml ' + str(n) + 't':>9} {'ours/ggml1t':>11} {'ours/ggml' + str(n) + 't':>11} {'bytes':>6}")
    print(f"kquant speed: MB/s of float32 input (wall clock, best of {args.repeat}); ratio = our time / ggml time")
    print(f"cpu count {os.cpu_count()}, numpy {np.__version__}, ggml {ggml_oracle.library_path().name}")
    print(head)
    print("-" * len(head))
    all_equal = True
    for rows, cols in shapes:
        x = rng.standard_normal((rows, cols), dtype=np.float32)
        im = (rng.random(cols) * np.exp(rng.standard_normal(cols))).astype(np.float32)
        mb = x.nbytes / 1e6
        for qtype in types:
            for imx in (None, im):
                t_ours, ours = best_time(lambda: kquants.quantize(x, qtype, imx, threads=n), args.repeat)
                t_g1, ref = best_time(lambda: ggml_oracle.quantize_2d(x, qtype, imx, threads=1), args.repeat)
                t_gn, ref_n = best_time(lambda: ggml_oracle.quantize_2d(x, qtype, imx, threads=n), args.repeat)
                same = np.array_equal(ours, ref) and np.array_equal(ref, ref_n)
                all_equal &= same
                print(f"{qtype.name:<5} {'yes' if imx is not None else 'no':<7} {f'{rows}x{cols}':>9} "
                      f"{mb / t_ours:>10.1f} {mb / t_g1:>9.1f} {mb / t_gn:>9.1f} "
                      f"{t_ours / t_g1:>11.2f} {t_ours / t_gn:>11.2f} {'same' if same else 'DIFF':>6}", flush=True)
    if not all_equal:
        print("ERROR: mtpmanifest and ggml produced different bytes", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
