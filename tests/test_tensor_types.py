"""Per-tensor types equal llama_model_quantize's for the same F32 GGUF (quant.mtp=inherit), and the
MTP policy 'protect' changes exactly the MTP tensors it promises to."""
from __future__ import annotations

import pytest

from conftest import compose_cfg, run_cli
from llama_quantize import llama_quantize, tensor_table
from mtpmanifest.demo import DEMO_DIR
from mtpmanifest.fixtures.deepseek_v3 import TINY_CONFIG, write_checkpoint
from mtpmanifest.plan import compile_manifest
from mtpmanifest.source import Checkpoint
from mtpmanifest.tensor_types import use_more_bits

K_PRESETS = ["q2_k", "q3_k_m", "q4_k_m", "q5_k_m", "q6_k", "q8_0"]
SECOND_CONFIG = {
    **TINY_CONFIG,
    "hidden_size": 512, "num_hidden_layers": 7, "first_k_dense_replace": 2, "intermediate_size": 768,
    "moe_intermediate_size": 256, "n_routed_experts": 4, "num_experts_per_tok": 2, "n_group": 1, "topk_group": 1,
    "num_attention_heads": 2, "num_key_value_heads": 2, "q_lora_rank": 256, "kv_lora_rank": 256,
}


@pytest.fixture(scope="module", params=["demo", "second"])
def f32_gguf(request, tmp_path_factory):
    """(checkpoint, our F32 GGUF of it): the input llama_model_quantize gets."""
    work = tmp_path_factory.mktemp(request.param)
    ckpt = DEMO_DIR if request.param == "demo" else write_checkpoint(work / "ckpt", SECOND_CONFIG, fp8=False, seed=11)
    run_cli(f"model.path={ckpt}", f"output.dir={work / 'f32'}", "quant=f32", "stage=convert", cwd=work, check_rc=0)
    return ckpt, work / "f32" / "model-f32.gguf"


def planned_types(ckpt, preset, *overrides):
    cfg = compose_cfg("arch=deepseek_v3", f"quant={preset}", *overrides)
    return {e.name: e for e in compile_manifest(cfg.arch, cfg.quant, Checkpoint.open(ckpt)).tensors}


@pytest.mark.parametrize("preset", K_PRESETS)
def test_inherit_types_and_bytes_equal_llama_model_quantize(f32_gguf, preset, tmp_path):
    """Every tensor of the whole file: same type, same shape, same bytes as llama.cpp's quantizer."""
    ckpt, f32 = f32_gguf
    ours = planned_types(ckpt, preset, "quant.mtp=inherit")
    cfg = compose_cfg(f"quant={preset}")
    theirs = tensor_table(llama_quantize(f32, tmp_path / "ref.gguf", cfg.quant.file_type))
    assert set(ours) == set(theirs)
    mismatched = {n: (ours[n].type, theirs[n][0]) for n in ours if ours[n].type != theirs[n][0]}
    assert mismatched == {}
    # no imatrix on either side (llama_model_quantize does not require one for MOSTLY_Q2_K)
    run_cli(f"model.path={ckpt}", f"output.dir={tmp_path / 'ours'}", f"quant={preset}", "quant.mtp=inherit", "quant.requires_imatrix=false",
            "stage=convert", cwd=tmp_path, check_rc=0)
    written = tensor_table(tmp_path / "ours" / f"model-{preset}.gguf")
    different = sorted(n for n in theirs if written[n] != theirs[n])
    assert different == []


def test_protect_policy_guards_the_draft(f32_gguf):
    ckpt, _ = f32_gguf
    inherit = planned_types(ckpt, "q4_k_m", "quant.mtp=inherit")
    protect = planned_types(ckpt, "q4_k_m")
    block = max(e.block for e in protect.values() if e.block is not None)
    head, embed, eh_proj = (f"blk.{block}.nextn.{n}.weight" for n in ("shared_head_head", "embed_tokens", "eh_proj"))
    assert inherit[head].type == "Q4_K" and protect[head].type == protect["output.weight"].type == "Q6_K"
    assert protect[embed].type == protect["token_embd.weight"].type
    assert inherit[eh_proj].type == "Q4_K" and protect[eh_proj].type == "Q6_K"
    assert "MTP protect" in protect[eh_proj].type_rule
    changed = {n for n in protect if protect[n].type != inherit[n].type}
    assert changed == {head, eh_proj}  # the trunk is untouched


def test_mtp_pins(f32_gguf):
    ckpt, _ = f32_gguf
    pinned = planned_types(ckpt, "q4_k_m", "quant.mtp_pins=['nextn\\.(eh_proj|embed_tokens)=Q8_0']")
    block = max(e.block for e in pinned.values() if e.block is not None)
    assert pinned[f"blk.{block}.nextn.eh_proj.weight"].type == "Q8_0"
    assert pinned[f"blk.{block}.nextn.embed_tokens.weight"].type == "Q8_0"
    assert pinned["token_embd.weight"].type == "Q4_K"  # pins touch MTP tensors only


def test_use_more_bits_matches_llamacpp_formula():
    # llama.cpp: i < n/8 || i >= 7*n/8 || (i - n/8) % 3 == 2, over n_layer_all = 62 for DeepSeek-V3
    more = [i for i in range(62) if use_more_bits(i, 62)]
    assert more[:8] == [0, 1, 2, 3, 4, 5, 6, 9] and more[-8:] == [54, 55, 56, 57, 58, 59, 60, 61]
