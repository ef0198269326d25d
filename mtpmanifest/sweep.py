"""Sweeps: `python -m mtpmanifest -m quant=q8_0,q6_k,q4_k_m` (or `+sweep=k_quants`) runs one job per
preset, then writes summary.md, summary.csv and summary.png into the sweep directory.

Part of the CLI layer (it imports hydra; the engine never does). Results travel through files, so
every launcher works: each job, in whatever process or node runs it, writes `<job dir>/result.json`
(on_job_end), and the driver reads them all back (on_multirun_end). A failed job is a record with
its error, never an exception, so it neither stops the sweep nor hides the other jobs.
"""
from __future__ import annotations

import logging
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from . import pipeline
from .errors import MtpManifestError
from .manifest import write_json_atomic
from .sweep_summary import INTERNAL_ERROR, RESULT, SUMMARY_FILES, collect, exit_code, write_summary

log = logging.getLogger("mtpmanifest")


_last_sweep: dict[str, Any] = {}  # the driver's view of the sweep it ran: {"exit_code": int | None}


def is_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _overridden(overrides: list[str], key: str) -> bool:
    return any(o.lstrip("+~").split("=", 1)[0] == key for o in overrides)


class _Tagged(logging.Formatter):  # another formatter's lines, each prefixed with a tag
    def __init__(self, inner: logging.Formatter | None, tag: str):
        super().__init__()
        self.inner, self.tag = inner or logging.Formatter(), tag

    def format(self, record: logging.LogRecord) -> str:
        return "\n".join(f"{self.tag} {line}" for line in self.inner.format(record).splitlines())


@contextmanager
def _tagged_log_lines(tag: str):
    """Prefix the job's console lines with its number: parallel jobs interleave."""
    handlers = [(h, h.formatter) for h in logging.getLogger().handlers]
    for handler, formatter in handlers:
        handler.setFormatter(_Tagged(formatter, tag))
    try:
        yield
    finally:
        for handler, formatter in handlers:
            handler.setFormatter(formatter)


def run_job(cfg: DictConfig) -> dict[str, Any]:
    """One sweep job: run the pipeline into the job's own directory and return its result record.
    Errors become records (one line on stderr) unless debug=true."""
    hydra_cfg = HydraConfig.get()
    overrides = list(hydra_cfg.overrides.task)
    app = None
    try:
        app = OmegaConf.to_object(cfg)
        if not _overridden(overrides, "output.dir"):
            app.output.dir = hydra_cfg.runtime.output_dir
        with _tagged_log_lines(f"#{hydra_cfg.job.num}"):
            return pipeline.run(app, progress=False)  # bars from parallel jobs would drown the console
    except Exception as exc:
        if cfg.get("debug", False):
            raise
        record = pipeline.failure_record(app, exc) if app is not None else error_record(cfg, exc)
        # the single-run wording: "error: <message>", or "internal error: <type>: <message> (rerun ...)"
        text = f"error: {record['error']}" if isinstance(exc, MtpManifestError) else f"{record['error']} (rerun with debug=true)"
        print(f"mtpmanifest: job {hydra_cfg.job.num} ({' '.join(overrides)}): {text}", file=sys.stderr)
        return record


def error_record(config: DictConfig, exc: BaseException) -> dict[str, Any]:
    """The record of a job that raised instead of returning one (debug=true, or a bug in run_job)."""
    try:
        preset = OmegaConf.select(config, "quant.name", default=None)
    except Exception:  # an interpolation that cannot resolve; the error says more
        preset = None
    return {"status": "failed", "exit_code": getattr(exc, "exit_code", INTERNAL_ERROR),
            "error": pipeline.error_text(exc), "preset": preset, "file_size": None, "bits_per_weight": None,
            "numeric_stats": {}, "mtp_acceptance": None}


def exit_code_of_last_sweep() -> int:
    """For the entry point, after hydra returns: 0 when no sweep ran."""
    if not _last_sweep:
        return 0
    if _last_sweep.get("exit_code") is None:  # Hydra turned on_multirun_end's exception into a warning
        print("mtpmanifest: internal error: the sweep summary was not written (see the warning above)", file=sys.stderr)
        return INTERNAL_ERROR
    return _last_sweep["exit_code"]


class SweepSummary(Callback):
    """Registered in conf/config.yaml under hydra.callbacks. Does nothing in single runs."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _last_sweep.clear()
        _last_sweep["exit_code"] = None
        sweep_dir = Path(config.hydra.sweep.dir)
        if sweep_dir.is_dir():  # a rerun into the same directory: earlier results must not count
            for stale in [*sweep_dir.glob(f"[0-9]*/{RESULT}"), *(sweep_dir / n for n in SUMMARY_FILES)]:
                if stale.parent == sweep_dir or stale.parent.name.isdigit():
                    stale.unlink(missing_ok=True)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        """Runs where the job ran (a joblib worker, a submitit process, a Slurm node)."""
        if OmegaConf.select(config, "hydra.mode") != RunMode.MULTIRUN:
            return
        try:
            record = job_return.return_value  # re-raises the job's exception
            if not isinstance(record, dict):
                raise TypeError(f"the task returned {type(record).__name__}, not a result record")
        except Exception as exc:
            record = error_record(config, exc)
        job_dir = Path(config.hydra.runtime.output_dir)
        job = {"num": config.hydra.job.num, "dir": str(job_dir), "overrides": list(config.hydra.overrides.task)}
        write_json_atomic(job_dir / RESULT, {"job": job, **record})

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        records = collect(sweep_dir)
        table = write_summary(sweep_dir, records)
        _last_sweep["exit_code"] = exit_code(records)
        log.info("sweep summary (%s/summary.md):\n%s", sweep_dir, table)
        failed = [r for r in records if r.get("status") != "ok"]
        if failed:
            job, first = (failed[0].get("job") or {}).get("num"), failed[0]
            print(f"mtpmanifest: error: sweep: {len(failed)} of {len(records)} job(s) failed (first: job {job}, "
                  f"{first.get('preset')}: {first.get('error')}); see {sweep_dir / 'summary.md'}", file=sys.stderr)
