"""mtpmanifest.mtp_recipe: the arch YAML's mtp_head recipe, resolved per MTP block with llama.cpp's
fallbacks, and checked by lint (jsonschema + tensor names)."""
from __future__ import annotations

import textwrap

import pytest

from conftest import compose_cfg
from mtpmanifest.errors import ConfigError
from mtpmanifest.lint import lint_conf, shipped_conf_dir
from mtpmanifest.mtp_recipe import check_recipe, resolve


def test_deepseek_recipe_and_fallbacks():
    recipe = compose_cfg().arch.mtp_head
    assert recipe.concat == ["embedding", "hidden"] and recipe.hidden == "post_norm" and recipe.token_shift == 1
    full = resolve(recipe, 61, lambda name: True)
    assert full.names() == {
        "embedding": "blk.61.nextn.embed_tokens.weight", "embedding_norm": "blk.61.nextn.enorm.weight",
        "hidden_norm": "blk.61.nextn.hnorm.weight", "projection": "blk.61.nextn.eh_proj.weight",
        "final_norm": "blk.61.nextn.shared_head_norm.weight", "head": "blk.61.nextn.shared_head_head.weight"}
    # a file without the MTP layer's copies uses the trunk's, as llama.cpp does
    lean = resolve(recipe, 61, lambda name: not name.endswith(("embed_tokens.weight", "shared_head_head.weight",
                                                                 "shared_head_norm.weight")))
    assert (lean.embedding, lean.final_norm, lean.head) == ("token_embd.weight", "output_norm.weight", "output.weight")
    with pytest.raises(ConfigError, match="none of blk.61.nextn.eh_proj.weight"):
        resolve(recipe, 61, lambda name: "eh_proj" not in name)


def test_bad_recipes_are_caught(tmp_path):
    recipe = compose_cfg().arch.mtp_head
    recipe.chain = "sideways"
    with pytest.raises(ConfigError, match="mtp_head.chain 'sideways'"):
        check_recipe(recipe, "arch/x.yaml")
    (tmp_path / "arch").mkdir()
    shipped = (shipped_conf_dir() / "arch" / "deepseek_v3.yaml").read_text().split("\nmtp_head:")[0]

    def arch_file(name, recipe_yaml):
        text = shipped.replace("name: deepseek_v3", f"name: {name}") + textwrap.dedent(recipe_yaml)
        (tmp_path / "arch" / f"{name}.yaml").write_text(text)

    arch_file("bad_kind", """
        mtp_head:
          concat: [embedding, hidden]
          hidden: post_norm
          tensors: {embedding: [TOKEN_EMBD], embedding_norm: [NEXTN_ENORM], hidden_norm: [NEXTN_HNORM],
                    projection: [NEXTN_EH_PRJ], final_norm: [OUTPUT_NORM], head: [OUTPUT]}
        """)
    arch_file("bad_shape", """
        mtp_head:
          concat: [embedding, embedding]
          hidden: middle
          tensors: {embedding: [TOKEN_EMBD]}
        """)
    errors = "\n".join(lint_conf([tmp_path]))
    assert "bad_kind.yaml: mtp_head.tensors.projection: 'NEXTN_EH_PRJ' is not a gguf MODEL_TENSOR name" in errors
    assert "bad_shape.yaml: mtp_head/concat" in errors and "'middle' is not one of" in errors
    assert "mtp_head/tensors: 'projection' is a required property" in errors
