"""Every shipped config group file composes against its dataclass schema (recursive glob)."""
import pytest
from hydra.errors import ConfigCompositionException

from conftest import compose_cfg
from mtpmanifest.arch_select import AUTO
from mtpmanifest.lint import shipped_conf_dir
from mtpmanifest.schema import ArchConfig, QuantConfig

# arch/auto.yaml is a placeholder resolved by the command line (tests/test_cli_conf.py), not an architecture
GROUP_FILES = sorted(p for p in shipped_conf_dir().rglob("*.yaml")
                     if p.parent.name in ("arch", "quant") and (p.parent.name, p.stem) != ("arch", AUTO))


@pytest.mark.parametrize("path", GROUP_FILES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_group_file_composes(path):
    cfg = compose_cfg(f"{path.parent.name}={path.stem}")
    node = getattr(cfg, path.parent.name)
    assert isinstance(node, ArchConfig if path.parent.name == "arch" else QuantConfig)
    assert node.name == path.stem


def test_unknown_key_fails_composition():
    with pytest.raises(ConfigCompositionException):
        compose_cfg("+quant.bits=4", "quant.default_typo=Q8_0")


def test_defaults_are_library_mode():
    cfg = compose_cfg()
    assert cfg.stage == "all" and cfg.model.path is None and cfg.output.overwrite is False
