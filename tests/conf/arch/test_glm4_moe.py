"""arch=glm4_moe: GLM-4.5 (MTP copies of embedding and head shipped) and GLM-4.6 (left out) checkpoints with the
MTP layer in mtp.safetensors plan, convert, calibrate, verify and keep their head; the GGUF has llama.cpp's
converter layout, loads in llama.cpp with load_mtp, and its trunk and MTP logits there equal transformers' and
our torch forward. Full-size GLM-4.5 / 4.5-Air / 4.6 inventories (headers only) plan with every MTP tensor kept."""
from __future__ import annotations

import json
import re
from functools import partial

import numpy as np
import pytest
import torch
from safetensors import safe_open

from conftest import compose_cfg
from family_run import calibrated_run, manifest_of as family_manifest
from llamacpp_convert import convert_many_with_llamacpp, gguf_layout, layout_differences
from mtpmanifest import pipeline
from mtpmanifest.accept_stage import heldout_tokens
from mtpmanifest.convert import convert
from mtpmanifest.demo import DEMO_DIR
from mtpmanifest.errors import VerificationError
from mtpmanifest.fixtures import glm4_moe as glm
from mtpmanifest.fixtures.hf_reference import hf_state_dict
from mtpmanifest.forward import ModelForward
from mtpmanifest.llamacpp import probe
from mtpmanifest.source import Checkpoint
from mtpmanifest.weights import GGUFWeights

ARCH = "arch=glm4_moe"
VARIANTS = {"glm4.5": True, "glm4.6": False}  # -> mtp_copies
MTP = glm.TINY_CONFIG["num_hidden_layers"]  # block of the MTP layer
COPIES = [f"blk.{MTP}.nextn.embed_tokens.weight", f"blk.{MTP}.nextn.shared_head_head.weight"]
BAD_LOAD_WORDS = ("unused tensor", "wrong number of tensors", "not found", "wrong shape")
# float32 on both sides: only summation order differs (~1e-5 here); a wrong router or rope moves logits by ~0.1
LOGIT_ATOL = 1e-3


manifest_of = partial(family_manifest, ARCH)


@pytest.fixture(scope="module", params=list(VARIANTS))
def variant(request):
    return request.param


@pytest.fixture(scope="module")
def random_ckpt(variant, tmp_path_factory):
    return glm.write_checkpoint(tmp_path_factory.mktemp(variant) / "ckpt", seed=3, mtp_copies=VARIANTS[variant])


@pytest.fixture(scope="module")
def f32_gguf(random_ckpt, tmp_path_factory):
    _, manifest, ckpt = manifest_of(random_ckpt)
    path = convert(manifest, ckpt, tmp_path_factory.mktemp("f32") / "model-f32.gguf", progress=False)
    return manifest, ckpt, path


@pytest.fixture(scope="module")
def tokens(random_ckpt):
    return heldout_tokens(DEMO_DIR / "heldout.txt", Checkpoint.open(random_ckpt), 48)


def test_trunk_names_are_transformers_names():
    """The fixture's trunk tensors are exactly Glm4MoeForCausalLM's parameters (experts fused as transformers
    5 keeps them), with and without qk norm and attention biases."""
    from transformers import Glm4MoeConfig, Glm4MoeForCausalLM

    for changes in ({}, {"use_qk_norm": False, "first_k_dense_replace": 2}, {"attention_bias": False}):
        config = {**glm.TINY_CONFIG, **changes}
        with torch.device("meta"):
            expected = set(Glm4MoeForCausalLM(Glm4MoeConfig(**config)).state_dict())
        ours = {re.sub(r"experts\.\d+\.(gate|up)_proj\.weight", "experts.gate_up_proj",
                       re.sub(r"experts\.\d+\.down_proj\.weight", "experts.down_proj", name))
                for name, _, _, _ in glm.tensor_specs(config) if not glm.is_mtp_tensor(name, config)}
        assert ours == expected, changes


@pytest.mark.parametrize("copies", [True, False])
def test_mtp_layer_lives_in_mtp_safetensors(copies, tmp_path):
    ckpt = glm.write_checkpoint(tmp_path / "ckpt", mtp_copies=copies)
    weight_map = json.loads((ckpt / "model.safetensors.index.json").read_text())["weight_map"]
    in_mtp_file = {n for n, f in weight_map.items() if f == glm.MTP_FILE}
    assert in_mtp_file == {n for n in weight_map if n.startswith(f"model.layers.{MTP}.")}
    with safe_open(str(ckpt / glm.MTP_FILE), "pt") as f:
        assert set(f.keys()) == in_mtp_file
    copy_names = {f"model.layers.{MTP}.embed_tokens.weight", f"model.layers.{MTP}.shared_head.head.weight"}
    assert (copy_names <= in_mtp_file) == copies and len(in_mtp_file) == 44 + 2 * copies  # 8 experts x 3 per-expert tensors
    stripped = glm.write_checkpoint(tmp_path / "stripped", mtp=False, mtp_copies=copies)
    assert not (stripped / glm.MTP_FILE).exists()
    assert json.loads((stripped / "config.json").read_text()) == json.loads((ckpt / "config.json").read_text())
    # the same seed gives the trunk the same bytes with or without the MTP layer
    with safe_open(str(ckpt / glm.TRUNK_FILES[1]), "pt") as a, safe_open(str(stripped / glm.TRUNK_FILES[1]), "pt") as b:
        assert torch.equal(a.get_tensor("lm_head.weight"), b.get_tensor("lm_head.weight"))


def test_plan_claims_everything_and_keeps_the_mtp_layer(variant, random_ckpt):
    _, manifest, ckpt = manifest_of(random_ckpt, "q4_k_m")
    sources = {s for e in manifest.tensors for s in e.sources}
    assert sources == set(ckpt.tensors)
    mtp_sources = {s for e in manifest.tensors if e.role == "mtp" for s in e.sources}
    assert mtp_sources == {n for n in ckpt.tensors if glm.is_mtp_tensor(n, ckpt.config)}
    assert manifest.layers["mtp_kept"] == 1 and manifest.layers["mtp_blocks"] == [MTP]
    assert manifest.optional_absent == ([] if VARIANTS[variant] else COPIES)
    names = {e.name for e in manifest.tensors}
    assert (set(COPIES) <= names) == VARIANTS[variant]
    assert {f"blk.{MTP}.ffn_gate_exps.weight", f"blk.{MTP}.attn_q.bias", f"blk.{MTP}.attn_k_norm.weight"} <= names


CONFIG_VARIANTS = {  # config.json spellings the releases do not use but fine-tunes and transformers 5 write
    "yarn (rope_scaling)": {"rope_scaling": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 1024,
                                             "beta_fast": 32, "beta_slow": 1}},
    "yarn (rope_parameters)": {"rope_scaling": None, "rope_theta": None, "partial_rotary_factor": None,
                               "rope_parameters": {"rope_type": "yarn", "factor": 2.0, "rope_theta": 50000.0,
                                                   "original_max_position_embeddings": 2048,
                                                   "attention_factor": 1.1, "partial_rotary_factor": 0.25}},
    "linear": {"rope_scaling": {"type": "linear", "factor": 2.0}},
    # keys left out take transformers' defaults, in llama.cpp's converter (AutoConfig) and in the YAML
    "defaults": {"head_dim": None, "num_attention_heads": 4, "n_group": None, "topk_group": None,
                 "routed_scaling_factor": None, "first_k_dense_replace": None, "n_shared_experts": None,
                 "norm_topk_prob": False, "use_qk_norm": False, "attention_bias": False},
}


def test_layouts_equal_llamacpp_converter(tmp_path):
    """Tensor names, shapes and types, metadata keys and values: the same as convert_hf_to_gguf.py writes
    (tokenizer.* and naming general.* keys aside, see tests/llamacpp_convert.py), for GLM-4.5 and GLM-4.6
    (both leave the MTP copies out and llama.cpp falls back to token_embd / output) and for config.json
    spellings the releases do not use. One converter process for all of them."""
    cases = {f"{v} release": ({}, copies) for v, copies in VARIANTS.items()}
    cases.update({name: (changes, False) for name, changes in CONFIG_VARIANTS.items()})
    jobs, ours = [], {}
    for i, (name, (changes, copies)) in enumerate(cases.items()):
        config = {k: v for k, v in {**glm.TINY_CONFIG, **changes}.items() if v is not None}
        ckpt_dir = glm.write_checkpoint(tmp_path / f"ckpt{i}", config, mtp_copies=copies, tokenizer=i == 0, seed=i)
        if i:  # one tokenizer is enough (ours reads it; the converter's vocabulary step is skipped)
            (ckpt_dir / "tokenizer.json").symlink_to(tmp_path / "ckpt0" / "tokenizer.json")
        _, manifest, ckpt = manifest_of(ckpt_dir)
        ours[name] = gguf_layout(convert(manifest, ckpt, tmp_path / f"ours{i}.gguf", progress=False))
        jobs.append((ckpt_dir, tmp_path / f"theirs{i}.gguf"))
    for name, theirs in zip(cases, convert_many_with_llamacpp(jobs)):
        assert layout_differences(ours[name], theirs, compare_types=True) == [], name
    for name, (_, copies) in cases.items():
        assert (set(COPIES) <= set(ours[name]["tensors"])) == copies, name
        assert ours[name]["keys"]["glm4moe.nextn_predict_layers"] == 1
        assert ours[name]["keys"]["glm4moe.block_count"] == MTP + 1
    assert ours["yarn (rope_parameters)"]["keys"]["glm4moe.rope.dimension_count"] == 8  # 32 * 0.25
    assert ours["defaults"]["keys"]["glm4moe.leading_dense_block_count"] == 1


def _transformers_logits(ckpt: Checkpoint, tokens) -> np.ndarray:
    from transformers import Glm4MoeConfig, Glm4MoeForCausalLM

    model = Glm4MoeForCausalLM(Glm4MoeConfig(**ckpt.config)).float().eval()
    model.load_state_dict(hf_state_dict(ckpt), strict=True)
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0].numpy()


def test_llamacpp_runs_trunk_and_mtp_like_torch(f32_gguf, tokens):
    """llama.cpp loads the file with load_mtp; its trunk logits equal transformers' Glm4MoeForCausalLM, and its
    MTP context's logits equal our torch forward of the recipe (with llama.cpp's extra first entry)."""
    manifest, ckpt, path = f32_gguf
    result = probe(path, tokens, load_mtp=True, mtp=True)
    assert result.ok, result.error
    assert result.n_layer_nextn == 1
    assert [w for w in result.warnings if any(word in w for word in BAD_LOAD_WORDS)] == []
    reference = _transformers_logits(ckpt, tokens)
    assert np.abs(result.logits - reference).max() < LOGIT_ATOL
    assert (result.logits.argmax(-1) == reference.argmax(-1)).all()
    recipe = compose_cfg(ARCH).arch.mtp_head
    forward = ModelForward(ckpt.config, recipe, GGUFWeights(manifest, path), keep_logits=True)
    (mtp,) = forward.mtp(forward.trunk(tokens), bootstrap_row=True)
    assert np.abs(result.mtp_logits[1:] - mtp.scores.logits[0, 1:]).max() < 1e-4
    assert (result.mtp_logits.argmax(-1)[1:] == mtp.scores.argmax[0, 1:]).all()


@pytest.mark.parametrize("quant", ["q8_0", "q4_k_m"])
def test_quantized_keeps_a_working_head(variant, quant, tmp_path):
    """A head that agrees with its trunk by construction: calibrated (imatrix covers the MTP layer),
    converted, verified (acceptance retained), and llama.cpp runs the written head."""
    copies = VARIANTS[variant]
    ckpt = glm.write_checkpoint(tmp_path / "ckpt", weights=glm.aligned_weights(mtp_copies=copies), mtp_copies=copies)
    out = tmp_path / "out"
    record, entries, wanted = calibrated_run(ARCH, ckpt, out, quant, "accept.llamacpp_tokens=256")
    assert wanted <= entries and f"blk.{MTP}.nextn.eh_proj.weight" in entries
    assert f"blk.{MTP}.ffn_down_exps.weight" in entries
    acc = record["mtp_acceptance"]
    print(f"{variant} {quant}: acceptance source {acc['source'][0]:.3f} output {acc['output'][0]:.3f} "
          f"llama.cpp {acc['llamacpp']['acceptance']:.3f}")
    assert acc["judged"] and acc["source"][0] > 0.4 and acc["retention"][0] >= 0.95
    assert abs(acc["llamacpp"]["acceptance"] - acc["llamacpp"]["torch_acceptance"]) <= 0.02
    result = probe(out / f"model-{quant}.gguf", list(range(2, 34)), load_mtp=True, mtp=True)
    assert result.ok, result.error
    assert result.n_layer_nextn == 1 and np.isfinite(result.mtp_logits).all()
    assert [w for w in result.warnings if any(word in w for word in BAD_LOAD_WORDS)] == []


FULL_SIZE = {  # config, mtp_copies, GGUF tensors of the MTP layer (21 + 2 qk norms + 2 copies)
    "GLM-4.5": (glm.FULL_CONFIG, True, 25),
    "GLM-4.5-Air": (glm.AIR_CONFIG, True, 23),
    "GLM-4.6": (glm.FULL_CONFIG_46, False, 23),
}


@pytest.mark.parametrize("release", list(FULL_SIZE))
def test_full_size_inventory_plans_with_every_mtp_tensor_kept(release, tmp_path):
    config, copies, n_mtp = FULL_SIZE[release]
    ckpt_dir = glm.write_checkpoint(tmp_path / "ckpt", config, header_only=True, mtp_copies=copies, tokenizer=False)
    _, manifest, ckpt = manifest_of(ckpt_dir, "q4_k_m")
    n, h, v = config["num_hidden_layers"], config["hidden_size"], config["vocab_size"]
    assert {s for e in manifest.tensors for s in e.sources} == set(ckpt.tensors)
    mtp_sources = [s for e in manifest.tensors if e.role == "mtp" for s in e.sources]
    expected = [t for t in ckpt.tensors if t.startswith(f"model.layers.{n}.")]
    assert sorted(mtp_sources) == sorted(expected)
    assert sum(e.role == "mtp" for e in manifest.tensors) == n_mtp
    assert manifest.layers["mtp_blocks"] == [n]
    shapes = {e.name: e.shape for e in manifest.tensors}
    assert shapes[f"blk.{n}.nextn.eh_proj.weight"] == [2 * h, h]
    assert shapes[f"blk.{n}.ffn_gate_exps.weight"] == [h, config["moe_intermediate_size"], config["n_routed_experts"]]
    assert (f"blk.{n}.nextn.embed_tokens.weight" in shapes) == copies
    if copies:
        assert shapes[f"blk.{n}.nextn.shared_head_head.weight"] == [h, v]
    assert (f"blk.{n}.attn_q_norm.weight" in shapes) == config["use_qk_norm"]
    assert manifest.bytes_in > 100 * 2**30  # the real size, planned from headers alone


def test_stripped_checkpoint_is_reported_and_fails_verify(tmp_path, caplog):
    ckpt = glm.write_checkpoint(tmp_path / "ckpt", mtp=False)
    common = (ARCH, "quant=q8_0", f"model.path={ckpt}", "accept.enabled=false", "output.overwrite=true")
    with pytest.raises(VerificationError, match="MTP head is gone"):
        pipeline.run(compose_cfg(*common, f"output.dir={tmp_path / 'out'}"), progress=False)
    assert "NO MTP tensors" in caplog.text
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["layers"]["mtp"] == 1 and manifest["layers"]["mtp_found"] == 0
    record = pipeline.run(compose_cfg(*common, f"output.dir={tmp_path / 'ok'}", "mtp=absent_ok"), progress=False)
    assert record["exit_code"] == 0
