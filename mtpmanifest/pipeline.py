"""Run the stages a command asks for. Plain dataclasses in, files in output.dir out; no hydra."""
from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from . import report
from .accept_stage import measure_acceptance
from .convert import convert
from .errors import ConfigError, MtpManifestError, VerificationError
from .fixtures.from_rules import write_rule_fixture
from .calibrate import calibrate
from .imatrix import Imatrix, coverage, uncovered
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
        "imatrix": out / "imatrix.gguf",
    }




def stage_verify(cfg: AppConfig, manifest: Manifest, ckpt: Checkpoint, paths: dict[str, Path], *,
                 progress: bool = True) -> dict[str, Any]:
    """stage=verify (and all): structure, numbers, MTP acceptance; stage=accept: structure and acceptance."""
    numeric = cfg.verify.numeric and cfg.stage != "accept"
    result = verify(manifest, paths["gguf"], ckpt, numeric=numeric, progress=progress)
    if (cfg.accept.enabled or cfg.stage == "accept") and not result.differences:
        result.acceptance, result.acceptance_failures = measure_acceptance(cfg.accept, cfg.arch, manifest, ckpt, paths["gguf"])
    write_json_atomic(paths["tensors"], result.tensor_manifest)
    doc = report.build(manifest, result, paths)
    write_json_atomic(paths["report"], doc)
    report.print_verify(doc)
    if not result.ok:
        exc = VerificationError(
            f"{paths['gguf']}: {len(result.failures)} verification failure(s): {result.failures[0]}", result.failures
        )
        exc.report = doc  # failure_record() keeps the numbers of a file that failed its bounds
        raise exc
    return doc


def run_lint(cfg: AppConfig) -> None:
    errors = lint_conf([Path(cfg.other).expanduser()] if cfg.other else [])
    report.print_lint(errors)
    if errors:
        raise ConfigError(f"lint: {len(errors)} error(s) in the configuration files; the first: {errors[0]}", errors)


def run_fixture(cfg: AppConfig) -> None:
    """stage=fixture: the architecture file's tiny checkpoint, written whole into output.dir or not at all."""
    out = Path(cfg.output.dir).expanduser()
    if out.exists() and any(out.iterdir()) and not cfg.output.overwrite:
        raise ConfigError(f"{out}: exists and is not empty; set output.overwrite=true to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}-", dir=out.parent) as tmp:
        built = write_rule_fixture(cfg.arch, Path(tmp) / "ckpt")
        if out.exists():
            shutil.rmtree(out)
        built.rename(out)
    report.print_fixture(cfg.arch.name, out, len(Checkpoint.open(out).tensors))


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


def run_verify(cfg: AppConfig, paths: dict[str, Path], *, progress: bool = True) -> dict[str, Any]:
    if not paths["manifest"].exists():
        raise ConfigError(f"{paths['manifest']}: missing; run stage=plan or stage=convert first")
    return stage_verify(cfg, Manifest.read(paths["manifest"]), Checkpoint.open(model_path(cfg)), paths, progress=progress)


def importance_matrix(cfg: AppConfig, manifest: Manifest, ckpt: Checkpoint, paths: dict[str, Path], *,
                      progress: bool = True) -> Imatrix | None:
    """The imatrix to quantize with: computed (stage=calibrate, or calib.enabled; merged into
    calib.merge_with when given, and written to output.dir/imatrix.gguf) or read (calib.imatrix).
    Its coverage is recorded in the manifest; a preset that requires one refuses to run while any
    tensor that wants importance data is uncovered."""
    if cfg.stage == "calibrate" or (cfg.calib.enabled and cfg.stage in ("convert", "all")):
        imatrix = calibrate(cfg, manifest, ckpt, progress=progress)
        if cfg.calib.merge_with:
            base = Imatrix.read(Path(cfg.calib.merge_with).expanduser())
            added = base.merge_missing(imatrix)
            log.info("imatrix: %d entries added to %s (its %d entries unchanged)", len(added), cfg.calib.merge_with,
                     len(base.entries) - len(added))
            imatrix = base
        paths["dir"].mkdir(parents=True, exist_ok=True)
        source = str(imatrix.write(paths["imatrix"]))
    else:
        source = cfg.calib.imatrix
        imatrix = Imatrix.read(Path(source).expanduser()) if source else None
    manifest.imatrix = coverage(manifest.tensors, imatrix, source)
    missing = uncovered(manifest.imatrix)
    if cfg.quant.requires_imatrix and missing and cfg.stage != "calibrate":
        shown = ", ".join(missing[:20]) + (f" … and {len(missing) - 20} more" if len(missing) > 20 else "")
        raise ConfigError(f"quant={cfg.quant.name} needs an importance matrix covering every quantized tensor; "
                          f"{len(missing)} uncovered{' (no calib.imatrix given; or set calib.enabled=true)' if imatrix is None else ''}: {shown}", missing)
    return imatrix


def run_build(cfg: AppConfig, paths: dict[str, Path], *, progress: bool = True) -> tuple[Manifest, dict[str, Any] | None]:
    """stage=plan, convert or all: the manifest, and the verify report for stage=all."""
    ckpt = Checkpoint.open(model_path(cfg))
    if cfg.stage in ("convert", "all") and paths["gguf"].exists() and not cfg.output.overwrite:
        raise ConfigError(f"{paths['gguf']}: exists; set output.overwrite=true to replace it")
    manifest = compile_manifest(cfg.arch, cfg.quant, ckpt, mtp=cfg.mtp)
    manifest.validate()
    imatrix = importance_matrix(cfg, manifest, ckpt, paths, progress=progress) if cfg.stage != "plan" else None
    if cfg.stage == "plan":
        manifest.imatrix = coverage(manifest.tensors, None, None)
    report.print_plan(manifest, paths)
    if not cfg.arch.llamacpp_mtp:
        report.print_runtime_note(cfg.arch.name, manifest.gguf_arch, manifest)
    paths["dir"].mkdir(parents=True, exist_ok=True)
    if cfg.stage in ("convert", "all"):
        convert(manifest, ckpt, paths["gguf"], overwrite=cfg.output.overwrite, progress=progress, imatrix=imatrix)
        for stale in (paths["tensors"], paths["report"]):  # they described the file just replaced
            stale.unlink(missing_ok=True)
    # written after a successful conversion, so a failed run never pairs a new manifest with an old GGUF
    manifest.write(paths["manifest"])
    if cfg.stage == "all":
        return manifest, stage_verify(cfg, manifest, ckpt, paths, progress=progress)
    return manifest, None


def result_record(cfg: AppConfig, paths: dict[str, Path] | None = None, *, manifest: Manifest | None = None,
                  doc: dict[str, Any] | None = None, error: Exception | None = None) -> dict[str, Any]:
    """What one run produced, as plain JSON (a sweep job's result.json): preset, file size, bits per
    weight, relative-RMSE statistics per role (trunk, mtp, shared) and, once measured, MTP acceptance."""
    record: dict[str, Any] = {
        "status": "ok" if error is None else "failed",
        "exit_code": 0 if error is None else getattr(error, "exit_code", 70),
        "error": None if error is None else error_text(error),
        "preset": cfg.quant.name,
        "arch": cfg.arch.name,
        "stage": cfg.stage,
        "model": str(model_path(cfg)),
        "output_dir": str(paths["dir"]) if paths else None,
        "gguf": None,
        "file_size": None,
        "bits_per_weight": None,
        "numeric_stats": {},
        "mtp_acceptance": None,  # report.json's mtp_acceptance once measured (verify, stage=accept)
    }
    if doc is not None:
        acceptance = doc.get("mtp_acceptance") or {}
        record.update(gguf=doc["gguf"], file_size=doc["file_size"], bits_per_weight=doc["bits_per_weight"],
                      numeric_stats=doc["numeric_stats"], mtp_acceptance=acceptance if acceptance.get("measured") else None)
    elif manifest is not None:
        record["bits_per_weight"] = {
            "trunk": report.bits_per_weight([e for e in manifest.tensors if e.role != "mtp"]),
            "mtp": report.bits_per_weight([e for e in manifest.tensors if e.role == "mtp"]),
        }
        if paths and cfg.stage != "plan" and paths["gguf"].exists():
            record.update(gguf=str(paths["gguf"]), file_size=paths["gguf"].stat().st_size)
    return record


def error_text(exc: BaseException) -> str:
    """The one line the CLI prints for an error (without its `mtpmanifest: error:` prefix)."""
    if isinstance(exc, MtpManifestError):
        return str(exc)
    text = f"{type(exc).__name__}: {exc}".rstrip(": ")
    return f"internal error: {text}"


def failure_record(cfg: AppConfig, exc: Exception) -> dict[str, Any]:
    """result_record() for a run that raised; a verification failure keeps its file's numbers."""
    paths = output_paths(cfg) if cfg.stage not in ("lint", "inventory", "diff") else None
    return result_record(cfg, paths, doc=getattr(exc, "report", None), error=exc)


def run(cfg: AppConfig, *, progress: bool = True) -> dict[str, Any]:
    """Run cfg.stage and return its result_record(); raise MtpManifestError on bad input or results.
    progress=False silences the progress bars (a sweep's jobs)."""
    # gguf-py's writer narrates every file it opens at INFO; our summary says what matters
    logging.getLogger("gguf.gguf_writer").setLevel(logging.WARNING)
    # SpecialVocab warns that a BOS-separated *pair* template cannot be stored; GGUF has no
    # pair templates and llama.cpp never uses one, so that warning only adds noise
    logging.getLogger("gguf.vocab").setLevel(logging.ERROR)
    if cfg.stage not in STAGES:
        raise ConfigError(f"stage={cfg.stage}: unknown stage; use one of {', '.join(STAGES)}")
    if cfg.stage == "lint":
        run_lint(cfg)
        return result_record(cfg)
    if cfg.stage in ("inventory", "diff"):
        run_inventory(cfg)
        return result_record(cfg)
    if cfg.stage == "fixture":
        run_fixture(cfg)
        return result_record(cfg)
    paths = output_paths(cfg)
    if cfg.stage in ("verify", "accept"):
        return result_record(cfg, paths, doc=run_verify(cfg, paths, progress=progress))
    manifest, doc = run_build(cfg, paths, progress=progress)
    return result_record(cfg, paths, manifest=manifest, doc=doc)
