"""The command line: `python -m mtpmanifest arch=deepseek_v3 quant=q8_0 model.path=DIR output.dir=DIR`.

The CLI layer: this module and sweep.py are the only ones importing hydra. Exit codes: 0 ok,
2 configuration or usage error (Hydra's own composition errors included), 3 bad input checkpoint,
4 verification failed, 70 internal error. A sweep (`-m`, or `+sweep=...`) runs every job and then
exits with sweep.exit_code(): 0 if all jobs succeeded, 4 if any failed verification, else the
code of the first failed job.
"""
import sys
from typing import Any

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from . import cli_conf, sweep
from .errors import MtpManifestError
from .pipeline import run
from .schema import AppConfig

ConfigStore.instance().store(name="mtpmanifest_schema", node=AppConfig)


def compose(*overrides: str, job_name: str = "mtpmanifest") -> AppConfig:
    """The AppConfig a command line with these overrides would run (for tests, bench and scripts)."""
    from hydra import compose as hydra_compose, initialize_config_module

    cli_conf.quiet_unset_conf_dir()
    with initialize_config_module(version_base="1.3", config_module="mtpmanifest.conf", job_name=job_name):
        return OmegaConf.to_object(hydra_compose(config_name="config", overrides=list(overrides)))


@hydra.main(version_base="1.3", config_path="pkg://mtpmanifest.conf", config_name="config")
def task(cfg: DictConfig) -> dict[str, Any]:
    debug = bool(cfg.get("debug", False))
    try:
        cli_conf.check_user_dirs()
        cfg = cli_conf.resolve_auto(cfg)
        if sweep.is_multirun():
            return sweep.run_job(cfg)  # never exits: a failed job is recorded, the others still run
        return run(OmegaConf.to_object(cfg))
    except MtpManifestError as exc:
        if debug:
            raise
        print(f"mtpmanifest: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except Exception as exc:  # a bug, not bad input: say so in one line unless debugging
        if debug:
            raise
        print(f"mtpmanifest: internal error: {type(exc).__name__}: {exc} (rerun with debug=true)", file=sys.stderr)
        sys.exit(70)


def main() -> None:
    cli_conf.quiet_unset_conf_dir()
    try:
        task()
    except SystemExit as exc:
        # Hydra reports its own composition/override errors with exit status 1: a usage error here
        sys.exit(2 if exc.code == 1 else exc.code)
    code = sweep.exit_code_of_last_sweep()
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()
