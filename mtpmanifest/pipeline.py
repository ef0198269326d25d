"""Run the stages a command asks for. Plain dataclasses in, files in output.dir out; no hydra."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from . import report
from .convert import convert
from .errors import ConfigError, VerificationError
from .inventory import diff, inventory_of
from .lint import lint_conf
from .manifest import Manifest, write_json_atomic
from .plan import compile_manifest
from .schema import STAGES, AppConfig
from .source import Checkpoint
from .verify import verify

log = logging.getLogger(__name__)


def model_path(cfg: AppConfig) -> Path:
    if cfg.model.path:
        return Path(cfg.model.path).expanduser()
    from .demo import DEMO_DIR

    return DEMO_DIR


def output_paths(cfg: AppConfig) -> dict[str, Path]:
    out = Path(cfg.output.dir).expanduser()
    return {
        "dir": out,
        "manifest": out / "manifest.json",
        "gguf": out / f"model-{cfg.quant.name}.gguf",
        "tensors": out / "tensors.json",
        "report": out / "report.json",
    }




def stage_verify(cfg: AppConfig, manifest: Manifest, ckpt: Checkpoint, paths: dict[str, Path]) -> dict[str, Any]:
    result = verify(manifest, paths["gguf"], ckpt, numeric=cfg.verify.numeric)
    write_json_atomic(paths["tensors"], result.tensor_manifest)
    doc = report.build(manifest, result, paths)
    write_json_atomic(paths["report"], doc)
    report.print_verify(doc)
    if not result.ok:
        raise VerificationError(
            f"{paths['gguf']}: {len(result.failures)} verification failure(s): {result.failures[0]}", result.failures
        )
    return doc


def run_lint(cfg: AppConfig) -> None:
    errors = lint_conf([Path(cfg.other).expanduser()] if cfg.other else [])
    report.print_lint(errors)
    if errors:
        raise ConfigError(f"lint: {len(errors)} error(s) in the configuration files; the first: {errors[0]}", errors)


def run_inventory(cfg: AppConfig) -> None:
    inv = inventory_of(model_path(cfg), cfg.arch)
    report.print_inventory(inv)
    if cfg.stage == "inventory":
        return
    if not cfg.other:
        raise ConfigError("stage=diff needs other=FILE (a .gguf file or checkpoint directory)")
    other = inventory_of(Path(cfg.other).expanduser(), cfg.arch)
    report.print_inventory(other)
    lines = diff(inv, other)
    report.print_diff(lines)
    if any(line.startswith("MTP") or "(mtp)" in line for line in lines):
        raise VerificationError(f"MTP tensors differ between {inv.path} and {other.path}", lines)


def run_verify(cfg: AppConfig, paths: dict[str, Path]) -> None:
    if not paths["manifest"].exists():
        raise ConfigError(f"{paths['manifest']}: missing; run stage=plan or stage=convert first")
    stage_verify(cfg, Manifest.read(paths["manifest"]), Checkpoint.open(model_path(cfg)), paths)


def run_build(cfg: AppConfig, paths: dict[str, Path]) -> None:
    """stage=plan, convert or all."""
    ckpt = Checkpoint.open(model_path(cfg))
    if cfg.stage != "plan" and paths["gguf"].exists() and not cfg.output.overwrite:
        raise ConfigError(f"{paths['gguf']}: exists; set output.overwrite=true to replace it")
    manifest = compile_manifest(cfg.arch, cfg.quant, ckpt)
    manifest.validate()
    report.print_plan(manifest, paths)
    paths["dir"].mkdir(parents=True, exist_ok=True)
    if cfg.stage != "plan":
        convert(manifest, ckpt, paths["gguf"], overwrite=cfg.output.overwrite)
        for stale in (paths["tensors"], paths["report"]):  # they described the file just replaced
            stale.unlink(missing_ok=True)
    # written after a successful conversion, so a failed run never pairs a new manifest with an old GGUF
    manifest.write(paths["manifest"])
    if cfg.stage == "all":
        stage_verify(cfg, manifest, ckpt, paths)


def run(cfg: AppConfig) -> None:
    # gguf-py's writer narrates every file it opens at INFO; our summary says what matters
    logging.getLogger("gguf.gguf_writer").setLevel(logging.WARNING)
    # SpecialVocab warns that a BOS-separated *pair* template cannot be stored; GGUF has no
    # pair templates and llama.cpp never uses one, so that warning only adds noise
    logging.getLogger("gguf.vocab").setLevel(logging.ERROR)
    if cfg.stage not in STAGES:
        raise ConfigError(f"stage={cfg.stage}: unknown stage; use one of {', '.join(STAGES)}")
    if cfg.stage == "lint":
        run_lint(cfg)
    elif cfg.stage in ("inventory", "diff"):
        run_inventory(cfg)
    elif cfg.stage == "verify":
        run_verify(cfg, output_paths(cfg))
    else:
        run_build(cfg, output_paths(cfg))
