import pytest

from mtpmanifest.errors import ConfigError
from mtpmanifest.ops import op_registry
from mtpmanifest.rules import compile_rule, compile_rules, match_all
from mtpmanifest.schema import TensorRule


def rule(**kw):
    return compile_rule(0, TensorRule(**kw), op_registry(), "arch/x.yaml")


def test_placeholders_and_target_names():
    r = rule(source="model.layers.{bid}.mlp.experts.{xid}.up_proj.weight", target="FFN_UP_EXP", op="stack_experts",
             params={"n_expert": "n_routed_experts"})
    m = r.match("model.layers.61.mlp.experts.255.up_proj.weight")
    assert (m.block, m.expert) == (61, 255)
    assert r.target_names(61) == ["blk.61.ffn_up_exps.weight"]
    assert r.match("model.layers.61.mlp.experts.x.up_proj.weight") is None
    assert r.match("model.layers.61.mlp.experts.1.up_proj.weight_scale_inv") is None


def test_mtp_targets_use_gguf_nextn_names():
    r = rule(source="model.layers.{mtp}.shared_head.head.weight", target="NEXTN_SHARED_HEAD_HEAD")
    assert r.target_names(61) == ["blk.61.nextn.shared_head_head.weight"]


def test_nextn_and_mtp_layer_place_tensors_after_the_trunk():
    ops = op_registry()
    layer = compile_rule(0, TensorRule(source="mtp.layers.{nextn}.self_attn.q_proj.weight", target="ATTN_Q"), ops, "x", 48)
    fc = compile_rule(1, TensorRule(source="mtp.fc.weight", target="NEXTN_EH_PROJ", mtp_layer=0), ops, "x", 48)
    assert layer.match("mtp.layers.1.self_attn.q_proj.weight").block == 49
    assert fc.match("mtp.fc.weight").block == 48 and fc.mtp_only and layer.mtp_only
    assert fc.target_names(48) == ["blk.48.nextn.eh_proj.weight"]


@pytest.mark.parametrize("kw, message", [
    ({"source": "a.{foo}.w", "target": "ATTN_NORM"}, "unknown placeholder"),
    ({"source": "a.{bid}.w", "target": "NOT_A_TENSOR"}, "not a gguf MODEL_TENSOR name"),
    ({"source": "a.{bid}.w", "target": "ATTN_NORM", "op": "frobnicate"}, "unknown op"),
    ({"source": "a.{bid}.w", "target": "ATTN_K_B", "op": "split_kv_b"}, "has 2 output"),
    ({"source": "a.{bid}.w", "targets": ["ATTN_K_B", "ATTN_V_B"], "op": "split_kv_b"}, "needs params"),
    ({"source": "a.{bid}.{xid}.w", "target": "FFN_UP_EXP"}, "does not take an {xid}"),
    ({"source": "a.w", "target": "TOKEN_EMBD"}, "needs an explicit role"),
    ({"source": "a.{bid}.{mtp}.w", "target": "ATTN_NORM"}, "only one of"),
    ({"source": "a.{nextn}.{mtp}.w", "target": "ATTN_NORM"}, "only one of"),
    ({"source": "a.{nextn}.w", "target": "ATTN_NORM", "mtp_layer": 0}, "mtp_layer 0 needs a source without"),
    ({"source": "a.w", "target": "ATTN_NORM", "mtp_layer": 0, "role": "trunk"}, "role auto or mtp"),
])
def test_bad_rules_are_config_errors(kw, message):
    with pytest.raises(ConfigError, match=message):
        rule(**kw)


def test_match_all_reports_unclaimed_and_conflicts():
    rules = compile_rules([
        TensorRule(source="model.layers.{bid}.input_layernorm.weight", target="ATTN_NORM"),
        TensorRule(source="model.layers.0.input_layernorm.weight", target="ATTN_NORM", role="trunk"),
    ], op_registry(), "arch/x.yaml")
    claims, unclaimed, conflicts = match_all(
        ["model.layers.0.input_layernorm.weight", "model.layers.1.input_layernorm.weight", "model.other"], rules)
    assert list(claims) == ["model.layers.1.input_layernorm.weight"]
    assert unclaimed == ["model.other"]
    assert set(conflicts) == {"model.layers.0.input_layernorm.weight"}


def test_duplicate_patterns_rejected():
    with pytest.raises(ConfigError, match="same source pattern"):
        compile_rules([TensorRule(source="a.{bid}", target="ATTN_NORM")] * 2, op_registry(), "arch/x.yaml")
