"""transformers modules of a model family, built from weights in the checkpoint's layout: the decoder
layer, RMSNorm and rotary embedding the forward pass (mtpmanifest.forward) runs, one layer at a time.

A family is a row of families() (keyed by config.json's model_type): its transformers classes and how a
source tensor name maps to a parameter of the decoder-layer module. Modules are created on the meta
device and take the provider's arrays as their parameters (no random init, no copy).
"""
from __future__ import annotations

import copy
import importlib
import re
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from .errors import BadInputError, ConfigError


def _plain_config(config: dict) -> dict:
    return {k: v for k, v in config.items() if k != "quantization_config"}


def _same_layer(cfg, block: int, n_trunk: int):
    return cfg, block


@dataclass(frozen=True)
class Family:
    module: str  # transformers modeling module
    config_class: str
    decoder_layer: str
    rotary: str
    fused_experts: re.Pattern  # per-expert source name -> (experts module, expert, projection)
    # config.json -> keyword arguments of config_class (a family without its own transformers class maps here)
    config_kwargs: Callable[[dict], dict] = _plain_config
    # (cfg, block, n_trunk) -> (cfg, layer_idx) to build block's decoder layer with: an MTP block that differs
    # from what its index would give (full attention in a hybrid model, a dense MLP in an MoE model)
    layer_config: Callable[[Any, int, int], tuple[Any, int]] = _same_layer
    # (checkpoint spelling, transformers spelling) replaced in a block parameter's name (ERNIE's moe_statics)
    renames: tuple[tuple[str, str], ...] = ()

    def classes(self) -> dict[str, Any]:
        mod = importlib.import_module(self.module)
        return {k: getattr(mod, getattr(self, k)) for k in ("decoder_layer", "rotary")}


# transformers 5 stores routed experts fused: gate_up_proj [E, 2I, h] (gate rows first), down_proj [E, h, I]
_EXPERT = re.compile(r"^(?P<experts>.*\.experts)\.(?P<xid>\d+)\.(?P<proj>gate_proj|up_proj|down_proj)\.weight$")
# a block's tensors are named <prefix>.<index>.<parameter>: model.layers.3.…, mtp.layers.0.…, model.mtp_block.0.…
_BLOCK_PREFIX = re.compile(r"^.*?\.\d+\.")


def _mimo_config(config: dict) -> dict:
    """MiMo-7B has no transformers class of its own: its config.json is a Qwen2 config plus the MTP count."""
    return {k: v for k, v in config.items() if k not in ("quantization_config", "auto_map", "num_nextn_predict_layers")}


def full_attention_mtp(cfg, block: int, n_trunk: int):
    """An MTP block is a full-attention block (config.layer_types only covers the trunk): MiMo, Qwen3-Next."""
    if block < n_trunk:
        return cfg, block
    cfg = copy.copy(cfg)
    cfg.layer_types = list(cfg.layer_types[:n_trunk]) + ["full_attention"] * (block + 1 - n_trunk)
    return cfg, block


def _ernie_layer(cfg, block: int, n_trunk: int):
    """ERNIE-4.5's MTP block is dense (vLLM: a LlamaDecoderLayer of intermediate_size) whatever its index."""
    if block < n_trunk:
        return cfg, block
    cfg = copy.copy(cfg)
    cfg.moe_layer_start_index = block + 1
    return cfg, block


def _qwen3_next_layer(cfg, block: int, n_trunk: int):
    from .hf_qwen3_next import layer_config  # full attention + MoE for the MTP block

    return layer_config(cfg, block, n_trunk)


def _step3p5_config(config: dict) -> dict:
    from .hf_step3p5 import config_kwargs  # per-layer lists over trunk + MTP blocks

    return config_kwargs(config)


# Step-3.5 checkpoint names -> Step3p7 module names; stacked experts gate_proj + up_proj -> fused gate_up_proj
_STEP3P5_RENAMES = (("moe.gate.weight", "mlp.gate.weight"), ("moe.router_bias", "mlp.gate.e_score_correction_bias"),
                    ("moe.gate_proj.weight", "mlp.experts.gate_up_proj"), ("moe.up_proj.weight", "mlp.experts.gate_up_proj"),
                    ("moe.down_proj.weight", "mlp.experts.down_proj"), ("share_expert.", "mlp.shared_experts."))


def families() -> dict[str, Family]:
    """Torch forward per config.json model_type (built per call: no shared mutable registry)."""
    return {
        # mtpmanifest.hf_qwen3_next: transformers' classes; linear-attention blocks without the 4-D mask
        "qwen3_next": Family("mtpmanifest.hf_qwen3_next", "Qwen3NextConfig", "DecoderLayer",
                             "RotaryEmbedding", _EXPERT, layer_config=_qwen3_next_layer),
        "deepseek_v3": Family("transformers.models.deepseek_v3.modeling_deepseek_v3", "DeepseekV3Config",
                              "DeepseekV3DecoderLayer", "DeepseekV3RotaryEmbedding", _EXPERT),
        # plain Llama blocks: for user families built on them (docs/adding-an-architecture.md)
        "llama": Family("transformers.models.llama.modeling_llama", "LlamaConfig", "LlamaDecoderLayer",
                        "LlamaRotaryEmbedding", _EXPERT),
        "glm4_moe": Family("transformers.models.glm4_moe.modeling_glm4_moe", "Glm4MoeConfig",
                           "Glm4MoeDecoderLayer", "Glm4MoeRotaryEmbedding", _EXPERT),
        "mimo": Family("transformers.models.qwen2.modeling_qwen2", "Qwen2Config", "Qwen2DecoderLayer",
                       "Qwen2RotaryEmbedding", _EXPERT, config_kwargs=_mimo_config,
                       layer_config=full_attention_mtp),
        "ernie4_5_moe": Family("transformers.models.ernie4_5_moe.modeling_ernie4_5_moe", "Ernie4_5_MoeConfig",
                               "Ernie4_5_MoeDecoderLayer", "Ernie4_5_MoeRotaryEmbedding",
                               _EXPERT, layer_config=_ernie_layer,
                               renames=(("mlp.moe_statics.", "mlp.gate.moe_statics."),)),
        # mtpmanifest.hf_step3p5: transformers' Step3p7 text decoder over trunk and MTP blocks (one config),
        # sliding-window masks and per-type rotary
        "step3p5": Family("mtpmanifest.hf_step3p5", "Step3p7TextConfig", "DecoderLayer",
                          "RotaryEmbedding", _EXPERT, config_kwargs=_step3p5_config, renames=_STEP3P5_RENAMES),
    }


def family_of(config: dict, name: str | None = None) -> Family:
    """The torch forward called `name` (an arch file's mtp_head.forward), else config.json's model_type's."""
    known = families()
    if name is not None:
        if name not in known:
            raise ConfigError(f"mtp_head.forward: {name!r} is not a torch forward family (known: {', '.join(known)})")
        return known[name]
    model_type = config.get("model_type")
    if model_type not in known:
        raise ConfigError(f"config.json: model_type {model_type!r} has no torch forward (known: {', '.join(known)}); "
                          "an architecture file can name one in mtp_head.forward")
    return known[model_type]


def hf_config(config: dict, family: Family | None = None):
    """The transformers config of config.json: float32, eager experts, SDPA attention (explicit masks)."""
    family = family or family_of(config)
    cls = getattr(importlib.import_module(family.module), family.config_class)
    cfg = cls(**family.config_kwargs(config))
    cfg._attn_implementation = "sdpa"
    cfg._experts_implementation = "eager"
    return cfg


def module_key(family: Family, source: str, block: int) -> str:
    """Parameter of the decoder-layer module a source tensor becomes (experts land in a fused one): the
    name after its block index (`model.layers.61.mlp.gate.weight` -> `mlp.gate.weight`)."""
    prefix = _BLOCK_PREFIX.match(source)
    if prefix is None:
        raise BadInputError(f"{source}: not a tensor of decoder block {block} (no <prefix>.<index>. in its name)")
    found = family.fused_experts.match(source)
    if found:
        return found["experts"][prefix.end():] + (".down_proj" if found["proj"] == "down_proj" else ".gate_up_proj")
    key = source[prefix.end():]
    for old, new in family.renames:
        key = key.replace(old, new)
    return key


def layer_state(family: Family, arrays: dict[str, np.ndarray], block: int) -> dict[str, torch.Tensor]:
    """{source name: array} of one block -> the decoder-layer module's state dict."""
    state: dict[str, torch.Tensor] = {}
    experts: dict[str, dict[str, dict[int, np.ndarray]]] = {}
    for source in list(arrays):
        array = arrays.pop(source)  # the caller's dict lets go of each array once it is placed
        found = family.fused_experts.match(source)
        if found:
            experts.setdefault(module_key(family, source, block).rsplit(".", 1)[0], {}).setdefault(
                found["proj"], {})[int(found["xid"])] = array
        else:
            key = module_key(family, source, block)
            if key in state:  # two sources renamed to one parameter (Step-3.5's stacked experts): rows, gate first
                pair = (state[key].numpy(), array) if "up_proj" in source else (array, state[key].numpy())
                array = np.concatenate(pair, axis=-2)
            state[key] = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    for key, projections in experts.items():
        gate, up, down = (projections.get(p, {}) for p in ("gate_proj", "up_proj", "down_proj"))
        n = len(down)
        if not n or not sorted(gate) == sorted(up) == sorted(down) == list(range(n)):
            raise BadInputError(f"block {block}: experts of {key} are incomplete (gate {len(gate)}, up {len(up)}, down {n})")
        state[key + ".gate_up_proj"] = torch.from_numpy(_fuse(n, lambda e: (gate.pop(e), up.pop(e))))
        state[key + ".down_proj"] = torch.from_numpy(_fuse(n, lambda e: (down.pop(e),)))
    return state


def _fuse(n: int, parts) -> np.ndarray:
    """[n, rows, cols] from each expert's matrices stacked on rows, filled expert by expert (each
    expert's arrays are released as they are copied: peak memory one stack, not two)."""
    first = parts(0)
    rows = sum(p.shape[0] for p in first)
    out = np.empty((n, rows, first[0].shape[1]), dtype=np.float32)
    for e in range(n):
        pieces = first if e == 0 else parts(e)
        out[e] = np.concatenate(pieces) if len(pieces) > 1 else pieces[0]
    return out


def decoder_layer(cfg, family: Family, block: int, arrays: dict[str, np.ndarray], n_trunk: int) -> nn.Module:
    """transformers' decoder layer of `block` holding exactly `arrays` (strict: nothing missing or extra)."""
    layer_cfg, layer_idx = family.layer_config(cfg, block, n_trunk)
    with torch.device("meta"):
        layer = family.classes()["decoder_layer"](layer_cfg, layer_idx=layer_idx)
    state = layer_state(family, arrays, block)
    try:
        layer.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        raise BadInputError(f"decoder block {block}: weights do not fit {family.decoder_layer}: "
                            f"{' '.join(str(exc).split())[:400]}") from None
    return layer.eval()


def rms_norm(cfg, weight: np.ndarray, offset: float = 0.0) -> nn.Module:
    """An RMSNorm outside decoder blocks (output_norm, the MTP head's norms) from a GGUF-space weight: that
    holds the scale itself (llama.cpp stores w + 1 of a zero-centred norm), so every family runs a plain
    RMSNorm here, scaling by offset + w."""
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    norm = LlamaRMSNorm(weight.shape[0], eps=cfg.rms_norm_eps)
    norm.weight = nn.Parameter(torch.from_numpy(np.asarray(weight, dtype=np.float32) + np.float32(offset)), requires_grad=False)
    return norm.eval()


def linear(weight: np.ndarray) -> nn.Linear:
    rows, cols = weight.shape
    with torch.device("meta"):
        layer = nn.Linear(cols, rows, bias=False)
    layer.weight = nn.Parameter(torch.from_numpy(np.ascontiguousarray(weight, dtype=np.float32)), requires_grad=False)
    return layer.eval()


def embedding(weight: np.ndarray) -> nn.Embedding:
    return nn.Embedding.from_pretrained(torch.from_numpy(np.ascontiguousarray(weight, dtype=np.float32)), freeze=True)


def rotary(cfg, family: Family) -> nn.Module:
    return family.classes()["rotary"](cfg).eval()


def causal_mask(n: int) -> torch.Tensor:
    """Additive mask [1, 1, n, n]: row i sees columns 0..i."""
    return torch.full((n, n), float("-inf")).triu(1)[None, None]
