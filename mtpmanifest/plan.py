"""Compile (checkpoint headers, architecture rules, quant preset) into a checked Manifest.

Every source tensor is claimed by exactly one rule; every tensor a rule expects for a block is
present; shapes agree with config.json. No tensor data is read.
"""
from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any

from gguf import MODEL_ARCH, MODEL_ARCH_NAMES, MODEL_TENSOR, TENSOR_NAMES

from . import expr
from .errors import BadInputError, ConfigError
from .manifest import Manifest, TensorEntry
from .metadata import resolve_metadata
from .ops import op_registry
from .expectations import Expectations, candidate_blocks, check_match, expected_blocks
from .rules import CompiledRule, Match, compile_rules, match_all
from .schema import ArchConfig, QuantConfig
from .source import Checkpoint
from .mtp_policy import apply_mtp_policy
from .tensor_types import ModelFacts, assign_types

log = logging.getLogger(__name__)
MAX_LISTED = 20
MTP_CHOICES = ("keep", "drop", "absent_ok")
FOUND = "mtp_layers_found"  # name layers.mtp may use: MTP layers present in the checkpoint
# what llama.cpp needs of every MTP block it loads; without them creating its MTP context aborts
MTP_HEAD_TENSORS = (MODEL_TENSOR.NEXTN_EH_PROJ, MODEL_TENSOR.NEXTN_ENORM, MODEL_TENSOR.NEXTN_HNORM)


def mtp_head_names(block: int) -> list[str]:
    return [TENSOR_NAMES[kind].format(bid=block) + ".weight" for kind in MTP_HEAD_TENSORS]


def config_values(arch: ArchConfig, config: dict[str, Any]) -> dict[str, Any]:
    values = dict(config)
    for name, text in arch.derived.items():
        values[name] = expr.evaluate(text, values)
    return values


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:MAX_LISTED])
    return shown + (f" … and {len(names) - MAX_LISTED} more" if len(names) > MAX_LISTED else "")


def _layer_count(text: str, values: dict[str, Any], what: str) -> int:
    count = expr.evaluate(text, values)
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise BadInputError(f"config.json: {what} layer count {text} = {count!r} is not a non-negative integer")
    return count


def _role(rule: CompiledRule, block: int | None, n_trunk: int) -> str:
    if rule.rule.role != "auto":
        return rule.rule.role
    return "mtp" if block is not None and block >= n_trunk else "trunk"


def compile_manifest(arch: ArchConfig, quant: QuantConfig, ckpt: Checkpoint, *, mtp: str = "keep") -> Manifest:
    """mtp="drop" leaves every MTP tensor out (listed in `dropped`), as other converters do; verify fails such a
    file. A checkpoint whose config declares MTP layers but holds no MTP tensor (stripped by another tool) is
    planned without them, loudly; verify fails it unless mtp="absent_ok"."""
    where = f"arch/{arch.name}.yaml"
    if mtp not in MTP_CHOICES:
        raise ConfigError(f"mtp={mtp}: use one of {', '.join(MTP_CHOICES)}")
    if arch.gguf_arch not in MODEL_ARCH.__members__:
        raise ConfigError(f"{where}: gguf_arch '{arch.gguf_arch}' is not a gguf MODEL_ARCH name")
    ops = op_registry()
    values = config_values(arch, ckpt.config)
    for rejected in arch.reject:
        if expr.holds(rejected.when, values):
            raise BadInputError(f"{ckpt.path / 'config.json'}: {rejected.reason} ({rejected.when}): {where} does not "
                                "convert it, and a file without it would silently differ from the model")
    n_trunk = _layer_count(arch.layers.trunk, values, "trunk")
    rules = compile_rules(arch.tensors, ops, where, n_trunk)

    scales = ckpt.scale_names()
    names = [n for n in ckpt.tensors if n not in scales]
    claims, unclaimed, conflicts = match_all(names, rules)
    mtp_found = sorted({m.block for m in claims.values() if m.block is not None and m.block >= n_trunk})
    n_mtp = _layer_count(arch.layers.mtp, {**values, FOUND: len(mtp_found)}, "MTP")
    n_block = n_trunk + n_mtp
    if conflicts:
        name, patterns = next(iter(conflicts.items()))
        raise ConfigError(f"{where}: {len(conflicts)} tensor(s) claimed by several rules, e.g. {name} by {' and '.join(patterns)}")
    if unclaimed:
        raise BadInputError(f"{len(unclaimed)} source tensor(s) claimed by no rule of {where}: {_listing(unclaimed)}", unclaimed)

    expect = Expectations(values)
    groups: dict[tuple[int, int | None, str], list[Match]] = defaultdict(list)
    for m in claims.values():
        check_match(m, expect, n_trunk, n_block, ckpt)
        key_name = "" if m.rule.op.many_inputs else m.name
        groups[(m.rule.index, m.block, key_name)].append(m)

    stripped = bool(n_mtp and not mtp_found)
    if stripped:
        log.warning("config.json declares %d MTP layer(s) (%s) but the checkpoint has NO MTP tensors (blocks %d..%d): "
                    "it was stripped by another tool; the GGUF will have no MTP head%s", n_mtp, arch.layers.mtp,
                    n_trunk, n_block - 1, "" if mtp == "absent_ok" else " and verify will fail (mtp=absent_ok accepts it)")
    found = {(k[0], k[1]) for k in groups}
    missing = [
        rule.target_names(block)[0] if rule.kinds else rule.pattern
        for rule in rules
        for block in expected_blocks(rule, expect, n_trunk, n_block)
        if (rule.index, block) not in found and not (stripped and block is not None and block >= n_trunk)
    ]
    if missing:
        raise BadInputError(f"{len(missing)} tensor(s) expected by {where} and config.json are missing: {_listing(missing)}", missing)

    entries: list[TensorEntry] = []
    dropped: list[dict[str, str]] = []
    ordered = sorted(groups.items(), key=lambda kv: (kv[0][1] is not None, kv[0][1] or 0, kv[0][0], kv[0][2]))
    for (rule_index, block, _), matches in ordered:
        rule = rules[rule_index]
        if rule.rule.role == "dropped":
            dropped += [{"source": m.name, "reason": rule.rule.reason or "", "rule": rule.pattern} for m in matches]
            continue
        entries += _entries(rule, block, matches, values, n_trunk, ckpt)
    _check_unique_targets(entries, where)
    if mtp == "drop":
        entries, dropped = _drop_mtp(entries, dropped)

    optional_absent = [
        rule.target_names(block)[0]
        for rule in rules
        if rule.rule.optional and rule.kinds and (rule.mtp_only or rule.block_placeholder is None)
        for block in candidate_blocks(rule, n_trunk, 0 if stripped else n_block)
        if (rule.index, block) not in found
    ]
    for name in optional_absent:
        log.warning("optional tensor %s is absent from the checkpoint; llama.cpp falls back to the shared one", name)

    mtp_blocks = sorted({e.block for e in entries if e.role == "mtp" and e.block is not None})
    metadata = resolve_metadata(arch, values, n_trunk + len(mtp_blocks))
    assign_types(entries, quant, model_facts(metadata, n_trunk + len(mtp_blocks)))
    apply_mtp_policy(entries, quant)
    counts = {role: sum(e.role == role for e in entries) for role in ("trunk", "mtp", "shared")}
    written = {e.name for e in entries}
    for block in mtp_blocks:
        lacking = [name for name in mtp_head_names(block) if name not in written]
        if lacking:
            raise ConfigError(f"{where}: MTP block {block} is kept without {', '.join(lacking)}; "
                              "llama.cpp cannot run such a head: keep these tensors or drop the whole block")
    return Manifest(
        architecture=arch.name,
        gguf_arch=MODEL_ARCH_NAMES[MODEL_ARCH[arch.gguf_arch]],
        quant=quant.name,
        file_type=quant.file_type,
        source={
            "path": str(ckpt.path),
            "fingerprint": ckpt.fingerprint(),
            "n_tensors": len(ckpt.tensors),
            "bytes": sum(t.nbytes for t in ckpt.tensors.values()),
        },
        layers={"trunk": n_trunk, "mtp": n_mtp, "mtp_found": len(mtp_found), "mtp_kept": len(mtp_blocks),
                "mtp_blocks": mtp_blocks, "mtp_mode": mtp},
        counts=counts,
        bytes_in=sum(t.nbytes for t in ckpt.tensors.values()),
        bytes_out=sum(e.n_bytes for e in entries),
        vocab={"model": arch.vocab.model, "pre": arch.vocab.pre, "n_tokens": int(values.get("vocab_size", 0)) or 1},
        metadata=metadata,
        tensors=entries,
        dropped=dropped,
        optional_absent=optional_absent,
    )


def _check_unique_targets(entries: list[TensorEntry], where: str) -> None:
    first: dict[str, TensorEntry] = {}
    for entry in entries:
        if entry.name in first:
            raise ConfigError(f"{where}: {first[entry.name].sources[0]} and {entry.sources[0]} both become {entry.name} "
                              f"(rules {first[entry.name].rule} and {entry.rule}); restrict one with `where:` or {{mtp}}/{{nextn}}")
        first[entry.name] = entry


def _drop_mtp(entries: list[TensorEntry], dropped: list[dict[str, str]]) -> tuple[list[TensorEntry], list[dict[str, str]]]:
    gone = [e for e in entries if e.role == "mtp"]
    blocks = sorted({e.block for e in gone})
    if gone:
        log.warning("mtp=drop: the GGUF is written WITHOUT its %d MTP layer(s) (blocks %s, %d tensors): no speculative "
                    "decoding with this file, and verify will fail", len(blocks), ", ".join(map(str, blocks)), len(gone))
    sources = dict.fromkeys((s, e.rule) for e in gone for s in e.sources)
    reason = "mtp=drop: MTP layer dropped on request"
    return [e for e in entries if e.role != "mtp"], dropped + [{"source": s, "reason": reason, "rule": r} for s, r in sources]


def model_facts(metadata, n_layer: int) -> ModelFacts:
    """What llama.cpp's type rules read from the GGUF metadata the manifest will write."""
    # a per-block array counts as its first block's value (llama.cpp's quantizer reads n_gqa() of layer 0)
    by_suffix = {m.key.split(".", 1)[1]: m.value[0] if isinstance(m.value, list) and m.value else m.value
                 for m in metadata}
    n_head = by_suffix.get("attention.head_count", 1)
    n_head_kv = by_suffix.get("attention.head_count_kv", n_head) or n_head
    return ModelFacts(n_layer=n_layer, n_expert=max(1, by_suffix.get("expert_count", 1)), n_gqa=n_head // n_head_kv)


def _entries(rule: CompiledRule, block: int | None, matches: list[Match], values: dict[str, Any],
             n_trunk: int, ckpt: Checkpoint) -> list[TensorEntry]:
    params = {k: int(expr.evaluate(v, values)) for k, v in rule.rule.params.items()}
    if rule.op.many_inputs:
        matches = sorted(matches, key=lambda m: m.expert or 0)
        experts = [m.expert for m in matches]
        n_expert = params.get("n_expert", len(matches))
        if experts != list(range(n_expert)):
            absent = sorted(set(range(n_expert)) - set(experts))
            raise BadInputError(f"{rule.target_names(block)[0]}: experts {absent or experts} missing or out of range for {rule.pattern} (n_expert {n_expert})")
    sources = [m.name for m in matches]
    scale_names = [s for s in (ckpt.tensors[n].scale for n in sources) if s]
    try:
        shapes = rule.op.shapes([ckpt.tensors[n].shape for n in sources], params)
    except BadInputError as exc:
        raise BadInputError(f"{sources[0]}: {exc}") from None
    role = _role(rule, block, n_trunk)
    entries = []
    for index, (kind, name, shape) in enumerate(zip(rule.kinds, rule.target_names(block), shapes)):
        entries.append(TensorEntry(
            name=name, shape=list(reversed(shape)), type="", type_rule="", role=role, block=block,
            mtp_layer=block - n_trunk if role == "mtp" and block is not None else None,
            op=rule.op.name, params=params, output_index=index, sources=sources, scales=scale_names,
            rule=rule.pattern, n_bytes=0, module=rule.rule.module,
        ))  # type and n_bytes: assign_types, once every tensor is known
    return entries
