"""transformers' Qwen3-Next classes as mtpmanifest.forward runs them (the `qwen3_next` row of hf_modules.FAMILIES).

Two adaptations, no reimplementation:
- `DecoderLayer`: the forward pass gives every block the same 4-D causal mask; a linear-attention
  (gated delta net) block wants none (transformers passes it only a 2-D padding mask), so it is dropped there.
  On CPU without the `fla` kernels transformers runs its own torch fallback of the chunked gated delta rule.
- `RMSNorm`: the norms forward.py builds from GGUF-space arrays (output_norm and the MTP head's enorm, hnorm,
  shared_head_norm) already hold the scale (llama.cpp stores w + 1 of the zero-centred norm), so they run as
  a plain RMSNorm (scale by w), not as Qwen3NextRMSNorm (scale by 1 + w). Decoder blocks take the checkpoint's
  own (zero-centred) values and keep Qwen3NextRMSNorm inside.
"""
from __future__ import annotations

import copy

from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeRMSNorm as RMSNorm
from transformers.models.qwen3_next.configuration_qwen3_next import Qwen3NextConfig
from transformers.models.qwen3_next.modeling_qwen3_next import Qwen3NextDecoderLayer
from transformers.models.qwen3_next.modeling_qwen3_next import Qwen3NextRotaryEmbedding as RotaryEmbedding

__all__ = ["Qwen3NextConfig", "DecoderLayer", "RMSNorm", "RotaryEmbedding", "layer_config"]


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
    mtp_cfg = copy.copy(cfg)
    mtp_cfg.layer_types = list(cfg.layer_types[:n_trunk]) + ["full_attention"] * (block + 1 - n_trunk)
    mtp_cfg.mlp_only_layers = [i for i in (cfg.mlp_only_layers or []) if i < n_trunk]
    mtp_cfg.decoder_sparse_step = 1
    return mtp_cfg, block
