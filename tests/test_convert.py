"""mtpmanifest.convert: a GGUF that holds exactly the manifest's tensors, with the right data, reproducibly,
written atomically and nowhere but output.dir."""
import hashlib
import os

import gguf
import numpy as np
import pytest
import torch

import mtpmanifest.convert as convert_module
from conftest import compose_cfg, error_line, run_cli
from mtpmanifest.convert import convert
from mtpmanifest.fixtures.deepseek_v3 import TINY_CONFIG, load_dequantized, tensor_specs, write_checkpoint
from mtpmanifest.plan import compile_manifest
from mtpmanifest.source import Checkpoint

C = TINY_CONFIG
N_TRUNK, N_EXPERT = C["num_hidden_layers"], C["n_routed_experts"]
N_HEAD, NOPE, V_DIM = C["num_attention_heads"], C["qk_nope_head_dim"], C["v_head_dim"]


def plan(path, quant):
    cfg = compose_cfg("arch=deepseek_v3", f"quant={quant}")
    return compile_manifest(cfg.arch, cfg.quant, Checkpoint.open(path))


def write(path, quant, out):
    return convert(plan(path, quant), Checkpoint.open(path), out, progress=False)


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def q8_gguf(tiny_ckpt, tmp_path_factory):
    return write(tiny_ckpt, "q8_0", tmp_path_factory.mktemp("q8") / "model-q8_0.gguf")


# --- the expected GGUF, derived from the Hugging Face names without the manifest ---------------------------------

BLOCK_MAP = {  # GGUF name inside blk.N -> Hugging Face name inside model.layers.N (one-to-one copies)
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q_a.weight": "self_attn.q_a_proj.weight",
    "attn_q_a_norm.weight": "self_attn.q_a_layernorm.weight",
    "attn_q_b.weight": "self_attn.q_b_proj.weight",
    "attn_kv_a_mqa.weight": "self_attn.kv_a_proj_with_mqa.weight",
    "attn_kv_a_norm.weight": "self_attn.kv_a_layernorm.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
    "ffn_gate_inp.weight": "mlp.gate.weight",
    "exp_probs_b.bias": "mlp.gate.e_score_correction_bias",
    "ffn_gate_shexp.weight": "mlp.shared_experts.gate_proj.weight",
    "ffn_up_shexp.weight": "mlp.shared_experts.up_proj.weight",
    "ffn_down_shexp.weight": "mlp.shared_experts.down_proj.weight",
    "nextn.eh_proj.weight": "eh_proj.weight",
    "nextn.enorm.weight": "enorm.weight",
    "nextn.hnorm.weight": "hnorm.weight",
    "nextn.shared_head_norm.weight": "shared_head.norm.weight",
    "nextn.shared_head_head.weight": "shared_head.head.weight",
    "nextn.embed_tokens.weight": "embed_tokens.weight",
}
GLOBAL_MAP = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
              "output.weight": "lm_head.weight"}


def expected_tensors(src: dict) -> tuple[dict[str, np.ndarray], set[str]]:
    """GGUF name -> float32 data in numpy order, computed from dequantized sources; and the sources used."""
    out, used = {}, set()
    for name, hf in GLOBAL_MAP.items():
        out[name] = src[hf]
        used.add(hf)
    for b in range(N_TRUNK + C["num_nextn_predict_layers"]):
        p = f"model.layers.{b}."
        for short, hf in BLOCK_MAP.items():
            if p + hf in src:
                out[f"blk.{b}.{short}"] = src[p + hf]
                used.add(p + hf)
        for proj in ("gate", "up", "down"):
            experts = [p + f"mlp.experts.{e}.{proj}_proj.weight" for e in range(N_EXPERT)]
            if experts[0] in src:
                out[f"blk.{b}.ffn_{proj}_exps.weight"] = torch.stack([src[e] for e in experts])
                used.update(experts)
        # llama.cpp's converter: view (n_head, nope + v, rank); k_b = [:, :nope] transposed per head, v_b = [:, nope:]
        kv_b = src[p + "self_attn.kv_b_proj.weight"].view(N_HEAD, NOPE + V_DIM, -1)
        out[f"blk.{b}.attn_k_b.weight"] = kv_b[:, :NOPE].transpose(1, 2)
        out[f"blk.{b}.attn_v_b.weight"] = kv_b[:, NOPE:]
        used.add(p + "self_attn.kv_b_proj.weight")
    return {k: np.ascontiguousarray(v.numpy(), dtype=np.float32) for k, v in out.items()}, used


@pytest.fixture(scope="module")
def expected(tiny_ckpt):
    src = load_dequantized(tiny_ckpt)
    tensors, used = expected_tensors(src)
    assert used == set(src), f"sources no GGUF tensor uses: {sorted(set(src) - used)}"
    return tensors


# --- tests -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("quant", ["q8_0", "bf16"])
def test_same_input_same_bytes(tiny_ckpt, tmp_path, quant):
    a = write(tiny_ckpt, quant, tmp_path / "a.gguf")
    b = write(tiny_ckpt, quant, tmp_path / "b.gguf")
    assert a.stat().st_size > 1_000_000
    assert sha256(a) == sha256(b)


def test_gguf_holds_exactly_the_manifest_tensors_in_order(tiny_ckpt, q8_gguf):
    manifest = plan(tiny_ckpt, "q8_0")
    reader = gguf.GGUFReader(q8_gguf)
    assert [t.name for t in reader.tensors] == [e.name for e in manifest.tensors]
    for t, e in zip(reader.tensors, manifest.tensors):
        assert (t.tensor_type.name, [int(n) for n in t.shape], int(t.n_bytes)) == (e.type, e.shape, e.n_bytes), e.name
    assert {t.tensor_type.name for t in reader.tensors} == {"Q8_0", "F32"}
    arch = manifest.gguf_arch
    assert reader.get_field(f"{arch}.block_count").contents() == N_TRUNK + 1
    assert reader.get_field(f"{arch}.nextn_predict_layers").contents() == 1
    for item in manifest.metadata:
        value = reader.get_field(item.key).contents()
        assert value == pytest.approx(item.value) if item.type == "float32" else value == item.value, item.key


def test_f32_data_equals_independently_computed_source(tiny_ckpt, tmp_path, expected):
    reader = gguf.GGUFReader(write(tiny_ckpt, "f32", tmp_path / "model-f32.gguf"))
    assert sorted(t.name for t in reader.tensors) == sorted(expected)
    for t in reader.tensors:
        assert t.tensor_type == gguf.GGMLQuantizationType.F32, t.name
        got = gguf.quants.dequantize(t.data, t.tensor_type)
        want = expected[t.name]
        assert list(reversed([int(n) for n in t.shape])) == list(want.shape), t.name
        np.testing.assert_array_equal(got.reshape(want.shape), want, err_msg=t.name)


def test_q8_0_data_is_the_quantized_source(q8_gguf, expected):
    """Q8_0 tensors hold exactly the bytes gguf-py's reference quantizer makes of the source; F32 ones the source."""
    reader = gguf.GGUFReader(q8_gguf)
    assert sorted(t.name for t in reader.tensors) == sorted(expected)
    for t in reader.tensors:
        want = expected[t.name]
        if t.tensor_type == gguf.GGMLQuantizationType.Q8_0:
            ref = gguf.quants.quantize(want, gguf.GGMLQuantizationType.Q8_0)
            np.testing.assert_array_equal(np.asarray(t.data).reshape(ref.shape), ref, err_msg=t.name)
            got = gguf.quants.dequantize(t.data, t.tensor_type).reshape(want.shape)
            assert np.sqrt(np.mean((got - want) ** 2) / np.mean(want ** 2)) < 2e-2, t.name
        else:
            np.testing.assert_array_equal(np.asarray(t.data).reshape(want.shape), want, err_msg=t.name)


def test_chunked_encoding_is_byte_identical(tiny_ckpt, tmp_path, q8_gguf, monkeypatch):
    calls = []
    real_encode = convert_module.encode

    def counting_encode(data, qtype, importance=None):
        calls.append(data.shape)
        return real_encode(data, qtype, importance)

    # 1000 elements: 3 rows of 256, 7 of 128, 1 of 512 -> chunks that split tensors at uneven row counts
    monkeypatch.setattr(convert_module, "CHUNK_ELEMENTS", 1000)
    monkeypatch.setattr(convert_module, "encode", counting_encode)
    small = write(tiny_ckpt, "q8_0", tmp_path / "chunked.gguf")
    assert len(calls) > 2000  # really chunked: 94 tensors, thousands of pieces
    # nothing larger than the chunk size, except one whole expert (experts are read one at a time)
    assert max(np.prod(s) for s in calls if len(s) >= 2 and s[0] > 1) <= C["moe_intermediate_size"] * C["hidden_size"]
    assert sha256(small) == sha256(q8_gguf)


def test_existing_output_needs_overwrite(tiny_ckpt, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    target = out / "model-q8_0.gguf"
    target.write_bytes(b"an older file")
    args = ["arch=deepseek_v3", "quant=q8_0", f"model.path={tiny_ckpt}", f"output.dir={out}", "stage=convert"]
    proc = run_cli(*args, cwd=tmp_path, check_rc=2)
    assert "output.overwrite=true" in error_line(proc) and str(target) in error_line(proc)
    assert target.read_bytes() == b"an older file"
    run_cli(*args, "output.overwrite=true", cwd=tmp_path, check_rc=0)
    assert len(gguf.GGUFReader(target).tensors) == 94


def test_failed_conversion_leaves_no_partial_file(tmp_path):
    h = C["hidden_size"]
    bad = np.random.default_rng(0).normal(0, 0.02, (h, 2 * h)).astype(np.float32)
    bad[7, 300] = np.nan
    ckpt = write_checkpoint(tmp_path / "nan", seed=4, weights={"model.layers.4.eh_proj.weight": bad})
    out = tmp_path / "out"
    proc = run_cli("arch=deepseek_v3", "quant=q8_0", f"model.path={ckpt}", f"output.dir={out}", "stage=all",
                   cwd=tmp_path, check_rc=3)
    line = error_line(proc)
    assert line.startswith("mtpmanifest: error:") and "model.layers.4.eh_proj.weight" in line and "NaN" in line
    # nothing at all: manifest.json is written only after a successful conversion, so a failed run with
    # output.overwrite=true cannot pair a new manifest with an earlier GGUF and report
    assert os.listdir(out) == []


def test_a_run_writes_only_its_declared_outputs(tiny_ckpt, tmp_path):
    cwd, out = tmp_path / "cwd", tmp_path / "elsewhere" / "out"
    cwd.mkdir()
    run_cli("arch=deepseek_v3", "quant=q8_0", f"model.path={tiny_ckpt}", f"output.dir={out}", "stage=all",
            cwd=cwd, check_rc=0)
    assert os.listdir(cwd) == []
    assert sorted(os.listdir(out)) == ["manifest.json", "model-q8_0.gguf", "report.json", "tensors.json"]
    assert sorted(os.listdir(tmp_path)) == ["cwd", "elsewhere"]
