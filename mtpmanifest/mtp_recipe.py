"""The architecture's MTP recipe (`mtp_head:` in conf/arch/*.yaml) resolved for one MTP block: which
GGUF tensor plays each part of the head, with the fallbacks llama.cpp uses when a copy is absent."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from gguf import TENSOR_NAMES

from .errors import ConfigError
from .rules import tensor_kind
from .schema import MtpHeadConfig

PARTS = ("embedding", "embedding_norm", "hidden_norm", "projection", "final_norm", "head")
CONCAT_PARTS = ("embedding", "hidden")
HIDDEN_STATES = ("post_norm", "pre_norm")
CHAINS = ("block_output", "final_norm")


@dataclass(frozen=True)
class HeadTensors:
    """GGUF tensor names of one MTP layer's head, each part resolved to the first name present."""

    block: int
    embedding: str
    embedding_norm: str
    hidden_norm: str
    projection: str
    final_norm: str
    head: str

    def names(self) -> dict[str, str]:
        return {part: getattr(self, part) for part in PARTS}


def candidates(recipe: MtpHeadConfig, part: str, block: int) -> list[str]:
    """GGUF tensor names that may play `part` in MTP block `block`, in order of preference."""
    return [TENSOR_NAMES[tensor_kind(kind, f"mtp_head.tensors.{part}")].format(bid=block) + ".weight"
            for kind in getattr(recipe.tensors, part)]


def resolve(recipe: MtpHeadConfig, block: int, present: Callable[[str], bool]) -> HeadTensors:
    """The head of MTP block `block`, each part the first candidate for which present(name) holds."""
    chosen: dict[str, str] = {}
    for part in PARTS:
        names = candidates(recipe, part, block)
        found = [n for n in names if present(n)]
        if not found:
            raise ConfigError(f"MTP block {block}: none of {', '.join(names)} (mtp_head.tensors.{part}) is present")
        chosen[part] = found[0]
    return HeadTensors(block=block, **chosen)


def lint_recipe(data: Any, where: str) -> list[str]:
    """Name checks jsonschema cannot do: every tensor kind is a gguf MODEL_TENSOR with a GGUF name."""
    if not isinstance(data, dict):
        return []
    errors = []
    for part, kinds in (data.get("tensors") or {}).items():
        for kind in kinds or []:
            try:
                tensor_kind(str(kind), f"{where}: mtp_head.tensors.{part}")
            except ConfigError as exc:
                errors.append(str(exc))
    if sorted(data.get("concat") or []) != sorted(CONCAT_PARTS):
        errors.append(f"{where}: mtp_head.concat must name embedding and hidden once each, got {data.get('concat')}")
    return errors


def check_recipe(recipe: MtpHeadConfig, where: str) -> None:
    """What lint reports, raised at run time (a recipe given on the command line skips lint)."""
    errors = lint_recipe({"tensors": {p: getattr(recipe.tensors, p) for p in PARTS}, "concat": list(recipe.concat)}, where)
    if recipe.hidden not in HIDDEN_STATES:
        errors.append(f"{where}: mtp_head.hidden '{recipe.hidden}' is not one of {', '.join(HIDDEN_STATES)}")
    if recipe.chain not in CHAINS:
        errors.append(f"{where}: mtp_head.chain '{recipe.chain}' is not one of {', '.join(CHAINS)}")
    if recipe.token_shift < 1:
        errors.append(f"{where}: mtp_head.token_shift {recipe.token_shift} must be at least 1")
    if errors:
        raise ConfigError(errors[0], errors)
