import os
"""mtpmanifest.inventory: what a checkpoint or a GGUF holds, its MTP tensors above all, and diffs between them."""
import re
from collections import Counter
from importlib import resources

import gguf
import pytest
import yaml

from conftest import compose_cfg, error_line, run_cli
from mtpmanifest.convert import convert
from mtpmanifest.fixtures.deepseek_v3 import TINY_CONFIG, is_mtp_tensor, tensor_specs
from mtpmanifest.inventory import checkpoint_inventory, gguf_inventory
from mtpmanifest.plan import compile_manifest
from mtpmanifest.source import Checkpoint
from conftest import copy_gguf
NEXTN_KEY = "deepseek2.nextn_predict_layers"


def cli(*args, cwd, rc):
    return run_cli("arch=deepseek_v3", "quant=q8_0", *args, cwd=cwd, check_rc=rc)


@pytest.fixture(scope="module")
def ours(tiny_ckpt, tmp_path_factory):
    """Our q8_0 GGUF of the tiny checkpoint, with its MTP layer as block 4."""
    cfg = compose_cfg("arch=deepseek_v3", "quant=q8_0")
    manifest = compile_manifest(cfg.arch, cfg.quant, Checkpoint.open(tiny_ckpt))
    return convert(manifest, Checkpoint.open(tiny_ckpt), tmp_path_factory.mktemp("ours") / "model-q8_0.gguf",
                   progress=False)


@pytest.fixture(scope="module")
def stock(ours, tmp_path_factory):
    """What llama.cpp's stock converter writes: no blk.4, block_count 4, no nextn key."""
    return copy_gguf(ours, tmp_path_factory.mktemp("stock") / "stock.gguf", drop_tensor=lambda n: n.startswith("blk.4."),
                     drop_keys=(NEXTN_KEY,), set_uint32={"deepseek2.block_count": 4})


def listed(stdout, name, type_name, shape):
    """The inventory's line for one MTP tensor: name, type, shape."""
    return re.search(rf"^\s+{re.escape(name)}\s+{type_name}\s+{re.escape(str(list(shape)))}$", stdout, re.M)


def test_checkpoint_inventory_lists_mtp_tensors(tiny_ckpt, tmp_path):
    out = cli(f"model.path={tiny_ckpt}", "stage=inventory", cwd=tmp_path, rc=0).stdout
    specs = tensor_specs(TINY_CONFIG)
    mtp = [(n, shape, kind) for n, shape, kind in specs if is_mtp_tensor(n, TINY_CONFIG)]
    assert len(mtp) == 44
    roles = Counter("mtp" if is_mtp_tensor(n, TINY_CONFIG) else "shared" if not n.startswith("model.layers.") else "trunk"
                    for n, _, _ in specs)
    roles["scale"] = sum(kind == "fp8" for _, _, kind in specs)
    assert re.search(rf"^roles\s+mtp {roles['mtp']}\s+scale {roles['scale']}\s+shared 3\s+trunk {roles['trunk']}$", out, re.M)
    assert re.search(r"^MTP layers\s+layer 0: 44 tensors$", out, re.M)
    for name, shape, kind in mtp:
        assert listed(out, name, {"fp8": "F8_E4M3", "bf16": "BF16", "f32": "F32"}[kind], shape), name
    assert "_scale_inv" not in out  # scales are counted, not listed as MTP tensors



def test_trunk_layer_count_is_an_expression(tiny_ckpt):
    """layers.trunk is an expression over config.json (schema.LayerCounts), as the plan evaluates it."""
    cfg = compose_cfg("arch=deepseek_v3")
    cfg.arch.layers.trunk = "num_hidden_layers + num_nextn_predict_layers - 1"
    inv = checkpoint_inventory(tiny_ckpt, cfg.arch)
    assert inv.per_mtp_layer() == {0: 44}
    assert inv.totals() == {"mtp": 44, "scale": 136, "shared": 3, "trunk": 126}

def test_gguf_inventory_lists_mtp_tensors(ours, tmp_path):
    out = cli(f"model.path={ours}", "stage=inventory", cwd=tmp_path, rc=0).stdout
    assert re.search(r"^roles\s+mtp 24\s+shared 3\s+trunk 67$", out, re.M)
    assert re.search(r"^MTP layers\s+layer 0: 24 tensors$", out, re.M)
    mtp = [t for t in gguf.GGUFReader(ours).tensors if t.name.startswith("blk.4.")]
    assert len(mtp) == 24
    for t in mtp:
        assert listed(out, t.name, t.tensor_type.name, [int(n) for n in t.shape]), t.name
    assert not re.search(r"^\s+blk\.3\.", out, re.M) and "note:" not in out


def test_checkpoint_and_its_gguf_have_the_same_mtp_tensors(tiny_ckpt, ours, tmp_path):
    out = cli(f"model.path={tiny_ckpt}", f"other={ours}", "stage=diff", cwd=tmp_path, rc=0).stdout
    assert re.search(r"^diff\s+no differences$", out, re.M)


def test_diff_against_a_gguf_without_mtp(ours, stock, tmp_path):
    proc = cli(f"model.path={ours}", f"other={stock}", "stage=diff", cwd=tmp_path, rc=4)
    assert "MTP tensors differ" in error_line(proc)
    only = re.findall(r"^\s+only in model-q8_0\.gguf: (\S+) \((\w+)\)$", proc.stdout, re.M)
    assert sorted(only) == sorted((t.name, "mtp") for t in gguf.GGUFReader(ours).tensors if t.name.startswith("blk.4."))
    assert "MTP tensors (GGUF names): 24 in model-q8_0.gguf, 0 in stock.gguf" in proc.stdout
    assert "only in stock.gguf" not in proc.stdout


def test_consistent_ggufs_have_no_notes(ours, stock):
    assert gguf_inventory(ours).notes == []
    inv = gguf_inventory(stock)
    assert inv.notes == [] and inv.mtp_tensors() == [] and inv.totals() == {"shared": 3, "trunk": 67}


def test_nextn_tensors_without_key_noted(ours, tmp_path):
    path = copy_gguf(ours, tmp_path / "nokey.gguf", drop_keys=(NEXTN_KEY,))
    inv = gguf_inventory(path)
    assert len(inv.notes) == 1
    assert "nextn.* tensors present but no deepseek2.nextn_predict_layers key" in inv.notes[0]


def test_key_without_nextn_tensors_noted(ours, tmp_path):
    path = copy_gguf(ours, tmp_path / "nohead.gguf", drop_tensor=lambda n: ".nextn." in n)
    inv = gguf_inventory(path)
    assert len(inv.notes) == 1 and "nextn_predict_layers = 1 but no nextn.* tensors" in inv.notes[0]


def test_user_arch_dropping_only_the_mtp_module_is_refused(tiny_ckpt, tmp_path):
    """A user architecture dir (hydra.searchpath) whose YAML drops the MTP module's own rules while the {bid}
    rules still claim the MTP decoder block: the GGUF would keep blk.4 and the nextn key without the head
    tensors, a file whose MTP context aborts llama.cpp. The plan refuses it (exit 2) and writes nothing."""
    arch = yaml.safe_load(resources.files("mtpmanifest.conf").joinpath("arch/deepseek_v3.yaml").read_text())
    arch["name"] = "ds_nomtp"
    for rule in arch["tensors"]:
        if "{mtp}" in rule["source"]:
            rule.pop("target")
            rule.update(role="dropped", reason="MTP module not wanted")
    (tmp_path / "user" / "arch").mkdir(parents=True)
    (tmp_path / "user" / "arch" / "ds_nomtp.yaml").write_text(yaml.safe_dump(arch, sort_keys=False))
    out = tmp_path / "out"
    proc = run_cli(f"hydra.searchpath=[file://{tmp_path / 'user'}]", "arch=ds_nomtp", "quant=q8_0", f"model.path={tiny_ckpt}",
                   f"output.dir={out}", "stage=convert", cwd=tmp_path, check_rc=2)
    line = error_line(proc)
    assert "MTP block 4 is kept without blk.4.nextn.eh_proj.weight, blk.4.nextn.enorm.weight, blk.4.nextn.hnorm.weight" in line
    assert not out.exists() or os.listdir(out) == []
