"""Sweeps (`-m` / `+sweep=NAME`): one job per preset with every launcher, result.json per job,
summary.md/csv/png in the sweep dir, failed jobs listed without hiding the others, exit codes."""
from __future__ import annotations

import ast
import csv
import json
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.core.utils import JobReturn, JobStatus
from hydra.types import RunMode
from omegaconf import OmegaConf

from conftest import compose_cfg, run_cli
from mtpmanifest import pipeline, sweep, sweep_summary
from mtpmanifest.errors import BadInputError, VerificationError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JOB_FILES = {"manifest.json", "tensors.json", "report.json", "result.json"}


def run_sweep(tmp_path: Path, *args: str, rc: int) -> tuple[Path, object]:
    work, sweep_dir = tmp_path / "work", tmp_path / "sweep"
    work.mkdir()
    proc = run_cli(*args, f"hydra.sweep.dir={sweep_dir}", cwd=work, check_rc=rc)
    assert list(work.iterdir()) == [], "a sweep writes only into its sweep dir"
    assert "%|" not in proc.stderr, "progress bars are off in sweep jobs"
    return sweep_dir, proc


def results(sweep_dir: Path) -> dict[int, dict]:
    found = {}
    for path in sweep_dir.glob("*/result.json"):
        record = json.loads(path.read_text())
        assert record["job"]["dir"] == str(path.parent)
        found[record["job"]["num"]] = record
    return found


def check_summary(sweep_dir: Path, presets: list[str], proc) -> list[dict]:
    md = (sweep_dir / "summary.md").read_text()
    table = [line for line in md.splitlines() if line.startswith("|")]
    assert len(table) == 2 + len(presets) and len({len(line) for line in table}) == 1, md  # aligned
    for preset in presets:
        assert f"| {preset} " in md
    assert table[0] in proc.stdout, "the summary table is logged at the end"
    rows = list(csv.DictReader((sweep_dir / "summary.csv").open()))
    assert [r["preset"] for r in rows] == presets
    assert (sweep_dir / "summary.png").read_bytes()[:8] == PNG_MAGIC
    return rows


@pytest.mark.parametrize("launcher", [None, "joblib", "submitit_local"])
def test_sweep_every_launcher(tmp_path, launcher):
    args = ["-m", "quant=f32,q8_0"] + ([f"hydra/launcher={launcher}"] if launcher else [])
    sweep_dir, proc = run_sweep(tmp_path, *args, rc=0)
    records = results(sweep_dir)
    assert sorted(records) == [0, 1]
    for num, preset in enumerate(["f32", "q8_0"]):
        r = records[num]
        assert (r["status"], r["exit_code"], r["error"], r["preset"]) == ("ok", 0, None, preset)
        assert r["output_dir"] == str(sweep_dir / str(num)), "each job writes into its own job dir"
        assert {p.name for p in (sweep_dir / str(num)).iterdir()} == JOB_FILES | {f"model-{preset}.gguf"}
        assert r["file_size"] == (sweep_dir / str(num) / f"model-{preset}.gguf").stat().st_size
        assert set(r["numeric_stats"]) >= {"trunk", "mtp"} and "mtp_acceptance" in r
    assert records[0]["bits_per_weight"] == {"trunk": 32.0, "mtp": 32.0}
    assert records[0]["numeric_stats"]["mtp"]["max_rel_rmse"] == 0.0
    assert 8 < records[1]["bits_per_weight"]["mtp"] < 9 and 0 < records[1]["numeric_stats"]["mtp"]["max_rel_rmse"] < 0.01
    rows = check_summary(sweep_dir, ["f32", "q8_0"], proc)
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert rows[1]["file_size"] == str(records[1]["file_size"])


def test_failed_job_is_listed_and_the_others_still_run(tmp_path):
    """Job 0 has a checkpoint without config.json (exit 3), job 1 the demo: the sweep finishes,
    the summary has both rows, and the process exits with the failed job's code."""
    broken = tmp_path / "broken"
    broken.mkdir()
    sweep_dir, proc = run_sweep(tmp_path, "-m", "quant=q8_0", f"model.path={broken},null", rc=3)
    records = results(sweep_dir)
    assert (records[0]["status"], records[0]["exit_code"]) == ("failed", 3)
    assert "config.json" in records[0]["error"] and records[0]["file_size"] is None
    assert records[1]["status"] == "ok" and records[1]["file_size"] > 0
    rows = check_summary(sweep_dir, ["q8_0", "q8_0"], proc)
    assert [r["status"] for r in rows] == ["failed", "ok"]
    assert "config.json" in rows[0]["error"] and rows[1]["error"] == ""
    errors = [line for line in proc.stderr.splitlines() if line.startswith("mtpmanifest: ")]
    assert len(errors) == 2 and "job 0" in errors[0] and "1 of 2 job(s) failed" in errors[1], proc.stderr
    assert "Traceback" not in proc.stderr


def test_sweep_file_runs_without_dash_m(tmp_path):
    sweep_dir, proc = run_sweep(tmp_path, "+sweep=unquantized", rc=0)
    assert [r["preset"] for _, r in sorted(results(sweep_dir).items())] == ["f32", "f16", "bf16", "q8_0"]
    check_summary(sweep_dir, ["f32", "f16", "bf16", "q8_0"], proc)


@pytest.mark.parametrize("name, expected", [("k_quants", "q4_k_m"), ("all_quants", "glob(*)")])
def test_sweep_files_compose(name, expected):
    with initialize_config_module(version_base="1.3", config_module="mtpmanifest.conf", job_name="test"):
        cfg = compose(config_name="config", overrides=[f"+sweep={name}"], return_hydra_config=True)
    assert cfg.hydra.mode == RunMode.MULTIRUN
    assert expected in cfg.hydra.sweeper.params.quant
    assert cfg.hydra.callbacks.sweep_summary._target_ == "mtpmanifest.sweep.SweepSummary"


def test_k_quants_sweep_names_shipped_presets():
    with initialize_config_module(version_base="1.3", config_module="mtpmanifest.conf", job_name="test"):
        cfg = compose(config_name="config", overrides=["+sweep=k_quants"], return_hydra_config=True)
    for preset in cfg.hydra.sweeper.params.quant.split(","):
        assert compose_cfg(f"quant={preset}").quant.name == preset


def test_slurm_launcher_config_composes(tmp_path):
    proc = run_cli("hydra/launcher=slurm", "--cfg", "hydra", "-p", "hydra.launcher", cwd=tmp_path, check_rc=0)
    launcher = OmegaConf.create(proc.stdout)
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert "partition" in launcher and launcher.timeout_min >= 60 and launcher.cpus_per_task >= 1
    assert list(tmp_path.iterdir()) == []


def record(status="ok", code=0, **extra):
    return {"status": status, "exit_code": code, "error": None if status == "ok" else "boom", **extra}


def test_exit_code_rule():
    assert sweep_summary.exit_code([]) == 0
    assert sweep_summary.exit_code([record(), record()]) == 0
    assert sweep_summary.exit_code([record(), record("failed", 3), record("failed", 2)]) == 3
    assert sweep_summary.exit_code([record("failed", 3), record("failed", 4), record("failed", 70)]) == 4
    assert sweep_summary.exit_code([record("failed", None)]) == 70


def test_summary_of_mixed_records(tmp_path, monkeypatch):
    ok = record(preset="q4_k_m", file_size=5 << 20, bits_per_weight={"trunk": 4.9, "mtp": 6.6}, mtp_acceptance=0.71,
                numeric_stats={"trunk": {"max_rel_rmse": 0.05}, "mtp": {"max_rel_rmse": 0.01}},
                job={"num": 0, "dir": str(tmp_path / "0"), "overrides": ["quant=q4_k_m"]})
    bad = record("failed", 4, preset="q2_k", error="x.gguf: 1 verification failure(s): a|b", job={"num": 1})
    for i, r in enumerate((ok, bad)):
        (tmp_path / str(i)).mkdir()
        (tmp_path / str(i) / "result.json").write_text(json.dumps(r))
    (tmp_path / "2").mkdir()  # a job that never wrote its result
    records = sweep_summary.collect(tmp_path)
    assert [r["status"] for r in records] == ["ok", "failed", "failed"] and "missing" in records[2]["error"]
    table = sweep_summary.write_summary(tmp_path, records)
    assert "0.710" in table and "a\\|b" in table and "5.0 MiB" in table and "1.00e-02" in table
    assert "exit code 4" in (tmp_path / "summary.md").read_text()
    assert (tmp_path / "summary.png").read_bytes()[:8] == PNG_MAGIC
    (tmp_path / "summary.png").unlink()
    for module in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, module, None)  # as if not installed
    sweep_summary.write_summary(tmp_path, records)
    assert (tmp_path / "summary.md").exists() and not (tmp_path / "summary.png").exists()
    assert "summary.png" not in (tmp_path / "summary.md").read_text()


def hydra_config(tmp_path, mode):
    return OmegaConf.create({"quant": {"name": "q8_0"}, "hydra": {
        "mode": mode, "runtime": {"output_dir": str(tmp_path)}, "job": {"num": 3}, "overrides": {"task": ["quant=q8_0"]}}})


def test_on_job_end_records_an_exception(tmp_path):
    ret = JobReturn()
    ret.return_value, ret.status = BadInputError("ckpt/config.json: file is missing"), JobStatus.FAILED
    sweep.SweepSummary().on_job_end(hydra_config(tmp_path, RunMode.MULTIRUN), ret)
    r = json.loads((tmp_path / "result.json").read_text())
    assert (r["job"]["num"], r["status"], r["exit_code"], r["preset"]) == (3, "failed", 3, "q8_0")
    assert r["error"] == "ckpt/config.json: file is missing"
    (tmp_path / "result.json").unlink()
    sweep.SweepSummary().on_job_end(hydra_config(tmp_path, RunMode.RUN), ret)
    assert not (tmp_path / "result.json").exists(), "a single run writes no result.json"


def test_run_returns_a_result_record(tmp_path):
    r = pipeline.run(compose_cfg("quant=q8_0", f"output.dir={tmp_path}"), progress=False)
    assert (r["status"], r["preset"], r["file_size"]) == ("ok", "q8_0", (tmp_path / "model-q8_0.gguf").stat().st_size)
    acceptance = r["mtp_acceptance"]  # measured on the demo's heldout.txt when the package ships one
    assert (acceptance is None or len(acceptance["output"]) == 1) and r["numeric_stats"]["mtp"]["tensors"] > 0
    plan = pipeline.run(compose_cfg("quant=f16", "stage=plan", f"output.dir={tmp_path / 'p'}"), progress=False)
    assert plan["file_size"] is None and 16 <= plan["bits_per_weight"]["mtp"] < 17
    exc = VerificationError("x.gguf: 1 verification failure(s): t")
    exc.report = {"gguf": "x.gguf", "file_size": 10, "bits_per_weight": {"trunk": 4.0, "mtp": 6.0}, "numeric_stats": {}}
    failed = pipeline.failure_record(compose_cfg("quant=q8_0"), exc)
    assert (failed["status"], failed["exit_code"], failed["file_size"]) == ("failed", 4, 10)


def test_only_the_cli_layer_imports_hydra():
    package = Path(pipeline.__file__).parent
    for path in package.rglob("*.py"):
        if path.name in ("__main__.py", "sweep.py", "cli_conf.py"):
            continue
        tree = ast.parse(path.read_text())
        names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        assert not [n for n in names if n.split(".")[0] == "hydra"], path
