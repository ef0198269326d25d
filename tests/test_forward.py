"""mtpmanifest.forward: the layer-by-layer trunk equals transformers' DeepseekV3ForCausalLM; the MTP
layers follow the recipe (concat order, chaining); every module built reports its GGUF tensors."""
from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch

from conftest import compose_cfg
from mtpmanifest.convert import convert
from mtpmanifest.fixtures.deepseek_v3 import TINY_CONFIG, write_checkpoint
from mtpmanifest.fixtures.hf_reference import hf_logits, hf_state_dict
from mtpmanifest.forward import ModelForward
from mtpmanifest.plan import compile_manifest
from mtpmanifest.source import Checkpoint
from mtpmanifest.weights import GGUFWeights, SourceWeights

TOKENS = np.random.default_rng(0).integers(0, TINY_CONFIG["vocab_size"], 40).tolist()


def model(ckpt_dir, quant="q8_0"):
    cfg = compose_cfg(f"quant={quant}")
    ckpt = Checkpoint.open(ckpt_dir)
    return cfg.arch.mtp_head, compile_manifest(cfg.arch, cfg.quant, ckpt), ckpt


@pytest.fixture(scope="module")
def tiny(tiny_ckpt):
    return model(tiny_ckpt)


def test_trunk_equals_transformers(tiny, tmp_path):
    recipe, manifest, ckpt = tiny
    reference = hf_logits(ckpt.path, TOKENS)
    trunk = ModelForward(ckpt.config, recipe, SourceWeights(manifest, ckpt), keep_logits=True).trunk(TOKENS)
    assert trunk.scores.logits.shape == (1, *reference.shape)
    assert np.abs(trunk.scores.logits[0] - reference).max() < 1e-4 * np.abs(reference).max()
    assert (trunk.scores.argmax[0] == reference.argmax(-1)).all()
    # the same weights read back from an F32 GGUF (k_b/v_b merged, experts unstacked) give the same logits
    recipe, f32, _ = model(ckpt.path, "f32")
    path = convert(f32, ckpt, tmp_path / "f32.gguf", progress=False)
    again = ModelForward(ckpt.config, recipe, GGUFWeights(f32, path), keep_logits=True).trunk(TOKENS)
    assert np.abs(again.scores.logits[0] - reference).max() < 1e-4 * np.abs(reference).max()


def _reference_mtp(ckpt: Checkpoint, tokens, hidden: torch.Tensor) -> np.ndarray:
    """The MTP layer straight from the checkpoint: eh_proj(cat[enorm(E[t_{i+1}]), hnorm(h_i)]) -> block 4 ->
    shared_head.norm -> shared_head.head, with transformers' own modules (no manifest, no provider)."""
    from transformers import DeepseekV3Config
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3DecoderLayer, DeepseekV3RotaryEmbedding

    config = {**ckpt.config, "num_hidden_layers": 5}  # let hf_state_dict keep layer 4
    cfg = DeepseekV3Config(**{k: v for k, v in config.items() if k != "quantization_config"})
    shallow = dataclasses.replace(ckpt, config=config)
    state = {k[len("model.layers.4."):]: v for k, v in hf_state_dict(shallow).items() if k.startswith("model.layers.4.")}
    head = {k: state.pop(k) for k in list(state) if k.split(".")[0] in ("enorm", "hnorm", "eh_proj", "shared_head", "embed_tokens")}
    layer = DeepseekV3DecoderLayer(cfg, layer_idx=4).eval()
    layer.load_state_dict(state, strict=True)

    def rms(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + cfg.rms_norm_eps) * w

    with torch.no_grad():
        e = head["embed_tokens.weight"][torch.tensor(tokens[1:])]
        x = torch.cat([rms(e, head["enorm.weight"]), rms(hidden[:-1], head["hnorm.weight"])], -1) @ head["eh_proj.weight"].T
        n, pos = x.shape[0], torch.arange(x.shape[0])[None]
        mask = torch.full((n, n), float("-inf")).triu(1)[None, None]
        y = layer(x[None], attention_mask=mask, position_ids=pos, position_embeddings=DeepseekV3RotaryEmbedding(cfg)(x, pos))
        return (rms(y[0], head["shared_head.norm.weight"]) @ head["shared_head.head.weight"].T).numpy()


def test_mtp_layer_follows_the_recipe(tiny):
    recipe, manifest, ckpt = tiny
    forward = ModelForward(ckpt.config, recipe, SourceWeights(manifest, ckpt), keep_logits=True)
    trunk = forward.trunk(TOKENS)
    (mtp,) = forward.mtp(trunk)
    assert (mtp.layer, mtp.block, mtp.shift, mtp.head.projection) == (0, 4, 1, "blk.4.nextn.eh_proj.weight")
    reference = _reference_mtp(ckpt, TOKENS, trunk.post_norm[0])
    assert mtp.scores.logits.shape == (1, *reference.shape) == (1, len(TOKENS) - 1, TINY_CONFIG["vocab_size"])
    assert np.abs(mtp.scores.logits[0] - reference).max() < 1e-4 * np.abs(reference).max()
    # row i predicts t_{i+2}: the last row has no target
    assert np.isnan(mtp.scores.nll[0, -1]) and np.isfinite(mtp.scores.nll[0, :-1]).all()

    # MiMo's order [hidden, embedding] with eh_proj's halves swapped is the same head
    swapped = SourceWeights(manifest, ckpt)
    plain = swapped.array
    h = TINY_CONFIG["hidden_size"]
    swapped.array = lambda name: np.roll(plain(name), h, axis=1) if name.endswith("eh_proj.weight") else plain(name)
    mimo = copy.deepcopy(recipe)
    mimo.concat = ["hidden", "embedding"]
    (again,) = ModelForward(ckpt.config, mimo, swapped, keep_logits=True).mtp(trunk)
    assert np.abs(again.scores.logits - mtp.scores.logits).max() < 1e-5


def test_modules_report_their_gguf_tensors(tiny):
    recipe, manifest, ckpt = tiny
    seen: dict = {}
    named: set[str] = set()
    inputs: dict[str, tuple] = {}

    def record(key):
        def hook(module, args, output):
            inputs.setdefault(key, tuple(args[0].shape))
        return hook

    def on_module(block, module, names):
        seen.setdefault(block, {}).update(names)
        named.update(g for ggufs in names.values() for g in ggufs)
        for qualified, ggufs in names.items():
            sub = module.get_submodule(qualified.rsplit(".", 1)[0]) if "." in qualified else module
            if isinstance(sub, torch.nn.Linear):  # what a calibration stage would do
                sub.register_forward_hook(record(ggufs[0]))

    forward = ModelForward(ckpt.config, recipe, SourceWeights(manifest, ckpt), on_module=on_module)
    forward.mtp(forward.trunk(TOKENS))
    assert sorted(seen, key=lambda b: -1 if b is None else b) == [None, 0, 1, 2, 3, 4]
    assert seen[1]["mlp.experts.gate_up_proj"] == ["blk.1.ffn_gate_exps.weight", "blk.1.ffn_up_exps.weight"]
    assert seen[2]["self_attn.kv_b_proj.weight"] == ["blk.2.attn_k_b.weight", "blk.2.attn_v_b.weight"]
    assert seen[4]["projection.weight"] == ["blk.4.nextn.eh_proj.weight"]
    assert named == {e.name for e in manifest.tensors}  # every tensor of the file, MTP included
    assert inputs["blk.4.nextn.eh_proj.weight"] == (1, len(TOKENS) - 1, 512)
    assert inputs["blk.4.attn_q_a.weight"] == (1, len(TOKENS) - 1, 256)  # the MTP block runs on the MTP rows
    assert inputs["output.weight"][-1] == 256 and inputs["blk.4.nextn.shared_head_head.weight"][-1] == 256


def test_two_mtp_layers_chain(tmp_path):
    config = {**copy.deepcopy(TINY_CONFIG), "num_nextn_predict_layers": 2}
    recipe, manifest, ckpt = model(write_checkpoint(tmp_path / "ckpt", config, seed=3))
    assert manifest.layers["mtp_blocks"] == [4, 5]
    hidden_in: dict[int, torch.Tensor] = {}

    def on_module(block, module, names):
        if hasattr(module, "hidden_norm"):
            module.hidden_norm.register_forward_pre_hook(lambda m, args, b=block: hidden_in.__setitem__(b, args[0]))

    forward = ModelForward(ckpt.config, recipe, SourceWeights(manifest, ckpt), on_module=on_module)
    trunk = forward.trunk(TOKENS)
    first, second = forward.mtp(trunk)
    n = len(TOKENS)
    assert (first.shift, second.shift) == (1, 2)
    assert first.scores.argmax.shape == (1, n - 1) and second.scores.argmax.shape == (1, n - 2)
    assert torch.equal(hidden_in[4], trunk.post_norm[:, :n - 1])
    assert torch.equal(hidden_in[5], first.block_output[:, :n - 2])  # recipe.chain: block_output
    assert np.isfinite(second.scores.nll[0, :n - 3]).all() and np.isnan(second.scores.nll[0, n - 3:]).all()


def test_a_batch_is_its_sequences(tiny):
    recipe, manifest, ckpt = tiny
    forward = ModelForward(ckpt.config, recipe, SourceWeights(manifest, ckpt), keep_logits=True)
    second = TOKENS[::-1]
    batch = forward.trunk([TOKENS, second])
    (mtp,) = forward.mtp(batch)
    for b, seq in enumerate((TOKENS, second)):
        alone = forward.trunk(seq)
        (alone_mtp,) = forward.mtp(alone)
        assert np.abs(batch.scores.logits[b] - alone.scores.logits[0]).max() < 1e-5
        assert np.abs(mtp.scores.logits[b] - alone_mtp.scores.logits[0]).max() < 1e-5
