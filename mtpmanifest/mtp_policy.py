"""The MTP policy a preset declares (quant.mtp), applied after llama.cpp's own type choice.

`inherit` leaves llama.cpp's types (identical to llama_model_quantize). `protect` keeps the draft
head as good as the trunk's: the head's copy of the output head takes output.weight's type, its
embedding copy takes token_embd.weight's, and nextn.eh_proj is never below `mtp_floor`. In both
modes `mtp_pins` ("REGEX=TYPE") pin MTP tensors explicitly.
"""
from __future__ import annotations

import re

from .errors import ConfigError
from .manifest import TensorEntry
from .schema import QuantConfig
from .tensor_types import _set, bits_per_weight, fallback, ggml_type

POLICIES = ("inherit", "protect")
COPIES = {"nextn.shared_head_head.weight": "output.weight", "nextn.embed_tokens.weight": "token_embd.weight"}


def apply_mtp_policy(entries: list[TensorEntry], quant: QuantConfig) -> None:
    where = f"quant/{quant.name}.yaml"
    if quant.mtp not in POLICIES:
        raise ConfigError(f"quant.mtp={quant.mtp}: unknown MTP policy; use one of {', '.join(POLICIES)}")
    by_name = {e.name: e for e in entries}
    pins = [parse_pin(pin, where) for pin in quant.mtp_pins]
    for entry in (e for e in entries if e.role == "mtp"):
        if quant.mtp == "protect":
            _protect(entry, by_name, quant, where)
        for pattern, type_name in pins:
            if re.search(pattern, entry.name):
                qtype, note = fallback(ggml_type(type_name, f"{where} mtp_pins"), entry.shape[0])
                _set(entry, qtype, f"MTP pin {pattern!r}: {type_name}{note}")
                break


def parse_pin(pin: str, where: str) -> tuple[str, str]:
    pattern, sep, type_name = pin.rpartition("=")
    if not sep or not pattern:
        raise ConfigError(f"{where} mtp_pins: '{pin}' is not REGEX=TYPE")
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"{where} mtp_pins: '{pattern}' is not a regular expression: {exc}") from None
    return pattern, type_name


def _protect(entry: TensorEntry, by_name: dict[str, TensorEntry], quant: QuantConfig, where: str) -> None:
    for suffix, trunk_name in COPIES.items():
        trunk = by_name.get(trunk_name)
        if entry.name.endswith(suffix) and trunk is not None and trunk.type != entry.type:
            _set(entry, ggml_type(trunk.type, trunk_name), f"MTP protect: copy of {trunk_name} takes its type {trunk.type}")
            return
    if entry.name.endswith("nextn.eh_proj.weight") and quant.mtp_floor:
        floor = ggml_type(quant.mtp_floor, f"{where} mtp_floor")
        current = ggml_type(entry.type, entry.name)
        if bits_per_weight(current) < bits_per_weight(floor):
            qtype, note = fallback(floor, entry.shape[0])
            _set(entry, qtype, f"MTP protect: eh_proj never below {floor.name}{note}")
