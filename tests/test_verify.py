"""mtpmanifest.verify: a good conversion verifies; every structural or numeric difference fails with exit 4."""
import hashlib
import json
import shutil

import gguf
import numpy as np
import pytest

from conftest import copy_gguf, error_line, run_cli
from mtpmanifest.manifest import Manifest, schema_errors
from mtpmanifest.source import Checkpoint
from mtpmanifest.verify import verify

GGUF_NAME = "model-q8_0.gguf"
NEXTN_KEY = "deepseek2.nextn_predict_layers"
def cli(ckpt, out, *extra, cwd, rc):
    return run_cli("arch=deepseek_v3", "quant=q8_0", f"model.path={ckpt}", f"output.dir={out}", *extra,
                   cwd=cwd, check_rc=rc)


@pytest.fixture(scope="module")
def good(tiny_ckpt, tmp_path_factory):
    """One full run (plan, convert, verify) whose outputs the tests copy and damage."""
    out = tmp_path_factory.mktemp("good") / "out"
    cli(tiny_ckpt, out, "stage=all", cwd=out.parent, rc=0)
    return out


@pytest.fixture
def work(good, tmp_path):
    """A private copy of the good run's manifest and GGUF."""
    out = tmp_path / "out"
    out.mkdir()
    for name in ("manifest.json", GGUF_NAME):
        shutil.copy(good / name, out / name)
    return out


def read_json(path):
    return json.loads(path.read_text())


def edit_manifest(out, change):
    data = read_json(out / "manifest.json")
    change(data)
    (out / "manifest.json").write_text(json.dumps(data))


def verify_fails(ckpt, out, cwd):
    """stage=verify on `out`: exit 4, one error line; returns (that line, report.json)."""
    proc = cli(ckpt, out, "stage=verify", cwd=cwd, rc=4)
    return error_line(proc), read_json(out / "report.json")


def test_good_conversion_verifies(good):
    report = read_json(good / "report.json")
    manifest = read_json(good / "manifest.json")
    assert report["ok"] is True and report["failures"] == [] and report["differences"] == []
    stats = report["numeric_stats"]
    assert {role: s["tensors"] for role, s in stats.items()} == {"mtp": 24, "shared": 3, "trunk": 67}
    assert all(0 < s["max_rel_rmse"] < 2e-2 and s["mean_rel_rmse"] <= s["max_rel_rmse"] for s in stats.values())
    numeric = {n["name"]: n for n in report["numeric"]}
    assert list(numeric) == [t["name"] for t in manifest["tensors"]]
    for n in numeric.values():
        assert n["ok"] and n["rel_rmse"] <= n["bound"], n
        if n["type"] == "F32":
            assert n["rel_rmse"] == 0.0, n  # F32 keeps every source value
        else:
            assert n["type"] == "Q8_0" and 1e-3 < n["rel_rmse"] < 2e-2, n  # a real comparison, not a no-op
    tensors = read_json(good / "tensors.json")
    assert schema_errors("tensor-manifest.schema.json", tensors) == []
    assert [t["name"] for t in tensors["tensors"]] == [t["name"] for t in manifest["tensors"]]
    assert (tensors["block_count"], tensors["nextn_predict_layers"]) == (5, 1)


def _drop(name):
    return lambda d: d["tensors"].remove(next(t for t in d["tensors"] if t["name"] == name))


def _add_fake(d):
    fake = dict(next(t for t in d["tensors"] if t["name"] == "blk.4.nextn.enorm.weight"))
    fake["name"] = "blk.4.nextn.fake.weight"
    d["tensors"].append(fake)


def _set(name, key, value):
    return lambda d: next(t for t in d["tensors"] if t["name"] == name).__setitem__(key, value)


def _no_mtp(d):
    d["layers"]["mtp_kept"] = 0


@pytest.mark.parametrize("change, expected", [
    (_drop("blk.4.nextn.eh_proj.weight"), ["extra tensor blk.4.nextn.eh_proj.weight"]),
    (_add_fake, ["missing tensor blk.4.nextn.fake.weight"]),
    (_set("blk.4.nextn.eh_proj.weight", "shape", [256, 512]),
     ["blk.4.nextn.eh_proj.weight: shape [512, 256], manifest says [256, 512]"]),
    (_set("blk.4.ffn_down_exps.weight", "type", "F16"), ["blk.4.ffn_down_exps.weight: type Q8_0, manifest says F16"]),
    (_no_mtp, ["block_count is 5, manifest says 4", "nextn_predict_layers is 1, manifest says None"]),
], ids=["extra", "missing", "shape", "type", "mtp_kept"])
def test_structural_difference_fails(tiny_ckpt, work, tmp_path, change, expected):
    edit_manifest(work, change)
    line, report = verify_fails(tiny_ckpt, work, tmp_path)
    assert expected[0] in line
    assert report["ok"] is False and report["differences"] == expected
    assert report["numeric"] == []  # no numeric comparison against a layout that is already wrong


def _nextn_tensor(name):
    return ".nextn." in name


@pytest.mark.parametrize("drop_nextn_tensors", [False, True], ids=["key_only", "no_key_no_nextn_block_kept"])
def test_block_n_without_nextn_key_fails(tiny_ckpt, work, tmp_path, drop_nextn_tensors):
    """The file llama.cpp silently loads as a 5-layer trunk with wrong logits (llamacpp-runtime.md)."""
    gguf_path = work / GGUF_NAME
    original = tmp_path / "original.gguf"
    gguf_path.rename(original)
    manifest, ckpt = Manifest.read(work / "manifest.json"), Checkpoint.open(tiny_ckpt)
    # the copy itself is faithful: without dropping anything it verifies
    assert verify(manifest, copy_gguf(original, tmp_path / "copy.gguf"), ckpt, progress=False).ok
    copy_gguf(original, gguf_path, drop_keys=(NEXTN_KEY,),
              drop_tensor=_nextn_tensor if drop_nextn_tensors else lambda name: False)
    reader = gguf.GGUFReader(gguf_path)
    assert reader.get_field(NEXTN_KEY) is None and reader.get_field("deepseek2.block_count").contents() == 5
    assert any(t.name.startswith("blk.4.attn_") for t in reader.tensors)
    assert any(_nextn_tensor(t.name) for t in reader.tensors) != drop_nextn_tensors
    line, report = verify_fails(tiny_ckpt, work, tmp_path)
    assert "nextn_predict_layers is None, manifest says 1" in line
    assert report["differences"][0] == "nextn_predict_layers is None, manifest says 1"
    missing = sorted(d for d in report["differences"] if d.startswith("missing tensor"))
    expected = sorted(f"missing tensor {e.name}" for e in manifest.tensors if _nextn_tensor(e.name))
    assert missing == (expected if drop_nextn_tensors else [])


def test_kept_mtp_block_without_head_tensors_fails(tiny_ckpt, work, tmp_path):
    """Key and decoder block present, nextn.eh_proj/enorm/hnorm gone: llama.cpp aborts creating its MTP context."""
    gguf_path = work / GGUF_NAME
    original = tmp_path / "original.gguf"
    gguf_path.rename(original)
    copy_gguf(original, gguf_path, drop_tensor=lambda n: n.split(".")[-2] in ("eh_proj", "enorm", "hnorm"))
    line, report = verify_fails(tiny_ckpt, work, tmp_path)
    assert report["differences"][0] == ("MTP block 4 lacks blk.4.nextn.eh_proj.weight, blk.4.nextn.enorm.weight, "
                                        "blk.4.nextn.hnorm.weight: llama.cpp cannot run its head")


@pytest.mark.parametrize("name, damage", [
    ("blk.4.nextn.eh_proj.weight", "zeros"),
    ("blk.4.nextn.hnorm.weight", "random"),
])
def test_corrupted_mtp_tensor_fails_numerically(tiny_ckpt, work, tmp_path, name, damage):
    reader = gguf.GGUFReader(work / GGUF_NAME, "r+")
    tensor = next(t for t in reader.tensors if t.name == name)
    if damage == "zeros":
        tensor.data[...] = 0
    else:  # random bytes of the right dtype, finite so only the comparison can catch them
        tensor.data[...] = np.random.default_rng(0).normal(1.0, 0.05, tensor.data.shape).astype(tensor.data.dtype)
    reader.data.flush()
    del reader, tensor
    line, report = verify_fails(tiny_ckpt, work, tmp_path)
    assert name in line and "relative RMSE" in line
    assert report["differences"] == []
    assert [n["name"] for n in report["numeric"] if not n["ok"]] == [name]
    assert len(report["failures"]) == 1 and report["failures"][0].startswith(name)


def test_tensors_json_hashes_are_the_file_bytes(good):
    tensors = read_json(good / "tensors.json")
    reader = gguf.GGUFReader(good / GGUF_NAME)
    blob = (good / GGUF_NAME).read_bytes()
    offsets = {t.name: int(t.data_offset) for t in reader.tensors}
    assert tensors["n_tensors"] == len(tensors["tensors"]) == 94
    end = 0
    for t in tensors["tensors"]:
        start = offsets[t["name"]]
        assert start >= end  # regions in file order, not overlapping
        end = start + t["n_bytes"]
        assert t["sha256"] == hashlib.sha256(blob[start:end]).hexdigest(), t["name"]
    assert end == len(blob)  # the last tensor ends the file
    assert len({t["sha256"] for t in tensors["tensors"]}) == 94  # random weights: no two tensors alike


def test_stripped_checkpoint_fails_verify_unless_absent_ok(tmp_path):
    from mtpmanifest.fixtures.deepseek_v3 import write_checkpoint

    stripped = write_checkpoint(tmp_path / "stripped", mtp=False, fp8=False)
    proc = cli(stripped, tmp_path / "keep", "stage=all", "accept.enabled=false", cwd=tmp_path, rc=4)
    assert "declares 1 MTP layer(s) but the checkpoint has no MTP tensors (stripped by another tool)" in error_line(proc)
    assert "mtp=absent_ok accepts such a file" in error_line(proc)
    assert (tmp_path / "keep" / GGUF_NAME).exists()  # the trunk is converted; only verification fails
    proc = cli(stripped, tmp_path / "ok", "stage=all", "accept.enabled=false", "mtp=absent_ok", cwd=tmp_path, rc=0)
    assert "accepted: mtp=absent_ok" in proc.stdout + proc.stderr
    manifest = read_json(tmp_path / "ok" / "manifest.json")
    assert manifest["layers"]["mtp_found"] == 0 and manifest["layers"]["mtp_mode"] == "absent_ok"
