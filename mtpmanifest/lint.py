"""`stage=lint`: check every shipped (and user) YAML at once — jsonschema for structure, then
the names YAML refers to (gguf-py tensors, keys and architectures, registered ops, expressions)."""
from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Iterable

import gguf
import yaml

from . import expr
from .arch_select import AUTO, shadowing_errors
from .errors import ConfigError
from .manifest import schema_errors
from .metadata import key_template
from .mtp_recipe import lint_recipe
from .ops import op_registry
from .rules import compile_rule, tensor_kind
from .schema import TensorRule

NAMED_GROUPS = ("arch", "quant")  # files whose `name:` must equal the file name
SCHEMAS = {"arch": "arch.schema.json", "quant": "quant.schema.json", "calib": "calib.schema.json"}


def shipped_conf_dir() -> Path:
    return Path(str(resources.files("mtpmanifest.conf")))


def yaml_files(root: Path) -> list[Path]:
    return sorted(p for p in Path(root).rglob("*.yaml") if p.is_file())


def _contains_target(data: Any) -> bool:
    if isinstance(data, dict):
        return "_target_" in data or any(_contains_target(v) for v in data.values())
    if isinstance(data, list):
        return any(_contains_target(v) for v in data)
    return False


def _check_expressions(texts: Iterable[Any], where: str) -> list[str]:
    errors = []
    for text in texts:
        if isinstance(text, str):
            try:
                expr.parse(text)
            except ConfigError as exc:
                errors.append(f"{where}: {exc}")
    return errors


def _rule_errors(index: int, rule: dict[str, Any], ops, where: str) -> list[str]:
    """What compiling the rule finds: placeholders, op inputs/outputs, mtp_layer use."""
    try:
        compile_rule(index, TensorRule(**rule), ops, where)
    except (ConfigError, TypeError) as exc:
        return [str(exc)]
    return []


def _arch_semantics(data: dict[str, Any], where: str) -> list[str]:
    errors = []
    if data.get("gguf_arch") not in gguf.MODEL_ARCH.__members__:
        errors.append(f"{where}: gguf_arch '{data.get('gguf_arch')}' is not a gguf MODEL_ARCH name")
    ops = op_registry()
    for i, rule in enumerate(data.get("tensors") or []):
        at = f"{where}: tensors[{i}] ({rule.get('source')})"
        before = len(errors)
        for target in ([rule["target"]] if rule.get("target") else []) + list(rule.get("targets") or []):
            try:
                tensor_kind(target, at)
            except ConfigError as exc:
                errors.append(str(exc))
        if rule.get("op", "copy") not in ops:
            errors.append(f"{at}: unknown op '{rule.get('op')}'; known ops: {', '.join(sorted(ops))}")
        if len(errors) == before:
            errors += _rule_errors(i, rule, ops, where)
        texts = list(rule.get("shape") or []) + list((rule.get("params") or {}).values()) + [rule.get("where")]
        errors += _check_expressions(texts, at)
    for i, entry in enumerate(data.get("metadata") or []):
        at = f"{where}: metadata[{i}]"
        try:
            key_template(str(entry.get("key")), at)
        except ConfigError as exc:
            errors.append(str(exc))
        errors += _check_expressions([entry.get("value"), entry.get("when")], at)
    errors += _check_expressions((data.get("derived") or {}).values(), f"{where}: derived")
    errors += _check_expressions((data.get("layers") or {}).values(), f"{where}: layers")
    errors += _check_expressions([r.get("when") for r in data.get("reject") or []], f"{where}: reject")
    errors += lint_recipe(data.get("mtp_head"), where)
    return errors


def _quant_semantics(data: dict[str, Any], where: str) -> list[str]:
    errors = []
    if data.get("file_type") not in gguf.LlamaFileType.__members__:
        errors.append(f"{where}: file_type '{data.get('file_type')}' is not a gguf LlamaFileType name")
    types = [("default_type", data.get("default_type")), ("mtp_floor", data.get("mtp_floor"))]
    types += [(f"rules[{i}].type", r.get("type")) for i, r in enumerate(data.get("rules") or [])]
    types += [(f"mtp_pins[{i}]", str(p).rpartition("=")[2]) for i, p in enumerate(data.get("mtp_pins") or [])]
    for key, value in types:
        if value is not None and value not in gguf.GGMLQuantizationType.__members__:
            errors.append(f"{where}: {key} '{value}' is not a GGMLQuantizationType name")
    for i, rule in enumerate(data.get("rules") or []):
        errors += _check_expressions([rule.get("where")], f"{where}: rules[{i}]")
    return errors


def lint_file(path: Path, group: str) -> list[str]:
    where = str(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        return [f"{where}: cannot parse YAML: {str(exc).splitlines()[0]}"]
    if _contains_target(data):
        return [f"{where}: `_target_` is not allowed: YAML here is data, never code"]
    if group == "arch" and path.stem == AUTO:
        return [] if data == {"name": AUTO} else [f"{where}: arch/{AUTO}.yaml is reserved for arch=auto: it holds only `name: {AUTO}`"]
    errors = [f"{where}: {e}" for e in schema_errors(SCHEMAS[group], data)]
    if isinstance(data, dict) and group in NAMED_GROUPS:
        if data.get("name") != path.stem:
            errors.append(f"{where}: name '{data.get('name')}' must equal the file name '{path.stem}'")
        if not errors or group == "quant":
            errors += (_arch_semantics if group == "arch" else _quant_semantics)(data, where)
    return errors


def lint_conf(extra_dirs: Iterable[Path] = ()) -> list[str]:
    """Every error of every YAML under the shipped conf/ and `extra_dirs`, all at once."""
    extra_dirs = [Path(d) for d in extra_dirs]
    errors = shadowing_errors(shipped_conf_dir(), extra_dirs)
    for root in [shipped_conf_dir(), *extra_dirs]:
        for path in yaml_files(root):
            group = path.parent.name
            if group in SCHEMAS:
                errors += lint_file(path, group)
    return errors
