"""Compile tensor rules (`model.layers.{bid}.eh_proj.weight`) and match source names against them.

Placeholders: {bid} any decoder block (trunk or MTP), {mtp} an MTP block only, {xid} an expert
index. Each compiled rule knows its GGUF target(s) from gguf-py's TENSOR_NAMES.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from gguf import MODEL_TENSOR, TENSOR_NAMES

from .errors import ConfigError
from .ops import Op
from .schema import TensorRule

PLACEHOLDERS = ("bid", "mtp", "xid")
_PLACEHOLDER = re.compile(r"\{(\w+)\}")


@dataclass(frozen=True)
class Match:
    rule: "CompiledRule"
    name: str
    block: int | None
    expert: int | None


@dataclass(frozen=True)
class CompiledRule:
    index: int
    rule: TensorRule
    regex: re.Pattern[str]
    literal_tail: str  # text after the last placeholder: a cheap filter before the regex
    kinds: tuple[MODEL_TENSOR, ...]
    op: Op
    block_placeholder: str | None  # "bid", "mtp" or None

    @property
    def pattern(self) -> str:
        return self.rule.source

    def match(self, name: str) -> Match | None:
        if not name.endswith(self.literal_tail):
            return None
        found = self.regex.fullmatch(name)
        if found is None:
            return None
        groups = found.groupdict()
        block = groups.get("bid") or groups.get("mtp")
        expert = groups.get("xid")
        return Match(self, name, int(block) if block is not None else None, int(expert) if expert is not None else None)

    def target_names(self, block: int | None) -> list[str]:
        suffix = self.rule.suffix
        return [TENSOR_NAMES[kind].format(bid=block) + "." + suffix for kind in self.kinds]


def tensor_kind(name: str, where: str) -> MODEL_TENSOR:
    try:
        kind = MODEL_TENSOR[name]
    except KeyError:
        raise ConfigError(f"{where}: '{name}' is not a gguf MODEL_TENSOR name") from None
    if kind not in TENSOR_NAMES:
        raise ConfigError(f"{where}: MODEL_TENSOR.{name} has no GGUF name in gguf-py")
    return kind


def compile_rule(index: int, rule: TensorRule, ops: dict[str, Op], where: str) -> CompiledRule:
    where = f"{where} tensors[{index}] ({rule.source})"
    names = _PLACEHOLDER.findall(rule.source)
    unknown = [n for n in names if n not in PLACEHOLDERS]
    if unknown:
        raise ConfigError(f"{where}: unknown placeholder {{{unknown[0]}}}; use one of {{bid}}, {{mtp}}, {{xid}}")
    if len(set(names)) != len(names) or ("bid" in names and "mtp" in names):
        raise ConfigError(f"{where}: a placeholder may appear once, and {{bid}} and {{mtp}} not together")
    block_placeholder = next((n for n in names if n in ("bid", "mtp")), None)
    if rule.op not in ops:
        raise ConfigError(f"{where}: unknown op '{rule.op}'; known ops: {', '.join(sorted(ops))}")
    op = ops[rule.op]
    if op.many_inputs != ("xid" in names):
        raise ConfigError(f"{where}: op '{rule.op}' {'needs' if op.many_inputs else 'does not take'} an {{xid}} placeholder")
    if rule.role == "dropped":
        kinds: tuple[MODEL_TENSOR, ...] = ()
    else:
        target_names = rule.targets or ([rule.target] if rule.target else [])
        kinds = tuple(tensor_kind(t, where) for t in target_names)
        if len(kinds) != op.n_outputs:
            raise ConfigError(f"{where}: op '{rule.op}' has {op.n_outputs} output(s) but {len(kinds)} target(s) are named")
        if block_placeholder is None and rule.role == "auto":
            raise ConfigError(f"{where}: a tensor outside decoder blocks needs an explicit role (trunk, mtp or shared)")
    missing = [p for p in op.params if p not in rule.params]
    if missing:
        raise ConfigError(f"{where}: op '{rule.op}' needs params {missing}")
    regex = re.compile(
        "".join(
            f"(?P<{part}>\\d+)" if i % 2 else re.escape(part)
            for i, part in enumerate(_PLACEHOLDER.split(rule.source))
        )
    )
    literal_tail = _PLACEHOLDER.split(rule.source)[-1]
    return CompiledRule(index, rule, regex, literal_tail, kinds, op, block_placeholder)


def compile_rules(rules: list[TensorRule], ops: dict[str, Op], where: str) -> list[CompiledRule]:
    compiled = [compile_rule(i, r, ops, where) for i, r in enumerate(rules)]
    seen: dict[str, int] = {}
    for c in compiled:
        if c.rule.source in seen:
            raise ConfigError(f"{where}: tensors[{seen[c.rule.source]}] and tensors[{c.index}] have the same source pattern {c.rule.source}")
        seen[c.rule.source] = c.index
    return compiled


def match_all(names: list[str], rules: list[CompiledRule]) -> tuple[dict[str, Match], list[str], dict[str, list[str]]]:
    """(claims, unclaimed names, names claimed by several rules -> their patterns)."""
    by_tail: dict[str, list[CompiledRule]] = {}
    for rule in rules:
        by_tail.setdefault(rule.literal_tail, []).append(rule)
    tails = sorted(by_tail, key=len, reverse=True)
    claims: dict[str, Match] = {}
    unclaimed: list[str] = []
    conflicts: dict[str, list[str]] = {}
    for name in names:
        found = [m for tail in tails if name.endswith(tail) for r in by_tail[tail] if (m := r.match(name))]
        if not found:
            unclaimed.append(name)
        elif len(found) > 1:
            conflicts[name] = [m.rule.pattern for m in found]
        else:
            claims[name] = found[0]
    return claims, unclaimed, conflicts
