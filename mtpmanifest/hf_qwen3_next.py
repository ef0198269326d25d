"""transformers' Qwen3-Next classes as mtpmanifest.forward runs them (the `qwen3_next` row of hf_modules.families()).

One adaptation, no reimplementation: `DecoderLayer`: the forward pass gives every block the same 4-D causal
mask; a linear-attention (gated delta net) block wants none (transformers passes it only a 2-D padding mask),
so it is dropped there. On CPU without the `fla` kernels transformers runs its own torch fallback of the
chunked gated delta rule. Decoder blocks take the checkpoint's own zero-centred norms (Qwen3NextRMSNorm adds 1).
"""
from __future__ import annotations

from transformers.models.qwen3_next.configuration_qwen3_next import Qwen3NextConfig
from transformers.models.qwen3_next.modeling_qwen3_next import Qwen3NextDecoderLayer
from transformers.models.qwen3_next.modeling_qwen3_next import Qwen3NextRotaryEmbedding as RotaryEmbedding

from .hf_modules import full_attention_mtp

__all__ = ["Qwen3NextConfig", "DecoderLayer", "RotaryEmbedding", "layer_config"]


class DecoderLayer(Qwen3NextDecoderLayer):
    def forward(self, hidden_states, *args, attention_mask=None, **kwargs):
        if self.block_type == "linear_attention":
            attention_mask = None  # no padding in the forward pass; causality is the recurrence itself
        return super().forward(hidden_states, *args, attention_mask=attention_mask, **kwargs)


def layer_config(cfg, block: int, n_trunk: int):
    """(config, layer index) to build block `block` with: an MTP block is a full-attention MoE layer
    (layer_types only covers the trunk; the MTP layer's attention is always full, its MLP always MoE)."""
    if block < n_trunk:
        return cfg, block
    mtp_cfg, _ = full_attention_mtp(cfg, block, n_trunk)
    mtp_cfg.mlp_only_layers = [i for i in (cfg.mlp_only_layers or []) if i < n_trunk]
    mtp_cfg.decoder_sparse_step = 1
    return mtp_cfg, block
