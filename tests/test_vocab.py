"""The SentencePiece ("llama") vocabulary: equal to what llama.cpp's converter writes for the same files (its
--vocab-only output, where its sentencepiece path runs for real), and llama.cpp, loading our ERNIE GGUF,
tokenizes text exactly as sentencepiece does. Bad or missing tokenizer files stop the run (exit 3)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import gguf
import pytest
import sentencepiece

from conftest import compose_cfg
from llamacpp_convert import gguf_layout, llamacpp_source
from mtpmanifest.convert import convert
from mtpmanifest.demo import DEMO_DIR
from mtpmanifest.errors import BadInputError
from mtpmanifest.fixtures import ernie4_5_moe as ernie
from mtpmanifest.plan import compile_manifest
from mtpmanifest.source import Checkpoint
from mtpmanifest.text_tokens import encode_text
from mtpmanifest.vocab import add_vocab

HELDOUT = DEMO_DIR / "heldout.txt"
TEXTS = [
    "def foo(x):\n    return x + 1  # héllo 世界",
    "  leading spaces,\ttabs and\n\nblank lines   ",
    "naïve café — 1234567 ✓ 🙂",
    "<|begin_of_sentence|>not parsed as a control token</s>",
    "a",
]


def tokenizer_keys(path) -> dict:
    return {k: v for k, v in gguf_layout(path)["keys"].items() if k.startswith("tokenizer.")}


def ours_vocab_only(ckpt_dir, out_path, n_vocab: int, model: str = "llama"):
    writer = gguf.GGUFWriter(str(out_path), "ernie4_5-moe")
    add_vocab(writer, ckpt_dir, model, "default", n_vocab)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    return out_path


def llamacpp_vocab_only(ckpt_dir, out_path):
    src = llamacpp_source()
    env = {**os.environ, "PYTHONPATH": str(src / "gguf-py")}
    proc = subprocess.run([sys.executable, str(src / "convert_hf_to_gguf.py"), str(ckpt_dir), "--vocab-only",
                           "--outfile", str(out_path)], cwd=src, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out_path


def padded_variant(ckpt_dir):
    """vocab_size beyond the model's pieces, an added_tokens.json and added_tokens_decoder entries of every
    kind: a user token with SentencePiece's space mark, one that looks special, one replacing a pad id."""
    config = json.loads((ckpt_dir / "config.json").read_text())
    (ckpt_dir / "config.json").write_text(json.dumps({**config, "vocab_size": 2100}))
    (ckpt_dir / "added_tokens.json").write_text(json.dumps({"<extra_0>": 2050, "<extra_1>": 2051}))
    tc = json.loads((ckpt_dir / "tokenizer_config.json").read_text())
    entry = {"lstrip": False, "normalized": False, "rstrip": False, "single_word": False}
    tc["added_tokens_decoder"].update({"2060": {**entry, "content": "\u2581user", "special": False},
                                       "2061": {**entry, "content": "<|tool|>", "special": False},
                                       "2051": {**entry, "content": "<extra_1b>", "special": True}})
    (ckpt_dir / "tokenizer_config.json").write_text(json.dumps(tc))
    return ckpt_dir


@pytest.mark.parametrize("variant", ["release", "padded"])
def test_sentencepiece_vocab_equals_llamacpp_converter(variant, tmp_path):
    ckpt = ernie.write_checkpoint(tmp_path / "ckpt", header_only=True)
    if variant == "padded":
        padded_variant(ckpt)
    n_vocab = json.loads((ckpt / "config.json").read_text())["vocab_size"]
    ours = tokenizer_keys(ours_vocab_only(ckpt, tmp_path / "ours.gguf", n_vocab))
    theirs = tokenizer_keys(llamacpp_vocab_only(ckpt, tmp_path / "theirs.gguf"))
    assert ours == theirs
    assert ours["tokenizer.ggml.model"] == "llama" and ours["tokenizer.ggml.pre"] == "default"
    assert len(ours["tokenizer.ggml.tokens"]) == n_vocab and ours["tokenizer.ggml.add_space_prefix"] is False
    assert (ours["tokenizer.ggml.bos_token_id"], ours["tokenizer.ggml.eos_token_id"]) == (1, 2)
    if variant == "padded":
        tokens, types = ours["tokenizer.ggml.tokens"], ours["tokenizer.ggml.token_type"]
        assert tokens[2050:2052] == ("<extra_0>", "<extra_1b>") and tokens[2060:2062] == (" user", "<|tool|>")
        assert types[2060:2062] == (gguf.TokenType.USER_DEFINED, gguf.TokenType.CONTROL)
        assert tokens[2099] == "[PAD2099]" and types[2099] == gguf.TokenType.UNUSED


_TOKENIZE = textwrap.dedent("""
    import json, sys
    from llama_cpp import Llama
    llm = Llama(model_path=sys.argv[1], vocab_only=True, verbose=False)
    texts = json.loads(sys.stdin.read())
    print(json.dumps([[llm.tokenize(t.encode(), add_bos=add, special=False) for add in (False, True)]
                      for t in texts]))
    print(json.dumps([llm.detokenize(llm.tokenize(t.encode(), add_bos=False, special=False)).decode()
                      for t in texts]))
""")


def test_llamacpp_tokenizes_our_ernie_gguf_like_sentencepiece(tmp_path):
    """llama.cpp reads our written ERNIE GGUF's vocabulary (vocab_only: the tensors are not loaded) and gives
    sentencepiece's ids for code, Unicode (byte fallback), whitespace runs and the demo held-out text; with
    add_special it adds what tokenizer_config.json says (no BOS for ERNIE), as our acceptance text does."""
    pytest.importorskip("llama_cpp")
    ckpt_dir = ernie.write_checkpoint(tmp_path / "ckpt", seed=1)
    cfg = compose_cfg("arch=ernie4_5_moe", "quant=q8_0")
    ckpt = Checkpoint.open(ckpt_dir)
    path = convert(compile_manifest(cfg.arch, cfg.quant, ckpt), ckpt, tmp_path / "model.gguf", progress=False)
    texts = TEXTS + [HELDOUT.read_text(encoding="utf-8")]
    proc = subprocess.run([sys.executable, "-c", _TOKENIZE, str(path)], input=json.dumps(texts),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ids, round_trip = (json.loads(line) for line in proc.stdout.strip().splitlines()[-2:])
    sp = sentencepiece.SentencePieceProcessor(model_file=str(ckpt_dir / "tokenizer.model"))
    for text, (plain, special) in zip(texts, ids):
        assert plain == sp.encode(text) == encode_text(ckpt_dir, text, special=False)
        assert special == encode_text(ckpt_dir, text, special=True) == plain  # add_bos_token false
    assert round_trip == texts
    assert len(ids[-1][0]) > 1000 and sp.unk_id() not in ids[-1][0]


def test_encode_text_adds_bos_as_tokenizer_config_says(tmp_path):
    ckpt = ernie.write_checkpoint(tmp_path / "ckpt", header_only=True)
    tc = json.loads((ckpt / "tokenizer_config.json").read_text())
    (ckpt / "tokenizer_config.json").write_text(json.dumps({**tc, "add_bos_token": True, "add_eos_token": True}))
    plain = encode_text(ckpt, "x = 1", special=False)
    assert encode_text(ckpt, "x = 1", special=True) == [1] + plain + [2]
    (ckpt / "tokenizer_config.json").unlink()  # LlamaTokenizer's defaults: BOS, no EOS
    assert encode_text(ckpt, "x = 1", special=True) == [1] + plain


@pytest.mark.parametrize("damage", ["missing", "garbage", "bad_config", "bad_added"])
def test_bad_tokenizer_files_stop_with_exit_3_naming_the_file(damage, tmp_path):
    ckpt = ernie.write_checkpoint(tmp_path / "ckpt", header_only=True)
    name = {"missing": "tokenizer.model", "garbage": "tokenizer.model", "bad_config": "tokenizer_config.json",
            "bad_added": "added_tokens.json"}[damage]
    if damage == "missing":
        (ckpt / name).unlink()
    else:
        (ckpt / name).write_bytes(b"\x00\x01 not a model" if damage == "garbage" else b"{not json")
    with pytest.raises(BadInputError, match=str(ckpt / name)) as err:
        ours_vocab_only(ckpt, tmp_path / "x.gguf", 2048)
    assert err.value.exit_code == 3
    if damage in ("missing", "garbage"):
        with pytest.raises(BadInputError, match=str(ckpt)):
            encode_text(ckpt, "text", special=True)


def test_bpe_checkpoints_keep_their_tokenizer_json_path(tmp_path):
    """tokenizer=True still writes the shared BPE tokenizer.json; gpt2 vocab needs it, llama needs tokenizer.model."""
    ckpt = ernie.write_checkpoint(tmp_path / "ckpt", header_only=True, tokenizer="bpe")
    assert (ckpt / "tokenizer.json").is_file() and not (ckpt / "tokenizer.model").exists()
    keys = tokenizer_keys(ours_vocab_only(ckpt, tmp_path / "bpe.gguf", 2048, model="gpt2"))
    assert keys["tokenizer.ggml.model"] == "gpt2" and len(keys["tokenizer.ggml.merges"]) > 1000
    with pytest.raises(BadInputError, match="tokenizer.model: missing"):
        ours_vocab_only(ckpt, tmp_path / "x.gguf", 2048)

