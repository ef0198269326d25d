"""Shared fixtures: tiny real-format checkpoints, composed configs, and the CLI as a subprocess."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest

from mtpmanifest.__main__ import compose
from mtpmanifest.fixtures.deepseek_v3 import TINY_CONFIG, write_checkpoint
from mtpmanifest.schema import AppConfig


def compose_cfg(*overrides: str) -> AppConfig:
    return compose(*overrides, job_name="test")


def run_cli(*args: str, cwd: Path, check_rc: int | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`python -m mtpmanifest ARGS`; the caller's environment without HYDRA_* and MTPMANIFEST_*, plus `env`."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("HYDRA_", "MTPMANIFEST_CONF"))}, **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "mtpmanifest", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    if check_rc is not None:
        assert proc.returncode == check_rc, f"rc {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


def error_line(proc: subprocess.CompletedProcess) -> str:
    """The one error line the CLI prints; fails if stderr carries a traceback or several error lines."""
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("mtpmanifest: ")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def edit_config(model_dir: Path, **changes) -> None:
    path = Path(model_dir) / "config.json"
    config = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    path.write_text(json.dumps(config, indent=2))


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    """A tiny DeepSeek-V3 checkpoint (FP8 with block scales, one MTP layer), shared read-only."""
    return write_checkpoint(tmp_path_factory.mktemp("tiny") / "ckpt", seed=1)


@pytest.fixture
def fresh_ckpt(tmp_path) -> Path:
    """A tiny checkpoint a test may modify."""
    return write_checkpoint(tmp_path / "ckpt", seed=2)


@pytest.fixture
def tiny_config() -> dict:
    return json.loads(json.dumps(TINY_CONFIG))


HEADER_FIELDS = ("GGUF.version", "GGUF.tensor_count", "GGUF.kv_count")


def copy_gguf(src, dst, *, drop_tensor=lambda name: False, drop_keys=(), set_uint32=None):
    """Rewrite a GGUF with gguf-py (GGUFReader -> GGUFWriter), leaving out some tensors and keys."""
    reader = gguf.GGUFReader(src)
    arch = reader.get_field("general.architecture").contents()
    writer = gguf.GGUFWriter(dst, arch=arch)
    set_uint32 = dict(set_uint32 or {})
    for name, field in reader.fields.items():
        if name in HEADER_FIELDS or name == "general.architecture" or name in drop_keys or name in set_uint32:
            continue
        sub_type = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(name, field.contents(), field.types[0], sub_type=sub_type)
    for key, value in set_uint32.items():
        writer.add_uint32(key, value)
    for t in reader.tensors:
        if not drop_tensor(t.name):
            writer.add_tensor(t.name, np.ascontiguousarray(t.data), raw_dtype=t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst
