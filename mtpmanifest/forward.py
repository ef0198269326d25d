"""The torch forward pass of a model with MTP layers, weights from a provider (mtpmanifest.weights).

Trunk: embedding, then transformers' decoder layers one at a time (each built from the provider's
weights, run on the whole batch of sequences, then released, so each layer's weights are read once;
only the batch's hidden states are kept), then output_norm. A batch is B sequences of T tokens
(a single sequence is a batch of one); every tensor below has the batch first. MTP layer k (block n_trunk + k), per the architecture's `mtp_head` recipe, with
s = token_shift + k:

    x_i = projection(cat[embedding_norm(E[t_{i+s}]), hidden_norm(h_i)])   (recipe.concat order)
    y_i = decoder block (causal over rows, RoPE position i);  z_i = final_norm(y_i);  logits_i = head(z_i)

row i predicting t_{i+s+1}; h is the trunk's post-norm (or pre-norm) hidden for k = 0 and layer
k-1's y (or z, recipe.chain) after that.

Hooks for calibration: `on_module(block, module, names)` is called for every module built from
weights before it runs (block None for the embedding and the output head); `names` maps each of the
module's parameters to the GGUF tensors it came from, so forward hooks registered there (nn.Linear,
the fused experts module) can file what they see under GGUF tensor names.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from gguf import MODEL_TENSOR, TENSOR_NAMES
from torch import nn

from . import hf_modules as hf
from .mtp_recipe import PARTS, HeadTensors, candidates, check_recipe, resolve
from .schema import MtpHeadConfig
from .weights import WeightProvider

ModuleHook = Callable[[int | None, nn.Module, dict[str, list[str]]], None]
TOKEN_EMBD, OUTPUT_NORM, OUTPUT = (TENSOR_NAMES[kind] + ".weight"
                                   for kind in (MODEL_TENSOR.TOKEN_EMBD, MODEL_TENSOR.OUTPUT_NORM, MODEL_TENSOR.OUTPUT))
SCORE_ROWS = 256  # logits are computed this many rows at a time ([rows, n_vocab] float32)


@dataclass
class HeadScores:
    """What a head says about each row: its greedy token and -log p(target) (NaN without a target)."""

    argmax: np.ndarray  # [B, R]
    nll: np.ndarray  # [B, R]
    logits: np.ndarray | None = None  # [B, R, V] with keep_logits


@dataclass
class TrunkPass:
    tokens: torch.Tensor  # [B, T]
    pre_norm: torch.Tensor  # [B, T, h], after the last decoder layer
    post_norm: torch.Tensor  # [B, T, h], after output_norm: what the output head reads
    scores: HeadScores  # row i predicts t_{i+1}


@dataclass
class MtpPass:
    layer: int  # 0 for the first MTP layer
    block: int
    shift: int  # row i embeds t_{i+shift} and predicts t_{i+shift+1}
    head: HeadTensors
    block_output: torch.Tensor  # [B, R, h]
    normed: torch.Tensor  # [B, R, h]
    scores: HeadScores
    bootstrap: bool = False  # row 0 is llama.cpp's extra first entry (t_{shift-1}, zero hidden)


class MtpHead(nn.Module):
    """The MTP layer's own modules around its decoder block; parameter names match `names()`."""

    def __init__(self, cfg, family: hf.Family, recipe: MtpHeadConfig, weights: WeightProvider, head: HeadTensors):
        super().__init__()
        self.recipe, self.tensors = recipe, head
        offset = recipe.norm_offset
        self.embed = hf.embedding(weights.array(head.embedding))
        self.embedding_norm = hf.rms_norm(cfg, weights.array(head.embedding_norm), offset)
        self.hidden_norm = hf.rms_norm(cfg, weights.array(head.hidden_norm), offset)
        self.projection = hf.linear(weights.array(head.projection))
        self.final_norm = hf.rms_norm(cfg, weights.array(head.final_norm), offset)
        self.head = hf.linear(weights.array(head.head))

    def names(self) -> dict[str, list[str]]:
        t = self.tensors
        return {"embed.weight": [t.embedding], "embedding_norm.weight": [t.embedding_norm],
                "hidden_norm.weight": [t.hidden_norm], "projection.weight": [t.projection],
                "final_norm.weight": [t.final_norm], "head.weight": [t.head]}

    def project(self, tokens: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        parts = {"embedding": self.embedding_norm(self.embed(tokens)), "hidden": self.hidden_norm(hidden)}
        return self.projection(torch.cat([parts[p] for p in self.recipe.concat], dim=-1))


class ModelForward:
    """Trunk and MTP layers of one model (config.json + a weight provider) in float32 torch."""

    def __init__(self, config: dict, recipe: MtpHeadConfig | None, weights: WeightProvider, *,
                 on_module: ModuleHook | None = None, keep_logits: bool = False):
        self.family = hf.family_of(config, recipe.forward if recipe is not None else None)
        self.cfg = hf.hf_config(config, self.family)
        self.recipe, self.weights, self.on_module, self.keep_logits = recipe, weights, on_module, keep_logits
        if recipe is not None:
            check_recipe(recipe, "mtp_head")
        self.n_trunk = int(weights.manifest.layers["trunk"])
        self.rotary = hf.rotary(self.cfg, self.family)

    def _hook(self, block: int | None, module: nn.Module, names: dict[str, list[str]]) -> None:
        if self.on_module is not None:
            self.on_module(block, module, names)

    def _layer_names(self, block: int, skip: set[str]) -> dict[str, list[str]]:
        names: dict[str, list[str]] = {}
        for source, ggufs in self.weights.gguf_names_of_sources(block).items():
            kept = [g for g in ggufs if g not in skip]
            if kept:
                key = hf.module_key(self.family, source, block)
                names[key] = sorted(set(names.get(key, []) + kept))
        return names

    def _block(self, block: int, x: torch.Tensor, skip: set[str] = frozenset()) -> torch.Tensor:
        """One decoder block over rows x [B, R, h] at positions 0..R-1, causal."""
        layer = hf.decoder_layer(self.cfg, self.family, block, self.weights.hf_layer(block, skip=skip), self.n_trunk)
        self._hook(block, layer, self._layer_names(block, skip))
        n = x.shape[1]
        positions = torch.arange(n)[None]
        out = layer(x, attention_mask=hf.causal_mask(n), position_ids=positions,
                    position_embeddings=self.rotary(x, positions))
        return out[0] if isinstance(out, tuple) else out

    def _score(self, head: nn.Linear, hidden: torch.Tensor, targets: torch.Tensor) -> HeadScores:
        """Greedy tokens and -log p(targets) of hidden [B, R, h] against targets [B, R]."""
        batch, rows = targets.shape
        flat, flat_targets = hidden.reshape(batch * rows, -1), targets.reshape(-1)
        argmax, nll, logits = [], [], []
        for start in range(0, flat.shape[0], SCORE_ROWS):
            chunk = head(flat[start:start + SCORE_ROWS]).float()
            want = flat_targets[start:start + SCORE_ROWS]
            logp = torch.log_softmax(chunk, dim=-1).gather(1, want.clamp(min=0)[:, None])[:, 0]
            argmax.append(chunk.argmax(-1))
            nll.append(torch.where(want >= 0, -logp.double(), torch.tensor(float("nan"), dtype=torch.float64)))
            if self.keep_logits:
                logits.append(chunk)
        return HeadScores(torch.cat(argmax).reshape(batch, rows).numpy(), torch.cat(nll).reshape(batch, rows).numpy(),
                          torch.cat(logits).reshape(batch, rows, -1).numpy() if self.keep_logits else None)

    @staticmethod
    def _targets(tokens: torch.Tensor, first: int, rows: int) -> torch.Tensor:
        """Row i's target t_{first+i} per sequence; -1 past the end of the sequence."""
        out = torch.full((tokens.shape[0], rows), -1, dtype=torch.long)
        have = tokens[:, first:first + rows]
        out[:, :have.shape[1]] = have
        return out

    @torch.no_grad()
    def trunk(self, tokens: Sequence[int] | Sequence[Sequence[int]]) -> TrunkPass:
        """One sequence of token ids, or a batch of sequences of one length."""
        ids = torch.as_tensor(tokens, dtype=torch.long)
        ids = ids[None] if ids.dim() == 1 else ids
        embed = hf.embedding(self.weights.array(TOKEN_EMBD))
        self._hook(None, embed, {"weight": [TOKEN_EMBD]})
        x = embed(ids)
        del embed
        for block in range(self.n_trunk):
            x = self._block(block, x)
        norm = hf.rms_norm(self.cfg, self.weights.array(OUTPUT_NORM))
        output = OUTPUT if self.weights.has(OUTPUT) else TOKEN_EMBD  # tied embeddings: llama.cpp's fallback too
        head = hf.linear(self.weights.array(output))
        self._hook(None, norm, {"weight": [OUTPUT_NORM]})
        self._hook(None, head, {"weight": [output]})
        post = norm(x)
        return TrunkPass(ids, x, post, self._score(head, post, self._targets(ids, 1, ids.shape[1])))

    def mtp_blocks(self) -> list[int]:
        return list(self.weights.manifest.layers["mtp_blocks"])

    @torch.no_grad()
    def mtp(self, trunk: TrunkPass, *, bootstrap_row: bool = False) -> list[MtpPass]:
        """Every MTP layer of the manifest, chained per the recipe. bootstrap_row: the first layer gets
        llama.cpp's extra first entry (token t_{shift-1} with a zero hidden row) in front of its rows,
        so row p matches llama.cpp's MTP entry p."""
        if self.recipe is None:
            raise ValueError("the architecture has no mtp_head recipe")
        passes: list[MtpPass] = []
        hidden = trunk.post_norm if self.recipe.hidden == "post_norm" else trunk.pre_norm
        n = trunk.tokens.shape[1]
        for layer, block in enumerate(self.mtp_blocks()):
            shift = self.recipe.token_shift + layer
            rows = n - shift
            if rows < 1:
                break
            head_names = resolve(self.recipe, block, self.weights.has)
            module = MtpHead(self.cfg, self.family, self.recipe, self.weights, head_names)
            self._hook(block, module, module.names())
            tokens, h = trunk.tokens[:, shift:], hidden[:, :rows]
            first_target = shift + 1
            bootstrap = bootstrap_row and layer == 0
            if bootstrap:
                tokens = torch.cat([trunk.tokens[:, shift - 1:shift], tokens], dim=1)
                h = torch.cat([torch.zeros_like(h[:, :1]), h], dim=1)
                first_target -= 1
            skip = {name for part in PARTS for name in candidates(self.recipe, part, block)}
            y = self._block(block, module.project(tokens, h), skip)
            z = module.final_norm(y)
            scores = self._score(module.head, z, self._targets(trunk.tokens, first_target, y.shape[1]))
            passes.append(MtpPass(layer, block, shift, head_names, y, z, scores, bootstrap))
            if bootstrap:  # the chain continues from the recipe's rows
                y, z = y[:, 1:], z[:, 1:]
            hidden = y if self.recipe.chain == "block_output" else z
        return passes
