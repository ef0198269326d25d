"""mtpmanifest.arch_select: arch=auto picks by config.json, and user files never shadow built-in ones."""
import pytest

from mtpmanifest.arch_select import arch_index, pick_arch, shadowing_errors
from mtpmanifest.errors import ConfigError
from mtpmanifest.lint import shipped_conf_dir

SHIPPED = shipped_conf_dir()


@pytest.fixture(scope="module")
def index():
    return arch_index([SHIPPED])


@pytest.mark.parametrize("config, expected", [
    ({"architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3"}, "deepseek_v3"),
    ({"architectures": ["Glm4MoeForCausalLM"], "model_type": "glm4_moe"}, "glm4_moe"),
    ({"architectures": ["Qwen3NextForCausalLM"], "model_type": "qwen3_next"}, "qwen3_next"),
    ({"architectures": ["MiMoForCausalLM"], "model_type": "mimo"}, "mimo"),
    ({"architectures": ["Ernie4_5_MoeForCausalLM"], "model_type": "ernie4_5_moe"}, "ernie4_5_moe"),
    ({"model_type": "glm4_moe"}, "glm4_moe"),  # no architectures: model_type decides
])
def test_pick_by_architectures_then_model_type(index, config, expected):
    assert pick_arch(config, index) == expected


def test_unknown_lists_known_and_closest(index):
    with pytest.raises(ConfigError) as err:
        pick_arch({"architectures": ["DeepseekV4ForCausalLM"], "model_type": "deepseek_v4"}, index, "x/config.json")
    message = str(err.value)
    assert "no architecture file matches x/config.json" in message
    assert "known architectures: deepseek_v3," in message and message.endswith("closest: deepseek_v3")


def test_ambiguous_match_is_an_error(tmp_path, index):
    (tmp_path / "arch").mkdir()
    (tmp_path / "arch" / "my_glm.yaml").write_text("name: my_glm\nhf_architectures: [Glm4MoeForCausalLM]\n")
    with pytest.raises(ConfigError, match=r"matches several architectures \(glm4_moe, my_glm\)"):
        pick_arch({"architectures": ["Glm4MoeForCausalLM"]}, arch_index([SHIPPED, tmp_path]))


def test_user_file_named_like_a_builtin_is_reported(tmp_path):
    for group, name in (("arch", "deepseek_v3"), ("quant", "q8_0"), ("arch", "mine")):
        (tmp_path / group).mkdir(exist_ok=True)
        (tmp_path / group / f"{name}.yaml").write_text(f"name: {name}\n")
    errors = shadowing_errors(SHIPPED, [tmp_path])
    assert len(errors) == 2
    assert all("user files never shadow others: rename it" in e for e in errors)
    assert errors[0].startswith(f"{tmp_path}/arch/deepseek_v3.yaml: arch=deepseek_v3 is already defined by")
