"""mtpmanifest.metadata: GGUF keys are gguf-py constants; a key newer than the installed gguf-py is spelled out."""
import pytest

from mtpmanifest.errors import ConfigError
from mtpmanifest.metadata import key_template


def test_constant_names():
    assert key_template("LLM.BLOCK_COUNT", "x") == "{arch}.block_count"
    with pytest.raises(ConfigError, match="'LLM.NOT_A_KEY' is not a gguf.Keys constant"):
        key_template("LLM.NOT_A_KEY", "x")


def test_spelled_out_key_only_when_gguf_py_lacks_it():
    assert key_template("{arch}.attention.recurrent_layers", "x") == "{arch}.attention.recurrent_layers"
    with pytest.raises(ConfigError, match="is a gguf.Keys constant: use its name"):
        key_template("{arch}.block_count", "x")
    with pytest.raises(ConfigError, match="is not a GGUF key"):
        key_template("{arch}.Attention", "x")
