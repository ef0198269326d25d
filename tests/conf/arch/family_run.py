"""Steps every family's tests take: a manifest for a tiny checkpoint, and a calibrated stage=all run."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from conftest import compose_cfg
from mtpmanifest import pipeline
from mtpmanifest.forward import ModelForward
from mtpmanifest.imatrix import Imatrix
from mtpmanifest.plan import compile_manifest
from mtpmanifest.source import Checkpoint
from mtpmanifest.weights import GGUFWeights, SourceWeights


def manifest_of(arch: str, ckpt_dir, quant: str = "f32", *overrides: str):
    """(cfg, manifest, checkpoint) of arch=ARCH (e.g. "arch=glm4_moe") on ckpt_dir."""
    cfg = compose_cfg(arch, f"quant={quant}", f"model.path={ckpt_dir}", *overrides)
    ckpt = Checkpoint.open(ckpt_dir)
    return cfg, compile_manifest(cfg.arch, cfg.quant, ckpt), ckpt


def calibrated_run(arch: str, ckpt_dir, out: Path, quant: str, *overrides: str, seq_len: int = 64,
                   max_tokens: int = 512) -> tuple[dict, set[str], set[str]]:
    """stage=all with a two-window calibration: (the result record, the imatrix's entries, the GGUF tensors
    that want one). Fails unless the run exits 0 (verify included)."""
    cfg = compose_cfg(arch, f"quant={quant}", f"model.path={ckpt_dir}", f"output.dir={out}", "calib.enabled=true",
                      "calib.samples=2", f"calib.seq_len={seq_len}", f"accept.max_tokens={max_tokens}", *overrides)
    record = pipeline.run(cfg, progress=False)
    assert record["exit_code"] == 0, record
    manifest = json.loads((Path(out) / "manifest.json").read_text())
    wanted = {t["name"] for t in manifest["tensors"] if t["wants_imatrix"]}
    return record, set(Imatrix.read(Path(out) / "imatrix.gguf").entries), wanted


def forward_logits(cfg, manifest, ckpt, gguf_path, tokens) -> list[tuple[np.ndarray, np.ndarray]]:
    """(trunk logits, first MTP head's logits) of our torch forward on the source weights and on the weights
    read back from gguf_path."""
    out = []
    for weights in (SourceWeights(manifest, ckpt), GGUFWeights(manifest, gguf_path)):
        forward = ModelForward(ckpt.config, cfg.arch.mtp_head, weights, keep_logits=True)
        trunk = forward.trunk(tokens)
        mtp = forward.mtp(trunk)[0]
        out.append((trunk.scores.logits[0], mtp.scores.logits[0]))
    return out
