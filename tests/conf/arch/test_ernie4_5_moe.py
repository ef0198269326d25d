"""arch=ernie4_5_moe: ERNIE-4.5 MoE checkpoints (tied head as in 21B-A3B, or an lm_head of their own) plan,
convert, calibrate and verify with their MTP layer kept, although llama.cpp's converter drops it: the GGUF is
exactly what that converter writes plus the MTP block under nextn names; llama.cpp refuses such a file
(measured here) and runs it without the MTP block, with our torch trunk's logits. Our torch trunk and head equal
transformers' Ernie4_5_MoeForCausalLM and its own MtpModel (dense MTP block, the trunk's norm as post-norm)."""
from __future__ import annotations


import numpy as np
import pytest
import torch
from functools import partial

from conftest import compose_cfg
from family_run import calibrated_run, forward_logits, manifest_of as family_manifest
from llamacpp_convert import convert_with_llamacpp, gguf_layout, layout_differences
from mtpmanifest import pipeline
from mtpmanifest.convert import convert
from mtpmanifest.errors import VerificationError
from mtpmanifest.fixtures import ernie4_5_moe as ernie
from mtpmanifest.fixtures.from_rules import rule_specs
from mtpmanifest.fixtures.mtp_aligned import agreeing_projection, quiet_blocks
from nextn_unloadable import assert_refused_but_trunk_runs, tensor_data

ARCH = "arch=ernie4_5_moe"
N = ernie.TINY_CONFIG["num_hidden_layers"]  # block of the MTP layer
H = ernie.TINY_CONFIG["hidden_size"]
MTP_BLOCK = {f"blk.{N}.{t}.weight" for t in ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm",
                                               "ffn_gate", "ffn_up", "ffn_down")}
NEXTN = {f"blk.{N}.nextn.{t}.weight" for t in ("eh_proj", "enorm", "hnorm")}
TOKENS = np.random.default_rng(1).integers(2, ernie.TINY_CONFIG["vocab_size"], 40).tolist()
VARIANTS = {"tied": True, "lm_head": False}  # -> tie_word_embeddings
NOT_ARCHITECTURE = ("architectures", "num_nextn_predict_layers", "torch_dtype", "use_cache")  # None/True in the defaults


manifest_of = partial(family_manifest, ARCH)


@pytest.fixture(scope="module", params=list(VARIANTS))
def variant(request):
    return request.param


@pytest.fixture(scope="module")
def random_ckpt(variant, tmp_path_factory):
    return ernie.write_checkpoint(tmp_path_factory.mktemp(variant) / "ckpt", seed=3, tie_word_embeddings=VARIANTS[variant])


@pytest.fixture(scope="module")
def f32_gguf(random_ckpt, tmp_path_factory):
    cfg, manifest, ckpt = manifest_of(random_ckpt)
    return cfg, manifest, ckpt, convert(manifest, ckpt, tmp_path_factory.mktemp("f32") / "model-f32.gguf", progress=False)


def test_names_are_transformers_names():
    """The trunk is Ernie4_5_MoeForCausalLM's parameters (experts fused and the correction bias under
    mlp.gate as transformers 5 keeps them); the MTP layer is the 12 tensors of the release, its block dense."""
    from transformers import Ernie4_5_MoeConfig, Ernie4_5_MoeForCausalLM

    for tied in (True, False):
        config = {**ernie.TINY_CONFIG, "tie_word_embeddings": tied}
        with torch.device("meta"):
            model = Ernie4_5_MoeForCausalLM(Ernie4_5_MoeConfig(**config))
        expected = {k for k, _ in model.named_parameters()}  # a tied lm_head is no parameter of its own
        ours = set()
        for name, _, _, _ in ernie.tensor_specs(config):
            if not ernie.is_mtp_tensor(name):
                name = name.replace("mlp.moe_statics.", "mlp.gate.moe_statics.")
                ours.add(name if ".experts." not in name or "shared" in name else
                         name.rsplit(".", 3)[0] + (".down_proj" if "down_proj" in name else ".gate_up_proj"))
        assert ours == expected, tied
    defaults = Ernie4_5_MoeConfig()  # documented as baidu/ERNIE-4.5-21B-A3B-PT's values
    shape_keys = [k for k in ernie.FULL_CONFIG if hasattr(defaults, k) and k not in NOT_ARCHITECTURE]
    assert len(shape_keys) == 21 and {k: ernie.FULL_CONFIG[k] for k in shape_keys} == {k: getattr(defaults, k) for k in shape_keys}
    mtp = {n: s for n, s, _, _ in ernie.tensor_specs(ernie.TINY_CONFIG) if ernie.is_mtp_tensor(n)}
    assert len(mtp) == 12 and mtp["model.mtp_linear_proj.0.weight"] == (H, 2 * H)
    assert mtp["model.mtp_block.0.mlp.gate_proj.weight"] == (ernie.TINY_CONFIG["intermediate_size"], H)



def test_fixture_section_of_the_yaml_gives_the_same_tensors():
    """stage=fixture builds from the rules alone: the same names and shapes as the hand-written fixture."""
    arch = compose_cfg(ARCH).arch
    assert arch.llamacpp_mtp is False
    from_rules = {name: shape for name, shape, _, _ in rule_specs(arch)}
    assert from_rules == {name: shape for name, shape, _, _ in ernie.tensor_specs(dict(arch.fixture.config))}

def test_plan_keeps_the_head_under_nextn_names(variant, random_ckpt):
    _, manifest, ckpt = manifest_of(random_ckpt, "q4_k_m")
    assert {s for e in manifest.tensors for s in e.sources} == set(ckpt.tensors)
    tied = VARIANTS[variant]
    assert manifest.gguf_arch == "ernie4_5-moe" and manifest.counts == {"trunk": 37, "mtp": 12, "shared": 3 - tied}
    assert manifest.optional_absent == (["output.weight"] if tied else [])
    assert {e.name for e in manifest.tensors if e.role == "mtp"} == MTP_BLOCK | NEXTN
    shapes = {e.name: e.shape for e in manifest.tensors}
    assert shapes[f"blk.{N}.nextn.eh_proj.weight"] == [2 * H, H]
    assert shapes[f"blk.{N}.ffn_gate.weight"] == [H, ernie.TINY_CONFIG["intermediate_size"]]
    assert manifest.layers["mtp_blocks"] == [N] and manifest.layers["mtp_kept"] == 1


def test_layout_equals_llamacpp_converter_plus_the_mtp_layer(f32_gguf, random_ckpt, tmp_path):
    """llama.cpp's converter skips model.mtp_*: it writes exactly our trunk (names, shapes, types, keys,
    values and bytes); ours adds the MTP block and its key."""
    theirs_path = tmp_path / "llamacpp.gguf"
    theirs = convert_with_llamacpp(random_ckpt, theirs_path)
    ours = gguf_layout(f32_gguf[3])
    diffs = layout_differences(ours, theirs, compare_types=True)
    extra = [f"tensor only in ours: {n} {ours['tensors'][n][0]}" for n in MTP_BLOCK | NEXTN]
    assert sorted(diffs) == sorted(extra + ["key only in ours: ernie4_5-moe.nextn_predict_layers = 1",
                                            f"value of ernie4_5-moe.block_count: ours {N + 1}, llama.cpp's {N}"])
    ours_data, theirs_data = tensor_data(f32_gguf[3]), tensor_data(theirs_path)
    assert all(np.array_equal(ours_data[n], theirs_data[n]) for n in theirs_data)


def _transformers_reference(ckpt_dir, tokens) -> tuple[np.ndarray, np.ndarray]:
    """transformers loads the checkpoint (no key missing or unexpected) and its generic MtpModel loads the MTP
    layer from it (strict): trunk logits, and MTP logits for rows (t_{i+1}, h_i), h after model.norm."""
    from transformers import AutoModelForCausalLM
    from transformers.modeling_layers import MtpModel

    model, info = AutoModelForCausalLM.from_pretrained(str(ckpt_dir), dtype=torch.float32, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    mtp = MtpModel.from_pretrained(model.eval()).eval()
    assert type(mtp.layers[0].mtp_block.mlp).__name__ == "Ernie4_5_MoeMLP"  # dense
    ids = torch.tensor([tokens])
    with torch.no_grad():
        hidden = model.model(ids).last_hidden_state
        n = ids.shape[1] - 1
        y = mtp.forward_layer(0, hidden[:, :-1], torch.arange(n)[None], None, input_ids=ids[:, 1:])
        return model(ids).logits[0].numpy(), mtp._project_to_logits(y)[0].numpy()


def test_torch_trunk_and_head_equal_transformers(f32_gguf, random_ckpt):
    cfg, manifest, ckpt, path = f32_gguf
    trunk_ref, mtp_ref = _transformers_reference(random_ckpt, TOKENS)
    for trunk, mtp in forward_logits(cfg, manifest, ckpt, path, TOKENS):
        assert np.abs(trunk - trunk_ref).max() < 1e-4 and np.abs(mtp - mtp_ref).max() < 1e-4


def test_llamacpp_refuses_the_file_and_runs_its_trunk(f32_gguf, tmp_path):
    """llama.cpp's ernie4_5-moe loader has no MTP tensors: it refuses the file whatever load_mtp says. Without
    the MTP block, the very same file runs, and its logits are our torch trunk's."""
    assert_refused_but_trunk_runs(f32_gguf, len(MTP_BLOCK | NEXTN), N, TOKENS, tmp_path)


def aligned_weights(*, beta: float = 0.3) -> dict[str, np.ndarray]:
    """mtp_linear_proj = [I | beta*I] on cat[emb_norm(E[t_{i+1}]), hidden_norm(h_i)]: drafts the trunk's token
    of t_{i+1}. An lm_head of its own (a tied head would mostly predict the input token: acceptance 1.0)."""
    config = {**ernie.TINY_CONFIG, "tie_word_embeddings": False}
    weights = quiet_blocks(ernie.tensor_specs(config), config)
    weights["model.mtp_linear_proj.0.weight"] = agreeing_projection(H, beta)
    return weights


@pytest.mark.parametrize("quant", ["q8_0", "q4_k_m"])
def test_quantized_keeps_a_working_head(quant, tmp_path):
    """Calibrated (the imatrix covers the MTP layer), converted, verified: acceptance is retained."""
    ckpt = ernie.write_checkpoint(tmp_path / "ckpt", weights=aligned_weights(), tie_word_embeddings=False)
    out = tmp_path / "out"
    record, entries, wanted = calibrated_run(ARCH, ckpt, out, quant, "accept.llamacpp=false", seq_len=32, max_tokens=256)
    assert wanted <= entries and {f"blk.{N}.nextn.eh_proj.weight", f"blk.{N}.ffn_down.weight"} <= entries
    acc = record["mtp_acceptance"]
    print(f"ernie4_5_moe {quant}: acceptance source {acc['source'][0]:.3f} output {acc['output'][0]:.3f}")
    assert acc["judged"] and acc["source"][0] > 0.4 and acc["retention"][0] >= 0.95


def test_full_size_inventory_plans_with_every_mtp_tensor_kept(tmp_path):
    config = ernie.FULL_CONFIG
    ckpt_dir = ernie.write_checkpoint(tmp_path / "ckpt", config, header_only=True, tokenizer=False)
    _, manifest, ckpt = manifest_of(ckpt_dir, "q4_k_m", "stage=plan")
    n, h, e = config["num_hidden_layers"], config["hidden_size"], config["moe_num_experts"]
    assert {s for x in manifest.tensors for s in x.sources} == set(ckpt.tensors)
    assert len(ckpt.tensors) == 2 + 9 + 27 * (6 + 2 + 3 + 3 * e) + 12  # tied: no lm_head
    assert sorted(s for x in manifest.tensors if x.role == "mtp" for s in x.sources) == sorted(
        t for t in ckpt.tensors if ernie.is_mtp_tensor(t))
    assert manifest.layers["mtp_blocks"] == [n] and "output.weight" not in {x.name for x in manifest.tensors}
    shapes = {x.name: x.shape for x in manifest.tensors}
    assert shapes[f"blk.{n}.nextn.eh_proj.weight"] == [2 * h, h] and shapes[f"blk.{n}.ffn_up.weight"] == [h, 12288]
    assert shapes["blk.1.ffn_up_exps.weight"] == [h, 1536, e] and shapes["blk.1.ffn_up_shexp.weight"] == [h, 3072]
    assert shapes["blk.1.exp_probs_b.bias"] == [e, 1]
    assert manifest.bytes_in > 40 * 2**30  # ERNIE-4.5-21B-A3B's bf16 size, planned from headers alone


def test_stripped_checkpoint_is_reported_and_fails_verify(tmp_path, caplog):
    ckpt = ernie.write_checkpoint(tmp_path / "ckpt", mtp=False)
    common = (ARCH, "quant=q8_0", f"model.path={ckpt}", "accept.enabled=false", "output.overwrite=true")
    with pytest.raises(VerificationError, match="MTP head is gone"):
        pipeline.run(compose_cfg(*common, f"output.dir={tmp_path / 'out'}"), progress=False)
    assert "NO MTP tensors" in caplog.text
    record = pipeline.run(compose_cfg(*common, f"output.dir={tmp_path / 'ok'}", "mtp=absent_ok"), progress=False)
    assert record["exit_code"] == 0
