"""What config.json implies for the tensors rules claim: shapes, which blocks have which tensor, and the
checks a matched tensor must pass (block range, MTP-only rules, `where:`, shape, FP8 declared)."""
from __future__ import annotations

from typing import Any

from . import expr
from .errors import BadInputError
from .rules import CompiledRule, Match
from .source import Checkpoint


class Expectations:
    """What config.json implies for a rule: its source shape and the blocks that have it (cached,
    since a full-size checkpoint asks for the same few answers ~100k times)."""

    def __init__(self, values: dict[str, Any]):
        self.values = values
        self._shapes: dict[tuple[int, int | None], tuple[int, ...]] = {}
        self._blocks: dict[tuple[int, int], bool] = {}

    def shape(self, rule: CompiledRule, block: int | None = None) -> tuple[int, ...]:
        """The rule's source shape; `bid` is bound in a block (shapes may differ per block: Step-3.5's
        sliding-window blocks have more heads)."""
        key = (rule.index, block)
        if key not in self._shapes:
            values = self.values if block is None else {**self.values, "bid": block}
            self._shapes[key] = tuple(int(expr.evaluate(d, values)) for d in rule.rule.shape)
        return self._shapes[key]

    def in_block(self, rule: CompiledRule, block: int) -> bool:
        key = (rule.index, block)
        if key not in self._blocks:
            self._blocks[key] = not rule.rule.where or bool(expr.evaluate(rule.rule.where, {**self.values, "bid": block}))
        return self._blocks[key]


def check_match(m: Match, expect: Expectations, n_trunk: int, n_block: int, ckpt: Checkpoint) -> None:
    rule = m.rule.rule
    if m.block is not None:
        if m.block >= n_block:
            raise BadInputError(f"{m.name}: block {m.block} is beyond the {n_trunk} trunk + {n_block - n_trunk} MTP layers config.json declares")
        if m.rule.mtp_only and m.block < n_trunk:
            raise BadInputError(f"{m.name}: MTP tensor in trunk block {m.block} (num trunk layers {n_trunk})")
        if not expect.in_block(m.rule, m.block):
            raise BadInputError(f"{m.name}: not expected in block {m.block} by config.json ({rule.where} is false)")
    tensor = ckpt.tensors[m.name]
    values = expect.values
    if rule.shape:
        expected = expect.shape(m.rule, m.block)
        if tensor.shape != expected:
            raise BadInputError(
                f"{m.name}: shape {list(tensor.shape)} contradicts config.json: expected [{', '.join(rule.shape)}] = {list(expected)}"
            )
    if tensor.dtype == "F8_E4M3" and values.get("quantization_config", {}).get("quant_method") != "fp8":
        raise BadInputError(f"{m.name}: dtype F8_E4M3 but config.json declares no quantization_config with quant_method fp8")


def expected_blocks(rule: CompiledRule, expect: Expectations, n_trunk: int, n_block: int) -> list[int | None]:
    """Blocks in which `rule` must find a tensor (None: a tensor outside blocks)."""
    if rule.rule.optional or rule.rule.role == "dropped":
        return []
    return [b for b in candidate_blocks(rule, n_trunk, n_block) if b is None or expect.in_block(rule, b)]


def candidate_blocks(rule: CompiledRule, n_trunk: int, n_block: int) -> list[int | None]:
    """Blocks a rule can claim a tensor in (None: a tensor outside blocks)."""
    if rule.fixed_block is not None:
        return [rule.fixed_block] if rule.fixed_block < n_block else []
    if rule.block_placeholder is None:
        return [None]
    return list(range(n_trunk, n_block) if rule.mtp_only else range(n_block))
