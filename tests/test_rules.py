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


@pytest.mark.parametrize("kw, message", [
    ({"source": "a.{foo}.w", "target": "ATTN_NORM"}, "unknown placeholder"),
    ({"source": "a.{bid}.w", "target": "NOT_A_TENSOR"}, "not a gguf MODEL_TENSOR name"),
    ({"source": "a.{bid}.w", "target": "ATTN_NORM", "op": "frobnicate"}, "unknown op"),
    ({"source": "a.{bid}.w", "target": "ATTN_K_B", "op": "split_kv_b"}, "has 2 output"),
    ({"source": "a.{bid}.w", "targets": ["ATTN_K_B", "ATTN_V_B"], "op": "split_kv_b"}, "needs params"),
    ({"source": "a.{bid}.{xid}.w", "target": "FFN_UP_EXP"}, "does not take an {xid}"),
    ({"source": "a.w", "target": "TOKEN_EMBD"}, "needs an explicit role"),
    ({"source": "a.{bid}.{mtp}.w", "target": "ATTN_NORM"}, "not together"),
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
