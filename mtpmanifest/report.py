"""report.json and the short console summaries (through logging, aligned, one idea per line)."""
from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

from .inventory import Inventory
from .manifest import Manifest

log = logging.getLogger("mtpmanifest")


def size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{n} B"
        value /= 1024
    return f"{n} B"


def _line(label: str, text: str) -> None:
    log.info("%-12s %s", label, text)


def bits_per_weight(entries) -> float:
    weights = sum(_elements(e.shape) for e in entries)
    return 8 * sum(e.n_bytes for e in entries) / weights if weights else 0.0


def _elements(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def print_plan(manifest: Manifest, paths: dict[str, Path]) -> None:
    layers = manifest.layers
    c = manifest.counts
    _line("mtpmanifest", f"{manifest.architecture} -> {manifest.gguf_arch}, quant {manifest.quant}")
    _line("source", f"{manifest.source['path']} ({manifest.source['n_tensors']} tensors)")
    _line("tensors", f"trunk {c['trunk']}   mtp {c['mtp']}   shared {c['shared']}   dropped {len(manifest.dropped)}")
    blocks = ", ".join(str(b) for b in layers["mtp_blocks"]) or "none"
    _line("MTP layers", f"declared {layers['mtp']}   found {layers['mtp_found']}   kept {layers['mtp_kept']}   (blocks {blocks})")
    trunk = [e for e in manifest.tensors if e.role != "mtp"]
    mtp = [e for e in manifest.tensors if e.role == "mtp"]
    _line("bits/weight", f"trunk+shared {bits_per_weight(trunk):.2f}   mtp {bits_per_weight(mtp):.2f}")
    _line("bytes", f"in {size(manifest.bytes_in)}   out {size(manifest.bytes_out)}")
    if manifest.imatrix and any(wanted for _, wanted in manifest.imatrix["totals"].values()):
        totals = "   ".join(f"{role} {c}/{w}" for role, (c, w) in manifest.imatrix["totals"].items() if w)
        _line("imatrix", f"{totals}   ({manifest.imatrix['file'] or 'none'})")
    _line("manifest", str(paths["manifest"]))


def print_runtime_note(arch: str, gguf_arch: str, manifest: Manifest) -> None:
    """The one thing a user of a family without llama.cpp MTP support must know before using the file."""
    blocks = manifest.layers["mtp_blocks"]
    if blocks:
        log.warning("llama.cpp cannot run %s MTP heads yet: they are kept as blk.%s.nextn.* + blk.%s.* (README "
                    "\"Supported families\") and validated here, but llama.cpp's %s loader refuses the extra tensors; "
                    "for a file llama.cpp loads today, convert with mtp=drop stage=convert (which verify fails: its MTP head is gone)", arch, blocks[0], blocks[0], gguf_arch)


def build(manifest: Manifest, result, paths: dict[str, Path]) -> dict[str, Any]:
    by_role: dict[str, list[float]] = defaultdict(list)
    for n in result.numeric:
        by_role[n["role"]].append(n["rel_rmse"])
    stats = {
        role: {"tensors": len(v), "max_rel_rmse": max(v), "mean_rel_rmse": sum(v) / len(v)}
        for role, v in sorted(by_role.items())
    }
    return {
        "ok": result.ok,
        "architecture": manifest.architecture,
        "quant": manifest.quant,
        "gguf": str(paths["gguf"]),
        "file_size": paths["gguf"].stat().st_size if paths["gguf"].exists() else None,
        "layers": manifest.layers,
        "counts": manifest.counts,
        "bits_per_weight": {
            "trunk": bits_per_weight([e for e in manifest.tensors if e.role != "mtp"]),
            "mtp": bits_per_weight([e for e in manifest.tensors if e.role == "mtp"]),
        },
        "differences": result.differences,
        "failures": result.failures,
        "numeric_stats": stats,
        "numeric": result.numeric,
        "imatrix_coverage": manifest.imatrix,
        "mtp_acceptance": result.acceptance,
    }


def print_verify(doc: dict[str, Any]) -> None:
    _line("output", f"{doc['gguf']} ({size(doc['file_size'] or 0)})")
    print_acceptance(doc.get("mtp_acceptance"))
    stats = "   ".join(f"{role} max rel RMSE {s['max_rel_rmse']:.2e}" for role, s in doc["numeric_stats"].items())
    status = "OK" if doc["ok"] else f"FAILED ({len(doc['failures'])} problem(s))"
    _line("verify", f"{status}   {stats}".rstrip())
    for failure in doc["failures"][:20]:
        log.error("  %s", failure)


def _values(values: list[float | None], spec: str = ".3f") -> str:
    return " / ".join("—" if v is None else format(v, spec) for v in values) or "—"


def print_acceptance(acc: dict[str, Any] | None) -> None:
    """MTP draft acceptance (per MTP layer, joined by /), top-1 accuracy and the speed-up estimate."""
    if acc is None:
        return
    if not acc.get("measured"):
        _line("MTP accept", f"not measured: {acc.get('note')}")
        return
    llama = acc.get("llamacpp") or {}
    extra = (f"   llama.cpp {llama['acceptance']:.3f} (torch {llama['torch_acceptance']:.3f}, first {llama['n_tokens']} "
             "tokens)" if "acceptance" in llama else
             "   llama.cpp failed" if "error" in llama else "")
    # a source head that agrees with nothing makes the ratio noise (0.002 vs 0.001 = 200%): not shown
    kept = (f"retention {_values(acc['retention'], '.1%')}" if acc["judged"]
            else f"retention not judged (source < {acc['min_source_acceptance']:g})")
    _line("MTP accept", f"source {_values(acc['source'])}   output {_values(acc['output'])}   "
          f"{kept}{extra}   ({_values(acc['positions'], 'd')} positions, "
          f"{Path(acc['text']).name})")
    _line("MTP top-1", f"source {_values(acc['top1']['source'])}   output {_values(acc['top1']['output'])}   "
          f"(true token; trunk top-1 {acc['trunk']['output']['top1']:.3f})")
    speed = acc["speedup"]
    _line("speed-up", f"est. {speed['source']['speedup']:.2f}x source   {speed['output']['speedup']:.2f}x output   "
          f"(draft cost {_values(speed['draft_cost'], '.1%')} of the trunk per token)")


def print_inventory(inv: Inventory) -> None:
    _line("inventory", f"{inv.path} ({inv.kind}, {inv.architecture}, {len(inv.tensors)} tensors)")
    _line("roles", "   ".join(f"{role} {n}" for role, n in inv.totals().items()))
    per_layer = inv.per_mtp_layer()
    _line("MTP layers", "   ".join(f"layer {'?' if k is None else k}: {n} tensors" for k, n in per_layer.items()) or "none found")
    for t in inv.mtp_tensors():
        log.info("  %-52s %-10s %s", t["name"], t["type"], t["shape"])
    for note in inv.notes:
        log.warning("note: %s", note)


def print_fixture(arch: str, path: Path, n_tensors: int) -> None:
    _line("fixture", f"{path} (arch {arch}, {n_tensors} tensors, from the rules of arch/{arch}.yaml)")


def print_diff(lines: list[str]) -> None:
    _line("diff", f"{len(lines)} difference(s)" if lines else "no differences")
    for line in lines:
        log.info("  %s", line)


def print_lint(errors: list[str]) -> None:
    for error in errors:
        log.error("%s", error)
    _line("lint", f"{len(errors)} error(s)" if errors else "all shipped configs are valid")
