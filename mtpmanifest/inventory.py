"""Inventories of a safetensors checkpoint or any GGUF: every tensor with its role, the MTP tensors
per layer, and a diff between two inventories (source vs output, or two GGUFs)."""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import expr
from .errors import BadInputError
from .ops import op_registry
from .plan import config_values
from .rules import compile_rules, match_all
from .schema import ArchConfig
from .source import Checkpoint
from .verify import field_value, open_gguf

_BLOCK = re.compile(r"^blk\.(\d+)\.")


@dataclass
class Inventory:
    path: str
    kind: str  # "gguf" or "safetensors"
    architecture: str
    tensors: list[dict[str, Any]]  # name, shape, type, role, mtp_layer, gguf_names
    notes: list[str]

    def mtp_tensors(self) -> list[dict[str, Any]]:
        return [t for t in self.tensors if t["role"] == "mtp"]

    def totals(self) -> dict[str, int]:
        return dict(sorted(Counter(t["role"] for t in self.tensors).items()))

    def per_mtp_layer(self) -> dict[int, int]:
        counts = Counter(t["mtp_layer"] for t in self.mtp_tensors())
        return dict(sorted(counts.items(), key=lambda kv: -1 if kv[0] is None else kv[0]))

    def gguf_names(self) -> dict[str, dict[str, Any]]:
        return {g: t for t in self.tensors for g in t["gguf_names"]}


def gguf_inventory(path: Path) -> Inventory:
    reader = open_gguf(path)
    arch = field_value(reader, "general.architecture") or "?"
    blocks = field_value(reader, f"{arch}.block_count")
    nextn = field_value(reader, f"{arch}.nextn_predict_layers") or 0
    n_trunk = (blocks - nextn) if blocks is not None else None
    notes = []
    tensors = []
    for t in reader.tensors:
        block_match = _BLOCK.match(t.name)
        block = int(block_match.group(1)) if block_match else None
        if block is None:
            role, mtp_layer = "shared", None
        elif n_trunk is not None and block >= n_trunk:
            role, mtp_layer = "mtp", block - n_trunk
        elif ".nextn." in t.name:  # an MTP tensor the file's metadata does not account for
            role, mtp_layer = "mtp", None
        else:
            role, mtp_layer = "trunk", None
        tensors.append({"name": t.name, "shape": [int(n) for n in t.shape], "type": t.tensor_type.name,
                        "role": role, "mtp_layer": mtp_layer, "gguf_names": [t.name]})
    if any(".nextn." in t["name"] for t in tensors) and not nextn:
        notes.append(f"nextn.* tensors present but no {arch}.nextn_predict_layers key: llama.cpp will not load them as an MTP head")
    if nextn and not any(".nextn." in t["name"] for t in tensors):
        notes.append(f"{arch}.nextn_predict_layers = {nextn} but no nextn.* tensors: the MTP head is gone")
    return Inventory(str(path), "gguf", arch, tensors, notes)


def checkpoint_inventory(path: Path, arch: ArchConfig) -> Inventory:
    """Roles come from the architecture's rules; tensors no rule claims are listed as 'unclaimed'."""
    ckpt = Checkpoint.open(path)
    values = config_values(arch, ckpt.config)
    try:  # an expression over config.json, evaluated as plan.py does (not necessarily a bare key)
        n_trunk = int(expr.evaluate(arch.layers.trunk, values))
    except expr.MissingKey:
        n_trunk = 0
    rules = compile_rules(arch.tensors, op_registry(), f"arch/{arch.name}.yaml")
    scales = ckpt.scale_names()
    claims, unclaimed, conflicts = match_all([n for n in ckpt.tensors if n not in scales], rules)
    tensors = []
    for name, t in ckpt.tensors.items():
        m = claims.get(name)
        if name in scales:
            role, mtp_layer, gguf_names = "scale", None, []
        elif m is None:
            role, mtp_layer, gguf_names = "unclaimed", None, []
        else:
            role = m.rule.rule.role
            if role == "auto":
                role = "mtp" if m.block is not None and m.block >= n_trunk else "trunk"
            mtp_layer = m.block - n_trunk if role == "mtp" and m.block is not None else None
            gguf_names = [] if role == "dropped" else m.rule.target_names(m.block)
        tensors.append({"name": name, "shape": list(t.shape), "type": t.dtype, "role": role,
                        "mtp_layer": mtp_layer, "gguf_names": gguf_names})
    notes = [f"{len(unclaimed)} tensor(s) claimed by no rule of arch/{arch.name}.yaml"] if unclaimed else []
    notes += [f"{name} claimed by several rules" for name in conflicts]
    return Inventory(str(path), "safetensors", arch.name, tensors, notes)


def inventory_of(path: Path, arch: ArchConfig) -> Inventory:
    path = Path(path)
    if path.is_file() and path.suffix == ".gguf":
        return gguf_inventory(path)
    if path.is_dir():
        return checkpoint_inventory(path, arch)
    raise BadInputError(f"{path}: neither a .gguf file nor a checkpoint directory")


def diff(a: Inventory, b: Inventory) -> list[str]:
    """Differences by GGUF tensor name: what one side has that the other lacks, and shape changes."""
    left, right = a.gguf_names(), b.gguf_names()
    lines = []
    for name in sorted(set(left) - set(right)):
        lines.append(f"only in {Path(a.path).name}: {name} ({left[name]['role']})")
    for name in sorted(set(right) - set(left)):
        lines.append(f"only in {Path(b.path).name}: {name} ({right[name]['role']})")
    if a.kind == b.kind == "gguf":
        for name in sorted(set(left) & set(right)):
            x, y = left[name], right[name]
            if x["shape"] != y["shape"] or x["type"] != y["type"]:
                lines.append(f"changed: {name} ({x['role']}) {x['type']}{x['shape']} -> {y['type']}{y['shape']}")
    mtp_a = {g for g, t in left.items() if t["role"] == "mtp"}
    mtp_b = {g for g, t in right.items() if t["role"] == "mtp"}
    if mtp_a != mtp_b:
        lines.append(f"MTP tensors (GGUF names): {len(mtp_a)} in {Path(a.path).name}, {len(mtp_b)} in {Path(b.path).name}")
    return lines
