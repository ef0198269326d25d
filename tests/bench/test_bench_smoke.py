"""Smoke tests for the benchmark scripts in bench/: they run at a tiny scale, exit 0 and print their tables.

No timing assertions: the plan time target is lifted with --target-seconds, and the memory target
(2 x largest tensor + 500 MiB) is far above what a 50 MB checkpoint needs.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"


def run_script(name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYDRA_")}
    proc = subprocess.run([sys.executable, str(BENCH / name), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"rc {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


def table_row(stdout: str, label: str) -> list[str]:
    rows = [line for line in stdout.splitlines() if line.startswith(label)]
    assert rows, f"no table row {label!r} in:\n{stdout}"
    return rows[0][len(label):].split()


def load_plan_module():
    spec = importlib.util.spec_from_file_location("plan_full_scale", BENCH / "plan_full_scale.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_full_inventory_matches_the_release():
    bench = load_plan_module()
    groups = bench.inventory(bench.FULL_CONFIG)
    assert bench.expected_tensor_count(bench.FULL_CONFIG) == bench.FULL_TENSORS == 91_991
    assert sum(len(members) for members, _ in groups) == 91_991
    assert 680e9 < sum(nbytes for _, nbytes in groups) < 695e9
    shards = bench.split_shards(groups, bench.FULL_SHARDS, 61)
    assert len(shards) == 163 and all(shards)
    assert {members[0][0].split(".")[2] for members, _ in shards[-1]} == {"61"}  # MTP alone in the last shard
    assert not any(members[0][0].startswith("model.layers.61.") for shard in shards[:-1] for members, _ in shard)


def test_plan_full_scale_smoke(tmp_path):
    args = ("--layers", "3", "--experts", "8", "--shards", "4", "--runs", "1", "--target-seconds", "600",
            "--dir", str(tmp_path / "ckpt"))
    first = run_script("plan_full_scale.py", *args, cwd=tmp_path)
    for label in ("shards", "logical size", "plan seconds (min / median)", "bytes read during run (rchar)",
                  "shard opens / mmaps", "manifest (size, MTP blocks)"):
        table_row(first.stdout, label)
    assert table_row(first.stdout, "tensors (scales included)") == ["189", "189", "PASS"]
    assert table_row(first.stdout, "shard opens / mmaps")[-1] == "PASS"
    assert "overall: PASS" in first.stdout
    assert sorted(p.name for p in (tmp_path / "ckpt").glob("*.safetensors")) == [
        f"model-0000{i}-of-000004.safetensors" for i in range(1, 5)]
    second = run_script("plan_full_scale.py", *args, cwd=tmp_path)  # the cached checkpoint is reused
    assert "(cached," in second.stdout


def test_convert_peak_memory_smoke(tmp_path):
    work = tmp_path / "work"
    proc = run_script("convert_peak_memory.py", "--size-gb", "0.05", "--dir", str(work), cwd=tmp_path)
    header = [line for line in proc.stdout.splitlines() if line.startswith("quant ")]
    assert header and "peak RSS" in header[0] and "target 2x+500MiB" in header[0]
    for quant in ("q8_0", "f16"):
        row = table_row(proc.stdout, quant + " ")
        assert row[0] == "token_embd.weight" and "PASS" in row
    assert "overall: PASS" in proc.stdout
    assert not (work / "ckpt").exists() and not list(work.glob("out-*"))  # big files cleaned up


def test_quantize_file_smoke(tmp_path):
    proc = run_script("quantize_file.py", "--hidden", "256", "--layers", "2", "--experts", "4", "--vocab", "2048",
                      "--target", "1000", "--dir", str(tmp_path / "qf"), cwd=tmp_path)
    assert table_row(proc.stdout, "llama.cpp llama_model_quantize F32 -> q4_k_m")
    assert table_row(proc.stdout, "mtpmanifest checkpoint -> q4_k_m (one pass)")
    assert "whole-file ratio" in proc.stdout and "PASS" in proc.stdout


def test_kquant_speed_smoke(tmp_path):
    proc = run_script("kquant_speed.py", "--shapes", "64x512", "--types", "Q4_K,Q8_0", "--repeat", "1", cwd=tmp_path)
    assert "Q4_K" in proc.stdout and "Q8_0" in proc.stdout


def test_plan_families_runs(tmp_path):
    proc = run_script("plan_families.py", "--only", "mimo", "--runs", "1", cwd=tmp_path)
    row = table_row(proc.stdout, "MiMo-7B-RL")
    assert row[0] == "mimo" and row[1] == "451" and row[-1] == "PASS"
