"""GGUF type of each output tensor under a quant preset, with the rule that chose it.

Mirrors llama.cpp's converter: 1-D tensors, norms, router weights and biases stay F32 (its
kernels expect them so); other weights take the preset's type, falling back when a row length is
not a multiple of the type's block size.
"""
from __future__ import annotations

import math

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, MODEL_TENSOR

from .errors import ConfigError
from .schema import QuantConfig

# llama.cpp keeps these F32 whatever the preset (convert_hf_to_gguf's forced-F32 list, MoE part)
ALWAYS_F32 = frozenset({MODEL_TENSOR.FFN_GATE_INP, MODEL_TENSOR.FFN_GATE_INP_SHEXP, MODEL_TENSOR.FFN_EXP_PROBS_B})


def ggml_type(name: str, where: str) -> GGMLQuantizationType:
    try:
        return GGMLQuantizationType[name]
    except KeyError:
        raise ConfigError(f"{where}: unknown GGML type '{name}'") from None


def n_bytes(ne: list[int] | tuple[int, ...], qtype: GGMLQuantizationType) -> int:
    block, type_size = GGML_QUANT_SIZES[qtype]
    return math.prod(ne) // block * type_size


def fits(ne0: int, qtype: GGMLQuantizationType) -> bool:
    return ne0 % GGML_QUANT_SIZES[qtype][0] == 0


def choose_type(name: str, ne: list[int], kind: MODEL_TENSOR, quant: QuantConfig) -> tuple[GGMLQuantizationType, str]:
    """(type, reason) for a tensor with GGML shape `ne` under `quant`."""
    if len(ne) <= 1:
        return GGMLQuantizationType.F32, "1-D tensor kept F32"
    if name.endswith("_norm.weight"):
        return GGMLQuantizationType.F32, "norm kept F32"
    if kind in ALWAYS_F32 or not name.endswith(".weight"):
        return GGMLQuantizationType.F32, f"{kind.name} kept F32"
    default = ggml_type(quant.default_type, f"quant/{quant.name}.yaml default_type")
    if fits(ne[0], default):
        return default, f"preset {quant.name} default"
    fallback = ggml_type(quant.fallback_type, f"quant/{quant.name}.yaml fallback_type")
    if not fits(ne[0], fallback):
        fallback = GGMLQuantizationType.F16
    block = GGML_QUANT_SIZES[default][0]
    return fallback, f"row of {ne[0]} not a multiple of {block}: {default.name} -> {fallback.name}"
