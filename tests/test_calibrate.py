"""Calibration runs the trunk AND the MTP layer: every tensor that wants importance data gets an
entry, keyed by GGUF name, with the statistics llama-imatrix would collect for it."""
from __future__ import annotations

import json

import numpy as np
import torch

from conftest import compose_cfg, run_cli
from mtpmanifest.calibrate import calibrate, calibration_samples, corpus_text
from mtpmanifest.demo import DEMO_DIR
from mtpmanifest.fixtures.hf_reference import hf_model
from mtpmanifest.imatrix import Imatrix, ImatrixEntry
from mtpmanifest.plan import compile_manifest
from mtpmanifest.source import Checkpoint

OVERRIDES = ("quant=q4_k_m", "calib.samples=2", "calib.seq_len=64")


def test_calibrate_covers_trunk_and_mtp(tmp_path):
    out = tmp_path / "out"
    run_cli(*OVERRIDES, f"output.dir={out}", "stage=calibrate", cwd=tmp_path, check_rc=0)
    manifest = json.loads((out / "manifest.json").read_text())
    imatrix = Imatrix.read(out / "imatrix.gguf")
    wanted = {t["name"] for t in manifest["tensors"] if t["wants_imatrix"]}
    assert wanted <= set(imatrix.entries)
    assert manifest["imatrix"]["totals"]["mtp"][0] == manifest["imatrix"]["totals"]["mtp"][1] > 0
    assert imatrix.chunk_count == 2 and imatrix.chunk_size == 64
    experts = imatrix.entries["blk.4.ffn_down_exps.weight"]
    assert experts.sums.shape == (8, 128)  # one row of sums per expert of the MTP block
    assert experts.counts.sum() == 2 * 63 * 2  # 2 samples x 63 MTP rows x top-2 experts
    assert imatrix.entries["blk.4.attn_k_b.weight"].sums.shape == (4, 32)  # per head: q_nope
    assert imatrix.entries["blk.4.nextn.eh_proj.weight"].sums.shape == (1, 512)  # [enorm(e); hnorm(h)]
    assert "token_embd.weight" not in imatrix.entries  # a lookup, not a product


def test_trunk_statistics_equal_an_independent_transformers_forward():
    cfg = compose_cfg(*OVERRIDES)
    ckpt = Checkpoint.open(DEMO_DIR)
    manifest = compile_manifest(cfg.arch, cfg.quant, ckpt)
    imatrix = calibrate(cfg, manifest, ckpt, progress=False)
    samples = calibration_samples(corpus_text(cfg)[0], ckpt, 2, 64, 0)
    model = hf_model(DEMO_DIR)
    seen = []
    handle = model.model.layers[1].self_attn.q_a_proj.register_forward_hook(lambda m, i, o: seen.append(i[0][0]))
    with torch.no_grad():
        for tokens in samples:
            model(torch.tensor([tokens]))
    handle.remove()
    x = torch.cat(seen).double()
    entry = imatrix.entries["blk.1.attn_q_a.weight"]
    assert entry.counts[0] == 128
    np.testing.assert_allclose(entry.sums[0], (x * x).sum(0).numpy(), rtol=1e-4)


def test_merge_with_keeps_the_users_entries(tmp_path):
    user = Imatrix({"blk.0.attn_q_a.weight": ImatrixEntry(np.full((1, 256), 7.0, np.float32), np.array([99.0], np.float32))},
                   ["wiki.train.raw"], 100, 512).write(tmp_path / "user.gguf")
    out = tmp_path / "out"
    run_cli(*OVERRIDES, f"output.dir={out}", "stage=calibrate", f"calib.merge_with={user}", cwd=tmp_path, check_rc=0)
    merged = Imatrix.read(out / "imatrix.gguf")
    assert np.all(merged.entries["blk.0.attn_q_a.weight"].sums == 7.0) and merged.entries["blk.0.attn_q_a.weight"].counts[0] == 99
    assert "blk.4.nextn.eh_proj.weight" in merged.entries and merged.chunk_size == 512
    assert merged.datasets[0] == "wiki.train.raw"


def test_stage_all_calibrates_before_converting(tmp_path):
    out = tmp_path / "out"
    run_cli(*OVERRIDES, f"output.dir={out}", "calib.enabled=true", "accept.enabled=false", cwd=tmp_path, check_rc=0)
    report = json.loads((out / "report.json").read_text())
    totals = report["imatrix_coverage"]["totals"]
    assert all(covered == wanted for covered, wanted in totals.values())
    assert (out / "imatrix.gguf").exists() and (out / "model-q4_k_m.gguf").exists()
