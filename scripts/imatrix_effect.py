"""What calibrating the MTP head buys: quantize the demo at q2_k, q3_k_m and q4_k_m with no imatrix,
with a trunk-only imatrix (what llama-imatrix gives today: it never runs the MTP block) and with the
full one (trunk and MTP layer), and compare the MTP head's logits with the unquantized model's on
held-out text: top-1 agreement and KL divergence.

    python scripts/imatrix_effect.py [--tokens 4096] [--samples 32] [--seq-len 256] [--out /tmp/imatrix-effect]

Types follow llama.cpp (quant.mtp=inherit) so only the importance data differs between rows.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

PRESETS = ("q2_k", "q3_k_m", "q4_k_m")
VARIANTS = ("none", "trunk-only", "full")


def compose_app(*overrides: str):
    from mtpmanifest.__main__ import compose

    return compose(*overrides, job_name="bench")


def mtp_logits(forward, token_windows) -> np.ndarray:
    """The first MTP layer's logits over every row of every window, [rows, vocab] float32."""
    out = []
    for window in token_windows:
        trunk = forward.trunk([window])
        out.append(forward.mtp(trunk)[0].scores.logits[0])
    return np.concatenate(out)


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64) - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def compare(reference: np.ndarray, quantized: np.ndarray) -> tuple[float, float]:
    agree = float((reference.argmax(-1) == quantized.argmax(-1)).mean())
    p, q = log_softmax(reference), log_softmax(quantized)
    kl = float((np.exp(p) * (p - q)).sum(-1).mean())
    return agree, kl


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "imatrix-effect")
    args = parser.parse_args()

    from mtpmanifest.accept import windows
    from mtpmanifest.accept_stage import heldout_path, heldout_tokens
    from mtpmanifest.calibrate import calibrate
    from mtpmanifest.convert import convert
    from mtpmanifest.demo import DEMO_DIR
    from mtpmanifest.forward import ModelForward
    from mtpmanifest.imatrix import Imatrix
    from mtpmanifest.plan import compile_manifest
    from mtpmanifest.source import Checkpoint
    from mtpmanifest.weights import GGUFWeights, SourceWeights

    ckpt = Checkpoint.open(DEMO_DIR)
    base = compose_app("quant=q4_k_m", f"calib.samples={args.samples}", f"calib.seq_len={args.seq_len}")
    tokens = heldout_tokens(heldout_path(base.accept), ckpt, args.tokens)
    token_windows = windows(tokens, 256)
    manifest = compile_manifest(base.arch, base.quant, ckpt)
    full = calibrate(base, manifest, ckpt)
    mtp_names = {e.name for e in manifest.tensors if e.role == "mtp"}
    trunk_only = Imatrix({n: e for n, e in full.entries.items() if n not in mtp_names}, full.datasets, full.chunk_count, full.chunk_size)
    imatrices = {"none": None, "trunk-only": trunk_only, "full": full}
    reference = mtp_logits(ModelForward(ckpt.config, base.arch.mtp_head, SourceWeights(manifest, ckpt), keep_logits=True), token_windows)

    rows = []
    for preset in PRESETS:
        cfg = compose_app(f"quant={preset}", "quant.mtp=inherit")
        preset_manifest = compile_manifest(cfg.arch, cfg.quant, ckpt)
        for variant in VARIANTS:
            path = args.out / f"{preset}-{variant}.gguf"
            convert(preset_manifest, ckpt, path, overwrite=True, progress=False, imatrix=imatrices[variant])
            forward = ModelForward(ckpt.config, cfg.arch.mtp_head, GGUFWeights(preset_manifest, path), keep_logits=True)
            agree, kl = compare(reference, mtp_logits(forward, token_windows))
            rows.append((preset, variant, agree, kl))
            print(f"{preset:7s} {variant:10s} top-1 agreement {agree:.4f}  KL {kl:.5f}", file=sys.stderr)

    print(f"\nMTP head vs the unquantized demo, {reference.shape[0]} held-out positions "
          f"(imatrix: {args.samples} x {args.seq_len} tokens of calibration.txt)\n")
    print("| preset | imatrix | MTP top-1 agreement | MTP KL divergence |")
    print("|---|---|---:|---:|")
    for preset, variant, agree, kl in rows:
        print(f"| {preset} | {variant} | {agree:.4f} | {kl:.5f} |")


if __name__ == "__main__":
    main()
