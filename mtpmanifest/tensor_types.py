"""GGUF type of every output tensor under a quant preset, with the rule that chose it.

The preset's rules are data (conf/quant/*.yaml) written to reproduce llama.cpp's
llama_tensor_get_type for the same file type: tensors llama.cpp never quantizes keep F32; the first
matching rule (by llama.cpp's tensor category and a condition) picks the type, else the default;
a row length the type cannot split falls back as llama.cpp's tensor_type_fallback does. Counters
that depend on order (the n-th attn_v-like tensor) follow llama.cpp's order: block, then name.
The MTP policy (mtp_policy.py) may then protect the draft head.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from . import expr
from .errors import ConfigError
from .manifest import TensorEntry
from .schema import QuantConfig

F32 = GGMLQuantizationType.F32
# substrings that make llama.cpp keep a tensor's type (tensor_allows_quantization, the parts that
# can occur in the architectures mtpmanifest writes)
NEVER_QUANTIZED = ("_norm.weight", "ffn_gate_inp.weight", "ssm_conv1d", "attn_rel_b.weight")
_CATEGORIES = (  # llama.cpp tensor_get_category: first substring wins
    ("attn_qkv.weight", "attn_qkv"), ("attn_kv_b.weight", "attn_kv_b"), ("attn_v.weight", "attn_v"),
    ("attn_k.weight", "attn_k"), ("attn_q.weight", "attn_q"), ("attn_output.weight", "attn_output"),
    ("ffn_up", "ffn_up"), ("ffn_gate", "ffn_gate"), ("ffn_down", "ffn_down"),
)
ATTN_V_LIKE = ("attn_v", "attn_qkv", "attn_kv_b")
# llama.cpp's tensor_type_fallback for 256-blocks types (rows that are not a multiple of 256)
FALLBACK = {
    GGMLQuantizationType.Q2_K: GGMLQuantizationType.Q4_0,
    GGMLQuantizationType.Q3_K: GGMLQuantizationType.Q4_0,
    GGMLQuantizationType.Q4_K: GGMLQuantizationType.Q5_0,
    GGMLQuantizationType.Q5_K: GGMLQuantizationType.Q5_1,
    GGMLQuantizationType.Q6_K: GGMLQuantizationType.Q8_0,
}
_BLOCK = re.compile(r"^blk\.(\d+)\.")


def ggml_type(name: str, where: str) -> GGMLQuantizationType:
    try:
        return GGMLQuantizationType[name]
    except KeyError:
        raise ConfigError(f"{where}: unknown GGML type '{name}'") from None


def n_bytes(ne: list[int] | tuple[int, ...], qtype: GGMLQuantizationType) -> int:
    block, type_size = GGML_QUANT_SIZES[qtype]
    return math.prod(ne) // block * type_size


def bits_per_weight(qtype: GGMLQuantizationType) -> float:
    block, type_size = GGML_QUANT_SIZES[qtype]
    return 8 * type_size / block


def is_quantized(qtype: GGMLQuantizationType) -> bool:
    return qtype not in (GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.BF16)


def allows_quantization(name: str, ne: list[int]) -> bool:
    """llama.cpp quantizes only >= 2-D tensors named *weight, and never norms or routers. Dimensions are
    counted as ggml_n_dims does: trailing 1s do not count (Qwen3-Next's ffn_gate_inp_shexp [h, 1] stays F32)."""
    n_dims = max((i + 1 for i, n in enumerate(ne) if n > 1), default=1)
    return n_dims >= 2 and name.endswith("weight") and not any(s in name for s in NEVER_QUANTIZED)


def category(name: str, tied_embeddings: bool) -> str:
    if name == "output.weight" or (tied_embeddings and name == "token_embd.weight"):
        return "output"
    if name == "token_embd.weight":
        return "token_embd"
    return next((cat for needle, cat in _CATEGORIES if needle in name), "other")


def use_more_bits(i_layer: int, n_layer: int) -> bool:
    return i_layer < n_layer // 8 or i_layer >= 7 * n_layer // 8 or (i_layer - n_layer // 8) % 3 == 2


def fallback(qtype: GGMLQuantizationType, ne0: int) -> tuple[GGMLQuantizationType, str]:
    """llama.cpp's tensor_type_fallback: a type whose block does not divide the row length."""
    block = GGML_QUANT_SIZES[qtype][0]
    if ne0 % block == 0:
        return qtype, ""
    if block <= 32:
        chosen = qtype
    elif qtype in FALLBACK:
        chosen = FALLBACK[qtype]
    else:
        raise ConfigError(f"no fallback for {qtype.name}: a row of {ne0} is not a multiple of {block}")
    if ne0 % GGML_QUANT_SIZES[chosen][0] != 0:
        chosen = GGMLQuantizationType.F16
    return chosen, f"; row of {ne0} not a multiple of {block}: {qtype.name} -> {chosen.name}"


@dataclass
class ModelFacts:
    """What llama.cpp's rules look at besides the tensor itself."""

    n_layer: int  # every block, MTP blocks included (llama.cpp's n_layer_all)
    n_expert: int
    n_gqa: int
    has_imatrix: bool = False


def llama_order(entries: list[TensorEntry]) -> list[TensorEntry]:
    """llama.cpp's weights_map order: tensors outside blocks first, then by block, then by name."""
    def key(entry: TensorEntry) -> tuple[int, str]:
        found = _BLOCK.match(entry.name)
        return (int(found.group(1)) if found else -1, entry.name)
    return sorted(entries, key=key)


def assign_types(entries: list[TensorEntry], quant: QuantConfig, facts: ModelFacts) -> None:
    """Set type, type_rule and n_bytes of every entry, as llama.cpp would for quant.file_type."""
    where = f"quant/{quant.name}.yaml"
    default = ggml_type(quant.default_type, f"{where} default_type")
    tied = not any(e.name == "output.weight" for e in entries)
    cats = {e.name: category(e.name, tied) for e in entries}
    n_attention_wv = sum(c in ATTN_V_LIKE for c in cats.values())
    counters = {"attn_wv": 0, "ffn_down": 0, "ffn_gate": 0, "ffn_up": 0}
    for entry in llama_order(entries):
        if not allows_quantization(entry.name, entry.shape):
            _set(entry, F32, "not quantized by llama.cpp (1-D, norm, router or bias): F32")
            continue
        cat = cats[entry.name]
        block_match = _BLOCK.match(entry.name)
        i_layer = int(block_match.group(1)) if block_match else -1
        if cat in counters and facts.n_expert <= 1:
            i_layer = counters[cat]  # dense models: llama.cpp counts these tensors in order
        values = {
            "ne0": entry.shape[0], "n_dims": len(entry.shape), "i_layer": i_layer, "n_layer": facts.n_layer,
            "more_bits": use_more_bits(i_layer, facts.n_layer),
            "i_attention_wv": counters["attn_wv"], "n_attention_wv": n_attention_wv,
            "attn_wv_more_bits": use_more_bits(counters["attn_wv"], n_attention_wv),
            "n_expert": facts.n_expert, "n_gqa": facts.n_gqa, "has_imatrix": facts.has_imatrix,
            "is_mtp": entry.role == "mtp",
        }
        qtype, reason = default, f"{quant.name} default {default.name}"
        if is_quantized(default):
            for index, rule in enumerate(quant.rules):
                if rule.category not in (None, cat) and not (rule.category == "attn_v_like" and cat in ATTN_V_LIKE):
                    continue
                if rule.name and not re.search(rule.name, entry.name):
                    continue
                if rule.where and not expr.evaluate(rule.where, values):
                    continue
                qtype = ggml_type(rule.type, f"{where} rules[{index}]")
                reason = f"{where} rules[{index}] ({rule.category or rule.name}{': ' + rule.where if rule.where else ''}): {qtype.name}"
                break
            qtype, note = fallback(qtype, entry.shape[0])
            reason += note
        if cat in ATTN_V_LIKE:
            counters["attn_wv"] += 1
        elif cat in counters:
            counters[cat] += 1
        _set(entry, qtype, reason)


# ggml's quantizers that use importance weights (Q8_0 ignores them)
IMPORTANCE_WEIGHTED = frozenset(GGMLQuantizationType[n] for n in ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q4_0", "Q4_1", "Q5_0", "Q5_1"))
# token lookups, not matrix products: no activations to weigh (llama-imatrix never has them)
EMBEDDINGS = ("token_embd.weight", "nextn.embed_tokens.weight")


def _set(entry: TensorEntry, qtype: GGMLQuantizationType, reason: str) -> None:
    entry.type = qtype.name
    entry.type_rule = reason
    entry.n_bytes = n_bytes(entry.shape, qtype)
    entry.wants_imatrix = qtype in IMPORTANCE_WEIGHTED and not entry.name.endswith(EMBEDDINGS)
