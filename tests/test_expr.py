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


@pytest.mark.parametrize("text", ["__import__('os')", "n.__class__()", "[n]", "n[0]", "lambda: 1", "n if n else 1", "n ** 2"])
def test_code_is_rejected(text):
    with pytest.raises(ConfigError):
        expr.evaluate(text, VALUES)


def test_missing_key_names_the_key():
    with pytest.raises(BadInputError, match="config.json: missing key 'rope_scaling.beta_fast'"):
        expr.evaluate("rope_scaling.beta_fast + 1", VALUES)


def test_names_in():
    assert expr.names_in("rope_scaling.factor * hidden_size") == {"rope_scaling.factor", "hidden_size"}
