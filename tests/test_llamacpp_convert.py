"""The shared test helper around llama.cpp's convert_hf_to_gguf.py (tests/llamacpp_convert.py): where its
sources come from, and what the layout comparison reports and leaves out. Real conversions are in the
family tests (tests/conf/arch/)."""
from __future__ import annotations

import pytest

import llamacpp_convert as lc


def layout(**changes):
    base = {
        "tensors": {"token_embd.weight": ((64, 2048), "F32"), "blk.0.attn_q.weight": ((64, 96), "F32")},
        "keys": {"general.architecture": "glm4moe", "general.name": "a", "general.file_type": 0,
                 "general.size_label": "8x1M", "tokenizer.ggml.model": "gpt2", "glm4moe.block_count": 4,
                 "glm4moe.rope.freq_base": 10000.0},
    }
    for part, items in changes.items():
        base[part] = {**base[part], **items}
        base[part] = {k: v for k, v in base[part].items() if v is not None}
    return base


def test_equal_layouts_have_no_differences():
    assert lc.layout_differences(layout(), layout()) == []


def test_naming_and_tokenizer_keys_and_file_type_are_left_out():
    theirs = layout(keys={"general.name": "b", "general.size_label": None, "tokenizer.ggml.model": None,
                          "tokenizer.ggml.pre": "glm4", "general.file_type": 7, "general.basename": "GLM"})
    assert lc.layout_differences(layout(), theirs) == []
    assert lc.layout_differences(layout(), theirs, ignore_values=()) == [
        "value of general.file_type: ours 0, llama.cpp's 7"]


def test_every_kind_of_difference_is_reported():
    theirs = layout(tensors={"blk.0.attn_q.weight": ((64, 128), "F32"), "blk.0.attn_q.bias": ((128,), "F32"),
                             "token_embd.weight": ((64, 2048), "F16")},
                    keys={"glm4moe.block_count": 5, "glm4moe.rope.freq_base": 10000.0000001,
                          "glm4moe.expert_count": 8, "general.type": "model"})
    diffs = lc.layout_differences(layout(), theirs)
    assert diffs == [
        "tensor only in llama.cpp's: blk.0.attn_q.bias (128,)",
        "shape of blk.0.attn_q.weight: ours (64, 96), llama.cpp's (64, 128)",
        "key only in llama.cpp's: general.type = 'model'",  # general.type says how to load it: compared
        "key only in llama.cpp's: glm4moe.expert_count = 8",
        "value of glm4moe.block_count: ours 4, llama.cpp's 5",
    ]
    assert "type of token_embd.weight: ours F32, llama.cpp's F16" in lc.layout_differences(layout(), theirs, compare_types=True)
    assert lc.layout_differences(layout(), theirs, ignore_keys=["glm4moe.expert_count", "general.type"],
                                 compare_values=False)[-1].startswith("shape of")


def test_source_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(lc.SRC_ENV, str(tmp_path))
    with pytest.raises(RuntimeError, match=lc.SRC_ENV):
        lc.llamacpp_source()
    monkeypatch.delenv(lc.SRC_ENV)
    tree = lc.llamacpp_source()  # the sdist beside us, the cache, or a fresh download of the installed version
    assert (tree / lc.CONVERTER).is_file() and (tree / "gguf-py" / "gguf").is_dir()
    monkeypatch.setenv(lc.SRC_ENV, str(tree))
    assert lc.llamacpp_source() == tree


def test_a_failing_conversion_says_why(tmp_path):
    (tmp_path / "config.json").write_text('{"architectures": ["NoSuchModelForCausalLM"]}')
    with pytest.raises(RuntimeError, match="NoSuchModelForCausalLM"):
        lc.convert_with_llamacpp(tmp_path, tmp_path / "out.gguf")
