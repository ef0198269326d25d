"""docs/adding-an-architecture.md, run as written: its YAML file in a fresh directory and its commands,
zero Python: lint, fixture, arch=auto convert + verify, and the mtp=drop file llama.cpp loads."""
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from mtpmanifest.llamacpp import probe

DOC = Path(__file__).resolve().parents[2] / "docs" / "adding-an-architecture.md"


def blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```$", DOC.read_text(), flags=re.S | re.M)


@pytest.fixture(scope="module")
def walked(tmp_path_factory):
    """The doc's commands, run by bash with $CONF holding its architecture file."""
    root = tmp_path_factory.mktemp("doc")
    (yaml_text,), (commands,) = blocks("yaml"), blocks("bash")
    (root / "conf" / "arch").mkdir(parents=True)
    (root / "conf" / "arch" / "toy_mtp.yaml").write_text(yaml_text)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HYDRA_", "MTPMANIFEST_CONF"))}
    env.update(CONF=str(root / "conf"), WORK=str(root / "work"))
    proc = subprocess.run(["bash", "-euc", commands], cwd=root, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return root / "work", proc.stdout + proc.stderr


def test_family_converts_and_verifies_with_its_mtp_head(walked):
    work, log = walked
    assert "arch=auto: " in log and "-> arch=toy_mtp" in log and "verify       OK" in log
    manifest = json.loads((work / "out" / "manifest.json").read_text())
    assert manifest["layers"] | {"mtp_mode": None} == {"trunk": 2, "mtp": 1, "mtp_found": 1, "mtp_kept": 1,
                                                         "mtp_blocks": [2], "mtp_mode": None}
    mtp = sorted(e["name"] for e in manifest["tensors"] if e["role"] == "mtp")
    assert [n for n in mtp if ".nextn." in n] == ["blk.2.nextn.eh_proj.weight", "blk.2.nextn.enorm.weight",
                                                  "blk.2.nextn.hnorm.weight", "blk.2.nextn.shared_head_norm.weight"]
    assert len(mtp) == 13  # the head's 4 plus the decoder block's 9
    report = json.loads((work / "out" / "report.json").read_text())
    assert report["mtp_acceptance"]["measured"] and report["mtp_acceptance"]["positions"][0] > 1000
    assert "llama.cpp cannot run toy_mtp MTP heads yet" in log


def test_fixture_has_the_side_file(walked):
    work, _ = walked
    index = json.loads((work / "ckpt" / "model.safetensors.index.json").read_text())["weight_map"]
    assert {f for n, f in index.items() if n.startswith("mtp.")} == {"mtp.safetensors"}
    assert {f for n, f in index.items() if not n.startswith("mtp.")} == {"model.safetensors"}


def test_what_the_doc_says_about_llamacpp(walked):
    work, _ = walked
    kept = probe(work / "out" / "model-q4_k_m.gguf", [1, 2, 3, 4], load_mtp=True, mtp=False)
    assert not kept.ok and any("wrong number of tensors" in line for line in kept.log)
    dropped = probe(work / "dropped" / "model-q8_0.gguf", [1, 2, 3, 4], load_mtp=False, mtp=False)
    assert dropped.ok, dropped.error
