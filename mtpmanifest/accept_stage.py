"""The acceptance part of verify (and `stage=accept`): held-out text -> tokens -> MTP acceptance of the
source checkpoint and of the written GGUF (weights read back, mtpmanifest.weights), optionally of
llama.cpp running that GGUF, retention against `accept.min_retention`, speed-up estimates. Returns
report.json's `mtp_acceptance` section and the failures verify reports (exit 4)."""
from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from . import accept
from .errors import ConfigError
from .forward import ModelForward
from .manifest import Manifest
from .schema import AcceptConfig, ArchConfig
from .source import Checkpoint
from .text_tokens import encode_text
from .weights import GGUFWeights, SourceWeights

log = logging.getLogger(__name__)
MIN_TOKENS = 16
HELDOUT_NAME = "heldout.txt"
LLAMACPP_WARN = 0.05  # llama.cpp vs torch on the same GGUF: tests see < 0.01 (bootstrap row, activation rounding)


def heldout_path(cfg: AcceptConfig) -> Path | None:
    """accept.text, else the package's demo/heldout.txt when it exists."""
    if cfg.text:
        path = Path(cfg.text).expanduser()
        if not path.is_file():
            raise ConfigError(f"accept.text={cfg.text}: no such file")
        return path
    from .demo import DEMO_DIR

    path = DEMO_DIR / HELDOUT_NAME
    return path if path.is_file() else None


def heldout_tokens(path: Path, ckpt: Checkpoint, max_tokens: int) -> list[int]:
    """The text in the checkpoint's own tokenizer (tokenizer.json or tokenizer.model, with its special tokens:
    BOS first where it adds one)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"accept.text {path}: cannot read UTF-8 text: {exc}") from None
    tokens = encode_text(ckpt.path, text, special=True, purpose="MTP acceptance")[:max_tokens]
    if len(tokens) < MIN_TOKENS:
        raise ConfigError(f"accept.text {path}: {len(tokens)} tokens; acceptance needs at least {MIN_TOKENS}")
    return tokens


def _skipped(note: str) -> dict:
    return {"measured": False, "note": note}


def _want_llamacpp(cfg: AcceptConfig) -> bool:
    if cfg.llamacpp is None:
        return importlib.util.find_spec("llama_cpp") is not None
    return bool(cfg.llamacpp)


def measure_acceptance(cfg: AcceptConfig, arch: ArchConfig, manifest: Manifest, ckpt: Checkpoint,
                       gguf_path: Path) -> tuple[dict, list[str]]:
    """report.json's mtp_acceptance section and the verification failures it finds."""
    if not manifest.layers["mtp_kept"]:
        return _skipped("the output has no MTP layer"), []
    if arch.mtp_head is None:
        log.warning("MTP acceptance not measured: arch/%s.yaml has no mtp_head recipe", arch.name)
        return _skipped(f"arch/{arch.name}.yaml has no mtp_head recipe"), []
    text = heldout_path(cfg)
    if text is None:
        log.warning("MTP acceptance not measured: no held-out text (set accept.text=FILE)")
        return _skipped("no held-out text (accept.text)"), []
    tokens = heldout_tokens(text, ckpt, cfg.max_tokens)
    if cfg.window < accept.MIN_WINDOW:
        raise ConfigError(f"accept.window={cfg.window}: use at least {accept.MIN_WINDOW} tokens")
    source = accept.measure(ModelForward(ckpt.config, arch.mtp_head, SourceWeights(manifest, ckpt)), tokens, cfg.window)
    written = ModelForward(ckpt.config, arch.mtp_head, GGUFWeights(manifest, gguf_path))
    output = accept.measure(written, tokens, cfg.window)
    src = [layer["acceptance"] for layer in source["layers"]]
    out = [layer["acceptance"] for layer in output["layers"]]
    kept = [accept.retention(s, o) for s, o in zip(src, out)]
    costs = accept.draft_costs(manifest, arch.mtp_head)
    section = {
        "measured": True, "text": str(text), "n_tokens": len(tokens), "window": cfg.window,
        "source": src, "output": out, "retention": kept,
        "positions": [layer["positions"] for layer in output["layers"]],
        "top1": {"source": [x["top1"] for x in source["layers"]], "output": [x["top1"] for x in output["layers"]]},
        "loss": {"source": [x["loss"] for x in source["layers"]], "output": [x["loss"] for x in output["layers"]]},
        "trunk": {"source": source["trunk"], "output": output["trunk"]},
        "min_retention": cfg.min_retention, "min_source_acceptance": cfg.min_source_acceptance,
        "judged": bool(src) and min(src) >= cfg.min_source_acceptance,
        "speedup": {"formula": accept.SPEEDUP_FORMULA, "draft_cost": costs,
                    "source": accept.speedup(src, costs), "output": accept.speedup(out, costs)},
        "llamacpp": None,
    }
    failures = []
    if not section["judged"]:
        log.warning("MTP acceptance of the source is %s (< accept.min_source_acceptance %g): the head agrees with "
                    "nothing (untrained weights?), so retention is not judged", _fmt(src), cfg.min_source_acceptance)
    else:
        for layer, (s, o, r) in enumerate(zip(src, out, kept)):
            if r is None or r < cfg.min_retention:
                failures.append(f"MTP layer {layer} (block {manifest.layers['mtp_blocks'][layer]}): draft acceptance "
                                f"{o:.3f} in the output vs {s:.3f} in the source, retention {r or 0:.1%} < "
                                f"accept.min_retention {cfg.min_retention:.0%}")
    if _want_llamacpp(cfg) and not arch.llamacpp_mtp:
        log.info("MTP acceptance in llama.cpp not measured: its runtime cannot run %s's MTP head", arch.name)
    elif _want_llamacpp(cfg):
        section["llamacpp"] = figures = _llamacpp(cfg, gguf_path, tokens, written, output)
        if "error" in figures:
            failures.append(f"{gguf_path}: llama.cpp could not run the MTP head: {figures['error']}")
        elif abs(figures["acceptance"] - figures["torch_acceptance"]) > LLAMACPP_WARN:
            log.warning("MTP acceptance in llama.cpp %.3f differs from the torch forward on the same file and tokens "
                        "%.3f", figures["acceptance"], figures["torch_acceptance"])
    return section, failures


def _llamacpp(cfg: AcceptConfig, gguf_path: Path, tokens: list[int], written: ModelForward, output: dict) -> dict:
    """llama.cpp's figures for the first MTP layer on the first accept.llamacpp_tokens tokens, with the
    torch forward's on the same tokens beside them (torch_acceptance)."""
    subset = tokens[:max(cfg.llamacpp_tokens, accept.MIN_WINDOW)]
    figures = accept.llamacpp_figures(gguf_path, subset, cfg.window)
    if "error" not in figures:
        same = output if len(subset) == len(tokens) else accept.measure(written, subset, cfg.window)
        figures.update(n_tokens=len(subset), torch_acceptance=same["layers"][0]["acceptance"])
    return figures


def _fmt(values) -> str:
    return "[" + ", ".join(f"{v:.3f}" for v in values) + "]"
