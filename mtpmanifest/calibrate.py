"""Calibration: run the trunk AND every MTP layer on calibration text and collect, for every weight
the forward touches, the sum of squared inputs per input column and the rows that contributed —
per expert for routed experts, per head for MLA's absorbed k_b/v_b — keyed by GGUF tensor name.
That is what llama-imatrix collects, except that llama-imatrix never runs the MTP block.
"""
from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from .errors import BadInputError, ConfigError
from .forward import ModelForward
from .imatrix import Imatrix, ImatrixEntry
from .manifest import Manifest
from .schema import AppConfig
from .source import Checkpoint
from .weights import SourceWeights

log = logging.getLogger(__name__)
CORPUS_NAME = "calibration.txt"


class ImportanceCollector:
    """Σx² per input column and row counts, per GGUF tensor and matrix (expert or head)."""

    def __init__(self) -> None:
        self.sums: dict[str, np.ndarray] = {}
        self.counts: dict[str, np.ndarray] = {}
        self._handles: list = []

    def add(self, name: str, rows: torch.Tensor, matrix: int = 0, n_matrices: int = 1) -> None:
        rows = rows.reshape(-1, rows.shape[-1]).double()
        if name not in self.sums:
            self.sums[name] = np.zeros((n_matrices, rows.shape[1]), dtype=np.float64)
            self.counts[name] = np.zeros(n_matrices, dtype=np.int64)
        self.sums[name][matrix] += (rows * rows).sum(0).numpy()
        self.counts[name][matrix] += rows.shape[0]

    def imatrix(self, datasets: list[str], chunk_count: int, chunk_size: int) -> Imatrix:
        entries = {n: ImatrixEntry(self.sums[n].astype(np.float32), self.counts[n].astype(np.float32)) for n in sorted(self.sums)}
        return Imatrix(entries, datasets, chunk_count, chunk_size)

    def release(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    # -- hooks, registered on every module the forward builds -------------------------------------------------
    def on_module(self, block: int | None, module: nn.Module, names: dict[str, list[str]]) -> None:
        owned: set[str] = set()  # GGUF tensors a dedicated hook files (MLA's k_b/v_b see other inputs)
        for path, sub in [("", module), *module.named_modules()]:
            prefix = f"{path}." if path else ""
            if isinstance(sub, nn.Linear):
                # every GGUF tensor made of this module's rows multiplies its input (Qwen3-Next's
                # in_proj_qkvz -> attn_qkv and attn_gate)
                for target in names.get(prefix + "weight", []):
                    if target not in owned:
                        self._handles.append(sub.register_forward_hook(self._linear_hook(target)))
            elif hasattr(sub, "gate_up_proj") and hasattr(sub, "down_proj"):
                gate_up = names.get(prefix + "gate_up_proj", [])
                down = names.get(prefix + "down_proj", [])
                if gate_up and down:
                    self._handles.append(sub.register_forward_hook(self._experts_hook(gate_up, down[0])))
            if hasattr(sub, "kv_b_proj") and hasattr(sub, "kv_a_layernorm"):
                split = names.get(prefix + "kv_b_proj.weight", [])
                k_b = next((n for n in split if n.endswith("attn_k_b.weight")), None)
                v_b = next((n for n in split if n.endswith("attn_v_b.weight")), None)
                if k_b and v_b:
                    self._mla_hooks(sub, k_b, v_b)
                    owned.update(split)

    def _linear_hook(self, name: str):
        def hook(module, inputs, output):
            self.add(name, inputs[0])
        return hook

    def _experts_hook(self, gate_up: list[str], down: str):
        """Routed experts (transformers' fused layout): each expert's rows, and its down_proj inputs.
        The hook takes the module as its argument: a closure over it would keep every layer alive."""
        gate_name = next(n for n in gate_up if "gate" in n.rsplit(".", 2)[-2])
        up_name = next(n for n in gate_up if n != gate_name)

        def hook(experts, inputs, output):
            hidden, top_k_index = inputs[0], inputs[1]
            n_expert = experts.gate_up_proj.shape[0]
            for expert in range(n_expert):
                rows = (top_k_index == expert).any(-1).nonzero()[:, 0]
                x = hidden[rows]
                for name in (gate_name, up_name):
                    self.add(name, x, expert, n_expert)
                gate, up = nn.functional.linear(x, experts.gate_up_proj[expert]).chunk(2, dim=-1)
                self.add(down, experts.act_fn(gate) * up, expert, n_expert)
        return hook

    def _mla_hooks(self, attention: nn.Module, k_b: str, v_b: str) -> None:
        """MLA with absorbed weights (llama.cpp's graph): k_b multiplies each head's q_nope, v_b each
        head's attention-weighted latent. Needs the attention probabilities (eager attention)."""
        seen: dict[str, torch.Tensor] = {}
        heads, nope = attention.num_heads, attention.qk_nope_head_dim
        q_module = attention.q_b_proj if getattr(attention, "q_lora_rank", None) else attention.q_proj
        self._handles.append(q_module.register_forward_hook(lambda m, i, o: seen.__setitem__("q", o)))
        self._handles.append(attention.kv_a_layernorm.register_forward_hook(lambda m, i, o: seen.__setitem__("latent", o)))

        def hook(module, inputs, output):
            probs = output[1]
            if probs is None:
                raise ConfigError("calibration needs eager attention to see MLA's attention probabilities")
            q = seen["q"].reshape(-1, heads, seen["q"].shape[-1] // heads)[:, :, :nope]
            latent = seen["latent"].reshape(-1, seen["latent"].shape[-1])
            mixed = probs[0] @ latent  # [heads, T, kv_lora_rank]
            for head in range(heads):
                self.add(k_b, q[:, head], head, heads)
                self.add(v_b, mixed[head], head, heads)
        self._handles.append(attention.register_forward_hook(hook))


def corpus_text(cfg: AppConfig) -> tuple[str, list[str]]:
    """calib.data (a text file, or every file of a directory in name order), else the shipped corpus."""
    if cfg.calib.data:
        root = Path(cfg.calib.data).expanduser()
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        if not files or not all(f.is_file() for f in files):
            raise ConfigError(f"calib.data={cfg.calib.data}: no such file or directory with files")
    else:
        from .demo import DEMO_DIR

        files = [DEMO_DIR / CORPUS_NAME]
    try:
        return "\n".join(f.read_text(encoding="utf-8", errors="replace") for f in files), [str(f) for f in files]
    except OSError as exc:
        raise BadInputError(f"calib.data: cannot read {exc.filename}: {exc.strerror}") from None


def calibration_samples(text: str, ckpt: Checkpoint, samples: int, seq_len: int, seed: int) -> list[list[int]]:
    """`samples` windows of seq_len tokens at seeded random offsets, BOS first when the model has one."""
    from .text_tokens import encode_text

    ids = encode_text(ckpt.path, text, special=False, purpose="calibration")
    bos = ckpt.config.get("bos_token_id")
    body = seq_len - (bos is not None)
    if len(ids) < body + 1:
        raise BadInputError(f"calibration text has {len(ids)} tokens, fewer than calib.seq_len={seq_len}")
    starts = np.random.default_rng(seed).integers(0, len(ids) - body, samples)
    return [([bos] if bos is not None else []) + ids[s:s + body] for s in starts]


def calibrate(cfg: AppConfig, manifest: Manifest, ckpt: Checkpoint, *, progress: bool = True) -> Imatrix:
    """The importance matrix of the trunk and every MTP layer, from the source checkpoint."""
    text, files = corpus_text(cfg)
    samples = calibration_samples(text, ckpt, cfg.calib.samples, cfg.calib.seq_len, cfg.calib.seed)
    collector = ImportanceCollector()
    forward = ModelForward(ckpt.config, cfg.arch.mtp_head, SourceWeights(manifest, ckpt), on_module=collector.on_module)
    forward.cfg._attn_implementation = "eager"  # the MLA hooks read attention probabilities
    torch.manual_seed(cfg.calib.seed)
    try:
        for tokens in tqdm(samples, desc="calibrate", unit="sample", disable=not progress, leave=False):
            trunk = forward.trunk(tokens)
            if forward.recipe is not None and manifest.layers["mtp_kept"]:
                forward.mtp(trunk)
    finally:
        collector.release()
    per_role = defaultdict(int)
    roles = {e.name: e.role for e in manifest.tensors}
    for name in collector.sums:
        per_role[roles.get(name, "other")] += 1
    log.info("calibrated %d samples x %d tokens: %s", len(samples), cfg.calib.seq_len,
             ", ".join(f"{role} {n}" for role, n in sorted(per_role.items())))
    return collector.imatrix([Path(f).name for f in files], len(samples), cfg.calib.seq_len)
