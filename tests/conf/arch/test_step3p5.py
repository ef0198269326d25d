"""arch=step3p5: a Step-3.5-Flash checkpoint (interleaved full / sliding-window attention with per-type head
counts, stacked experts, three MTP layers with their own heads) plans, converts, calibrates, verifies and keeps
all three heads; the GGUF is what llama.cpp's converter writes (same tensors, shapes, keys and values), loads in
llama.cpp with load_mtp, and its trunk and first MTP head there equal our torch forward (transformers' Step3p7
text decoder). A full-size inventory (headers only) plans with every MTP tensor kept; a stripped one is reported."""
from __future__ import annotations

import json
import re
from functools import partial

import numpy as np
import pytest
import torch

from conftest import compose_cfg, run_cli
from family_run import calibrated_run, manifest_of as family_manifest
from llamacpp_convert import convert_with_llamacpp, gguf_layout, layout_differences
from mtpmanifest.accept_stage import heldout_tokens
from mtpmanifest.convert import convert
from mtpmanifest.demo import DEMO_DIR
from mtpmanifest.fixtures import step3p5 as step
from mtpmanifest.forward import ModelForward
from mtpmanifest.llamacpp import probe
from mtpmanifest.weights import GGUFWeights

ARCH = "arch=step3p5"
N = step.TINY_CONFIG["num_hidden_layers"]
MTP_BLOCKS = [N, N + 1, N + 2]
BAD_LOAD_WORDS = ("unused tensor", "wrong number of tensors", "not found", "wrong shape")
LOGIT_ATOL = 1e-3  # float32 both sides: summation order only (~1e-6 measured); a wrong mask or rope moves ~0.1


manifest_of = partial(family_manifest, ARCH)


@pytest.fixture(scope="module")
def random_ckpt(tmp_path_factory):
    return step.write_checkpoint(tmp_path_factory.mktemp("step3p5") / "ckpt", seed=3)


@pytest.fixture(scope="module")
def f32_gguf(random_ckpt, tmp_path_factory):
    _, manifest, ckpt = manifest_of(random_ckpt)
    return manifest, ckpt, convert(manifest, ckpt, tmp_path_factory.mktemp("f32") / "model-f32.gguf", progress=False)


def test_names_are_transformers_names():
    """Trunk tensors are Step3p7TextModel's parameters and each MTP layer's block those of Step3p7DecoderLayer
    built as that layer, once the family's renames apply (stacked gate + up -> gate_up_proj)."""
    from mtpmanifest import hf_modules as hf
    from transformers.models.step3p7.modeling_step3p7 import Step3p7DecoderLayer, Step3p7TextModel

    config = step.TINY_CONFIG
    family = hf.family_of(config)
    with torch.device("meta"):
        trunk = Step3p7TextModel(hf.hf_config({**config, "num_nextn_predict_layers": 0,
                                                 "num_hidden_layers": N}))
    expected = {"model." + k for k in trunk.state_dict()}
    specs = [name for name, _, _, _ in step.tensor_specs(config)]
    ours = set()
    for name in specs:
        block = re.match(r"model\.layers\.(\d+)\.", name)
        if block is None:
            ours.add(name)
        elif int(block[1]) < N:
            ours.add(f"model.layers.{block[1]}." + hf.module_key(family, name, int(block[1])))
    assert ours - {"lm_head.weight"} == expected and "lm_head.weight" in ours
    cfg = hf.hf_config(config)
    head_parts = ("eh_proj", "enorm", "hnorm", "shared_head")
    for block in MTP_BLOCKS:
        with torch.device("meta"):
            layer = Step3p7DecoderLayer(cfg, block)
        mine = {hf.module_key(family, n, block) for n in specs
                if n.startswith(f"model.layers.{block}.") and not any(p in n for p in head_parts)}
        assert mine == set(layer.state_dict()), block
        assert "mlp.gate_proj.weight" in mine  # MTP layers are dense
    assert cfg.layer_types[N:] == ["full_attention", "sliding_attention", "sliding_attention"]


def test_plan_claims_everything_and_keeps_the_three_heads(random_ckpt):
    _, manifest, ckpt = manifest_of(random_ckpt, "q4_k_m")
    assert {s for e in manifest.tensors for s in e.sources} == set(ckpt.tensors)
    mtp_sources = {s for e in manifest.tensors if e.role == "mtp" for s in e.sources}
    assert mtp_sources == {n for n in ckpt.tensors if step.is_mtp_tensor(n, ckpt.config)}
    assert manifest.layers["mtp_kept"] == 3 and manifest.layers["mtp_blocks"] == MTP_BLOCKS
    names = {e.name: e for e in manifest.tensors}
    for block in MTP_BLOCKS:
        assert {f"blk.{block}.nextn.{t}.weight" for t in ("eh_proj", "enorm", "hnorm", "shared_head_norm",
                                                           "shared_head_head")} <= set(names)
        assert f"blk.{block}.ffn_gate.weight" in names and f"blk.{block}.ffn_gate_inp.weight" not in names
    # per-block metadata over trunk AND MTP blocks; sliding blocks have their own head count
    meta = {m.key: m.value for m in manifest.metadata}
    assert meta["step35.attention.head_count"] == [4, 6, 6, 6, 4, 6, 6]
    assert meta["step35.attention.sliding_window_pattern"] == [False, True, True, True, False, True, True]
    assert meta["step35.swiglu_clamp_exp"] == [0.0, 0.0, 0.0, 7.0, 0.0, 0.0, 0.0]
    assert names["blk.1.attn_q.weight"].shape == [128, 192] and names[f"blk.{N}.attn_q.weight"].shape == [128, 128]
    assert names["blk.2.ffn_gate_exps.weight"].shape == [128, 64, 8]


def test_layout_equals_llamacpp_converter(f32_gguf, random_ckpt, tmp_path):
    """Tensor names, shapes, types, metadata keys and values as convert_hf_to_gguf.py writes them (tokenizer and
    naming keys aside), and the tensor data itself (norms + 1 included) bit for bit."""
    import gguf

    theirs = convert_with_llamacpp(random_ckpt, tmp_path / "llamacpp.gguf", raw_config=True)
    ours = gguf_layout(f32_gguf[2])
    assert layout_differences(ours, theirs, compare_types=True) == []
    assert ours["keys"]["step35.nextn_predict_layers"] == 3 and ours["keys"]["step35.block_count"] == N + 3
    mine = {t.name: np.asarray(t.data) for t in gguf.GGUFReader(str(f32_gguf[2])).tensors}
    for t in gguf.GGUFReader(str(tmp_path / "llamacpp.gguf")).tensors:
        assert np.array_equal(mine[t.name], np.asarray(t.data)), t.name


def test_llamacpp_runs_trunk_and_mtp_like_torch(f32_gguf):
    """llama.cpp loads the file with load_mtp; trunk logits, the hidden it hands the MTP head (pre-norm) and the
    first MTP head's logits equal our torch forward. 48 tokens: past the sliding window (8)."""
    manifest, ckpt, path = f32_gguf
    tokens = heldout_tokens(DEMO_DIR / "heldout.txt", ckpt, 48)
    result = probe(path, tokens, load_mtp=True, mtp=True)
    assert result.ok, result.error
    assert result.n_layer_nextn == 3
    assert [w for w in result.warnings if any(word in w for word in BAD_LOAD_WORDS)] == []
    forward = ModelForward(ckpt.config, compose_cfg(ARCH).arch.mtp_head, GGUFWeights(manifest, path), keep_logits=True)
    trunk = forward.trunk(tokens)
    assert np.abs(result.logits - trunk.scores.logits[0]).max() < LOGIT_ATOL
    assert (result.logits.argmax(-1) == trunk.scores.argmax[0]).all()
    assert np.abs(result.hidden - trunk.pre_norm[0].numpy()).max() < 1e-4
    passes = forward.mtp(trunk, bootstrap_row=True)
    assert [p.block for p in passes] == MTP_BLOCKS
    assert np.abs(result.mtp_logits - passes[0].scores.logits[0]).max() < LOGIT_ATOL
    assert (result.mtp_logits.argmax(-1) == passes[0].scores.argmax[0]).all()


@pytest.mark.parametrize("quant", ["q8_0", "q4_k_m"])
def test_quantized_keeps_three_working_heads(quant, tmp_path):
    """Heads that agree with the trunk by construction: calibrated (the imatrix covers all three MTP blocks),
    converted, verified (acceptance retained on every head), and llama.cpp runs the written head."""
    ckpt = step.write_checkpoint(tmp_path / "ckpt", weights=step.aligned_weights())
    out = tmp_path / "out"
    record, entries, wanted = calibrated_run(ARCH, ckpt, out, quant, "accept.llamacpp_tokens=256")
    assert wanted <= entries
    for block in MTP_BLOCKS:
        assert {f"blk.{block}.nextn.eh_proj.weight", f"blk.{block}.attn_gate.weight",
                f"blk.{block}.ffn_down.weight"} <= entries
    assert "blk.2.ffn_gate_exps.weight" in entries and "blk.2.ffn_down_shexp.weight" in entries
    acc = record["mtp_acceptance"]
    print(f"step3p5 {quant}: acceptance source {acc['source']} output {acc['output']} "
          f"llama.cpp {acc['llamacpp']['acceptance']:.3f}")
    assert acc["judged"] and len(acc["source"]) == 3
    assert min(acc["source"]) > 0.4 and min(acc["retention"]) >= 0.95
    assert abs(acc["llamacpp"]["acceptance"] - acc["llamacpp"]["torch_acceptance"]) <= 0.02
    result = probe(out / f"model-{quant}.gguf", list(range(2, 34)), load_mtp=True, mtp=True)
    assert result.ok, result.error
    assert result.n_layer_nextn == 3 and np.isfinite(result.mtp_logits).all()


def test_full_size_inventory_plans_with_every_mtp_tensor_kept(tmp_path):
    config = step.FULL_CONFIG
    ckpt_dir = step.write_checkpoint(tmp_path / "ckpt", config, header_only=True, tokenizer=False)
    _, manifest, ckpt = manifest_of(ckpt_dir, "q4_k_m")
    h, v = config["hidden_size"], config["vocab_size"]
    assert {s for e in manifest.tensors for s in e.sources} == set(ckpt.tensors)
    mtp_sources = sorted(s for e in manifest.tensors if e.role == "mtp" for s in e.sources)
    assert mtp_sources == sorted(t for t in ckpt.tensors if step.is_mtp_tensor(t, config))
    assert manifest.layers["mtp_blocks"] == [45, 46, 47]
    assert sum(e.role == "mtp" for e in manifest.tensors) == 3 * 17  # 12 block + 5 head tensors per MTP layer
    shapes = {e.name: e.shape for e in manifest.tensors}
    assert shapes["blk.47.nextn.shared_head_head.weight"] == [h, v]
    assert shapes["blk.46.attn_q.weight"] == [h, 96 * 128] and shapes["blk.44.attn_q.weight"] == [h, 64 * 128]
    assert shapes["blk.3.ffn_gate_exps.weight"] == [h, 1280, 288]
    meta = {m.key: m.value for m in manifest.metadata}
    assert len(meta["step35.attention.head_count"]) == 48 and meta["step35.leading_dense_block_count"] == 3


def test_stripped_checkpoint_is_reported(tmp_path):
    ckpt = step.write_checkpoint(tmp_path / "ckpt", mtp=False)
    proc = run_cli(ARCH, "quant=q8_0", f"model.path={ckpt}", f"output.dir={tmp_path / 'out'}", "stage=plan",
                   cwd=tmp_path, check_rc=0)
    assert "declares 3 MTP layer(s)" in proc.stderr + proc.stdout and "stripped" in proc.stderr + proc.stdout
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["layers"]["mtp_found"] == 0 and manifest["layers"]["mtp_kept"] == 0
