"""User config directories (MTPMANIFEST_CONF_DIR, --config-dir, hydra.searchpath) and arch=auto, through the CLI."""
import json
import shutil

import pytest

from conftest import error_line, run_cli
from mtpmanifest.demo import DEMO_DIR
from mtpmanifest.lint import shipped_conf_dir

BUILTIN = (shipped_conf_dir() / "arch" / "deepseek_v3.yaml").read_text()


def user_dir(root, name):
    (root / "arch").mkdir(parents=True)
    (root / "arch" / f"{name}.yaml").write_text(BUILTIN.replace("name: deepseek_v3", f"name: {name}"))
    return root


def how(mechanism, conf_dir):
    """(command-line args, environment) that add conf_dir to the search path."""
    return {"env": ([], {"MTPMANIFEST_CONF_DIR": str(conf_dir)}),
            "config-dir": (["--config-dir", str(conf_dir)], {}),
            "searchpath": ([f"hydra.searchpath=[file://{conf_dir}]"], {})}[mechanism]


MECHANISMS = ["env", "config-dir", "searchpath"]


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_user_architecture_dir(mechanism, tmp_path):
    args, env = how(mechanism, user_dir(tmp_path / "conf", "my_arch"))
    run_cli(*args, "arch=my_arch", "stage=plan", f"output.dir={tmp_path / 'out'}", cwd=tmp_path, check_rc=0, env=env)
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["architecture"] == "my_arch"


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_user_file_with_a_builtin_name_is_an_error(mechanism, tmp_path):
    args, env = how(mechanism, user_dir(tmp_path / "conf", "deepseek_v3"))
    proc = run_cli(*args, "stage=plan", f"output.dir={tmp_path / 'out'}", cwd=tmp_path, check_rc=2, env=env)
    assert f"{tmp_path}/conf/arch/deepseek_v3.yaml: arch=deepseek_v3 is already defined by" in error_line(proc)
    assert not (tmp_path / "out").exists()


def test_lint_reports_shadowing_user_files(tmp_path):
    conf = user_dir(tmp_path / "conf", "deepseek_v3")
    proc = run_cli("stage=lint", f"other={conf}", cwd=tmp_path, check_rc=2)
    assert "user files never shadow others" in proc.stdout + proc.stderr


def test_arch_auto_picks_from_config_json(tmp_path):
    proc = run_cli("arch=auto", "stage=plan", f"output.dir={tmp_path / 'out'}", cwd=tmp_path, check_rc=0)
    assert f"arch=auto: {DEMO_DIR}/config.json -> arch=deepseek_v3" in proc.stdout + proc.stderr
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["architecture"] == "deepseek_v3"


def test_arch_auto_finds_user_architectures(tmp_path):
    conf = tmp_path / "conf"
    (conf / "arch").mkdir(parents=True)
    (conf / "arch" / "my_arch.yaml").write_text(
        BUILTIN.replace("name: deepseek_v3", "name: my_arch").replace("[DeepseekV3ForCausalLM]", "[MyForCausalLM]")
        .replace("model_types: [deepseek_v3]", "model_types: [my_model]"))
    model = tmp_path / "model"
    shutil.copytree(DEMO_DIR, model, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    config = json.loads((DEMO_DIR / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "architectures": ["MyForCausalLM"], "model_type": "my_model"}))
    proc = run_cli("--config-dir", str(conf), "arch=auto", f"model.path={model}", "stage=inventory",
                   f"output.dir={tmp_path / 'out'}", cwd=tmp_path, check_rc=0)
    assert "-> arch=my_arch" in proc.stdout + proc.stderr and "my_arch" in proc.stdout


def test_arch_auto_unknown_lists_known_and_closest(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"architectures": ["DeepseekV4ForCausalLM"], "model_type": "deepseek_v4"}))
    proc = run_cli("arch=auto", f"model.path={model}", f"output.dir={tmp_path / 'out'}", cwd=tmp_path, check_rc=2)
    line = error_line(proc)
    assert "arch=auto: no architecture file matches" in line and "known architectures: deepseek_v3," in line
    assert line.endswith("closest: deepseek_v3")
