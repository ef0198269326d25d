import json

import pytest
import safetensors.torch as st

from conftest import compose_cfg, edit_config
from mtpmanifest.errors import BadInputError, ConfigError
from mtpmanifest.fixtures.deepseek_v3 import write_checkpoint
from mtpmanifest.manifest import Manifest, schema_errors
from mtpmanifest.plan import compile_manifest
from mtpmanifest.schema import TensorRule
from mtpmanifest.source import Checkpoint


def plan(path, *overrides):
    cfg = compose_cfg("arch=deepseek_v3", "quant=q8_0", *overrides)
    return compile_manifest(cfg.arch, cfg.quant, Checkpoint.open(path))


def test_every_source_tensor_claimed_exactly_once(tiny_ckpt):
    manifest = plan(tiny_ckpt)
    ckpt = Checkpoint.open(tiny_ckpt)
    claimed = [s for e in manifest.tensors if e.output_index == 0 for s in e.sources + e.scales]
    assert sorted(claimed) == sorted(ckpt.tensors)
    assert schema_errors("manifest.schema.json", manifest.to_json()) == []


def test_layout_matches_llamacpp_deepseek2(tiny_ckpt):
    manifest = plan(tiny_ckpt)
    names = {e.name: e for e in manifest.tensors}
    assert len(names) == 94  # the layout llama.cpp loads with its MTP head usable
    assert manifest.layers == {"trunk": 4, "mtp": 1, "mtp_found": 1, "mtp_kept": 1, "mtp_blocks": [4], "mtp_mode": "keep"}
    assert manifest.counts == {"trunk": 67, "mtp": 24, "shared": 3}
    assert names["blk.4.nextn.eh_proj.weight"].shape == [512, 256]
    assert names["blk.4.nextn.eh_proj.weight"].mtp_layer == 0
    assert names["blk.1.ffn_gate_exps.weight"].shape == [256, 128, 8]
    assert names["blk.1.ffn_down_exps.weight"].shape == [128, 256, 8]
    assert names["blk.0.attn_k_b.weight"].shape == [32, 32, 4]
    assert names["blk.0.attn_v_b.weight"].shape == [32, 32, 4]
    assert names["blk.4.ffn_gate_exps.weight"].role == "mtp"
    assert names["token_embd.weight"].role == "shared"
    assert len(names["blk.4.ffn_up_exps.weight"].sources) == 8
    assert names["blk.1.attn_q_a.weight"].scales == ["model.layers.1.self_attn.q_a_proj.weight_scale_inv"]
    meta = {m.key: m.value for m in manifest.metadata}
    assert meta["deepseek2.expert_gating_func"] == 2
    assert meta["deepseek2.attention.head_count_kv"] == 1


def test_types_follow_preset_and_llamacpp_f32_rules(tiny_ckpt):
    names = {e.name: e for e in plan(tiny_ckpt).tensors}
    assert names["blk.4.nextn.enorm.weight"].type == "F32"
    assert names["blk.1.ffn_gate_inp.weight"].type == "F32"
    assert names["blk.1.exp_probs_b.bias"].type == "F32"
    assert names["output.weight"].type == "Q8_0"
    assert names["blk.4.nextn.eh_proj.weight"].type == "Q8_0"
    f16 = {e.name: e for e in plan(tiny_ckpt, "quant=f16").tensors}
    assert f16["blk.4.nextn.eh_proj.weight"].type == "F16"


def test_plan_is_deterministic(tiny_ckpt):
    assert plan(tiny_ckpt).to_json() == plan(tiny_ckpt).to_json()


def test_manifest_round_trips_through_json(tiny_ckpt, tmp_path):
    manifest = plan(tiny_ckpt)
    manifest.write(tmp_path / "manifest.json")
    assert Manifest.read(tmp_path / "manifest.json") == manifest


def _add_shard(model_dir, tensors):
    st.save_file(tensors, str(model_dir / "extra.safetensors"))


def test_unclaimed_tensors_listed(fresh_ckpt):
    import torch
    _add_shard(fresh_ckpt, {f"model.mystery.{i}.weight": torch.zeros(2) for i in range(25)})
    with pytest.raises(BadInputError) as info:
        plan(fresh_ckpt)
    assert "25 source tensor(s) claimed by no rule" in str(info.value)
    assert "model.mystery.0.weight" in str(info.value) and "and 5 more" in str(info.value)
    assert info.value.exit_code == 3 and len(info.value.details) == 25


def test_two_rules_claiming_one_tensor_is_a_config_error(tiny_ckpt):
    cfg = compose_cfg("arch=deepseek_v3")
    cfg.arch.tensors.append(TensorRule(source="model.layers.0.input_layernorm.weight", target="ATTN_NORM", role="trunk"))
    with pytest.raises(ConfigError) as info:
        compile_manifest(cfg.arch, cfg.quant, Checkpoint.open(tiny_ckpt))
    assert "model.layers.0.input_layernorm.weight" in str(info.value) and info.value.exit_code == 2


def test_missing_tensor_is_named(fresh_ckpt):
    shard = fresh_ckpt / "model.safetensors"
    tensors = st.load_file(str(shard))
    del tensors["model.layers.2.self_attn.o_proj.weight"], tensors["model.layers.2.self_attn.o_proj.weight_scale_inv"]
    st.save_file(tensors, str(shard))
    with pytest.raises(BadInputError, match=r"missing: blk\.2\.attn_output\.weight"):
        plan(fresh_ckpt)


def test_missing_expert_is_named(fresh_ckpt):
    shard = fresh_ckpt / "model.safetensors"
    tensors = st.load_file(str(shard))
    del tensors["model.layers.3.mlp.experts.5.up_proj.weight"], tensors["model.layers.3.mlp.experts.5.up_proj.weight_scale_inv"]
    st.save_file(tensors, str(shard))
    with pytest.raises(BadInputError, match=r"blk\.3\.ffn_up_exps\.weight: experts \[5\] missing"):
        plan(fresh_ckpt)


def test_shape_contradicting_config(fresh_ckpt):
    edit_config(fresh_ckpt, q_lora_rank=48)
    with pytest.raises(BadInputError, match=r"model\.layers\.0\.self_attn\.q_a_\w+\.weight: shape \[64.*\] contradicts config\.json: expected \[q_lora_rank"):
        plan(fresh_ckpt)


def test_layer_layout_contradicting_config(fresh_ckpt):
    edit_config(fresh_ckpt, first_k_dense_replace=2)
    with pytest.raises(BadInputError, match=r"model\.layers\.1\.mlp\..*not expected in block 1"):
        plan(fresh_ckpt)


def test_block_beyond_declared_layers(fresh_ckpt):
    edit_config(fresh_ckpt, num_hidden_layers=3)
    with pytest.raises(BadInputError, match="beyond the 3 trunk"):
        plan(fresh_ckpt)


def test_fp8_without_quantization_config(fresh_ckpt):
    edit_config(fresh_ckpt, quantization_config=None)
    with pytest.raises(BadInputError, match="F8_E4M3 but config.json declares no quantization_config"):
        plan(fresh_ckpt)


def test_stripped_mtp_is_reported_as_such(tmp_path, caplog):
    path = write_checkpoint(tmp_path / "stripped", mtp=False)
    manifest = plan(path)
    assert "declares 1 MTP layer(s) (num_nextn_predict_layers) but the checkpoint has NO MTP tensors" in caplog.text
    assert "stripped by another tool" in caplog.text and "verify will fail (mtp=absent_ok accepts it)" in caplog.text
    assert manifest.layers | {"mtp_blocks": None} == {"trunk": 4, "mtp": 1, "mtp_found": 0, "mtp_kept": 0,
                                                        "mtp_blocks": None, "mtp_mode": "keep"}
    assert manifest.optional_absent == []  # the stripped layer's optional copies are not "absent", the layer is


def test_missing_config_key_named(fresh_ckpt):
    edit_config(fresh_ckpt, kv_lora_rank=None)
    with pytest.raises(BadInputError, match="config.json: missing key 'kv_lora_rank'"):
        plan(fresh_ckpt)


def test_bf16_and_sharded_checkpoint(tmp_path):
    path = write_checkpoint(tmp_path / "bf16", fp8=False, shards=3, seed=3)
    manifest = plan(path)
    assert manifest.layers["mtp_kept"] == 1 and len(manifest.tensors) == 94
    assert all(not e.scales for e in manifest.tensors)
    assert json.loads((path / "model.safetensors.index.json").read_text())["weight_map"]


@pytest.mark.parametrize("type_key", ["type", "rope_type"])
def test_yarn_rope_metadata(fresh_ckpt, type_key):
    edit_config(fresh_ckpt, rope_scaling={type_key: "yarn", "factor": 40, "original_max_position_embeddings": 4096,
                                          "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0})
    meta = {m.key: m.value for m in plan(fresh_ckpt).metadata}
    assert meta["deepseek2.rope.scaling.type"] == "yarn"
    assert meta["deepseek2.rope.scaling.factor"] == 40.0
    assert meta["deepseek2.rope.scaling.original_context_length"] == 4096
    assert meta["deepseek2.rope.scaling.yarn_beta_fast"] == 32.0
    assert meta["deepseek2.rope.scaling.yarn_beta_slow"] == 1.0
    assert meta["deepseek2.rope.scaling.yarn_log_multiplier"] == pytest.approx(0.1)


def test_no_rope_scaling_writes_no_yarn_keys(tiny_ckpt):
    assert not [m for m in plan(tiny_ckpt).metadata if ".rope.scaling." in m.key]


def test_softmax_router_maps_to_gating_func_1(fresh_ckpt):
    edit_config(fresh_ckpt, scoring_func="softmax")
    assert {m.key: m.value for m in plan(fresh_ckpt).metadata}["deepseek2.expert_gating_func"] == 1
    edit_config(fresh_ckpt, scoring_func="tanh")
    with pytest.raises(BadInputError, match="scoring_func = 'tanh' is not one of"):
        plan(fresh_ckpt)


@pytest.mark.parametrize("rope_scaling", [{"type": "linear", "factor": 4.0}, {"rope_type": "dynamic", "factor": 2.0}])
def test_unconverted_config_feature_is_rejected(fresh_ckpt, rope_scaling):
    """A RoPE scaling the GGUF keys of arch/deepseek_v3.yaml cannot express stops the run (no silent drop)."""
    edit_config(fresh_ckpt, rope_scaling=rope_scaling)
    with pytest.raises(BadInputError, match=r"config.json: RoPE scaling other than YaRN is not converted \(rope_scaling"):
        plan(fresh_ckpt)
