"""transformers' Step3p7 text decoder as mtpmanifest.forward runs Step-3.5-Flash (the `step3p5` row of
hf_modules.families()).

transformers has no Step-3.5 model, but its Step3p7TextConfig reads Step-3.5's config.json (model_type step3p5,
num_attention_groups, attention_other_setting, moe_layers_enum …) and Step3p7DecoderLayer computes what
llama.cpp's step35 graph computes, trunk and MTP blocks alike (measured: logits within 1e-6 on an F32 GGUF).
Adaptations, no reimplementation:
- `config_kwargs`: one config for every block, the MTP blocks included: config.json's per-layer lists cover
  num_hidden_layers + num_nextn_predict_layers blocks (padded as llama.cpp pads them when shorter), so block N + k
  is built as layer N + k (its own attention type, head count, dense MLP).
- `RotaryEmbedding`: rotary tables of every layer type at once; `DecoderLayer` takes its own type's and turns the
  causal mask it is given into a sliding-window one on sliding layers (window as llama.cpp's: i - j < window).
Decoder blocks take the checkpoint's zero-centred norms and keep Step3p7RMSNorm (1 + w) inside.
Checkpoint names become Step3p7 module names through the family's renames (hf_modules: stacked experts
`moe.gate_proj` + `moe.up_proj` become the fused `mlp.experts.gate_up_proj`, gate rows first).
"""
from __future__ import annotations

import torch
from transformers.models.step3p7.configuration_step3p7 import Step3p7TextConfig
from transformers.models.step3p7.modeling_step3p7 import Step3p7DecoderLayer, Step3p7RotaryEmbedding

__all__ = ["Step3p7TextConfig", "DecoderLayer", "RotaryEmbedding", "config_kwargs"]

SLIDING = "sliding_attention"
_NOT_CONFIG = ("quantization_config", "architectures", "model_type", "auto_map")


def _pad(values, n: int, fill):
    values = list(values)[:n]
    return values + [fill(i) for i in range(len(values), n)]


def config_kwargs(config: dict) -> dict:
    """config.json -> Step3p7TextConfig keyword arguments covering trunk and MTP blocks as one stack of layers."""
    kwargs = {k: v for k, v in config.items() if k not in _NOT_CONFIG}
    n = int(config["num_hidden_layers"]) + int(config.get("num_nextn_predict_layers") or 0)
    kwargs.update(num_hidden_layers=n, num_nextn_predict_layers=0)
    types = kwargs["layer_types"] = _pad(config.get("layer_types") or [], n, lambda i: "full_attention")
    if isinstance(config.get("partial_rotary_factors"), list):
        kwargs["partial_rotary_factors"] = _pad(config["partial_rotary_factors"], n, lambda i: 0.5)
    if isinstance(config.get("rope_theta"), list):
        theta = config["rope_theta"]
        first = {t: theta[types.index(t)] for t in set(types) if types.index(t) < len(theta)}
        kwargs["rope_theta"] = _pad(theta, n, lambda i: first.get(types[i], theta[0]))
    for key in ("swiglu_limits", "swiglu_limits_shared"):
        if isinstance(config.get(key), list):
            kwargs[key] = _pad([0.0 if v is None else float(v) for v in config[key]], n, lambda i: 0.0)
    return kwargs


class RotaryEmbedding(Step3p7RotaryEmbedding):
    def forward(self, x, position_ids, layer_type=None):
        if layer_type is not None:
            return super().forward(x, position_ids, layer_type)
        return {t: super(RotaryEmbedding, self).forward(x, position_ids, t) for t in self.layer_types}


class DecoderLayer(Step3p7DecoderLayer):
    def forward(self, hidden_states, *args, attention_mask=None, position_embeddings=None, **kwargs):
        if isinstance(position_embeddings, dict):
            position_embeddings = position_embeddings[self.attention_type]
        window = self.self_attn.sliding_window
        if self.attention_type == SLIDING and window and attention_mask is not None:
            n_q, n_k = attention_mask.shape[-2:]
            distance = torch.arange(n_q)[:, None] + (n_k - n_q) - torch.arange(n_k)[None]
            attention_mask = attention_mask.masked_fill(distance >= window, float("-inf"))
        return super().forward(hidden_states, *args, attention_mask=attention_mask,
                               position_embeddings=position_embeddings, **kwargs)
