"""arch=qwen3_next: Qwen3-Next checkpoints (gated-delta-net linear attention + gated full attention, MoE with
a gated shared expert, the MTP module under its own `mtp.` prefix, no MTP count in config.json) plan, convert,
calibrate, verify and keep their head. The GGUF is what llama.cpp's converter writes for the same checkpoint
(names, shapes, keys and, in F32, every value), loads in llama.cpp with load_mtp, and its MTP context runs;
the torch forward equals transformers' Qwen3NextForCausalLM (trunk) and an independent MTP reference."""
from __future__ import annotations

import json
import logging
import re
from functools import partial

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import compose_cfg, run_cli
from family_run import manifest_of as family_manifest
from llamacpp_convert import convert_with_llamacpp, gguf_layout, layout_differences
from llama_quantize import llama_quantize, tensor_table
from mtpmanifest import pipeline
from mtpmanifest.accept_stage import heldout_tokens
from mtpmanifest.convert import convert
from mtpmanifest.demo import DEMO_DIR
from mtpmanifest.errors import VerificationError
from mtpmanifest.fixtures import qwen3_next as q3n
from mtpmanifest.forward import ModelForward
from mtpmanifest.imatrix import Imatrix
from mtpmanifest.llamacpp import probe
from mtpmanifest.ops import op_registry
from mtpmanifest.source import Checkpoint
from mtpmanifest.weights import GGUFWeights, SourceWeights

ARCH = "arch=qwen3_next"
MTP = q3n.TINY_CONFIG["num_hidden_layers"]  # block of the MTP layer
BAD_LOAD_WORDS = ("unused tensor", "wrong number of tensors", "not found", "wrong shape")
# float32 on both sides: only summation order differs (~5e-6 measured); a wrong norm offset, gate or qkvz
# order moves logits by ~0.1
LOGIT_ATOL = 1e-3
# Declares its MTP count (as vLLM's num_nextn_predict_layers), full attention every 2nd layer, one key head
# for two value heads, two shards with the MTP module alone in the second.
DECLARED = {**q3n.TINY_CONFIG, "full_attention_interval": 2, "num_nextn_predict_layers": 1, "hidden_size": 128,
            "linear_num_key_heads": 1, "linear_num_value_heads": 2, "num_experts": 4}
# What differs from llama.cpp's converter, and why. Its converter reads hparams through AutoConfig.to_dict(),
# where Qwen3NextConfig has turned full_attention_interval into layer_types: it writes its default 4, harmless
# only because it also writes attention.recurrent_layers (as we do), which llama.cpp's loader prefers.
JUSTIFIED = {
    "tiny": [],
    "declared": ["value of qwen3next.full_attention_interval: ours 2, llama.cpp's 4"],
}

MTP_GGUF = sorted(f"blk.{MTP}.{n}.weight" for n in (
    "nextn.eh_proj", "nextn.enorm", "nextn.hnorm", "nextn.shared_head_norm", "attn_norm", "post_attention_norm",
    "attn_q", "attn_k", "attn_v", "attn_output", "attn_q_norm", "attn_k_norm", "ffn_gate_inp", "ffn_gate_inp_shexp",
    "ffn_gate_shexp", "ffn_up_shexp", "ffn_down_shexp", "ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"))


manifest_of = partial(family_manifest, ARCH)


@pytest.fixture(scope="module", params=["tiny", "declared"])
def which(request):
    return request.param


@pytest.fixture(scope="module")
def random_ckpt(which, tmp_path_factory):
    if which == "tiny":
        return q3n.write_checkpoint(tmp_path_factory.mktemp("tiny") / "ckpt", seed=1)
    return q3n.write_checkpoint(tmp_path_factory.mktemp("declared") / "ckpt", DECLARED, seed=3, shards=2)


@pytest.fixture(scope="module")
def f32_gguf(random_ckpt, tmp_path_factory):
    cfg, manifest, ckpt = manifest_of(random_ckpt)
    path = convert(manifest, ckpt, tmp_path_factory.mktemp("f32") / "model-f32.gguf", progress=False)
    return cfg, manifest, ckpt, path


@pytest.fixture(scope="module")
def tokens(random_ckpt):
    return heldout_tokens(DEMO_DIR / "heldout.txt", Checkpoint.open(random_ckpt), 48)


@pytest.fixture(scope="module")
def reference(random_ckpt, tokens):
    """transformers' trunk logits and the independent MTP reference's logits for `tokens`."""
    return transformers_reference(random_ckpt, tokens)


@pytest.fixture(scope="module")
def aligned(tmp_path_factory):
    return q3n.write_checkpoint(tmp_path_factory.mktemp("aligned") / "ckpt", aligned=True)


# ------------------------------------------------------------------------------------------------ the fixture


def test_fixture_has_transformers_names_and_the_release_layout():
    from transformers import Qwen3NextConfig, Qwen3NextForCausalLM

    for config in (q3n.TINY_CONFIG, DECLARED):
        with torch.device("meta"):
            expected = set(Qwen3NextForCausalLM(Qwen3NextConfig(**config)).state_dict())
        ours = {re.sub(r"experts\.\d+\.(gate|up)_proj\.weight", "experts.gate_up_proj",
                       re.sub(r"experts\.\d+\.down_proj\.weight", "experts.down_proj", name))
                for name, _, _, _ in q3n.tensor_specs(config) if not q3n.is_mtp_tensor(name)}
        assert ours == expected
    assert "num_nextn_predict_layers" not in q3n.TINY_CONFIG and "num_nextn_predict_layers" not in q3n.FULL_CONFIG
    mtp = {n: s for n, s, _ in q3n.mtp_specs(q3n.TINY_CONFIG) if ".experts." not in n}
    assert mtp["mtp.fc.weight"] == (256, 512) and mtp["mtp.layers.0.self_attn.q_proj.weight"] == (2 * 4 * 64, 256)
    assert mtp["mtp.layers.0.mlp.shared_expert_gate.weight"] == (1, 256) and len(mtp) == 4 + 13
    # FULL_CONFIG: every architecture value is transformers' default (which mirrors the release) except those
    # the release's config.json sets otherwise
    defaults = Qwen3NextConfig()
    differ = {k for k, v in q3n.FULL_CONFIG.items() if hasattr(defaults, k) and getattr(defaults, k) != v}
    assert differ == {"architectures", "bos_token_id", "eos_token_id", "intermediate_size", "max_position_embeddings",
                      "rope_scaling", "torch_dtype", "transformers_version"}, differ
    assert defaults.rope_parameters["partial_rotary_factor"] == q3n.FULL_CONFIG["partial_rotary_factor"]
    assert defaults.layer_types == Qwen3NextConfig(**q3n.FULL_CONFIG).layer_types  # full attention every 4th


def test_fixture_is_deterministic_and_strips_only_mtp(tmp_path):
    a = q3n.write_checkpoint(tmp_path / "a", seed=5)
    b = q3n.write_checkpoint(tmp_path / "b", seed=5)
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    stripped = load_file(str(q3n.write_checkpoint(tmp_path / "s", seed=5, mtp=False) / "model.safetensors"))
    full = load_file(str(a / "model.safetensors"))
    assert sorted(stripped) == sorted(n for n in full if not n.startswith("mtp."))
    assert all(torch.equal(stripped[n], full[n]) for n in stripped)
    assert json.loads((a / "config.json").read_text()) == q3n.TINY_CONFIG
    # zero-centred norms are stored near 0, the gated norm of linear attention near 1
    assert full["mtp.norm.weight"].float().abs().max() < 0.5
    assert (full["model.layers.0.linear_attn.norm.weight"].float() - 1).abs().max() < 0.5
    a_log = full["model.layers.0.linear_attn.A_log"]
    assert a_log.dtype == torch.float32 and (a_log.exp() >= 1).all()


def test_ops_invert_and_the_qkvz_order():
    ops = op_registry()
    rng = np.random.default_rng(0)
    params = {"n_k_heads": 2, "n_v_heads": 4, "head_k_dim": 3, "head_v_dim": 2, "axis": 1}
    cases = {"plus_one": rng.normal(size=5), "neg_exp": rng.normal(size=5), "squeeze": rng.normal(size=(6, 1, 4)),
             "split_qkvz": rng.normal(size=(2 * (2 * 3 + 2 * 4), 7))}
    for name, x in cases.items():
        op = ops[name]
        out = op.apply([x.astype(np.float32)], params)
        assert [o.shape for o in out] == op.shapes([x.shape], params)
        np.testing.assert_allclose(op.invert(out, params)[0], x, rtol=1e-6, atol=1e-6)
    # rows [q0 k0 v0 z0 | q1 k1 v1 z1] per key head -> attn_qkv [q0 q1 k0 k1 v0 v1], attn_gate [z0 z1]
    rows = np.arange(28, dtype=np.float32)[:, None]
    qkv, z = ops["split_qkvz"].apply([rows], params)
    assert qkv[:, 0].tolist() == [0, 1, 2, 14, 15, 16, 3, 4, 5, 17, 18, 19, 6, 7, 8, 9, 20, 21, 22, 23]
    assert z[:, 0].tolist() == [10, 11, 12, 13, 24, 25, 26, 27]


# ------------------------------------------------------------------------------------------------------- plan


def test_plan_counts_the_mtp_layer_from_the_tensors(random_ckpt, which):
    _, manifest, _ = manifest_of(random_ckpt, "q8_0")
    assert manifest.layers | {"mtp_mode": None} == {"trunk": 4, "mtp": 1, "mtp_found": 1, "mtp_kept": 1,
                                                    "mtp_blocks": [MTP], "mtp_mode": None}
    names = {e.name: e for e in manifest.tensors}
    assert sorted(n for n, e in names.items() if e.role == "mtp") == MTP_GGUF
    assert names[f"blk.{MTP}.nextn.eh_proj.weight"].sources == ["mtp.fc.weight"]
    assert names[f"blk.{MTP}.nextn.shared_head_norm.weight"].sources == ["mtp.norm.weight"]
    assert names[f"blk.{MTP}.ffn_up_exps.weight"].mtp_layer == 0
    linear = [0, 1, 2] if which == "tiny" else [0, 2]
    assert sorted(int(n.split(".")[1]) for n in names if n.endswith(".ssm_a")) == linear  # no .weight suffix
    assert sorted(int(n.split(".")[1]) for n in names if n.endswith("attn_q.weight")) == sorted(
        {0, 1, 2, 3, MTP} - set(linear))
    meta = {m.key: m.value for m in manifest.metadata}
    assert meta["qwen3next.rope.dimension_count"] == 16 and meta["qwen3next.ssm.inner_size"] == (
        128 if which == "tiny" else 64)


def test_a_config_saved_by_transformers_plans_the_same(tmp_path):
    """transformers 5 writes layer_types and rope_parameters instead of full_attention_interval, rope_theta and
    partial_rotary_factor: the same GGUF metadata and tensors."""
    from transformers import Qwen3NextConfig

    saved = Qwen3NextConfig(**q3n.TINY_CONFIG).to_dict()
    assert "full_attention_interval" not in saved and "rope_theta" not in saved
    manifests = [manifest_of(q3n.write_checkpoint(tmp_path / name, config, seed=1, tokenizer=False), "q8_0")[1]
                 for name, config in (("release", q3n.TINY_CONFIG), ("saved", saved))]
    release, resaved = ([(m.key, m.value) for m in manifest.metadata] for manifest in manifests)
    assert release == resaved and ("qwen3next.rope.freq_base", 10000000.0) in release
    assert [e.name for e in manifests[0].tensors] == [e.name for e in manifests[1].tensors]


def test_fp8_release_layout_plans(tmp_path):
    ckpt = q3n.write_checkpoint(tmp_path / "fp8", fp8=True, shards=3)
    _, manifest, source = manifest_of(ckpt, "q8_0")
    assert any(n.endswith("_scale_inv") for n in source.tensors) and manifest.layers["mtp_kept"] == 1
    qkvz = next(e for e in manifest.tensors if e.name == "blk.0.attn_qkv.weight")
    assert qkvz.scales == ["model.layers.0.linear_attn.in_proj_qkvz.weight_scale_inv"]


def test_full_size_inventory_plans_with_the_mtp_layer(tmp_path):
    """Qwen3-Next-80B-A3B, headers only (151 GiB of bf16 on paper): every tensor claimed, the MTP layer kept."""
    ckpt = q3n.write_checkpoint(tmp_path / "full", q3n.FULL_CONFIG, header_only=True, shards=41, tokenizer=False)
    _, manifest, source = manifest_of(ckpt, "q4_k_m")
    assert len(source.tensors) == 75944
    assert manifest.layers | {"mtp_mode": None} == {"trunk": 48, "mtp": 1, "mtp_found": 1, "mtp_kept": 1,
                                                    "mtp_blocks": [48], "mtp_mode": None}
    assert manifest.counts == {"trunk": 840, "mtp": 20, "shared": 3}
    assert len({s for e in manifest.tensors for s in e.sources}) == len(source.tensors)  # every one claimed
    assert sorted(e.name for e in manifest.tensors if e.role == "mtp") == [n.replace(f"blk.{MTP}.", "blk.48.")
                                                                           for n in MTP_GGUF]
    shapes = {e.name: e.shape for e in manifest.tensors}
    assert shapes["blk.0.attn_qkv.weight"] == [2048, 8192] and shapes["blk.0.attn_gate.weight"] == [2048, 4096]
    assert shapes["blk.0.ssm_conv1d.weight"] == [4, 8192] and shapes["blk.3.attn_q.weight"] == [2048, 8192]
    assert shapes["blk.48.ffn_gate_exps.weight"] == [2048, 512, 512]
    assert shapes["blk.48.nextn.eh_proj.weight"] == [4096, 2048]
    meta = {m.key: m.value for m in manifest.metadata}
    assert meta["qwen3next.full_attention_interval"] == 4 and meta["qwen3next.rope.dimension_count"] == 64
    assert meta["qwen3next.ssm.inner_size"] == 4096 and meta["qwen3next.expert_count"] == 512


def test_stripped_checkpoint_is_reported_and_fails_verify(tmp_path, caplog):
    """No count in config.json and no mtp.* tensors: every Qwen3-Next release has one MTP layer, so the
    checkpoint was stripped; verify fails unless mtp=absent_ok."""
    stripped = q3n.write_checkpoint(tmp_path / "stripped", mtp=False)
    caplog.set_level(logging.WARNING)
    _, manifest, _ = manifest_of(stripped, "q8_0")
    assert "but the checkpoint has NO MTP tensors" in caplog.text and "stripped by another tool" in caplog.text
    assert manifest.layers["mtp"] == 1 and manifest.layers["mtp_found"] == manifest.layers["mtp_kept"] == 0
    overrides = (ARCH, "quant=q8_0", f"model.path={stripped}", "accept.enabled=false", "output.overwrite=true")
    with pytest.raises(VerificationError, match="no MTP tensors .stripped by another tool.; mtp=absent_ok"):
        pipeline.run(compose_cfg(*overrides, f"output.dir={tmp_path / 'keep'}"), progress=False)
    record = pipeline.run(compose_cfg(*overrides, f"output.dir={tmp_path / 'ok'}", "mtp=absent_ok"), progress=False)
    assert record["status"] == "ok"


# ---------------------------------------------------------------------------------------------- llama.cpp


def test_layout_and_values_are_llamacpp_converters(random_ckpt, which, f32_gguf, tmp_path):
    _, _, _, path = f32_gguf
    theirs = convert_with_llamacpp(random_ckpt, tmp_path / "llamacpp.gguf")
    assert layout_differences(gguf_layout(path), theirs) == JUSTIFIED[which]
    import gguf

    ours = {t.name: np.array(t.data) for t in gguf.GGUFReader(str(path)).tensors}
    reference = {t.name: np.array(t.data) for t in gguf.GGUFReader(str(tmp_path / "llamacpp.gguf")).tensors}
    worst = max(float(np.abs(ours[n].astype(np.float64) - reference[n]).max()) for n in reference)
    assert worst < 1e-6  # norms + 1, -exp(A_log), qkvz split, conv squeeze, experts: the same numbers


def test_q4_k_m_is_llama_quantizes_but_for_the_protected_head(f32_gguf, tmp_path):
    """Every tensor's type and bytes equal llama_model_quantize of the same F32 file (ffn_gate_inp_shexp [h, 1]
    is 1-D for ggml and stays F32; llama-quantize also writes it as [h]), except nextn.eh_proj, which the MTP
    policy keeps at Q6_K."""
    _, _, ckpt, path = f32_gguf
    _, manifest, _ = manifest_of(ckpt.path, "q4_k_m")
    ours = tensor_table(convert(manifest, ckpt, tmp_path / "ours.gguf", progress=False))
    theirs = tensor_table(llama_quantize(path, tmp_path / "theirs.gguf", "MOSTLY_Q4_K_M"))
    h = ckpt.config["hidden_size"]
    assert sorted(ours) == sorted(theirs) and theirs["blk.0.ffn_gate_inp_shexp.weight"][:2] == ("F32", [h])
    assert ours["blk.0.ffn_gate_inp_shexp.weight"][:2] == ("F32", [h, 1])  # as llama.cpp's converter writes it
    differ = {n: (ours[n][0], theirs[n][0]) for n in theirs if ours[n][0] != theirs[n][0] or ours[n][2] != theirs[n][2]}
    assert differ == {f"blk.{MTP}.nextn.eh_proj.weight": ("Q6_K", "Q4_K")}


def test_llamacpp_runs_trunk_and_mtp_head(f32_gguf, tokens, reference):
    cfg, manifest, ckpt, path = f32_gguf
    result = probe(path, tokens, load_mtp=True, mtp=True)
    assert result.ok, result.error
    assert result.n_layer == 4 and result.n_layer_nextn == 1
    assert [w for w in result.warnings if any(word in w for word in BAD_LOAD_WORDS)] == []
    reference, _ = reference
    delta = np.abs(result.logits - reference).max()
    print(f"max |llama.cpp - transformers| trunk logit = {delta:.2e}")
    assert delta < LOGIT_ATOL and (result.logits.argmax(-1) == reference.argmax(-1)).all()
    forward = ModelForward(ckpt.config, cfg.arch.mtp_head, GGUFWeights(manifest, path), keep_logits=True)
    (head,) = forward.mtp(forward.trunk(tokens), bootstrap_row=True)  # llama.cpp's zero-hidden first entry
    delta = np.abs(result.mtp_logits - head.scores.logits[0]).max()
    print(f"max |llama.cpp - torch| MTP logit = {delta:.2e}")
    assert delta < LOGIT_ATOL and (result.mtp_logits.argmax(-1) == head.scores.argmax[0]).all()


# ---------------------------------------------------------------------------------------------- torch forward


def transformers_reference(ckpt_dir, tokens) -> tuple[np.ndarray, np.ndarray]:
    """(trunk logits of transformers' Qwen3NextForCausalLM, MTP logits). The MTP head as vLLM describes it,
    built from transformers' own modules and the raw checkpoint: fc(cat[pre_fc_norm_embedding(E[t_{i+1}]),
    pre_fc_norm_hidden(h_i)]) -> a one-layer full-attention Qwen3NextModel whose final norm is mtp.norm ->
    lm_head; zero-centred norms as the checkpoint stores them (Qwen3NextRMSNorm adds the 1)."""
    from transformers import Qwen3NextConfig, Qwen3NextForCausalLM, Qwen3NextModel
    from transformers.models.qwen3_next.modeling_qwen3_next import Qwen3NextRMSNorm

    raw = {k: v.float() for f in sorted(ckpt_dir.glob("*.safetensors")) for k, v in load_file(str(f)).items()}
    config = json.loads((ckpt_dir / "config.json").read_text())
    trunk = Qwen3NextForCausalLM.from_pretrained(str(ckpt_dir), dtype=torch.float32).eval()
    block = Qwen3NextModel(Qwen3NextConfig(**{**config, "num_hidden_layers": 1, "layer_types": ["full_attention"]}))
    state = {"embed_tokens.weight": raw["model.embed_tokens.weight"], "norm.weight": raw["mtp.norm.weight"]}
    p = "mtp.layers.0."
    state |= {"layers.0." + k[len(p):]: v for k, v in raw.items() if k.startswith(p) and ".experts." not in k}
    experts = range(config["num_experts"])
    state["layers.0.mlp.experts.gate_up_proj"] = torch.stack(
        [torch.cat([raw[f"{p}mlp.experts.{e}.gate_proj.weight"], raw[f"{p}mlp.experts.{e}.up_proj.weight"]])
         for e in experts])
    state["layers.0.mlp.experts.down_proj"] = torch.stack(
        [raw[f"{p}mlp.experts.{e}.down_proj.weight"] for e in experts])
    block.load_state_dict(state, strict=True)
    norms = {}
    for name in ("pre_fc_norm_embedding", "pre_fc_norm_hidden"):
        norms[name] = Qwen3NextRMSNorm(config["hidden_size"], eps=config["rms_norm_eps"])
        norms[name].weight.data = raw[f"mtp.{name}.weight"]
    with torch.no_grad():
        ids = torch.tensor([tokens])
        hidden = trunk.model(ids).last_hidden_state  # after model.norm
        x = torch.cat([norms["pre_fc_norm_embedding"](trunk.model.embed_tokens(ids[:, 1:])),
                       norms["pre_fc_norm_hidden"](hidden[:, :-1])], dim=-1) @ raw["mtp.fc.weight"].T
        mtp = trunk.lm_head(block.eval()(inputs_embeds=x).last_hidden_state)[0].numpy()
        return trunk.lm_head(hidden)[0].numpy(), mtp


def test_forward_equals_transformers_and_the_mtp_reference(f32_gguf, tokens, reference):
    cfg, manifest, ckpt, path = f32_gguf
    reference, mtp_reference = reference
    for weights in (SourceWeights(manifest, ckpt), GGUFWeights(manifest, path)):  # GGUF: every op inverted
        forward = ModelForward(ckpt.config, cfg.arch.mtp_head, weights, keep_logits=True)
        trunk = forward.trunk(tokens)
        assert np.abs(trunk.scores.logits[0] - reference).max() < 1e-4 * np.abs(reference).max()
        (head,) = forward.mtp(trunk)
        assert np.abs(head.scores.logits[0] - mtp_reference).max() < 1e-4 * np.abs(mtp_reference).max()
        assert (head.scores.argmax[0] == mtp_reference.argmax(-1)).all()


# ----------------------------------------------------------------------------------- calibrate, convert, verify


def test_q8_0_with_calibration_keeps_the_head(aligned, tmp_path):
    """stage=all: calibrate (trunk and MTP layer), convert, verify (exit 0): acceptance judged and kept, and
    llama.cpp running the file's MTP head (load_mtp, MTP context) gives the same acceptance."""
    out = tmp_path / "q8_0"
    cfg = compose_cfg(ARCH, "quant=q8_0", f"model.path={aligned}", f"output.dir={out}", "calib.enabled=true",
                      "calib.samples=2", "calib.seq_len=64", "accept.max_tokens=256")
    record = pipeline.run(cfg, progress=False)
    assert record["status"] == "ok"
    acc = json.loads((out / "report.json").read_text())["mtp_acceptance"]
    print("q8_0 acceptance", acc["source"], acc["output"], acc["retention"], acc.get("llamacpp"))
    assert acc["judged"] and acc["source"][0] > 0.4 and acc["retention"][0] > 0.95
    assert abs(acc["llamacpp"]["acceptance"] - acc["llamacpp"]["torch_acceptance"]) <= 0.02
    imatrix = Imatrix.read(out / "imatrix.gguf")
    mtp = [n for n in MTP_GGUF if "norm" not in n and "ffn_gate_inp.weight" not in n]
    assert set(mtp) <= set(imatrix.entries)
    assert imatrix.entries[f"blk.{MTP}.nextn.eh_proj.weight"].sums.shape == (1, 512)
    assert imatrix.entries[f"blk.{MTP}.ffn_down_exps.weight"].sums.shape == (8, 64)
    qkv, gate = imatrix.entries["blk.0.attn_qkv.weight"], imatrix.entries["blk.0.attn_gate.weight"]
    assert np.array_equal(qkv.sums, gate.sums)  # both split from in_proj_qkvz: the same inputs


def test_q4_k_m_converts_verifies_and_loads(aligned, tmp_path):
    """Q4_K_M of the aligned model: verify passes and llama.cpp runs the MTP head. Its acceptance is measured
    (retention ~93% on this tiny random-embedding model: near-ties in the argmax flip), judged against 0.9."""
    out = tmp_path / "q4_k_m"
    cfg = compose_cfg(ARCH, "quant=q4_k_m", f"model.path={aligned}", f"output.dir={out}", "accept.max_tokens=256",
                      "accept.min_retention=0.9", "accept.llamacpp=false")
    assert pipeline.run(cfg, progress=False)["status"] == "ok"
    acc = json.loads((out / "report.json").read_text())["mtp_acceptance"]
    print("q4_k_m acceptance", acc["source"], acc["output"], acc["retention"])
    assert acc["judged"] and acc["retention"][0] > 0.9
    run_cli(ARCH, "quant=q4_k_m", f"model.path={aligned}", f"output.dir={out}", "stage=verify",
            "accept.enabled=false", cwd=tmp_path, check_rc=0)  # the command line's verify: exit 0
    result = probe(out / "model-q4_k_m.gguf", heldout_tokens(DEMO_DIR / "heldout.txt", Checkpoint.open(aligned), 48))
    assert result.ok and result.n_layer_nextn == 1, result.error
    assert [w for w in result.warnings if any(word in w for word in BAD_LOAD_WORDS)] == []
    assert np.isfinite(result.mtp_logits).all()
