"""`pip install .` (not only editable) ships the configs, schemas and demo, and runs from anywhere."""
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    # build from a copy: setuptools leaves a build/ directory beside the sources it builds
    source = tmp_path_factory.mktemp("src") / "mtpmanifest"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", "build", "*.egg-info", "__pycache__", "out", "multirun"))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(source)],
                   check=True, capture_output=True, text=True)
    return next(out.glob("mtpmanifest-*.whl"))


def test_wheel_contents(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in ("mtpmanifest/conf/config.yaml", "mtpmanifest/conf/arch/deepseek_v3.yaml", "mtpmanifest/conf/quant/q8_0.yaml",
                     "mtpmanifest/schemas/manifest.schema.json", "mtpmanifest/schemas/tensor-manifest.schema.json",
                     "mtpmanifest/schemas/arch.schema.json", "mtpmanifest/demo/model.safetensors",
                     "mtpmanifest/demo/tokenizer.json", "mtpmanifest/fixtures/tokenizer-2048.json",
                     "mtpmanifest/fixtures/sentencepiece-2048.model",
                     "mtpmanifest/kquants/api.py", "mtpmanifest/kquants/q4_k.py"):
        assert required in names
    shipped = {f"mtpmanifest/conf/arch/{p.name}" for p in (ROOT / "conf" / "arch").glob("*.yaml")}
    assert len(shipped) >= 7 and shipped <= names  # every family, and arch/auto.yaml


def test_installed_wheel_runs_from_anywhere(wheel, tmp_path):
    env_dir = tmp_path / "venv"
    venv.create(env_dir, system_site_packages=True, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run([python, "-m", "pip", "install", "--no-deps", "-q", str(wheel)], check=True, capture_output=True)
    work = tmp_path / "work"
    work.mkdir()
    run = subprocess.run([python, "-m", "mtpmanifest", "stage=plan", "output.dir=o"], cwd=work, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    located = subprocess.run([python, "-c", "import mtpmanifest.conf as c; print(c.__file__)"], cwd=work, capture_output=True, text=True)
    assert str(env_dir) in located.stdout
    assert sorted(p.name for p in work.iterdir()) == ["o"]
    assert sorted(p.name for p in (work / "o").iterdir()) == ["manifest.json"]
    # a family's fixture from its installed arch file, found again by arch=auto
    for args in (["arch=mimo", "stage=fixture", "output.dir=ckpt"], ["arch=auto", "model.path=ckpt", "stage=plan", "output.dir=p"]):
        run = subprocess.run([python, "-m", "mtpmanifest", *args], cwd=work, capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
    assert "-> arch=mimo" in run.stdout
