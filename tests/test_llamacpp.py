"""mtpmanifest.llamacpp: llama.cpp probes in a child process on tiny DeepSeek-V3 GGUFs with an MTP head.

The GGUFs are written here with gguf-py following shared/reference/deepseek2-mtp-tiny-layout.txt
(same KV keys, tensor names and GGML shapes, F32, random weights, a trivial byte-level vocab).
"""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("llama_cpp")
gguf = pytest.importorskip("gguf")

from mtpmanifest.llamacpp import LlamaProbe, probe  # noqa: E402

H, N_LAYER, N_FF, N_HEAD, N_VOCAB = 256, 4, 512, 4, 2048
Q_LORA, KV_LORA, NOPE, ROPE, V_DIM = 64, 32, 32, 16, 32
N_EXP, N_EXP_USED, N_FF_EXP = 8, 2, 128
MTP = N_LAYER  # the MTP block index
TOKENS = [0, 17, 300, 5, 1999, 42, 42, 1024, 7, 640, 3, 88, 1500, 260, 9, 1100]


def _byte_chars() -> list[str]:
    """GPT-2 byte-level alphabet: printable bytes map to themselves, the rest to 256 + k."""
    keep = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    out, extra = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return [out[b] for b in range(256)]


def make_weights(seed: int = 0) -> dict[str, np.ndarray]:
    """Random weights in numpy layout (numpy shape = reversed GGML shape), keyed by GGUF tensor name."""
    rng = np.random.default_rng(seed)

    def mat(rows, cols, *lead):
        return (rng.standard_normal((*lead, rows, cols)) / np.sqrt(cols)).astype(np.float32)

    def norm(n):
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    w = {"output.weight": mat(N_VOCAB, H), "token_embd.weight": rng.standard_normal((N_VOCAB, H)).astype(np.float32)}
    for i in range(N_LAYER + 1):
        p = f"blk.{i}."
        if i == MTP:
            w[p + "nextn.eh_proj.weight"] = mat(H, 2 * H)
            w[p + "nextn.embed_tokens.weight"] = rng.standard_normal((N_VOCAB, H)).astype(np.float32)
            w[p + "nextn.enorm.weight"] = norm(H)
            w[p + "nextn.hnorm.weight"] = norm(H)
        w[p + "attn_norm.weight"] = norm(H)
        if i == 0:
            w[p + "ffn_down.weight"] = mat(H, N_FF)
            w[p + "ffn_gate.weight"] = mat(N_FF, H)
            w[p + "ffn_up.weight"] = mat(N_FF, H)
        else:
            w[p + "ffn_down_exps.weight"] = mat(H, N_FF_EXP, N_EXP)
            w[p + "ffn_gate_exps.weight"] = mat(N_FF_EXP, H, N_EXP)
            w[p + "ffn_up_exps.weight"] = mat(N_FF_EXP, H, N_EXP)
            w[p + "exp_probs_b.bias"] = (0.1 * rng.standard_normal(N_EXP)).astype(np.float32)
            w[p + "ffn_gate_inp.weight"] = mat(N_EXP, H)
            w[p + "ffn_down_shexp.weight"] = mat(H, N_FF_EXP)
            w[p + "ffn_gate_shexp.weight"] = mat(N_FF_EXP, H)
            w[p + "ffn_up_shexp.weight"] = mat(N_FF_EXP, H)
        w[p + "ffn_norm.weight"] = norm(H)
        w[p + "attn_kv_a_norm.weight"] = norm(KV_LORA)
        w[p + "attn_kv_a_mqa.weight"] = mat(KV_LORA + ROPE, H)
        w[p + "attn_k_b.weight"] = mat(KV_LORA, NOPE, N_HEAD)   # GGML [NOPE, KV_LORA, N_HEAD]
        w[p + "attn_v_b.weight"] = mat(V_DIM, KV_LORA, N_HEAD)  # GGML [KV_LORA, V_DIM, N_HEAD]
        w[p + "attn_output.weight"] = mat(H, N_HEAD * V_DIM)
        w[p + "attn_q_a_norm.weight"] = norm(Q_LORA)
        w[p + "attn_q_a.weight"] = mat(Q_LORA, H)
        w[p + "attn_q_b.weight"] = mat(N_HEAD * (NOPE + ROPE), Q_LORA)
        if i == N_LAYER - 1:
            w["output_norm.weight"] = norm(H)
        if i == MTP:
            w[p + "nextn.shared_head_head.weight"] = mat(N_VOCAB, H)
            w[p + "nextn.shared_head_norm.weight"] = norm(H)
    return w


def write_tiny_gguf(path, weights, *, nextn_key: bool = True, mtp_block: bool = True) -> None:
    """Write the layout of deepseek2-mtp-tiny-layout.txt; variants drop the nextn key or every blk.N tensor."""
    wr = gguf.GGUFWriter(str(path), "deepseek2")
    a = "deepseek2."
    wr.add_string("general.type", "model")
    wr.add_string("general.name", "Tiny_Dsv3")
    wr.add_string("general.size_label", "8x3.8M")
    for key, val in [("block_count", N_LAYER + 1), ("context_length", 4096), ("embedding_length", H),
                     ("feed_forward_length", N_FF), ("attention.head_count", N_HEAD),
                     ("attention.head_count_kv", 1)]:
        wr.add_uint32(a + key, val)
    wr.add_float32(a + "rope.freq_base", 10000.0)
    wr.add_float32(a + "attention.layer_norm_rms_epsilon", 1e-6)
    for key, val in [("expert_count", N_EXP), ("expert_used_count", N_EXP_USED), ("expert_group_count", 2),
                     ("expert_group_used_count", 1), ("expert_gating_func", 2),
                     ("attention.key_length", KV_LORA + ROPE), ("attention.value_length", KV_LORA)]:
        wr.add_uint32(a + key, val)
    wr.add_uint32("general.file_type", 0)
    for key, val in [("leading_dense_block_count", 1), ("vocab_size", N_VOCAB), ("attention.q_lora_rank", Q_LORA),
                     ("attention.kv_lora_rank", KV_LORA), ("attention.key_length_mla", NOPE + ROPE),
                     ("attention.value_length_mla", V_DIM), ("expert_feed_forward_length", N_FF_EXP),
                     ("expert_shared_count", 1)]:
        wr.add_uint32(a + key, val)
    wr.add_float32(a + "expert_weights_scale", 2.5)
    wr.add_bool(a + "expert_weights_norm", True)
    wr.add_uint32(a + "rope.dimension_count", ROPE)
    if nextn_key:
        wr.add_uint32(a + "nextn_predict_layers", 1)
    wr.add_uint32("general.quantization_version", 2)
    byte_chars = _byte_chars()
    tokens = ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"] + byte_chars
    tokens += [f"t{i}" for i in range(N_VOCAB - len(tokens))]
    wr.add_tokenizer_model("gpt2")
    wr.add_tokenizer_pre("deepseek-v3")
    wr.add_token_list(tokens)
    wr.add_token_types([3, 3] + [1] * (N_VOCAB - 2))
    wr.add_token_merges(["t 0", "t 1", "Ġ t"])
    wr.add_bos_token_id(0)
    wr.add_eos_token_id(1)
    wr.add_add_bos_token(True)
    wr.add_add_sep_token(False)
    wr.add_add_eos_token(False)
    for name, arr in weights.items():
        if not mtp_block and name.startswith(f"blk.{MTP}."):
            continue
        wr.add_tensor(name, arr)
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()


@pytest.fixture(scope="module")
def weights():
    return make_weights(0)


@pytest.fixture(scope="module")
def good(tmp_path_factory, weights):
    path = tmp_path_factory.mktemp("gguf") / "good.gguf"
    write_tiny_gguf(path, weights)
    return path


@pytest.fixture(scope="module")
def good_probe(good) -> LlamaProbe:
    return probe(good, TOKENS, timeout=240)


def test_good_file_loads_with_mtp(good_probe, weights):
    r = good_probe
    assert r.ok, r.error
    assert r.returncode == 0
    assert (r.n_layer, r.n_layer_nextn) == (N_LAYER, 1)
    assert r.warnings == [], r.warnings
    assert any("llama_model_loader" in ln or "print_info" in ln for ln in r.log)
    for arr, width in ((r.logits, N_VOCAB), (r.hidden, H), (r.mtp_logits, N_VOCAB)):
        assert arr is not None and arr.shape == (len(TOKENS), width) and arr.dtype == np.float32
        assert np.isfinite(arr).all()
    assert np.abs(r.logits).max() > 1e-3 and np.abs(r.mtp_logits).max() > 1e-3
    # the hidden rows are post-output_norm: logits = output @ h
    assert np.abs(r.logits - r.hidden @ weights["output.weight"].T).max() < 1e-3


def test_missing_nextn_key_fails_cleanly(tmp_path, weights):
    path = tmp_path / "nokey.gguf"
    write_tiny_gguf(path, weights, nextn_key=False)
    r = probe(path, TOKENS, timeout=240)
    assert not r.ok and r.returncode != 0
    assert any("wrong number of tensors" in w for w in r.warnings), r.log[-10:]
    assert r.logits is None and r.error


def test_mtp_context_abort_is_contained(tmp_path, weights):
    path = tmp_path / "noblock.gguf"
    write_tiny_gguf(path, weights, mtp_block=False)
    r = probe(path, TOKENS, timeout=240)
    assert not r.ok and r.returncode != 0
    assert r.stage == "mtp_context"          # trunk decoded, died while creating the MTP context
    assert r.n_layer_nextn == 1 and r.logits is not None and r.mtp_logits is None
    assert "GGML_ASSERT" in r.error and "MTP block missing nextn.eh_proj" in r.error


def test_load_mtp_false_reports_unused_tensors(good):
    r = probe(good, TOKENS, load_mtp=False, mtp=False, timeout=240)
    assert r.ok, r.error
    unused = [w for w in r.warnings if "unused tensor" in w]
    assert unused and any(f"blk.{MTP}.nextn.eh_proj" in w for w in unused), r.warnings
    assert r.logits is not None and r.hidden is None and r.mtp_logits is None
    # asking for the MTP head anyway aborts in the child, never in this process
    r2 = probe(good, TOKENS, load_mtp=False, mtp=True, timeout=240)
    assert not r2.ok and "GGML_ASSERT" in (r2.error or "")


def _torch_mtp_logits(w: dict[str, np.ndarray], tokens: list[int], hidden: np.ndarray) -> np.ndarray:
    """MTP head in float32 torch: eh_proj(cat[enorm(E[t_p]), hnorm(h_{p-1})]) -> decoder block -> head."""
    torch = pytest.importorskip("torch")
    from transformers import DeepseekV3Config
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import (DeepseekV3DecoderLayer,
                                                                      DeepseekV3RotaryEmbedding)

    cfg = DeepseekV3Config(
        vocab_size=N_VOCAB, hidden_size=H, intermediate_size=N_FF, moe_intermediate_size=N_FF_EXP,
        num_hidden_layers=N_LAYER, num_attention_heads=N_HEAD, num_key_value_heads=N_HEAD,
        n_shared_experts=1, n_routed_experts=N_EXP, num_experts_per_tok=N_EXP_USED, n_group=2, topk_group=1,
        routed_scaling_factor=2.5, norm_topk_prob=True, first_k_dense_replace=1, kv_lora_rank=KV_LORA,
        q_lora_rank=Q_LORA, qk_rope_head_dim=ROPE, qk_nope_head_dim=NOPE, v_head_dim=V_DIM,
        rms_norm_eps=1e-6, rope_interleave=True, max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    cfg._attn_implementation = "eager"
    cfg._experts_implementation = "eager"
    layer = DeepseekV3DecoderLayer(cfg, layer_idx=MTP).eval()
    p = f"blk.{MTP}."
    g = {k[len(p):]: torch.from_numpy(v.copy()) for k, v in w.items() if k.startswith(p)}
    kv_b = torch.cat([torch.cat([g["attn_k_b.weight"][h].T, g["attn_v_b.weight"][h]], 0) for h in range(N_HEAD)], 0)
    state = {
        "input_layernorm.weight": g["attn_norm.weight"], "post_attention_layernorm.weight": g["ffn_norm.weight"],
        "self_attn.q_a_proj.weight": g["attn_q_a.weight"], "self_attn.q_a_layernorm.weight": g["attn_q_a_norm.weight"],
        "self_attn.q_b_proj.weight": g["attn_q_b.weight"], "self_attn.kv_b_proj.weight": kv_b,
        "self_attn.kv_a_proj_with_mqa.weight": g["attn_kv_a_mqa.weight"],
        "self_attn.kv_a_layernorm.weight": g["attn_kv_a_norm.weight"], "self_attn.o_proj.weight": g["attn_output.weight"],
        "mlp.gate.weight": g["ffn_gate_inp.weight"], "mlp.gate.e_score_correction_bias": g["exp_probs_b.bias"],
        "mlp.experts.gate_up_proj": torch.cat([g["ffn_gate_exps.weight"], g["ffn_up_exps.weight"]], 1),
        "mlp.experts.down_proj": g["ffn_down_exps.weight"],
        "mlp.shared_experts.gate_proj.weight": g["ffn_gate_shexp.weight"],
        "mlp.shared_experts.up_proj.weight": g["ffn_up_shexp.weight"],
        "mlp.shared_experts.down_proj.weight": g["ffn_down_shexp.weight"],
    }
    missing, unexpected = layer.load_state_dict(state, strict=False)
    assert not unexpected and not [m for m in missing if "inv_freq" not in m], missing

    def rms(x, weight):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * weight

    n = len(tokens)
    h_prev = torch.zeros(n, H)
    h_prev[1:] = torch.from_numpy(hidden[:-1])  # entry 0 gets a zero row, like llama.cpp's driver
    with torch.no_grad():
        e = g["nextn.embed_tokens.weight"][torch.tensor(tokens)]
        x = torch.cat([rms(e, g["nextn.enorm.weight"]), rms(h_prev, g["nextn.hnorm.weight"])], -1)
        x = (x @ g["nextn.eh_proj.weight"].T)[None]
        pos = torch.arange(n)[None]
        cos_sin = DeepseekV3RotaryEmbedding(cfg)(x, pos)
        mask = torch.full((n, n), float("-inf")).triu(1)[None, None]
        y = layer(x, attention_mask=mask, position_ids=pos, position_embeddings=cos_sin)[0]
        y = rms(y, g["nextn.shared_head_norm.weight"])
        return (y @ g["nextn.shared_head_head.weight"].T).numpy()


def test_mtp_logits_match_torch(good_probe, weights):
    r = good_probe
    assert r.ok, r.error
    ref = _torch_mtp_logits(weights, TOKENS, r.hidden)
    delta = np.abs(ref - r.mtp_logits)
    print(f"max |dlogit| MTP llama.cpp vs torch: all {delta.max():.3g}, p>=1 {delta[1:].max():.3g}; "
          f"logit scale {np.abs(ref).max():.3g}")
    assert delta[1:].max() < 1e-3
    assert (ref.argmax(-1) == r.mtp_logits.argmax(-1)).all()
