"""MTP draft acceptance: how often an MTP head's greedy draft is the token the model itself would
produce, measured teacher-forced on held-out text, for the source and the written GGUF. The text
is cut into windows (accept.window tokens), each run as its own sequence; figures pool all rows.

Definitions (tokens t_0..t_{T-1}; trunk greedy g_j = argmax of the trunk logits at position j, the
model's own next token after t_0..t_j):
- MTP layer k (0-based; s = token_shift + k) at row i sees tokens up to t_{i+s} and drafts d_i for
  slot q = i+s+1. acceptance_k = mean over rows of [d_i == g_{q-1}]  (agreement with the trunk).
- top1_k = mean of [d_i == t_q] over rows with q < T (correctness; acceptance is not correctness),
  loss_k = mean -log p_head(t_q).
- retention_k = acceptance_k(output) / acceptance_k(source).
- Speed-up estimate of speculative decoding with the K MTP layers chained as drafts (one target
  forward verifies all drafts; the drafts are accepted left to right, acceptances independent):
      tokens per target step  E = 1 + a_1 + a_1 a_2 + ... + a_1...a_K
      cost per target step    C = 1 + c_1 + ... + c_K,   c_k = active params(MTP layer k) / active params(trunk)
      speed-up                S = E / C
  Active parameters are counted from the manifest: routed expert stacks count expert_used_count /
  expert_count of their elements; embedding lookups count nothing; a head that falls back to
  output.weight counts it. Memory-bound decoding, where a step's cost follows the weights it reads.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from .forward import TOKEN_EMBD, ModelForward
from .manifest import Manifest
from .mtp_recipe import candidates, resolve
from .schema import MtpHeadConfig

MIN_WINDOW = 8
SPEEDUP_FORMULA = "S = (1 + a1 + a1*a2 + ...) / (1 + c1 + c2 + ...), c_k = active params MTP layer k / trunk"


def windows(tokens: Sequence[int], size: int) -> list[list[int]]:
    """Consecutive windows of `size` tokens, each measured as its own sequence (a short tail too, from
    MIN_WINDOW tokens): positions stay within the context a small model was trained on."""
    tokens = [int(t) for t in tokens]
    return [tokens[s:s + size] for s in range(0, len(tokens), size) if len(tokens[s:s + size]) >= MIN_WINDOW]


def head_rows(draft: np.ndarray, first: int, greedy: np.ndarray, tokens: Sequence[int],
              nll: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per-row outcomes of a head in one sequence. draft[r] is its greedy token for slot first + r
    (the slot of token t_{first+r}); greedy[j] is the trunk's greedy token after position j."""
    tokens = np.asarray(tokens)
    rows = max(0, min(len(draft), len(tokens) - first + 1))
    slots = first + np.arange(rows)
    draft = np.asarray(draft[:rows])
    known = slots < len(tokens)
    return {"agree": draft == greedy[slots - 1], "correct": draft[known] == tokens[slots[known]],
            "nll": (nll[:rows][known] if nll is not None else np.full(int(known.sum()), np.nan))}


def summarize(rows: Sequence[dict[str, np.ndarray]]) -> dict:
    """acceptance, top1 and loss pooled over the rows of every window."""
    agree = np.concatenate([r["agree"] for r in rows]) if rows else np.array([], bool)
    correct = np.concatenate([r["correct"] for r in rows]) if rows else np.array([], bool)
    nll = np.concatenate([r["nll"] for r in rows]) if rows else np.array([])
    return {"acceptance": float(agree.mean()) if agree.size else 0.0, "positions": int(agree.size),
            "top1": float(correct.mean()) if correct.size else 0.0,
            "loss": float(nll.mean()) if nll.size and not np.isnan(nll).any() else None}


def measure(forward: ModelForward, tokens: Sequence[int], window: int) -> dict:
    """Trunk top-1/loss and per-MTP-layer acceptance, top-1 and loss of one model over the windows,
    windows of one length run as one batch (each layer's weights are read once per batch)."""
    trunk_rows, layer_rows = [], []
    by_length: dict[int, list[list[int]]] = {}
    for seq in windows(tokens, window):
        by_length.setdefault(len(seq), []).append(seq)
    for batch in by_length.values():
        trunk = forward.trunk(batch)
        passes = forward.mtp(trunk)
        layer_rows += [[] for _ in range(len(passes) - len(layer_rows))]
        for b, seq in enumerate(batch):
            greedy = trunk.scores.argmax[b]
            trunk_rows.append(head_rows(greedy[:-1], 1, greedy, seq, trunk.scores.nll[b, :-1]))
            for k, p in enumerate(passes):
                layer_rows[k].append(head_rows(p.scores.argmax[b], p.shift + 1, greedy, seq, p.scores.nll[b]))
    trunk = summarize(trunk_rows)
    return {"trunk": {"top1": trunk["top1"], "loss": trunk["loss"]}, "layers": [summarize(r) for r in layer_rows]}


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x -= x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def llamacpp_figures(gguf_path, tokens: Sequence[int], window: int, *, timeout: float = 600) -> dict:
    """The same figures from llama.cpp running the GGUF's first MTP layer (mtpmanifest.llamacpp),
    one child process per window.

    llama.cpp's MTP entry p is token t_p at position p with the trunk row h_{p-1} and drafts slot
    p+1, i.e. recipe row p-1 of the first layer; entry 0 (a zero hidden row) drafts nothing real
    and is left out. The trunk greedy tokens are llama.cpp's own."""
    from .llamacpp import probe

    rows, trunk_rows = [], []
    for seq in windows(tokens, window):
        result = probe(gguf_path, seq, mtp=True, timeout=timeout)
        if not result.ok:
            return {"error": (result.error or f"child exited with {result.returncode}").splitlines()[0][:300]}
        greedy = result.logits.argmax(-1)
        slots = np.arange(2, len(seq) + 1)
        have = slots < len(seq)
        nll = np.full(len(slots), np.nan)
        nll[have] = -_log_softmax(result.mtp_logits[1:][have])[np.arange(int(have.sum())), np.asarray(seq)[slots[have]]]
        rows.append(head_rows(result.mtp_logits[1:].argmax(-1), 2, greedy, seq, nll))
        trunk_rows.append(head_rows(greedy[:-1], 1, greedy, seq))
    figures = summarize(rows)
    figures["trunk_top1"] = summarize(trunk_rows)["top1"]
    return figures


def retention(source: float, output: float) -> float | None:
    return output / source if source > 0 else None


def _active(entry, expert_fraction: float) -> float:
    n = math.prod(entry.shape)
    return n * expert_fraction if entry.op == "stack_experts" else float(n)


def draft_costs(manifest: Manifest, recipe: MtpHeadConfig) -> list[float]:
    """c_k per kept MTP layer: its active parameters per token relative to the trunk's."""
    meta = {m.key.split(".", 1)[-1]: m.value for m in manifest.metadata}
    fraction = (meta.get("expert_used_count") or 1) / (meta.get("expert_count") or 1)
    entries = {e.name: e for e in manifest.tensors}
    trunk = sum(_active(e, fraction) for e in manifest.tensors if e.role != "mtp" and e.name != TOKEN_EMBD)
    costs = []
    for block in manifest.layers["mtp_blocks"]:
        lookups = set(candidates(recipe, "embedding", block))
        own = sum(_active(e, fraction) for e in manifest.tensors if e.block == block and e.name not in lookups)
        head = resolve(recipe, block, entries.__contains__).head
        if entries[head].block != block:  # the shared output head, read again for the draft
            own += _active(entries[head], fraction)
        costs.append(own / trunk if trunk else 0.0)
    return costs


def speedup(acceptances: Sequence[float], costs: Sequence[float]) -> dict:
    tokens, chain = 1.0, 1.0
    for a in acceptances:
        chain *= a
        tokens += chain
    cost = 1.0 + sum(costs[:len(acceptances)])
    return {"tokens_per_step": tokens, "cost_per_step": cost, "speedup": tokens / cost}
