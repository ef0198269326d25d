"""GGUF key/value metadata from config.json through an architecture's `metadata:` entries."""
from __future__ import annotations

from typing import Any, Mapping

import re

import gguf

from . import expr
from .errors import BadInputError, ConfigError
from .manifest import MetadataValue
from .schema import ArchConfig, MetadataEntry

WRITERS = {
    "uint32": gguf.GGUFValueType.UINT32,
    "int32": gguf.GGUFValueType.INT32,
    "float32": gguf.GGUFValueType.FLOAT32,
    "bool": gguf.GGUFValueType.BOOL,
    "string": gguf.GGUFValueType.STRING,
}


def _known_templates() -> set[str]:
    return {v for group in vars(gguf.Keys).values() if isinstance(group, type)
            for v in vars(group).values() if isinstance(v, str)}


def key_template(path: str, where: str) -> str:
    """`LLM.BLOCK_COUNT` -> gguf.Keys.LLM.BLOCK_COUNT ("{arch}.block_count"). A key newer than the installed
    gguf-py is spelled out as "{arch}.<name>" — only while gguf.Keys has no constant for it."""
    if path.startswith("{arch}."):
        if not re.fullmatch(r"\{arch\}(\.[a-z0-9_]+)+", path):
            raise ConfigError(f"{where}: '{path}' is not a GGUF key ({{arch}}.lower_case.names)")
        if path in _known_templates():
            raise ConfigError(f"{where}: '{path}' is a gguf.Keys constant: use its name (e.g. LLM.BLOCK_COUNT)")
        return path
    group, _, name = path.partition(".")
    template = getattr(getattr(gguf.Keys, group, None), name, None)
    if not isinstance(template, str):
        raise ConfigError(f"{where}: '{path}' is not a gguf.Keys constant")
    return template


def _coerce(value: Any, type_name: str, where: str) -> Any:
    try:
        if type_name in ("uint32", "int32"):
            if isinstance(value, bool) or int(value) != value:
                raise ValueError
            value = int(value)
            if type_name == "uint32" and not 0 <= value < 2**32:
                raise ValueError
            return value
        if type_name == "float32":
            return float(value)
        if type_name == "bool":
            if not isinstance(value, bool):
                raise ValueError
            return value
        return str(value)
    except (TypeError, ValueError):
        raise BadInputError(f"{where}: value {value!r} is not a valid {type_name}") from None


def _raw(entry: MetadataEntry, values: Mapping[str, Any], key: str) -> Any:
    if entry.value is None:
        raw = entry.const
    else:
        try:
            raw = expr.evaluate(entry.value, values)
        except expr.MissingKey as missing:
            if entry.default is None:
                raise BadInputError(f"config.json: missing key '{missing.key}' (needed for GGUF key {key})") from None
            raw = entry.default
    if entry.map:
        if str(raw) not in entry.map:
            raise BadInputError(f"config.json: {entry.value} = {raw!r} is not one of {sorted(entry.map)} (GGUF key {key})")
        raw = entry.map[str(raw)]
    return raw


def resolve_entry(entry: MetadataEntry, values: Mapping[str, Any], arch_name: str, where: str,
                  n_block: int | None = None) -> MetadataValue | None:
    """One key; per_block entries become an array over blocks 0..n_block-1 (`bid` bound, `default` where a
    key or list entry is missing, as llama.cpp's converter pads the per-layer lists it is given)."""
    key = key_template(entry.key, where).format(arch=arch_name)
    if entry.when is not None:
        try:
            if not expr.evaluate(entry.when, values):
                return None
        except expr.MissingKey:
            return None
    if entry.per_block:
        if n_block is None:
            raise ConfigError(f"{where}: per_block needs the block count")
        raws = [_raw(entry, {**values, "bid": bid}, key) for bid in range(n_block)]
        return MetadataValue(key=key, type=entry.type, value=[_coerce(r, entry.type, f"GGUF key {key}") for r in raws])
    return MetadataValue(key=key, type=entry.type, value=_coerce(_raw(entry, values, key), entry.type, f"GGUF key {key}"))


def resolve_metadata(arch: ArchConfig, values: Mapping[str, Any], n_block: int | None = None) -> list[MetadataValue]:
    arch_name = gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH[arch.gguf_arch]]
    resolved = []
    for i, entry in enumerate(arch.metadata):
        if entry.type not in WRITERS:
            raise ConfigError(f"arch/{arch.name}.yaml metadata[{i}]: unknown type '{entry.type}'")
        item = resolve_entry(entry, values, arch_name, f"arch/{arch.name}.yaml metadata[{i}] ({entry.key})", n_block)
        if item is not None:
            resolved.append(item)
    keys = [m.key for m in resolved]
    duplicates = sorted({k for k in keys if keys.count(k) > 1})
    if duplicates:
        raise ConfigError(f"arch/{arch.name}.yaml: GGUF key written twice: {duplicates[0]}")
    return resolved


def add_to_writer(writer: gguf.GGUFWriter, items: list[MetadataValue]) -> None:
    for item in items:
        if isinstance(item.value, list):
            writer.add_key_value(item.key, item.value, gguf.GGUFValueType.ARRAY, sub_type=WRITERS[item.type])
        else:
            writer.add_key_value(item.key, item.value, WRITERS[item.type])
