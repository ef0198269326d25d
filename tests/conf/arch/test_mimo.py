"""arch=mimo: MiMo-7B checkpoints (Qwen2 trunk, MTP layer under model.mtp_layers.{k} with the reversed concat
order) plan, convert, calibrate and verify with their head kept. llama.cpp has no MiMo-7B converter or MTP
runtime: the trunk part of the GGUF is exactly what llama.cpp's Qwen2 converter writes for the same trunk, the
MTP layer is block num_hidden_layers under nextn names, and llama.cpp refuses such a file (measured here);
without the MTP block it runs it, with our torch trunk's logits. Torch trunk and head equal transformers'
Qwen2ForCausalLM and its generic MtpLayer run on the ORIGINAL input_proj with the hidden state first."""
from __future__ import annotations

import copy
import json
from functools import partial

import numpy as np
import pytest
import torch

from conftest import compose_cfg
from family_run import calibrated_run, forward_logits, manifest_of as family_manifest
from llamacpp_convert import convert_with_llamacpp, gguf_layout, layout_differences
from mtpmanifest import pipeline
from mtpmanifest.convert import convert
from mtpmanifest.errors import VerificationError
from mtpmanifest.fixtures import mimo
from mtpmanifest.fixtures.from_rules import rule_specs
from mtpmanifest.forward import ModelForward
from mtpmanifest.source import Checkpoint
from mtpmanifest.weights import GGUFWeights, SourceWeights
from mtpmanifest.fixtures.mtp_aligned import agreeing_projection, quiet_blocks
from nextn_unloadable import assert_refused_but_trunk_runs, tensor_data

ARCH = "arch=mimo"
N = mimo.TINY_CONFIG["num_hidden_layers"]  # block of the MTP layer
H = mimo.TINY_CONFIG["hidden_size"]
MTP_BLOCK = {f"blk.{N}.{t}.weight" for t in ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm",
                                               "ffn_gate", "ffn_up", "ffn_down")} | {
    f"blk.{N}.{t}.bias" for t in ("attn_q", "attn_k", "attn_v")}
NEXTN = {f"blk.{N}.nextn.{t}.weight" for t in ("eh_proj", "enorm", "hnorm", "shared_head_norm")}
TOKENS = np.random.default_rng(1).integers(2, mimo.TINY_CONFIG["vocab_size"], 40).tolist()


manifest_of = partial(family_manifest, ARCH)


@pytest.fixture(scope="module")
def random_ckpt(tmp_path_factory):
    return mimo.write_checkpoint(tmp_path_factory.mktemp("mimo") / "ckpt", seed=3)


@pytest.fixture(scope="module")
def f32_gguf(random_ckpt, tmp_path_factory):
    cfg, manifest, ckpt = manifest_of(random_ckpt)
    return cfg, manifest, ckpt, convert(manifest, ckpt, tmp_path_factory.mktemp("f32") / "model-f32.gguf", progress=False)


def qwen2_config(config: dict):
    from transformers import Qwen2Config

    return Qwen2Config(**{k: v for k, v in config.items() if k != "num_nextn_predict_layers"})


def test_names_are_qwen2_names_plus_the_16_mtp_tensors(tmp_path):
    from transformers import Qwen2ForCausalLM

    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in Qwen2ForCausalLM(qwen2_config(mimo.TINY_CONFIG)).state_dict().items()}
    specs = mimo.tensor_specs(mimo.TINY_CONFIG)
    assert {n: s for n, s, _, _ in specs if not mimo.is_mtp_tensor(n)} == expected
    mtp = {n[len("model.mtp_layers.0."):]: s for n, s, _, f in specs if mimo.is_mtp_tensor(n)}
    assert len(mtp) == 16 and mtp["input_proj.weight"] == (H, 2 * H)
    assert {"token_layernorm.weight", "hidden_layernorm.weight", "final_layernorm.weight", "self_attn.k_proj.bias"} <= set(mtp)
    ckpt = mimo.write_checkpoint(tmp_path / "ckpt")
    weight_map = json.loads((ckpt / "model.safetensors.index.json").read_text())["weight_map"]
    assert {weight_map[n] for n in weight_map if mimo.is_mtp_tensor(n)} == {"model-00004-of-00004.safetensors"}



def test_fixture_section_of_the_yaml_gives_the_same_tensors():
    """stage=fixture builds from the rules alone: the same names and shapes as the hand-written fixture."""
    arch = compose_cfg(ARCH).arch
    assert arch.llamacpp_mtp is False
    from_rules = {name: shape for name, shape, _, _ in rule_specs(arch)}
    assert from_rules == {name: shape for name, shape, _, _ in mimo.tensor_specs(dict(arch.fixture.config))}

def test_plan_keeps_the_head_under_nextn_names(random_ckpt):
    _, manifest, ckpt = manifest_of(random_ckpt, "q4_k_m")
    assert {s for e in manifest.tensors for s in e.sources} == set(ckpt.tensors)
    assert manifest.gguf_arch == "qwen2" and manifest.counts == {"trunk": 36, "mtp": 16, "shared": 3}
    assert {e.name for e in manifest.tensors if e.role == "mtp"} == MTP_BLOCK | NEXTN
    shapes = {e.name: e.shape for e in manifest.tensors}
    assert shapes[f"blk.{N}.nextn.eh_proj.weight"] == [2 * H, H]
    assert {e.name: e.op for e in manifest.tensors}[f"blk.{N}.nextn.eh_proj.weight"] == "swap_halves"
    assert manifest.layers["mtp_blocks"] == [N] and manifest.layers["mtp_kept"] == 1


def test_trunk_layout_equals_llamacpp_qwen2_converter(f32_gguf, tmp_path):
    """The same checkpoint presented as Qwen2ForCausalLM without the MTP layer: llama.cpp's converter writes
    exactly our trunk (names, shapes, types, keys, values and bytes); ours adds the MTP block and its key."""
    config = {k: v for k, v in mimo.TINY_CONFIG.items() if k != "num_nextn_predict_layers"}
    config.update(architectures=["Qwen2ForCausalLM"], model_type="qwen2")
    as_qwen2 = mimo.write_checkpoint(tmp_path / "qwen2", config, seed=3)  # same seed: the same trunk bytes
    theirs_path = tmp_path / "llamacpp.gguf"
    theirs = convert_with_llamacpp(as_qwen2, theirs_path)
    ours = gguf_layout(f32_gguf[3])
    diffs = layout_differences(ours, theirs, compare_types=True)
    extra = sorted(f"tensor only in ours: {n} {ours['tensors'][n][0]}" for n in MTP_BLOCK | NEXTN)
    assert sorted(diffs) == sorted(extra + ["key only in ours: qwen2.nextn_predict_layers = 1",
                                            f"value of qwen2.block_count: ours {N + 1}, llama.cpp's {N}"])
    ours_data, theirs_data = tensor_data(f32_gguf[3]), tensor_data(theirs_path)
    assert all(np.array_equal(ours_data[n], theirs_data[n]) for n in theirs_data)


def test_eh_proj_is_input_proj_with_halves_swapped(f32_gguf):
    _, manifest, ckpt, path = f32_gguf
    source = ckpt.read("model.mtp_layers.0.input_proj.weight")
    written = GGUFWeights(manifest, path).array(f"blk.{N}.nextn.eh_proj.weight")
    assert np.array_equal(written[:, :H], source[:, H:]) and np.array_equal(written[:, H:], source[:, :H])


def _transformers_reference(ckpt: Checkpoint, tokens) -> tuple[np.ndarray, np.ndarray]:
    """Trunk logits of Qwen2ForCausalLM and MTP logits of transformers' MtpLayer (hidden-first concat, the
    checkpoint's own input_proj, final_layernorm as post-norm) fed the trunk's PRE-norm hidden."""
    from transformers import Qwen2ForCausalLM
    from transformers.modeling_layers import MtpLayer
    from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer, Qwen2RMSNorm

    cfg = qwen2_config(ckpt.config)
    state = {n: torch.from_numpy(ckpt.read(n)) for n in ckpt.tensors}
    model = Qwen2ForCausalLM(cfg).float().eval()
    model.load_state_dict({n: t for n, t in state.items() if not mimo.is_mtp_tensor(n)}, strict=True)
    captured = []
    model.model.norm.register_forward_hook(lambda module, args, out: captured.append(args[0]))
    mtp_cfg = copy.deepcopy(cfg)
    mtp_cfg.mtp_hidden_states_first = True
    layer = MtpLayer(mtp_cfg, Qwen2DecoderLayer, Qwen2RMSNorm, 0).float().eval()
    renames = {"token_layernorm": "enorm", "hidden_layernorm": "hnorm", "input_proj": "eh_proj", "final_layernorm": "post_norm"}
    mtp_state = {}
    for name, t in state.items():
        if mimo.is_mtp_tensor(name):
            key = name[len("model.mtp_layers.0."):]
            head = key.split(".")[0]
            mtp_state[renames[head] + key[len(head):] if head in renames else "mtp_block." + key] = t
    layer.load_state_dict(mtp_state, strict=True)
    ids = torch.tensor([tokens])
    with torch.no_grad():
        logits = model(ids).logits[0].numpy()
        n = ids.shape[1] - 1
        pos = torch.arange(n)[None]
        emb = model.model.embed_tokens(ids[:, 1:])
        y = layer(emb, captured[0][:, :-1], model.model.rotary_emb(emb, pos),
                  torch.full((n, n), float("-inf")).triu(1)[None, None], pos, None)
        return logits, model.lm_head(y)[0].numpy()


def test_torch_trunk_and_head_equal_transformers(f32_gguf):
    cfg, manifest, ckpt, path = f32_gguf
    trunk_ref, mtp_ref = _transformers_reference(ckpt, TOKENS)
    for trunk, mtp in forward_logits(cfg, manifest, ckpt, path, TOKENS):
        assert np.abs(trunk - trunk_ref).max() < 1e-4 and np.abs(mtp - mtp_ref).max() < 1e-4


def test_llamacpp_refuses_the_file_and_runs_its_trunk(f32_gguf, tmp_path):
    """llama.cpp's qwen2 loader has no MTP tensors: it refuses the file whatever load_mtp says. Without the
    MTP block, the very same file runs, and its logits are our torch trunk's."""
    assert_refused_but_trunk_runs(f32_gguf, len(MTP_BLOCK | NEXTN), N, TOKENS, tmp_path)


def aligned_weights(*, order: str = "mimo", beta: float = 0.3) -> dict[str, np.ndarray]:
    """MiMo reads input_proj on cat[hidden, embedding]: [beta*I | I] drafts the trunk's token of t_{i+1}.
    order="deepseek" writes [I | beta*I] instead, a head built for the other order (it drafts t_i's)."""
    weights = quiet_blocks(mimo.tensor_specs(mimo.TINY_CONFIG), mimo.TINY_CONFIG)
    weights["model.mtp_layers.0.input_proj.weight"] = agreeing_projection(H, beta, hidden_first=order == "mimo")
    return weights


@pytest.mark.parametrize("quant", ["q8_0", "q4_k_m"])
def test_quantized_keeps_a_working_head(quant, tmp_path):
    """Calibrated (the imatrix covers the MTP layer), converted, verified: acceptance is retained. The same head
    read in DeepSeek's concat order would agree far less: the reversed order is what makes it work."""
    ckpt = mimo.write_checkpoint(tmp_path / "ckpt", weights=aligned_weights())
    out = tmp_path / "out"
    record, entries, wanted = calibrated_run(ARCH, ckpt, out, quant, "accept.llamacpp=false")
    assert wanted <= entries and {f"blk.{N}.nextn.eh_proj.weight", f"blk.{N}.ffn_down.weight"} <= entries
    acc = record["mtp_acceptance"]
    wrong_cfg, wrong_manifest, wrong = manifest_of(mimo.write_checkpoint(tmp_path / "wrong", weights=aligned_weights(order="deepseek")))
    forward = ModelForward(wrong.config, wrong_cfg.arch.mtp_head, SourceWeights(wrong_manifest, wrong))
    trunk = forward.trunk(TOKENS)
    (mtp,) = forward.mtp(trunk)
    wrong_acc = float((mtp.scores.argmax[0] == trunk.scores.argmax[0][1:]).mean())  # row i vs the trunk at i+1
    print(f"mimo {quant}: acceptance source {acc['source'][0]:.3f} output {acc['output'][0]:.3f}; "
          f"head in the other concat order {wrong_acc:.3f}")
    assert acc["judged"] and acc["source"][0] > 0.4 and acc["retention"][0] >= 0.95
    assert wrong_acc < acc["source"][0] / 2


def test_full_size_inventory_plans_with_every_mtp_tensor_kept(tmp_path):
    ckpt_dir = mimo.write_checkpoint(tmp_path / "ckpt", mimo.FULL_CONFIG, header_only=True, tokenizer=False)
    _, manifest, ckpt = manifest_of(ckpt_dir, "q4_k_m", "stage=plan")
    n, h = mimo.FULL_CONFIG["num_hidden_layers"], mimo.FULL_CONFIG["hidden_size"]
    assert {s for e in manifest.tensors for s in e.sources} == set(ckpt.tensors) and len(ckpt.tensors) == 36 * 12 + 3 + 16
    assert sorted(s for e in manifest.tensors if e.role == "mtp" for s in e.sources) == sorted(
        t for t in ckpt.tensors if t.startswith("model.mtp_layers.0."))
    assert manifest.layers["mtp_blocks"] == [n]
    shapes = {e.name: e.shape for e in manifest.tensors}
    assert shapes[f"blk.{n}.nextn.eh_proj.weight"] == [2 * h, h] and shapes[f"blk.{n}.attn_k.weight"] == [h, 1024]
    assert shapes[f"blk.{n}.ffn_gate.weight"] == [h, 11008] and shapes["output.weight"] == [h, 151680]
    assert manifest.bytes_in > 14 * 2**30  # MiMo-7B's bf16 size, planned from headers alone


def test_stripped_checkpoint_is_reported_and_fails_verify(tmp_path, caplog):
    ckpt = mimo.write_checkpoint(tmp_path / "ckpt", mtp=False)
    common = (ARCH, "quant=q8_0", f"model.path={ckpt}", "accept.enabled=false", "output.overwrite=true")
    with pytest.raises(VerificationError, match="MTP head is gone"):
        pipeline.run(compose_cfg(*common, f"output.dir={tmp_path / 'out'}"), progress=False)
    assert "NO MTP tensors" in caplog.text
    record = pipeline.run(compose_cfg(*common, f"output.dir={tmp_path / 'ok'}", "mtp=absent_ok"), progress=False)
    assert record["exit_code"] == 0
