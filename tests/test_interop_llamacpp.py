"""The real runtime: llama.cpp (llama-cpp-python 0.3.36) loads our GGUF with its MTP head usable,
and its logits match transformers' DeepseekV3ForCausalLM on the same weights."""
from __future__ import annotations

import numpy as np
import pytest
from tokenizers import Tokenizer

from conftest import run_cli
from mtpmanifest.demo import DEMO_DIR
from mtpmanifest.fixtures.deepseek_v3 import TINY_CONFIG, write_checkpoint
from mtpmanifest.fixtures.hf_reference import hf_logits
from mtpmanifest.llamacpp import probe

TEXT = "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n"
# Float32 weights on both sides; llama.cpp and PyTorch differ only in summation order, which
# moves logits by ~1e-5 on these models (llamacpp-runtime.md measured 4.8e-6). 1e-3 leaves room
# for other BLAS kernels yet is far below any real error (a wrong router moves logits by ~1).
LOGIT_ATOL = 1e-3
BAD_LOAD_WORDS = ("unused tensor", "wrong number of tensors", "not found", "wrong shape")

SECOND_CONFIG = {
    **TINY_CONFIG,
    "hidden_size": 128, "num_hidden_layers": 3, "first_k_dense_replace": 2, "intermediate_size": 256,
    "moe_intermediate_size": 64, "n_routed_experts": 4, "num_experts_per_tok": 2, "n_group": 1, "topk_group": 1,
    "num_attention_heads": 2, "num_key_value_heads": 2, "q_lora_rank": 48, "kv_lora_rank": 64,
}


def tokens_for(model_dir) -> list[int]:
    ids = Tokenizer.from_file(str(model_dir / "tokenizer.json")).encode(TEXT).ids
    assert 16 <= len(ids) <= 64
    return ids


@pytest.fixture(scope="module", params=["demo", "second"])
def checkpoint(request, tmp_path_factory):
    if request.param == "demo":
        return DEMO_DIR
    return write_checkpoint(tmp_path_factory.mktemp("second") / "ckpt", SECOND_CONFIG, fp8=False, shards=2, seed=7)


def convert(model_dir, quant, out_dir) -> str:
    # acceptance has its own tests (test_accept.py); on the trained demo q2_k's head falls below min_retention
    # q2_k requires an importance matrix: calibrate its trunk and MTP layer on the way
    calib = ["calib.enabled=true", "calib.samples=4", "calib.seq_len=128"] if quant == "q2_k" else []
    run_cli(f"model.path={model_dir}", f"output.dir={out_dir}", f"quant={quant}", "stage=all", "accept.enabled=false",
            *calib, cwd=out_dir.parent, check_rc=0)
    return str(out_dir / f"model-{quant}.gguf")


def test_llamacpp_loads_mtp_and_matches_transformers(checkpoint, tmp_path):
    tokens = tokens_for(checkpoint)
    result = probe(convert(checkpoint, "f32", tmp_path / "f32"), tokens, load_mtp=True, mtp=True)
    assert result.ok, result.error
    assert result.n_layer_nextn == 1
    bad = [w for w in result.warnings if any(word in w for word in BAD_LOAD_WORDS)]
    assert bad == []
    assert result.mtp_logits is not None and np.isfinite(result.mtp_logits).all()

    reference = hf_logits(checkpoint, tokens)
    delta = np.abs(result.logits - reference).max()
    print(f"max |llama.cpp - transformers| logit = {delta:.2e} over {len(tokens)} tokens")
    assert delta < LOGIT_ATOL
    assert (result.logits.argmax(-1) == reference.argmax(-1)).all()


@pytest.mark.parametrize("quant", ["q8_0", "q4_k_m", "q2_k"])
def test_llamacpp_loads_quantized_with_mtp(checkpoint, quant, tmp_path):
    result = probe(convert(checkpoint, quant, tmp_path / quant), tokens_for(checkpoint), load_mtp=True, mtp=True)
    assert result.ok, result.error
    assert result.n_layer_nextn == 1
    assert [w for w in result.warnings if any(word in w for word in BAD_LOAD_WORDS)] == []
    assert np.isfinite(result.logits).all() and np.isfinite(result.mtp_logits).all()
