#!/usr/bin/env python
"""Benchmark `stage=plan` on the full DeepSeek-V3 tensor inventory, without 688 GB of weights.

Builds (once, cached in --dir) a header-only copy of the DeepSeek-V3 release: the public config.json values,
163 shards `model-00001-of-000163.safetensors` ... with real safetensors headers (dtypes, shapes,
data_offsets) and the data region left as a sparse hole, plus `model.safetensors.index.json`. Then it

  1. times `python -m mtpmanifest arch=deepseek_v3 quant=q8_0 model.path=DIR output.dir=TMP stage=plan`
     as a subprocess (--runs times; min and median reported), and
  2. runs the same command once more in a child Python that wraps `mtpmanifest.pipeline.run` to prove no
     tensor data is read: it compares `rchar` of /proc/self/io (bytes returned by read syscalls) before and
     after the run with the header bytes, and records every file the run opens (audit hook) and any mmap.

Usage:
  python bench/plan_full_scale.py                          # full scale: 91,991 tensors, 163 shards, ~688 GB
  python bench/plan_full_scale.py --profile 25             # also print the top 25 functions (cProfile)
  python bench/plan_full_scale.py --layers 3 --experts 8 --shards 4 --runs 1 --dir /tmp/x   # smoke scale

Exit status: 0 all checks PASS, 1 a check FAILED, 2 the benchmark itself could not run.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from mtpmanifest.demo import DEMO_DIR
from mtpmanifest.fixtures.checkpoint import write_header_only
from mtpmanifest.fixtures.deepseek_v3 import TINY_CONFIG, tensor_specs
from mtpmanifest.fixtures.fp8 import scale_inv_shape

# The public deepseek-ai/DeepSeek-V3 config.json. TINY_CONFIG lists every key of that file except auto_map.
FULL_CONFIG: dict = dict(
    copy.deepcopy(TINY_CONFIG),
    auto_map={"AutoConfig": "configuration_deepseek.DeepseekV3Config",
              "AutoModel": "modeling_deepseek.DeepseekV3Model",
              "AutoModelForCausalLM": "modeling_deepseek.DeepseekV3ForCausalLM"},
    hidden_size=7168, num_hidden_layers=61, first_k_dense_replace=3, intermediate_size=18432,
    moe_intermediate_size=2048, n_routed_experts=256, n_shared_experts=1, num_experts_per_tok=8, n_group=8,
    topk_group=4, num_attention_heads=128, num_key_value_heads=128, q_lora_rank=1536, kv_lora_rank=512,
    qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128, vocab_size=129280, num_nextn_predict_layers=1,
    max_position_embeddings=163840, rope_theta=10000,
    rope_scaling={"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 1.0, "mscale_all_dim": 1.0,
                  "original_max_position_embeddings": 4096, "type": "yarn"},
    rms_norm_eps=1e-06, scoring_func="sigmoid", topk_method="noaux_tc", norm_topk_prob=True,
    routed_scaling_factor=2.5, tie_word_embeddings=False, bos_token_id=0, eos_token_id=1,
    model_type="deepseek_v3", architectures=["DeepseekV3ForCausalLM"],
    quantization_config={"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                         "weight_block_size": [128, 128]},
)
FULL_SHARDS = 163
FULL_TENSORS = 91_991                       # tensors of the release's index, FP8 scales included
FULL_BYTES_RANGE = (680e9, 695e9)           # "about 688 GB" of tensor data
DTYPE = {"fp8": ("F8_E4M3", 1), "bf16": ("BF16", 2), "f32": ("F32", 4)}
MARKER = ".mtpmanifest-bench.json"          # written last: its presence means the build completed
BUILD_VERSION = 1
BYTES_READ_SLACK = 1 << 20                  # reads the accounting below cannot attribute (e.g. /proc)
# A buffered reader that reads the 8-byte length fills a whole buffer first: up to one buffer past the header.
READ_AHEAD_PER_SHARD = max(8192, os.statvfs("/").f_bsize)


# ------------------------------------------------------------------------------------------------ inventory

def bench_config(layers: int | None, experts: int | None) -> dict:
    """The full config, or a shrunken one (fewer layers / experts) for quick runs."""
    config = copy.deepcopy(FULL_CONFIG)
    if layers is not None:
        if layers < 2:
            raise RuntimeError("--layers must be >= 2 (one dense and one MoE trunk layer)")
        config["num_hidden_layers"] = layers
        config["first_k_dense_replace"] = min(FULL_CONFIG["first_k_dense_replace"], layers - 1)
    if experts is not None:
        if experts < 1:
            raise RuntimeError("--experts must be >= 1")
        config["n_routed_experts"] = experts
        config["num_experts_per_tok"] = min(FULL_CONFIG["num_experts_per_tok"], experts)
        config["n_group"] = math.gcd(FULL_CONFIG["n_group"], experts)
        config["topk_group"] = min(FULL_CONFIG["topk_group"], config["n_group"])
    return config


def expected_tensor_count(config: dict) -> int:
    """Tensors of a DeepSeek-V3 release for `config`, counted from the release's layout (independently of
    tensor_specs): 14 attention/norm tensors per layer (5 FP8 weights with their scales + 4 norms), 6 for a
    dense MLP, 8 + 6 per routed expert for a MoE MLP (router, bias, 3 shared + 3 per expert, FP8 + scale),
    6 more per MTP layer, and embed_tokens / model.norm / lm_head."""
    trunk, dense = config["num_hidden_layers"], config["first_k_dense_replace"]
    mtp, experts = config.get("num_nextn_predict_layers", 0), config["n_routed_experts"]
    return 3 + (trunk + mtp) * 14 + dense * 6 + (trunk - dense + mtp) * (8 + 6 * experts) + mtp * 6


def inventory(config: dict) -> list[tuple[list[tuple[str, str, list[int]]], int]]:
    """Groups (weight + its FP8 scale) of (name, safetensors dtype, shape), with their byte size, in the
    release's order: embeddings, layers 0..N-1, final norm and lm_head, then the MTP layers."""
    groups = []
    for name, shape, kind in tensor_specs(config):
        dtype, size = DTYPE[kind]
        members = [(name, dtype, list(shape))]
        nbytes = math.prod(shape) * size
        if kind == "fp8":
            scale = scale_inv_shape(shape, tuple(config["quantization_config"]["weight_block_size"]))
            members.append((name + "_scale_inv", "F32", list(scale)))
            nbytes += math.prod(scale) * 4
        groups.append((members, nbytes))
    n_trunk = config["num_hidden_layers"]

    def is_mtp(name: str) -> bool:
        parts = name.split(".")
        return len(parts) > 2 and parts[1] == "layers" and int(parts[2]) >= n_trunk

    def key(group) -> tuple[bool, bool]:
        name = group[0][0][0]
        return is_mtp(name), name.startswith(("model.norm.", "lm_head."))

    return sorted(groups, key=key)  # stable: tensor_specs order within each class


def split_shards(groups, n_shards: int, n_trunk: int) -> list[list]:
    """Trunk groups over the first n_shards-1 shards, contiguous and about equal in bytes; MTP layers last."""
    def is_mtp(group) -> bool:
        parts = group[0][0][0].split(".")
        return len(parts) > 2 and parts[1] == "layers" and int(parts[2]) >= n_trunk

    trunk = [g for g in groups if not is_mtp(g)]
    mtp = [g for g in groups if is_mtp(g)]
    n_trunk_shards = n_shards - 1 if mtp else n_shards
    if not 1 <= n_trunk_shards <= len(trunk):
        raise RuntimeError(f"--shards {n_shards}: cannot split {len(trunk)} trunk tensor groups that way")
    total = sum(nbytes for _, nbytes in trunk)
    shards: list[list] = [[] for _ in range(n_trunk_shards)]
    current = done = 0
    for i, group in enumerate(trunk):
        remaining_groups, remaining_shards = len(trunk) - i, n_trunk_shards - 1 - current
        if shards[current] and remaining_shards and (done >= total * (current + 1) / n_trunk_shards
                                                     or remaining_groups == remaining_shards):
            current += 1
        shards[current].append(group)
        done += group[1]
    return shards + ([mtp] if mtp else [])


# ------------------------------------------------------------------------------------------------ building

def shard_name(index: int, count: int) -> str:
    return f"model-{index + 1:05d}-of-{count:06d}.safetensors"  # the release's 5-of-6-digit spelling


def build(model_dir: pathlib.Path, config: dict, n_shards: int, force: bool = False) -> dict:
    """Write the header-only checkpoint unless a complete build for the same inputs is already there."""
    groups = inventory(config)
    signature = {"version": BUILD_VERSION, "config": config, "shards": n_shards}
    marker = model_dir / MARKER
    if marker.exists():
        previous = json.loads(marker.read_text())
        files_ok = all((model_dir / f).is_file() and (model_dir / f).stat().st_size == size
                       for f, size in previous.get("files", {}).items())
        if previous.get("signature") == signature and files_ok and not force:
            return previous | {"built_seconds": 0.0, "cached": True}
        for name in previous.get("files", {}):  # only files an earlier build wrote
            (model_dir / name).unlink(missing_ok=True)
        marker.unlink()
    elif model_dir.exists() and any(model_dir.iterdir()):
        raise RuntimeError(f"{model_dir}: not empty and not a benchmark checkpoint ({MARKER} missing); "
                         "pass an empty or new --dir")
    model_dir.mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    shards = split_shards(groups, n_shards, config["num_hidden_layers"])
    files: dict[str, int] = {}
    weight_map: dict[str, str] = {}
    header_bytes = total_size = 0
    for index, shard in enumerate(shards):
        name = shard_name(index, len(shards))
        tensors = [t for members, _ in shard for t in members]
        head, data = write_header_only(model_dir / name, tensors)
        header_bytes += head
        total_size += data
        files[name] = head + data
        weight_map.update({t[0]: name for t in tensors})
    index_doc = {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))}
    (model_dir / "model.safetensors.index.json").write_text(json.dumps(index_doc, indent=2) + "\n")
    (model_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    for extra in ("tokenizer.json", "tokenizer_config.json"):  # the demo's (vocab size differs; plan ignores it)
        shutil.copyfile(DEMO_DIR / extra, model_dir / extra)
    for name in ("model.safetensors.index.json", "config.json", "tokenizer.json", "tokenizer_config.json"):
        files[name] = (model_dir / name).stat().st_size
    info = {"signature": signature, "files": files, "n_shards": len(shards), "n_tensors": len(weight_map),
            "total_size": total_size, "header_bytes": header_bytes}
    marker.write_text(json.dumps(info, indent=1) + "\n")
    return info | {"built_seconds": time.perf_counter() - start, "cached": False}


def disk_usage(model_dir: pathlib.Path) -> int:
    return sum(p.stat().st_blocks * 512 for p in model_dir.iterdir() if p.is_file())


# ------------------------------------------------------------------------------------------------ measuring

def evict(model_dir: pathlib.Path) -> None:
    """Drop this checkpoint's pages (only its own files) from the page cache, so headers come from disk."""
    for path in model_dir.iterdir():
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def plan_command(model_dir: pathlib.Path, out_dir: pathlib.Path) -> list[str]:
    return ["arch=deepseek_v3", "quant=q8_0", f"model.path={model_dir}", f"output.dir={out_dir}", "stage=plan"]


def run_plan(model_dir: pathlib.Path, out_dir: pathlib.Path, cwd: pathlib.Path) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "mtpmanifest", *plan_command(model_dir, out_dir)],
                          cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"plan exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return elapsed, proc.stdout


# Runs the real command line in this child, with mtpmanifest.pipeline.run wrapped: rchar before/after, files
# opened (audit hook "open", which io.open, io.open_code and numpy's fromfile all raise), mmap calls, and the
# time of each phase the pipeline module exposes. Optionally profiles run() with cProfile.
PROBE = r'''
import cProfile, io, json, os, pstats, runpy, sys, time

report_path, profile_top, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
t_process = time.perf_counter()

def rchar():
    with open("/proc/self/io", "rb") as handle:
        for line in handle:
            if line.startswith(b"rchar:"):
                return int(line.split()[1])

state = {"active": False, "opens": [], "mmaps": 0, "phases": {}}

def hook(event, args):
    if not state["active"]:
        return
    if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
        mode = args[1] if len(args) > 1 else None
        if mode is None or "r" in str(mode) or mode == "rb":
            state["opens"].append(os.path.realpath(os.fsdecode(args[0])))
    elif event == "mmap.__new__":
        state["mmaps"] += 1

sys.addaudithook(hook)

import mtpmanifest.pipeline as pipeline

def timed(label, function):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            seconds, calls = state["phases"].get(label, (0.0, 0))
            state["phases"][label] = (seconds + time.perf_counter() - start, calls + 1)
    return wrapper

# Whatever of these the pipeline module still uses gets timed (the engine changes; missing names are skipped).
checkpoint, manifest_class = getattr(pipeline, "Checkpoint", None), getattr(pipeline, "Manifest", None)
if checkpoint is not None and hasattr(checkpoint, "open"):
    checkpoint.open = classmethod(timed("Checkpoint.open", checkpoint.open.__func__))
if hasattr(pipeline, "compile_manifest"):
    pipeline.compile_manifest = timed("compile_manifest", pipeline.compile_manifest)
for method in ("validate", "write"):
    if manifest_class is not None and hasattr(manifest_class, method):
        setattr(manifest_class, method, timed(f"Manifest.{method}", getattr(manifest_class, method)))
if hasattr(pipeline, "report") and hasattr(pipeline.report, "print_plan"):
    pipeline.report.print_plan = timed("report.print_plan", pipeline.report.print_plan)

original_run = pipeline.run

def run(cfg):
    profiler = cProfile.Profile() if profile_top else None
    before = rchar()
    t_run = time.perf_counter()
    state["active"] = True
    try:
        if profiler:
            return profiler.runcall(original_run, cfg)
        return original_run(cfg)
    finally:
        state["active"] = False
        result = {"rchar": rchar() - before, "run_seconds": time.perf_counter() - t_run,
                  "before_run_seconds": t_run - t_process, "opens": state["opens"], "mmaps": state["mmaps"],
                  "phases": state["phases"]}
        if profiler:
            text = io.StringIO()
            pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(profile_top)
            result["profile_cumulative"] = text.getvalue()
            text = io.StringIO()
            pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(profile_top)
            result["profile_tottime"] = text.getvalue()
        with open(report_path, "w") as handle:
            json.dump(result, handle)

pipeline.run = run
sys.argv = ["mtpmanifest", *argv]
runpy.run_module("mtpmanifest", run_name="__main__", alter_sys=True)
'''


def probe_plan(model_dir: pathlib.Path, out_dir: pathlib.Path, cwd: pathlib.Path, profile_top: int) -> dict:
    report = cwd / "probe.json"
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", PROBE, str(report), str(profile_top),
                           *plan_command(model_dir, out_dir)], cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0 or not report.exists():
        raise RuntimeError(f"probe exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return json.loads(report.read_text()) | {"wall_seconds": wall}


def account_reads(probe: dict, model_dir: pathlib.Path, info: dict) -> dict:
    """Split the bytes the run read into shard headers, small model files and other files it opened."""
    model_real = os.path.realpath(model_dir)
    shard_opens: dict[str, int] = {}
    model_files: set[str] = set()
    other_files: set[str] = set()
    for path in probe["opens"]:
        name = os.path.basename(path)
        if os.path.dirname(path) == model_real and name.endswith(".safetensors"):
            shard_opens[name] = shard_opens.get(name, 0) + 1
        elif os.path.dirname(path) == model_real:
            model_files.add(name)
        elif os.path.isfile(path):
            other_files.add(path)
    small_model_bytes = sum((model_dir / n).stat().st_size for n in model_files)
    other_bytes = sum(os.path.getsize(p) for p in other_files)
    read_ahead = READ_AHEAD_PER_SHARD * info["n_shards"]
    allowed = info["header_bytes"] + small_model_bytes + other_bytes + read_ahead + BYTES_READ_SLACK
    return {"shard_opens": shard_opens, "model_files": sorted(model_files), "small_model_bytes": small_model_bytes,
            "other_files": sorted(other_files), "other_bytes": other_bytes, "allowed": allowed,
            "slack": read_ahead + BYTES_READ_SLACK,
            "unaccounted": probe["rchar"] - info["header_bytes"] - small_model_bytes - other_bytes}


# ------------------------------------------------------------------------------------------------ reporting

def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def table(rows: list[tuple[str, str, str, str]]) -> str:
    header = ("metric", "measured", "target", "result")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(header, widths)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=pathlib.Path, default=pathlib.Path("/tmp/mtpmanifest-bench/dsv3-full"),
                        help="where the header-only checkpoint is built and cached")
    parser.add_argument("--layers", type=int, help="num_hidden_layers (default: the release's 61)")
    parser.add_argument("--experts", type=int, help="n_routed_experts (default: the release's 256)")
    parser.add_argument("--shards", type=int, default=FULL_SHARDS, help="shard files (the last holds the MTP layer)")
    parser.add_argument("--runs", type=int, default=3, help="timed plan runs")
    parser.add_argument("--target-seconds", type=float, default=10.0, help="plan time target")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="print the top N functions of the probe run by cumulative and by own time")
    parser.add_argument("--rebuild", action="store_true", help="rebuild the checkpoint even if cached")
    parser.add_argument("--cold", action="store_true",
                        help="evict the checkpoint's files from the page cache (posix_fadvise) before each run")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be >= 1")
    sys.stdout.reconfigure(line_buffering=True)  # progress lines appear as they happen

    config = bench_config(args.layers, args.experts)
    full = config == FULL_CONFIG and args.shards == FULL_SHARDS
    model_dir = args.dir.expanduser().resolve()
    info = build(model_dir, config, args.shards, force=args.rebuild)
    how = "cached" if info["cached"] else f"built in {info['built_seconds']:.1f} s"
    print(f"checkpoint  {model_dir} ({how}, {human(disk_usage(model_dir))} on disk)")

    expected_count = FULL_TENSORS if full else expected_tensor_count(config)
    if full and expected_tensor_count(config) != FULL_TENSORS:  # the formula itself must describe the release
        print(f"error: the release layout formula gives {expected_tensor_count(config)} tensors, not {FULL_TENSORS}",
              file=sys.stderr)
        return 2
    count_ok = info["n_tensors"] == expected_count
    size_ok = FULL_BYTES_RANGE[0] <= info["total_size"] <= FULL_BYTES_RANGE[1] if full else info["total_size"] > 0
    if not count_ok:
        specs = tensor_specs(config)
        print(f"warning: tensor_specs gives {info['n_tensors']} tensors ({len(specs)} weights, "
              f"{sum(k == 'fp8' for _, _, k in specs)} FP8 scales); the release layout has {expected_count}",
              file=sys.stderr)

    with tempfile.TemporaryDirectory(prefix="mtpmanifest-plan-") as tmp:
        work = pathlib.Path(tmp)
        times = []
        for i in range(args.runs):
            if args.cold:
                evict(model_dir)
            seconds, _ = run_plan(model_dir, work / f"out{i}", work)
            times.append(seconds)
            print(f"run {i + 1}/{args.runs}  {seconds:.2f} s")
        probe = probe_plan(model_dir, work / "probe-out", work, args.profile)
        manifest_path = work / "probe-out" / "manifest.json"
        manifest = json.loads(manifest_path.read_text())
        manifest_size = manifest_path.stat().st_size
        if statistics.median(times) >= args.target_seconds and not args.profile:  # too slow: say where it goes
            args.profile = 30
            profiled = probe_plan(model_dir, work / "profile-out", work, args.profile)
            probe |= {k: v for k, v in profiled.items() if k.startswith("profile_")}
    reads = account_reads(probe, model_dir, info)

    n_trunk = config["num_hidden_layers"]
    mtp_expected = list(range(n_trunk, n_trunk + config["num_nextn_predict_layers"]))
    manifest_ok = (manifest["source"]["n_tensors"] == info["n_tensors"]
                   and manifest["layers"]["mtp_blocks"] == mtp_expected)
    opens = reads["shard_opens"]
    opens_ok = len(opens) == info["n_shards"] and set(opens.values()) == {1}
    reads_ok = probe["rchar"] <= reads["allowed"] and probe["mmaps"] == 0 and opens_ok
    best, median = min(times), statistics.median(times)
    time_ok = median < args.target_seconds

    rows = [
        ("tensors (scales included)", f"{info['n_tensors']:,}", f"{expected_count:,}", verdict(count_ok)),
        ("shards", f"{info['n_shards']}", f"{args.shards}", verdict(info["n_shards"] == args.shards)),
        ("logical size", f"{info['total_size'] / 1e9:.1f} GB ({human(info['total_size'])})",
         "about 688 GB" if full else "-", verdict(size_ok)),
        ("header bytes (all shards)", human(info["header_bytes"]), "-", ""),
        (f"plan seconds (min / median{', cold' if args.cold else ''})", f"{best:.2f} / {median:.2f}",
         f"< {args.target_seconds:g} s",
         verdict(time_ok)),
        ("probe run: wall seconds", f"{probe['wall_seconds']:.2f}", "-", ""),
        ("  startup+imports+hydra", f"{probe['before_run_seconds']:.2f}", "-", ""),
        ("  pipeline.run", f"{probe['run_seconds']:.2f}", "-", ""),
        *[(f"    {label}" + (f" ({calls} calls)" if calls > 1 else ""), f"{seconds:.2f}", "-", "")
          for label, (seconds, calls) in probe["phases"].items()],
        ("  after run (exit, teardown)",
         f"{probe['wall_seconds'] - probe['before_run_seconds'] - probe['run_seconds']:.2f}", "-", ""),
        ("bytes read during run (rchar)", human(probe["rchar"]),
         f"<= {human(reads['allowed'])}", verdict(probe["rchar"] <= reads["allowed"])),
        ("  of which not header/small file", human(max(0, reads["unaccounted"])), f"<= {human(reads['slack'])}", ""),
        ("shard opens / mmaps", f"{sum(opens.values())} / {probe['mmaps']}",
         f"{info['n_shards']} (1 each) / 0", verdict(opens_ok and probe["mmaps"] == 0)),
        ("manifest (size, MTP blocks)", f"{human(manifest_size)}, {manifest['layers']['mtp_blocks']}",
         f"{mtp_expected}", verdict(manifest_ok)),
    ]
    print()
    print(table(rows))
    print(f"other files the run read: {len(reads['other_files'])} ({human(reads['other_bytes'])}); "
          f"model dir files besides shards: {', '.join(reads['model_files']) or 'none'}")
    if args.profile:
        print("\n--- cProfile of pipeline.run, by cumulative time ---")
        print(probe["profile_cumulative"])
        print("--- by own time ---")
        print(probe["profile_tottime"])
    ok = count_ok and size_ok and time_ok and reads_ok and manifest_ok and info["n_shards"] == args.shards
    print(f"overall: {verdict(ok)}")
    return 0 if ok else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except RuntimeError as exc:  # bad options or a failed engine run: one message, no traceback
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
