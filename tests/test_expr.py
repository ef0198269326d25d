import pytest

from mtpmanifest import expr
from mtpmanifest.errors import BadInputError, ConfigError

VALUES = {"hidden_size": 256, "n": 3, "rope_scaling": {"factor": 40.0, "type": "yarn"}, "flag": True}


@pytest.mark.parametrize("text, expected", [
    ("hidden_size * 2", 512),
    ("hidden_size // 3 + n", 88),
    ("0.1 * rope_scaling.factor", 4.0),
    ("n < 4 and flag", True),
    ("rope_scaling.type == 'yarn'", True),
    ("1 <= n < 3", False),
    ("-n", -3),
    (7, 7),
])
def test_evaluate(text, expected):
    assert expr.evaluate(text, VALUES) == expected


@pytest.mark.parametrize("text", ["__import__('os')", "n.__class__()", "[n]", "lambda: 1", "n ** 2", "len(n, key=1)",
                                  "sorted(n)", "n.count(1)", "n[0:1]"])
def test_code_is_rejected(text):
    with pytest.raises(ConfigError):
        expr.evaluate(text, VALUES)


def test_conditional_index_and_functions():
    values = {"n": 3, "layer_types": ["full", "sliding"], "moe": "3,4,5"}
    assert expr.evaluate("n if n > 2 else 1", values) == 3
    assert expr.evaluate("absent if absent >= 0 else n", values) == 3  # a missing key is false in the condition
    assert expr.evaluate("layer_types[1]", values) == "sliding"
    assert expr.evaluate("4 in int_list(moe)", values) and expr.evaluate("len(layer_types) + max(1, n)", values) == 5
    with pytest.raises(BadInputError, match="missing key 'layer_types\\[2\\]'"):
        expr.evaluate("layer_types[2]", values)


def test_missing_key_names_the_key():
    with pytest.raises(BadInputError, match="config.json: missing key 'rope_scaling.beta_fast'"):
        expr.evaluate("rope_scaling.beta_fast + 1", VALUES)


def test_names_in():
    assert expr.names_in("rope_scaling.factor * hidden_size") == {"rope_scaling.factor", "hidden_size"}
