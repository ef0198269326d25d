#!/usr/bin/env python
"""Plan every supported family's full-size release from headers alone.

For each family, a header-only copy of the public release inventory (real safetensors headers over sparse
data holes, from the family's fixture and its FULL_CONFIG) is planned with the shipped architecture file:
every source tensor must be claimed and every MTP tensor kept. Prints, per family: source tensors, GiB the
release holds, GGUF tensors per role, MTP blocks kept, and the plan time (median of --runs) beside the time
to read the same headers alone (the reference: what any tool has to pay to list the checkpoint).

Usage:
  python bench/plan_families.py                  # all families, 3 runs each
  python bench/plan_families.py --only glm4_moe --runs 1

Exit status: 0 every family planned with its MTP layers kept, 1 one did not, 2 the benchmark could not run.
"""
from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

from mtpmanifest.__main__ import compose
from mtpmanifest.fixtures import deepseek_v3, ernie4_5_moe, glm4_moe, mimo, qwen3_next, step3p5
from mtpmanifest.plan import compile_manifest
from mtpmanifest.source import Checkpoint

GIB = 1 << 30


def releases() -> dict[str, tuple[str, dict, object]]:
    """label -> (arch, config, writer(out_dir, config))."""

    def header_only(module):
        return lambda out, config: module.write_checkpoint(out, config, header_only=True, tokenizer=False)

    return {
        "DeepSeek-V3": ("deepseek_v3", deepseek_v3_full(), header_only(deepseek_v3)),
        "GLM-4.5": ("glm4_moe", glm4_moe.FULL_CONFIG, header_only(glm4_moe)),
        "GLM-4.5-Air": ("glm4_moe", glm4_moe.AIR_CONFIG, header_only(glm4_moe)),
        "GLM-4.6": ("glm4_moe", glm4_moe.FULL_CONFIG_46, lambda out, config: glm4_moe.write_checkpoint(
            out, config, header_only=True, tokenizer=False, mtp_copies=False)),
        "Qwen3-Next-80B-A3B": ("qwen3_next", qwen3_next.FULL_CONFIG, header_only(qwen3_next)),
        "Step-3.5-Flash": ("step3p5", step3p5.FULL_CONFIG, header_only(step3p5)),
        "MiMo-7B-RL": ("mimo", mimo.FULL_CONFIG, header_only(mimo)),
        "ERNIE-4.5-21B-A3B": ("ernie4_5_moe", ernie4_5_moe.FULL_CONFIG, header_only(ernie4_5_moe)),
    }


def deepseek_v3_full() -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from plan_full_scale import FULL_CONFIG

    return FULL_CONFIG


def measure(label: str, arch_name: str, config: dict, write, runs: int, root: Path) -> dict:
    ckpt_dir = write(root / arch_name / label, config)
    cfg = compose(f"arch={arch_name}", "quant=q4_k_m", job_name="bench")
    headers, plans, manifest = [], [], None
    for _ in range(runs):
        start = time.perf_counter()
        ckpt = Checkpoint.open(ckpt_dir)
        headers.append(time.perf_counter() - start)
        start = time.perf_counter()
        manifest = compile_manifest(cfg.arch, cfg.quant, Checkpoint.open(ckpt_dir))
        plans.append(time.perf_counter() - start)
    layers = manifest.layers
    return {"label": label, "arch": arch_name, "tensors": len(ckpt.tensors), "gib": manifest.bytes_in / GIB,
            "counts": manifest.counts, "mtp": f"{layers['mtp_kept']}/{layers['mtp']}", "blocks": layers["mtp_blocks"],
            "ok": layers["mtp_kept"] == layers["mtp"] > 0 and manifest.counts["mtp"] > 0,
            "headers_s": statistics.median(headers), "plan_s": statistics.median(plans)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", help="one architecture name (e.g. glm4_moe)")
    args = parser.parse_args(argv)
    # GLM-4.6 and Step-3.5 lack optional MTP copies by design: the plan's warnings about them are expected here
    logging.getLogger("mtpmanifest").setLevel(logging.ERROR)
    try:
        rows = []
        with tempfile.TemporaryDirectory(prefix="mtpm-families-") as tmp:
            for label, (arch_name, config, write) in releases().items():
                if args.only in (None, arch_name):
                    rows.append(measure(label, arch_name, config, write, args.runs, Path(tmp)))
    except Exception as exc:  # the benchmark itself could not run
        print(f"plan_families: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    print(f"{'release':<20} {'arch':<13} {'tensors':>8} {'GiB':>7} {'trunk':>6} {'mtp':>5} {'shared':>6} "
          f"{'MTP kept':>9} {'blocks':<10} {'headers':>8} {'plan':>7} {'ratio':>6}  check")
    for r in rows:
        c = r["counts"]
        blocks = ",".join(map(str, r["blocks"]))
        print(f"{r['label']:<20} {r['arch']:<13} {r['tensors']:>8,} {r['gib']:>7.1f} {c['trunk']:>6} {c['mtp']:>5} "
              f"{c['shared']:>6} {r['mtp']:>9} {blocks:<10} {r['headers_s']:>7.2f}s {r['plan_s']:>6.2f}s "
              f"{r['plan_s'] / max(r['headers_s'], 1e-9):>5.1f}x  {'PASS' if r['ok'] else 'FAIL'}")
    return 0 if rows and all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
