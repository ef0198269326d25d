"""Which architecture file a checkpoint needs (`arch=auto`), and the rule that keeps user config
directories from shadowing built-in files.

Architecture files live in the package's conf/arch/ and in user directories (MTPMANIFEST_CONF_DIR,
--config-dir, hydra.searchpath). Hydra searches the package first, so a user file named like a built-in
one would be silently ignored; mtpmanifest refuses it instead (exit 2), naming both files.
"""
from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Iterable

import yaml

from .errors import ConfigError

AUTO = "auto"  # arch=auto: conf/arch/auto.yaml holds only `name: auto`
CHECKED_GROUPS = ("arch", "quant", "calib", "sweep")


def group_files(root: Path, group: str) -> dict[str, Path]:
    folder = Path(root) / group
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))} if folder.is_dir() else {}


def shadowing_errors(builtin: Path, user_dirs: Iterable[Path]) -> list[str]:
    """A user file with the name of a built-in (or an earlier user dir's) file: one error per clash."""
    errors = []
    for group in CHECKED_GROUPS:
        seen = {name: path for name, path in group_files(builtin, group).items()}
        for root in user_dirs:
            for name, path in group_files(root, group).items():
                if name in seen:
                    errors.append(f"{path}: {group}={name} is already defined by {seen[name]}; user files never shadow "
                                  f"others: rename it (file and `name:`), e.g. {group}/my_{name}.yaml")
                else:
                    seen[name] = path
    return errors


def arch_index(dirs: Iterable[Path]) -> dict[str, dict[str, Any]]:
    """name -> the architecture's hf_architectures, model_types and file, over every directory."""
    index: dict[str, dict[str, Any]] = {}
    for root in dirs:
        for name, path in group_files(root, "arch").items():
            if name == AUTO or name in index:
                continue
            try:
                data = yaml.safe_load(path.read_text()) or {}
            except (OSError, yaml.YAMLError) as exc:
                raise ConfigError(f"{path}: cannot parse YAML: {str(exc).splitlines()[0]}") from None
            index[name] = {"hf_architectures": list(data.get("hf_architectures") or []),
                           "model_types": list(data.get("model_types") or []), "file": path}
    return index


def pick_arch(config: dict[str, Any], index: dict[str, dict[str, Any]], where: str = "config.json") -> str:
    """The one architecture whose hf_architectures name config.json's `architectures` (else whose
    model_types has its model_type); ConfigError listing the known ones and the closest names otherwise."""
    declared = [a for a in config.get("architectures") or [] if isinstance(a, str)]
    model_type = config.get("model_type")
    for field, wanted in (("hf_architectures", declared), ("model_types", [model_type] if model_type else [])):
        matches = sorted(name for name, entry in index.items() if set(entry[field]) & set(wanted))
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise ConfigError(f"arch=auto: {where} {field[:-1].replace('hf_', '')} {wanted} matches several "
                              f"architectures ({', '.join(matches)}): pick one with arch=NAME")
    close = _closest([*declared, *([model_type] if model_type else [])], index)
    hint = f"; closest: {', '.join(close)}" if close else ""
    raise ConfigError(f"arch=auto: no architecture file matches {where} (architectures {declared}, model_type "
                      f"{model_type!r}); known architectures: {', '.join(sorted(index))}{hint}")


def _closest(wanted: list[str], index: dict[str, dict[str, Any]], n: int = 3) -> list[str]:
    """Architectures whose names (file, hf_architectures, model_types) look most like the wanted ones."""
    score = {name: max((difflib.SequenceMatcher(None, _stem(w), _stem(v)).ratio()
                        for w in wanted for v in [name, *entry["hf_architectures"], *entry["model_types"]]), default=0.0)
             for name, entry in index.items()}
    return [name for name in sorted(score, key=lambda k: -score[k]) if score[name] >= 0.6][:n]


def _stem(name: str) -> str:
    """What distinguishes a class name: every family's ends in ForCausalLM or similar."""
    return re.sub(r"(forcausallm|forconditionalgeneration|model)$", "", str(name).lower().replace("_", ""))
