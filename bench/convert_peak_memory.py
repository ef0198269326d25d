#!/usr/bin/env python
"""Benchmark the peak memory of a full convert against its target: 2 x the largest output tensor + 500 MiB.

Writes a synthetic DeepSeek-V3 checkpoint with real data (default about 3 GB on disk: hidden 2048, vocab
102400, 64 routed experts, FP8 projections with 128x128 block scales, BF16 embeddings / norms / MTP head)
chunk by chunk, then runs `python -m mtpmanifest ... stage=convert` for each quant in a child process and
measures the child's peak RSS: VmHWM of /proc/self/status, read by the child at exit. (os.wait4's ru_maxrss
is printed only as a fallback: Linux carries the pre-exec high-water mark over execve, so it reports at least
the parent's RSS at spawn time.) The child runs the real command line with ChunkedTensor.tofile wrapped to
note VmHWM before and after each tensor, so the report names the tensors that raised the peak. The largest
output tensor comes from the manifest.json the run writes.

Usage:
  python bench/convert_peak_memory.py                    # ~3 GB checkpoint, quant q8_0 and f16
  python bench/convert_peak_memory.py --size-gb 10 --quants q8_0 --keep
  python bench/convert_peak_memory.py --size-gb 0.05     # smoke scale (a few seconds)

The checkpoint and outputs live in --dir and are deleted at the end unless --keep (a kept checkpoint is
reused by the next run with the same --size-gb and --seed).
Exit status: 0 all runs PASS, 1 a run FAILED its target, 2 the benchmark itself could not run.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import pathlib
import shutil
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from plan_full_scale import human, inventory, shard_name, split_shards, verdict  # noqa: E402

from mtpmanifest.demo import DEMO_DIR  # noqa: E402
from mtpmanifest.fixtures.deepseek_v3 import TINY_CONFIG  # noqa: E402
from mtpmanifest.source import E4M3FN_TO_F32  # noqa: E402

MiB = 1 << 20
TARGET_SLACK = 500 * MiB
BASE_SIZE_GB = 3.0
SHARD_BYTES = 1 << 30  # about 1 GiB per trunk shard; the MTP layer gets the last shard, as in the release
MARKER = ".mtpmanifest-bench.json"
BUILD_VERSION = 1
CHUNK = 32 * MiB        # elements generated per step
WEIGHT_STD = 0.02


# ------------------------------------------------------------------------------------------------ config

def _round(value: float, multiple: int, minimum: int) -> int:
    return max(minimum, int(round(value / multiple)) * multiple)


def checkpoint_bytes(config: dict) -> int:
    return sum(nbytes for _, nbytes in inventory(config))


def synthetic_config(size_gb: float, vocab: int | None = None) -> dict:
    """A DeepSeek-V3-shaped config of about size_gb on disk: 1 dense layer, MoE layers, 1 MTP layer.

    At the base size (3 GB) the largest output tensors are the 102400 x 2048 embedding / lm_head (BF16 in,
    210M elements) and the stacked experts (64 x 1024 x 2048 = 134M elements). Smaller sizes shrink every
    matrix dimension by sqrt(size / 3 GB); larger sizes add MoE layers."""
    a = math.sqrt(min(1.0, size_gb / BASE_SIZE_GB))
    heads = max(2, int(round(16 * a)))
    config = dict(
        copy.deepcopy(TINY_CONFIG),
        hidden_size=_round(2048 * a, 128, 256), vocab_size=_round(102400 * a, 128, 2048),
        intermediate_size=_round(8192 * a, 128, 256), moe_intermediate_size=_round(1024 * a, 128, 128),
        n_routed_experts=64, num_experts_per_tok=6, n_group=8, topk_group=4, n_shared_experts=1,
        num_attention_heads=heads, num_key_value_heads=heads, q_lora_rank=_round(768 * a, 128, 128),
        kv_lora_rank=_round(512 * a, 128, 128), qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128,
        first_k_dense_replace=1, num_hidden_layers=2, num_nextn_predict_layers=1,
    )
    if vocab is not None:
        config["vocab_size"] = vocab
    target = size_gb * 1e9
    while checkpoint_bytes(config) < target and config["num_hidden_layers"] < 1000:
        bigger = dict(config, num_hidden_layers=config["num_hidden_layers"] + 1)
        if abs(checkpoint_bytes(bigger) - target) >= abs(checkpoint_bytes(config) - target):
            break
        config = bigger
    return config


# ------------------------------------------------------------------------------------------------ writing

def _fp8_code_table(rng: np.random.Generator) -> np.ndarray:
    """65536 FP8 E4M3 codes drawn from a normal whose 4.5-sigma point is the FP8 max (448): indexing it with
    random uint16 gives Gaussian-looking FP8 data at table-lookup speed."""
    finite = np.flatnonzero(~np.isnan(E4M3FN_TO_F32))
    order = finite[np.argsort(E4M3FN_TO_F32[finite], kind="stable")]
    values = E4M3FN_TO_F32[order]
    wanted = np.clip(rng.standard_normal(65536) * (448.0 / 4.5), -448.0, 448.0)
    position = np.clip(np.searchsorted(values, wanted), 1, len(values) - 1)
    nearer_left = np.abs(wanted - values[position - 1]) <= np.abs(values[position] - wanted)
    return order[np.where(nearer_left, position - 1, position)].astype(np.uint8)


def _bf16_table(rng: np.random.Generator, std: float) -> np.ndarray:
    bits = (rng.standard_normal(65536).astype(np.float32) * np.float32(std)).view(np.uint32)
    return ((bits + 0x8000) >> 16).astype("<u2")  # round to nearest BF16


class DataWriter:
    """Streams random tensor data of the right dtype, CHUNK elements at a time."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.fp8 = _fp8_code_table(self.rng)
        self.bf16 = _bf16_table(self.rng, WEIGHT_STD)

    def _indices(self, n: int) -> np.ndarray:
        return self.rng.integers(0, 65536, n, dtype=np.uint16)

    def write(self, handle, name: str, dtype: str, n: int) -> None:
        for start in range(0, n, CHUNK):
            count = min(CHUNK, n - start)
            if dtype == "F8_E4M3":
                chunk = self.fp8[self._indices(count)]
            elif name.endswith("_scale_inv"):  # dequantized = code value * scale: std WEIGHT_STD
                base = WEIGHT_STD * 4.5 / 448.0
                chunk = (base * (1.0 + 0.1 * self.rng.standard_normal(count))).astype("<f4")
            elif name.endswith("norm.weight"):
                values = (1.0 + 0.05 * self.rng.standard_normal(count)).astype(np.float32)
                chunk = ((values.view(np.uint32) + 0x8000) >> 16).astype("<u2")
            elif dtype == "BF16":
                chunk = self.bf16[self._indices(count)]
            else:  # F32, e.g. e_score_correction_bias
                chunk = (0.01 * self.rng.standard_normal(count)).astype("<f4")
            handle.write(chunk.data)


def write_checkpoint_streaming(model_dir: pathlib.Path, config: dict, seed: int) -> dict:
    """The same inventory and layout as the release (FP8 + _scale_inv, BF16, F32; MTP in the last shard),
    written tensor by tensor so memory stays at one CHUNK."""
    groups = inventory(config)
    trunk_bytes = sum(nbytes for members, nbytes in groups
                      if not members[0][0].startswith(f"model.layers.{config['num_hidden_layers']}."))
    n_shards = max(1, math.ceil(trunk_bytes / SHARD_BYTES)) + 1
    shards = split_shards(groups, n_shards, config["num_hidden_layers"])
    writer = DataWriter(seed)
    weight_map: dict[str, str] = {}
    total = 0
    for index, shard in enumerate(shards):
        name = shard_name(index, len(shards))
        tensors = [t for members, _ in shard for t in members]
        header: dict = {"__metadata__": {"format": "pt"}}
        position = 0
        for tname, dtype, shape in tensors:
            size = math.prod(shape) * {"F8_E4M3": 1, "BF16": 2, "F32": 4}[dtype]
            header[tname] = {"dtype": dtype, "shape": shape, "data_offsets": [position, position + size]}
            position += size
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 8)
        with open(model_dir / name, "wb") as handle:
            handle.write(len(text).to_bytes(8, "little") + text)
            for tname, dtype, shape in tensors:
                writer.write(handle, tname, dtype, math.prod(shape))
        total += position
        weight_map.update({t[0]: name for t in tensors})
    index_doc = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (model_dir / "model.safetensors.index.json").write_text(json.dumps(index_doc, indent=2) + "\n")
    (model_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    for extra in ("tokenizer.json", "tokenizer_config.json"):  # the demo's 2048 tokens; the rest are padded
        shutil.copyfile(DEMO_DIR / extra, model_dir / extra)
    return {"n_shards": len(shards), "n_tensors": len(weight_map), "total_size": total}


def prepare_checkpoint(model_dir: pathlib.Path, config: dict, seed: int) -> tuple[dict, float, bool]:
    signature = {"version": BUILD_VERSION, "config": config, "seed": seed}
    marker = model_dir / MARKER
    if marker.exists():
        previous = json.loads(marker.read_text())
        if previous.get("signature") == signature:
            return previous["info"], 0.0, True
    if model_dir.exists():
        shutil.rmtree(model_dir)
    model_dir.mkdir(parents=True)
    start = time.perf_counter()
    info = write_checkpoint_streaming(model_dir, config, seed)
    seconds = time.perf_counter() - start
    marker.write_text(json.dumps({"signature": signature, "info": info}) + "\n")
    return info, seconds, False


# ------------------------------------------------------------------------------------------------ measuring

# The real command line, with ChunkedTensor.tofile wrapped to note VmHWM (peak RSS so far) after each tensor.
PROBE = r'''
import atexit, json, runpy, sys

report_path, argv = sys.argv[1], sys.argv[2:]
marks = []

def hwm_kib():
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])

try:
    import mtpmanifest.gguf_out as gguf_out
    original = gguf_out.ChunkedTensor.tofile

    def tofile(self, fout):
        before = hwm_kib()
        original(self, fout)
        marks.append([getattr(self, "_name", "?"), self.nbytes, before, hwm_kib()])

    gguf_out.ChunkedTensor.tofile = tofile
except (ImportError, AttributeError):  # the engine changed: measure the peak without attribution
    pass

@atexit.register
def dump():
    with open(report_path, "w") as handle:
        json.dump({"marks": marks, "hwm_kib": hwm_kib()}, handle)

sys.argv = ["mtpmanifest", *argv]
runpy.run_module("mtpmanifest", run_name="__main__", alter_sys=True)
'''


def run_child(args: list[str], cwd: pathlib.Path, log_name: str) -> dict:
    """Run the probe in a child; return its exit code, wall time, own peak RSS and per-tensor marks."""
    report = cwd / f"{log_name}.probe.json"
    report.unlink(missing_ok=True)
    with open(cwd / f"{log_name}.log", "wb") as log:
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-c", PROBE, str(report), *args], cwd=cwd,
                                stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's rusage alone (RUSAGE_CHILDREN would merge runs)
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    result = {"returncode": proc.returncode, "wall": wall, "ru_maxrss": usage.ru_maxrss * 1024,
              "log": (cwd / f"{log_name}.log").read_text(errors="replace"), "marks": []}
    if report.exists():
        result.update(json.loads(report.read_text()))
    # the child's own high-water mark; without a report (killed child) the conservative ru_maxrss
    result["peak_rss"] = result["hwm_kib"] * 1024 if "hwm_kib" in result else result["ru_maxrss"]
    return result


def rises(marks: list, top: int = 3) -> list[tuple[str, int]]:
    """The tensors that raised the RSS high-water mark most while being written: (name, bytes of rise)."""
    ranked = sorted(((name, (after - before) * 1024) for name, _, before, after in marks if after > before),
                    key=lambda item: -item[1])
    return ranked[:top]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-gb", type=float, default=BASE_SIZE_GB, help="checkpoint size on disk (GB)")
    parser.add_argument("--quants", default="q8_0,f16", help="comma-separated quant presets to convert with")
    parser.add_argument("--dir", type=pathlib.Path, default=pathlib.Path("/tmp/mtpmanifest-bench/convert"),
                        help="work directory (checkpoint and outputs)")
    parser.add_argument("--vocab", type=int, help="override vocab_size (default: 102400 at 3 GB, scaled)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep the checkpoint and the GGUF files")
    parser.add_argument("--calibrate", action="store_true",
                        help="also measure stage=calibrate (trunk + MTP forward, one decoder layer in memory at a time)")
    args = parser.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # progress lines appear as they happen
    if args.size_gb <= 0:
        parser.error("--size-gb must be positive")

    work = args.dir.expanduser().resolve()
    if work.exists() and any(work.iterdir()) and not (work / "ckpt" / MARKER).exists() \
            and not (work / MARKER).exists():
        print(f"error: {work} is not empty and not a benchmark directory; pass an empty or new --dir", file=sys.stderr)
        return 2
    work.mkdir(parents=True, exist_ok=True)
    (work / MARKER).write_text("{}\n")
    model_dir = work / "ckpt"
    config = synthetic_config(args.size_gb, args.vocab)
    info, gen_seconds, cached = prepare_checkpoint(model_dir, config, args.seed)
    how = "cached" if cached else f"written in {gen_seconds:.1f} s"
    print(f"checkpoint  {model_dir}: {info['total_size'] / 1e9:.2f} GB, {info['n_tensors']} tensors, "
          f"{info['n_shards']} shards ({how}); hidden {config['hidden_size']}, vocab {config['vocab_size']}, "
          f"{config['num_hidden_layers']} trunk layers + 1 MTP, {config['n_routed_experts']} experts")

    rows, notes, ok = [], [], True
    try:
        base = run_child(["arch=deepseek_v3", "quant=q8_0", f"model.path={model_dir}",
                          f"output.dir={work / 'out-plan'}", "stage=plan"], work, "plan")
        if base["returncode"] != 0:
            print(base["log"], file=sys.stderr)
            return 2
        print(f"baseline    stage=plan peak RSS {human(base['peak_rss'])} (interpreter, imports, manifest)")
        print(f"converting  quant {args.quants} ...")
        for quant in [q.strip() for q in args.quants.split(",") if q.strip()]:
            out_dir = work / f"out-{quant}"
            result = run_child(["arch=deepseek_v3", f"quant={quant}", f"model.path={model_dir}",
                                f"output.dir={out_dir}", "stage=convert", "output.overwrite=true"], work, quant)
            if result["returncode"] != 0:
                print(f"convert quant={quant} exited {result['returncode']}:\n{result['log']}", file=sys.stderr)
                return 2
            manifest = json.loads((out_dir / "manifest.json").read_text())
            largest = max(manifest["tensors"], key=lambda t: t["n_bytes"])
            target = 2 * largest["n_bytes"] + TARGET_SLACK
            passed = result["peak_rss"] <= target
            ok &= passed
            gguf_size = sum(p.stat().st_size for p in out_dir.glob("*.gguf"))
            top = rises(result["marks"])
            rows.append((quant, f"{largest['name']} ({largest['type']})", human(largest["n_bytes"]),
                         human(result["peak_rss"]), human(target), verdict(passed), f"{result['wall']:.1f} s",
                         human(gguf_size), f"{top[0][0]} (+{human(top[0][1])})" if top else "-"))
            if result["marks"]:
                notes.append(f"{quant}: RSS high-water {human(result['marks'][0][2] * 1024)} before the first tensor;"
                             f" largest rises: " + ", ".join(f"{n} +{human(b)}" for n, b in top))
            if not args.keep:
                shutil.rmtree(out_dir, ignore_errors=True)
        if args.calibrate:
            ok &= measure_calibration(model_dir, work, rows)
    finally:
        if not args.keep:
            shutil.rmtree(model_dir, ignore_errors=True)
            for leftover in work.glob("out-*"):
                shutil.rmtree(leftover, ignore_errors=True)

    header = ("quant", "largest output tensor", "bytes", "peak RSS", "target 2x+500MiB", "result", "wall",
              "gguf", "largest RSS rise while writing")
    print()
    print(table_wide(header, rows))
    for note in notes:
        print(note)
    print(f"overall: {verdict(ok)}")
    return 0 if ok else 1


def measure_calibration(model_dir: pathlib.Path, work: pathlib.Path, rows: list) -> bool:
    """Peak RSS of stage=calibrate against the largest module it must hold in float32 (a decoder block,
    its experts fused, or the output head): target 3 x that + 500 MiB (the block's arrays, the fused
    copy transformers keeps, activations)."""
    out_dir = work / "out-calibrate"
    result = run_child(["arch=deepseek_v3", "quant=q4_k_m", f"model.path={model_dir}", f"output.dir={out_dir}",
                        "stage=calibrate", "calib.samples=4", "calib.seq_len=256"], work, "calibrate")
    if result["returncode"] != 0:
        print(f"calibrate exited {result['returncode']}:\n{result['log']}", file=sys.stderr)
        return False
    manifest = json.loads((out_dir / "manifest.json").read_text())
    per_block: dict = {}
    for t in manifest["tensors"]:
        elements = 1
        for n in t["shape"]:
            elements *= n
        per_block[t["block"]] = per_block.get(t["block"], 0) + 4 * elements
    largest_block = max(v for k, v in per_block.items() if k is not None)
    head = max(4 * t["shape"][0] * t["shape"][1] for t in manifest["tensors"] if t["name"] == "output.weight")
    unit = max(largest_block, head)
    target = 3 * unit + TARGET_SLACK
    passed = result["peak_rss"] <= target
    rows.append(("calibrate", f"largest module {'block' if largest_block >= head else 'output head'} (F32)",
                 human(unit), human(result["peak_rss"]), human(target).replace("", "") + " (3x+500MiB)",
                 verdict(passed), f"{result['wall']:.1f} s", "-", "-"))
    shutil.rmtree(out_dir, ignore_errors=True)
    return passed


def table_wide(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip()
             for row in [header, tuple("-" * w for w in widths), *rows]]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
