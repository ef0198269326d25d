"""mtpmanifest.weights: source and GGUF weight providers; every op's invert undoes it, so weights read
back from a written GGUF are the source's (exactly at F32, within the type's error when quantized)."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import compose_cfg
from mtpmanifest.convert import convert
from mtpmanifest.errors import BadInputError
from mtpmanifest.ops import op_registry
from mtpmanifest.plan import compile_manifest
from mtpmanifest.source import Checkpoint
from mtpmanifest.weights import GGUFWeights, SourceWeights


def build(ckpt_dir, out_dir, quant):
    cfg = compose_cfg(f"quant={quant}")
    ckpt = Checkpoint.open(ckpt_dir)
    manifest = compile_manifest(cfg.arch, cfg.quant, ckpt)
    path = convert(manifest, ckpt, out_dir / f"model-{quant}.gguf", progress=False)
    return manifest, ckpt, path


@pytest.fixture(scope="module")
def f32(tiny_ckpt, tmp_path_factory):
    return build(tiny_ckpt, tmp_path_factory.mktemp("f32"), "f32")


@pytest.fixture(scope="module")
def q8(tiny_ckpt, tmp_path_factory):
    return build(tiny_ckpt, tmp_path_factory.mktemp("q8"), "q8_0")


def test_every_op_inverts():
    rng = np.random.default_rng(0)
    cases = {
        "copy": ([rng.normal(size=(6, 5))], {}),
        "split_kv_b": ([rng.normal(size=(4 * (3 + 2), 7))], {"n_head": 4, "qk_nope_head_dim": 3, "v_head_dim": 2}),
        "stack_experts": ([rng.normal(size=(3, 5)) for _ in range(4)], {"n_expert": 4}),
        "swap_halves": ([rng.normal(size=(3, 8))], {}),
        "plus_one": ([rng.integers(-512, 512, size=7) / np.float32(1024)], {}),  # exact in float32
        "neg_exp": ([rng.normal(size=7).astype(np.float32)], {}),
        "squeeze": ([rng.normal(size=(6, 1, 4))], {"axis": 1}),
        "split_qkvz": ([rng.normal(size=(2 * (2 * 3 + 2 * 4), 5))],
                       {"n_k_heads": 2, "n_v_heads": 4, "head_k_dim": 3, "head_v_dim": 2}),
    }
    rounding = {"neg_exp"}  # log(-(-exp(x))) is x up to float32 rounding
    ops = op_registry()
    assert set(cases) == set(ops), "a new op needs an invert and a case here"
    for name, (inputs, params) in cases.items():
        back = ops[name].invert(ops[name].apply(inputs, params), params)
        same = (lambda a, b: np.allclose(a, b, rtol=1e-6, atol=1e-6)) if name in rounding else np.array_equal
        assert len(back) == len(inputs) and all(same(a, b) for a, b in zip(inputs, back)), name


def test_source_layer_is_the_checkpoint(f32):
    manifest, ckpt, _ = f32
    weights = SourceWeights(manifest, ckpt)
    layer = weights.hf_layer(1)
    expected = sorted({s for e in manifest.tensors if e.block == 1 for s in e.sources})
    assert sorted(layer) == expected and any(".experts.7." in s for s in expected)
    for name in expected:
        assert np.array_equal(layer[name], ckpt.read(name)), name
    assert sorted(weights.hf_globals()) == ["lm_head.weight", "model.embed_tokens.weight", "model.norm.weight"]
    assert weights.array("blk.1.attn_k_b.weight").shape == (4, 32, 32)  # GGUF space (numpy order), after the op


def test_f32_gguf_maps_back_exactly(f32):
    manifest, ckpt, path = f32
    source, output = SourceWeights(manifest, ckpt), GGUFWeights(manifest, path)
    assert output.blocks() == [0, 1, 2, 3, 4]
    for block in [None, *output.blocks()]:
        want, got = source.hf_layer(block), output.hf_layer(block)
        assert sorted(got) == sorted(want)
        for name in want:  # kv_b_proj merged back from k_b/v_b, experts unstacked, FP8 scales kept
            assert got[name].dtype == np.float32 and np.array_equal(got[name], want[name]), name


def test_quantized_gguf_is_read_not_copied(q8):
    manifest, ckpt, path = q8
    source, output = SourceWeights(manifest, ckpt), GGUFWeights(manifest, path)
    for name, want in source.hf_layer(4).items():
        got = output.hf_layer(4)[name]
        rel = np.sqrt(np.mean((got - want) ** 2) / np.mean(want ** 2))
        quantized = manifest.entry(next(e.name for e in manifest.tensors if name in e.sources)).type == "Q8_0"
        assert (1e-4 < rel < 2e-2) if quantized else rel == 0, (name, rel)


def test_one_layer_at_a_time(q8, monkeypatch):
    manifest, ckpt, path = q8
    output = GGUFWeights(manifest, path)
    read: list[str] = []
    original = GGUFWeights.array
    monkeypatch.setattr(GGUFWeights, "array", lambda self, name: read.append(name) or original(self, name))
    output.hf_layer(2)
    assert read and all(name.startswith("blk.2.") for name in read)
    assert len(read) == len(set(read)) == sum(e.block == 2 for e in manifest.tensors)  # split_kv_b's pair once each
    sources: list[str] = []
    monkeypatch.setattr(ckpt, "read", lambda name, rows=None: sources.append(name) or np.zeros(1))
    SourceWeights(manifest, ckpt).hf_layer(3, skip={"blk.3.attn_norm.weight"})
    assert sources and all(s.startswith("model.layers.3.") for s in sources)
    assert "model.layers.3.input_layernorm.weight" not in sources


def test_missing_tensor_is_a_clear_error(q8, tmp_path):
    from conftest import copy_gguf

    manifest, _, path = q8
    damaged = copy_gguf(path, tmp_path / "no-eh.gguf", drop_tensor=lambda n: n == "blk.4.nextn.eh_proj.weight")
    weights = GGUFWeights(manifest, damaged)
    assert not weights.has("blk.4.nextn.eh_proj.weight") and weights.has("blk.4.nextn.enorm.weight")
    with pytest.raises(BadInputError, match="blk.4.nextn.eh_proj.weight is missing"):
        weights.array("blk.4.nextn.eh_proj.weight")
