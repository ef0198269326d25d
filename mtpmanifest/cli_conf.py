"""The CLI layer's config checks inside a Hydra run: user directories never shadow built-in files,
and `arch=auto` becomes the architecture the checkpoint's config.json names (a second composition with
the same overrides). Imports hydra: only __main__ and sweep use this module.
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path

from hydra import compose
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from .arch_select import AUTO, arch_index, pick_arch, shadowing_errors
from .errors import ConfigError
from .lint import shipped_conf_dir
from .source import load_json_object

log = logging.getLogger("mtpmanifest")


def quiet_unset_conf_dir() -> None:
    """config.yaml names $MTPMANIFEST_CONF_DIR in hydra.searchpath; unset, Hydra warns about its placeholder."""
    warnings.filterwarnings("ignore", message=r".*MTPMANIFEST_CONF_DIR-is-unset is not available")


def user_dirs() -> list[Path]:
    """Directories of this run's search path other than the package's (--config-dir, hydra.searchpath,
    MTPMANIFEST_CONF_DIR), in search order."""
    sources = HydraConfig.get().runtime.config_sources
    return [Path(s["path"]) for s in sources if s["schema"] == "file" and s["provider"] != "main"]


def check_user_dirs() -> None:
    errors = shadowing_errors(shipped_conf_dir(), user_dirs())
    if errors:
        raise ConfigError(errors[0] + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""), errors)


def resolve_auto(cfg: DictConfig) -> DictConfig:
    """cfg itself, or for arch=auto the config composed again with the picked architecture."""
    if cfg.arch.get("name") != AUTO:
        return cfg
    from .demo import DEMO_DIR

    model_dir = Path(cfg.model.path).expanduser() if cfg.model.path else DEMO_DIR
    name = pick_arch(load_json_object(model_dir / "config.json"), arch_index([shipped_conf_dir(), *user_dirs()]),
                     str(model_dir / "config.json"))
    log.info("arch=auto: %s/config.json -> arch=%s", model_dir, name)
    hydra_cfg = HydraConfig.get()
    overrides = [o for o in hydra_cfg.overrides.task if o.lstrip("+~").split("=", 1)[0] != "arch"] + [f"arch={name}"]
    overrides += [o for o in hydra_cfg.overrides.hydra if o.startswith("hydra.searchpath")]
    return compose(config_name=hydra_cfg.job.config_name, overrides=overrides)
