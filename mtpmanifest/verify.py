"""Verify a written GGUF against its manifest: read it back into a tensor manifest (tensors.json),
schema-check it, diff names/shapes/types/layer counts, and compare every tensor numerically with
its source after the same op."""
from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from tqdm import tqdm

from .convert import TensorSource, row_ranges
from .errors import BadInputError
from .manifest import Manifest, validate
from .plan import mtp_head_names
from .source import Checkpoint

log = logging.getLogger(__name__)

# Relative RMSE a tensor may show after a round trip through its GGUF type. F32 keeps every
# source value exactly; F16/BF16 round to 11/8 significant bits (RMSE ~ 2^-12 / 2^-9 of the
# values); Q8_0 rounds to 1/127 of each 32-block's max (~0.5% of a Gaussian's RMS).
REL_RMSE_BOUND = {"F32": 1e-7, "F16": 1e-3, "BF16": 8e-3, "Q8_0": 2e-2}
# Lower-bit types: about twice what each shows on Gaussian weights (measured on the demo model:
# Q6_K 0.018, Q5_K/Q5_1 0.035, Q5_0 0.04, Q4_K 0.072, Q4_0 0.09, Q3_K 0.15, Q2_K 0.30), so a
# corrupted tensor (relative RMSE ~1) always fails while an honest low-bit one passes.
REL_RMSE_BOUND.update({"Q6_K": 0.04, "Q5_K": 0.08, "Q5_1": 0.08, "Q5_0": 0.08, "Q4_K": 0.15, "Q4_1": 0.15,
                       "Q4_0": 0.18, "Q3_K": 0.3, "Q2_K": 0.55})
DEFAULT_BOUND = 0.25


@dataclass
class VerifyResult:
    tensor_manifest: dict[str, Any]
    differences: list[str] = field(default_factory=list)
    numeric: list[dict[str, Any]] = field(default_factory=list)
    acceptance: dict[str, Any] | None = None  # report.json's mtp_acceptance (mtpmanifest.accept_stage)
    acceptance_failures: list[str] = field(default_factory=list)

    @property
    def failures(self) -> list[str]:
        bad = [f"{n['name']}: relative RMSE {n['rel_rmse']:.3g} > bound {n['bound']:.3g} ({n['type']})" for n in self.numeric if not n["ok"]]
        return self.differences + bad + self.acceptance_failures

    @property
    def ok(self) -> bool:
        return not self.failures


def open_gguf(path: Path) -> gguf.GGUFReader:
    try:
        return gguf.GGUFReader(path)
    except FileNotFoundError:
        raise BadInputError(f"{path}: no such GGUF file") from None
    except (ValueError, OSError, IndexError) as exc:
        raise BadInputError(f"{path}: not a readable GGUF file: {exc}") from None


def field_value(reader: gguf.GGUFReader, key: str) -> Any:
    f = reader.get_field(key)
    return None if f is None else f.contents()


def tensor_manifest(path: Path, reader: gguf.GGUFReader | None = None, *, hashes: bool = True) -> dict[str, Any]:
    """The tensors.json document for a GGUF file (shapes in GGML order)."""
    reader = reader or open_gguf(path)
    arch = field_value(reader, "general.architecture") or ""
    tensors = []
    for t in reader.tensors:
        digest = hashlib.sha256(memoryview(np.ascontiguousarray(t.data)).cast("B")).hexdigest() if hashes else "0" * 64
        tensors.append({
            "name": t.name,
            "shape": [int(n) for n in t.shape],
            "type": t.tensor_type.name,
            "n_bytes": int(t.n_bytes),
            "sha256": digest,
        })
    return {
        "file": str(path),
        "architecture": arch,
        "block_count": field_value(reader, gguf.Keys.LLM.BLOCK_COUNT.format(arch=arch)),
        "nextn_predict_layers": field_value(reader, gguf.Keys.LLM.NEXTN_PREDICT_LAYERS.format(arch=arch)),
        "n_tensors": len(tensors),
        "tensors": tensors,
    }


def structural_differences(manifest: Manifest, tm: dict[str, Any], reader: gguf.GGUFReader) -> list[str]:
    diffs = []
    expected_blocks = manifest.layers["trunk"] + manifest.layers["mtp_kept"]
    expected_nextn = manifest.layers["mtp_kept"] or None
    if tm["architecture"] != manifest.gguf_arch:
        diffs.append(f"general.architecture is {tm['architecture']!r}, manifest says {manifest.gguf_arch!r}")
    if tm["block_count"] != expected_blocks:
        diffs.append(f"block_count is {tm['block_count']}, manifest says {expected_blocks}")
    if tm["nextn_predict_layers"] != expected_nextn:
        diffs.append(f"nextn_predict_layers is {tm['nextn_predict_layers']}, manifest says {expected_nextn}")
    for item in manifest.metadata:
        if field_value(reader, item.key) is None:
            diffs.append(f"metadata key {item.key} is missing")
    written = {t["name"]: t for t in tm["tensors"]}
    planned = {e.name: e for e in manifest.tensors}
    for block in range(manifest.layers["trunk"], (tm["block_count"] or 0)):
        lacking = [name for name in mtp_head_names(block) if name not in written]
        if lacking:
            diffs.append(f"MTP block {block} lacks {', '.join(lacking)}: llama.cpp cannot run its head")
    diffs += _mtp_gone(manifest.layers, tm["nextn_predict_layers"])
    for name in sorted(set(planned) - set(written)):
        diffs.append(f"missing tensor {name}")
    for name in sorted(set(written) - set(planned)):
        diffs.append(f"extra tensor {name}")
    for name in sorted(set(planned) & set(written)):
        entry, tensor = planned[name], written[name]
        if entry.shape != tensor["shape"]:
            diffs.append(f"{name}: shape {tensor['shape']}, manifest says {entry.shape}")
        if entry.type != tensor["type"]:
            diffs.append(f"{name}: type {tensor['type']}, manifest says {entry.type}")
    return diffs


def _mtp_gone(layers: dict[str, Any], nextn: int | None) -> list[str]:
    """The one failure this project exists for: a model that had MTP layers and a GGUF without them."""
    if not layers["mtp"] or nextn:
        return []
    if not layers["mtp_found"]:
        if layers.get("mtp_mode") == "absent_ok":
            log.warning("the checkpoint had no MTP tensors (stripped before mtpmanifest saw it); accepted: mtp=absent_ok")
            return []
        return [f"the MTP head is gone: config.json declares {layers['mtp']} MTP layer(s) but the checkpoint has no MTP "
                "tensors (stripped by another tool); mtp=absent_ok accepts such a file"]
    how = " (written with mtp=drop)" if layers.get("mtp_mode") == "drop" else ""
    return [f"the MTP head is gone: config.json declares {layers['mtp']} MTP layer(s), the GGUF has none{how}: "
            "no speculative decoding"]


def _rows(array: np.ndarray) -> np.ndarray:
    return array.reshape(-1, array.shape[-1]) if array.ndim > 1 else array.reshape(1, -1)


def numeric_check(entry, data: np.ndarray, source: TensorSource) -> dict[str, Any]:
    """Relative RMSE of the dequantized GGUF tensor against its source after the same op."""
    qtype = gguf.GGMLQuantizationType[entry.type]
    if source.ops[entry.op].many_inputs:
        pairs = ((source.ckpt.read(s), data[i]) for i, s in enumerate(entry.sources))
    elif entry.op == "copy" and len(entry.shape) == 2:  # row slices, as convert streams them
        pairs = ((source.ckpt.read(entry.sources[0], rows=r), data[r[0]:r[1]]) for r in row_ranges(entry.shape[1], entry.shape[0]))
    else:
        pairs = iter([(source.array(entry), data)])
    err = ref = 0.0
    for expected, stored in pairs:
        # row chunks keep the float64 temporaries small for vocabulary-sized tensors
        expected_rows, stored_rows = _rows(expected), _rows(np.asarray(stored))
        step = max(1, (1 << 22) // expected_rows.shape[1])
        for start in range(0, expected_rows.shape[0], step):
            want = expected_rows[start:start + step].astype(np.float64)
            got = gguf.quants.dequantize(np.ascontiguousarray(stored_rows[start:start + step]), qtype).reshape(want.shape)
            err += float(np.sum(np.square(got - want)))
            ref += float(np.sum(np.square(want)))
    rel = math.sqrt(err / ref) if ref > 0 else math.sqrt(err)
    bound = REL_RMSE_BOUND.get(entry.type, DEFAULT_BOUND)
    return {"name": entry.name, "role": entry.role, "type": entry.type, "rel_rmse": rel, "bound": bound, "ok": rel <= bound}


def verify(manifest: Manifest, gguf_path: Path, ckpt: Checkpoint | None, *, numeric: bool = True, progress: bool = True) -> VerifyResult:
    reader = open_gguf(gguf_path)
    tm = tensor_manifest(gguf_path, reader)
    validate("tensor-manifest.schema.json", tm, "tensors.json")
    result = VerifyResult(tm, structural_differences(manifest, tm, reader))
    if numeric and ckpt is not None and not result.differences:
        source = TensorSource(manifest, ckpt)
        data = {t.name: t.data for t in reader.tensors}
        for entry in tqdm(manifest.tensors, desc="verify", unit="tensor", disable=not progress, leave=False):
            result.numeric.append(numeric_check(entry, data[entry.name], source))
    return result
