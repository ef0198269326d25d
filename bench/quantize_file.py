"""Whole-file Q4_K_M: mtpmanifest against llama.cpp's llama_model_quantize, measured in one run.

    python bench/quantize_file.py [--hidden 1024 --layers 6 --experts 16 --vocab 32000] [--quant q4_k_m]

Builds a synthetic DeepSeek-V3 checkpoint (BF16, one MTP layer), converts it once to an F32 GGUF
(the input llama.cpp's quantizer needs), then times
  * llama.cpp: llama_model_quantize(F32 GGUF -> Q4_K_M), nthread = cores  (a child process)
  * mtpmanifest: checkpoint -> Q4_K_M GGUF in one pass (stage=convert, quant.mtp=inherit, so the
    output is byte-identical per tensor to llama.cpp's), with the time split into reading + ops,
    quantizing (per GGML type) and writing
and prints the ratio. It also prints the end-to-end ratio from the Hugging Face checkpoint: one
pass for mtpmanifest against two passes for llama.cpp's route (HF -> F32 GGUF, then quantize; the
first pass is timed with mtpmanifest's F32 conversion, since llama.cpp's own converter drops the
MTP layer of DeepSeek-V3).
"""
from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def build_checkpoint(path: Path, args) -> Path:
    from mtpmanifest.fixtures.deepseek_v3 import TINY_CONFIG, write_checkpoint

    config = {**TINY_CONFIG, "hidden_size": args.hidden, "num_hidden_layers": args.layers, "first_k_dense_replace": 1,
              "intermediate_size": 2 * args.hidden, "moe_intermediate_size": args.hidden // 2, "n_routed_experts": args.experts,
              "num_experts_per_tok": 2, "n_group": 1, "topk_group": 1, "num_attention_heads": 8, "num_key_value_heads": 8,
              "q_lora_rank": args.hidden // 2, "kv_lora_rank": 256, "qk_nope_head_dim": 128, "v_head_dim": 128,
              "qk_rope_head_dim": 64, "vocab_size": args.vocab}
    if not (path / "config.json").exists():
        write_checkpoint(path, config, fp8=False, seed=0, shards=2)
    return path


def compose_app(*overrides: str):
    from mtpmanifest.__main__ import compose

    return compose(*overrides, job_name="bench")


def run_cli(*overrides: str) -> None:
    from mtpmanifest.pipeline import run

    run(compose_app(*overrides), progress=False)


def timed_convert(ckpt: Path, out: Path, quant: str) -> tuple[float, dict[str, float]]:
    """Wall time of a one-pass conversion, and where it went."""
    import mtpmanifest.convert as convert

    spent: dict[str, float] = collections.defaultdict(float)
    encode = convert.encode

    def timed_encode(data, qtype, importance=None):
        start = time.perf_counter()
        try:
            return encode(data, qtype, importance)
        finally:
            spent[f"quantize {qtype.name}"] += time.perf_counter() - start

    convert.encode = timed_encode
    try:
        start = time.perf_counter()
        run_cli(f"model.path={ckpt}", f"output.dir={out}", f"quant={quant}", "quant.mtp=inherit", "stage=convert",
                "output.overwrite=true")
        total = time.perf_counter() - start
    finally:
        convert.encode = encode
    spent["read, ops, write, plan"] = total - sum(spent.values())
    return total, dict(spent)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--experts", type=int, default=16)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--quant", default="q4_k_m")
    parser.add_argument("--target", type=float, default=1.5, help="pass when mtpmanifest's time <= target x llama.cpp's")
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "mtpmanifest-bench" / "quantize-file")
    args = parser.parse_args()
    from llama_quantize import llama_quantize

    file_type = compose_app(f"quant={args.quant}").quant.file_type

    ckpt = build_checkpoint(args.dir / "ckpt", args)
    f32_seconds, _ = timed_convert(ckpt, args.dir / "f32", "f32")
    f32 = args.dir / "f32" / "model-f32.gguf"
    cores = os.cpu_count() or 1

    start = time.perf_counter()
    llama_quantize(f32, args.dir / "llama.gguf", file_type, nthread=cores)
    llama_seconds = time.perf_counter() - start
    ours_seconds, breakdown = timed_convert(ckpt, args.dir / "ours", args.quant)

    size = f32.stat().st_size
    print(f"\ninput      {size / 2**20:.0f} MiB F32 GGUF ({args.hidden} hidden, {args.layers}+1 layers, {args.experts} experts, "
          f"vocab {args.vocab}); {cores} cores")
    print(f"{'step':44s} {'seconds':>8s} {'ratio':>7s}")
    print(f"{'llama.cpp llama_model_quantize F32 -> ' + args.quant:44s} {llama_seconds:8.2f} {1:7.2f}")
    print(f"{'mtpmanifest checkpoint -> ' + args.quant + ' (one pass)':44s} {ours_seconds:8.2f} {ours_seconds / llama_seconds:7.2f}")
    for what, seconds in sorted(breakdown.items(), key=lambda kv: -kv[1]):
        print(f"  {what:42s} {seconds:8.2f}")
    two_pass = f32_seconds + llama_seconds
    print(f"{'end to end: HF -> F32 GGUF -> ' + args.quant + ' (two passes)':44s} {two_pass:8.2f} {1:7.2f}")
    print(f"{'end to end: mtpmanifest one pass':44s} {ours_seconds:8.2f} {ours_seconds / two_pass:7.2f}")
    passed = ours_seconds / llama_seconds <= args.target
    print(f"whole-file ratio {ours_seconds / llama_seconds:.2f} (target <= {args.target}): {'PASS' if passed else 'FAIL'}")
    sys.exit(0 if passed else 1)


if __name__ == "__main__":
    main()
