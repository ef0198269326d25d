"""The command line: `python -m mtpmanifest arch=deepseek_v3 quant=q8_0 model.path=DIR output.dir=DIR`.

The only module that imports hydra. Exit codes: 0 ok, 2 configuration or usage error (Hydra's own
composition errors included), 3 bad input checkpoint, 4 verification failed, 70 internal error.
"""
import sys

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from .errors import MtpManifestError
from .pipeline import run
from .schema import AppConfig

ConfigStore.instance().store(name="mtpmanifest_schema", node=AppConfig)


@hydra.main(version_base="1.3", config_path="pkg://mtpmanifest.conf", config_name="config")
def task(cfg: DictConfig) -> None:
    debug = bool(cfg.get("debug", False))
    try:
        run(OmegaConf.to_object(cfg))
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
    try:
        task()
    except SystemExit as exc:
        # Hydra reports its own composition/override errors with exit status 1: a usage error here
        sys.exit(2 if exc.code == 1 else exc.code)


if __name__ == "__main__":
    main()
