"""Compile tensor rules (`model.layers.{bid}.eh_proj.weight`) and match source names against them.

Placeholders: {bid} any decoder block (trunk or MTP), {mtp} an MTP block only (its absolute block
number), {nextn} the index k of an MTP layer that the family numbers from 0 (block n_trunk + k), {xid}
an expert index. A rule without a block placeholder but with `mtp_layer: k` claims a tensor of MTP
layer k (Qwen3-Next's `mtp.fc`). Each compiled rule knows its GGUF target(s) from gguf-py's TENSOR_NAMES.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from gguf import MODEL_TENSOR, TENSOR_NAMES

from .errors import ConfigError
from .ops import Op
from .schema import TensorRule

PLACEHOLDERS = ("bid", "mtp", "nextn", "xid")
BLOCK_PLACEHOLDERS = ("bid", "mtp", "nextn")
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
    block_placeholder: str | None  # "bid", "mtp", "nextn" or None
    n_trunk: int  # block of MTP layer 0, for {nextn} and mtp_layer

    @property
    def mtp_only(self) -> bool:
        """Claims MTP tensors only (never a trunk block)."""
        return self.block_placeholder in ("mtp", "nextn") or self.rule.mtp_layer is not None

    @property
    def fixed_block(self) -> int | None:
        return None if self.rule.mtp_layer is None else self.n_trunk + self.rule.mtp_layer

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
        expert = groups.get("xid")
        if "nextn" in groups:
            block: int | None = self.n_trunk + int(groups["nextn"])
        elif "bid" in groups or "mtp" in groups:
            block = int(groups.get("bid") or groups["mtp"])
        else:
            block = self.fixed_block
        return Match(self, name, block, int(expert) if expert is not None else None)

    def target_names(self, block: int | None) -> list[str]:
        suffix = self.rule.suffix
        tail = "." + suffix if suffix else ""  # "": a GGUF name without suffix (qwen3next's blk.N.ssm_a)
        return [TENSOR_NAMES[kind].format(bid=block) + tail for kind in self.kinds]


def tensor_kind(name: str, where: str) -> MODEL_TENSOR:
    try:
        kind = MODEL_TENSOR[name]
    except KeyError:
        raise ConfigError(f"{where}: '{name}' is not a gguf MODEL_TENSOR name") from None
    if kind not in TENSOR_NAMES:
        raise ConfigError(f"{where}: MODEL_TENSOR.{name} has no GGUF name in gguf-py")
    return kind


def compile_rule(index: int, rule: TensorRule, ops: dict[str, Op], where: str, n_trunk: int = 0) -> CompiledRule:
    where = f"{where} tensors[{index}] ({rule.source})"
    names = _PLACEHOLDER.findall(rule.source)
    unknown = [n for n in names if n not in PLACEHOLDERS]
    if unknown:
        raise ConfigError(f"{where}: unknown placeholder {{{unknown[0]}}}; use one of {{bid}}, {{mtp}}, {{nextn}}, {{xid}}")
    blocks = [n for n in names if n in BLOCK_PLACEHOLDERS]
    if len(set(names)) != len(names) or len(blocks) > 1:
        raise ConfigError(f"{where}: a placeholder may appear once, and only one of {{bid}}, {{mtp}}, {{nextn}}")
    block_placeholder = blocks[0] if blocks else None
    if rule.mtp_layer is not None and (block_placeholder or rule.mtp_layer < 0 or rule.role not in ("auto", "mtp")):
        raise ConfigError(f"{where}: mtp_layer {rule.mtp_layer} needs a source without a block placeholder, "
                          "a layer index >= 0 and role auto or mtp")
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
        if block_placeholder is None and rule.mtp_layer is None and rule.role == "auto":
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
    return CompiledRule(index, rule, regex, literal_tail, kinds, op, block_placeholder, n_trunk)


def compile_rules(rules: list[TensorRule], ops: dict[str, Op], where: str, n_trunk: int = 0) -> list[CompiledRule]:
    compiled = [compile_rule(i, r, ops, where, n_trunk) for i, r in enumerate(rules)]
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
