"""llama.cpp's GGUF imatrix format: our files parse with ggml's own GGUF reader into the layout
llama.cpp's loader expects; merging never changes existing entries; quantizing with an imatrix
gives llama_model_quantize's bytes for the same importance data; coverage is enforced."""
from __future__ import annotations

import ctypes
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import error_line, run_cli
from llama_quantize import llama_quantize, tensor_table
from mtpmanifest.errors import BadInputError
from mtpmanifest.imatrix import Imatrix, ImatrixEntry
from test_tensor_types import SECOND_CONFIG


def load_oracle():
    """tests/kquants/ggml_oracle.py: ctypes on llama-cpp-python's libggml-base.so."""
    spec = importlib.util.spec_from_file_location("ggml_oracle", Path(__file__).parent / "kquants" / "ggml_oracle.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def entry(n_mat, ne0, seed, zero_counts=()):
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 500, n_mat).astype(np.float32)
    counts[list(zero_counts)] = 0
    sums = (rng.gamma(0.7, 2.0, (n_mat, ne0)) * counts[:, None]).astype(np.float32)
    sums[:, ::13] = 0  # columns never activated
    return ImatrixEntry(sums, counts)


def test_write_read_round_trip(tmp_path):
    im = Imatrix({"blk.0.attn_q_a.weight": entry(1, 256, 0), "blk.1.ffn_up_exps.weight": entry(8, 256, 1, zero_counts=(3,))},
                 ["calibration.txt"], 7, 256)
    back = Imatrix.read(im.write(tmp_path / "im.gguf"))
    assert (back.datasets, back.chunk_count, back.chunk_size) == (["calibration.txt"], 7, 256)
    for name, e in im.entries.items():
        assert np.array_equal(back.entries[name].sums, e.sums) and np.array_equal(back.entries[name].counts, e.counts)
    weights = back.weights("blk.1.ffn_up_exps.weight")
    assert np.all(weights[3] == 1)  # an expert that saw no rows: weight 1, as llama-quantize does
    np.testing.assert_array_equal(weights[0], (im.entries["blk.1.ffn_up_exps.weight"].sums[0] / np.float32(
        im.entries["blk.1.ffn_up_exps.weight"].counts[0])).astype(np.float32))


def test_ggml_parses_the_file_as_llamacpp_loader_expects(tmp_path):
    lib = load_oracle().lib
    path = Imatrix({"blk.1.ffn_down_exps.weight": entry(8, 128, 2)}, ["a.txt", "b.txt"], 3, 512).write(tmp_path / "im.gguf")
    ggml = lib()

    class Params(ctypes.Structure):
        _fields_ = [("no_alloc", ctypes.c_bool), ("ctx", ctypes.c_void_p)]

    ggml.gguf_init_from_file.restype = ctypes.c_void_p
    ggml.gguf_init_from_file.argtypes = [ctypes.c_char_p, Params]
    ctx = ggml.gguf_init_from_file(str(path).encode(), Params(True, None))
    assert ctx, "ggml could not parse the imatrix file"
    for fn, res, args in (("gguf_find_key", ctypes.c_int64, [ctypes.c_void_p, ctypes.c_char_p]),
                          ("gguf_get_kv_type", ctypes.c_int, [ctypes.c_void_p, ctypes.c_int64]),
                          ("gguf_get_arr_type", ctypes.c_int, [ctypes.c_void_p, ctypes.c_int64]),
                          ("gguf_get_arr_n", ctypes.c_size_t, [ctypes.c_void_p, ctypes.c_int64]),
                          ("gguf_get_val_u32", ctypes.c_uint32, [ctypes.c_void_p, ctypes.c_int64]),
                          ("gguf_get_n_tensors", ctypes.c_int64, [ctypes.c_void_p]),
                          ("gguf_get_tensor_name", ctypes.c_char_p, [ctypes.c_void_p, ctypes.c_int64]),
                          ("gguf_get_tensor_type", ctypes.c_int, [ctypes.c_void_p, ctypes.c_int64])):
        getattr(ggml, fn).restype, getattr(ggml, fn).argtypes = res, args
    GGUF_TYPE_UINT32, GGUF_TYPE_STRING, GGUF_TYPE_ARRAY, GGML_TYPE_F32 = 4, 8, 9, 0
    datasets = ggml.gguf_find_key(ctx, b"imatrix.datasets")
    assert ggml.gguf_get_kv_type(ctx, datasets) == GGUF_TYPE_ARRAY and ggml.gguf_get_arr_type(ctx, datasets) == GGUF_TYPE_STRING
    assert ggml.gguf_get_arr_n(ctx, datasets) == 2
    assert ggml.gguf_get_val_u32(ctx, ggml.gguf_find_key(ctx, b"imatrix.chunk_count")) == 3
    assert ggml.gguf_get_val_u32(ctx, ggml.gguf_find_key(ctx, b"imatrix.chunk_size")) == 512
    names = [ggml.gguf_get_tensor_name(ctx, i).decode() for i in range(ggml.gguf_get_n_tensors(ctx))]
    assert names == ["blk.1.ffn_down_exps.weight.in_sum2", "blk.1.ffn_down_exps.weight.counts"]
    assert all(ggml.gguf_get_tensor_type(ctx, i) == GGML_TYPE_F32 for i in range(2))


def test_merge_adds_only_missing_entries():
    theirs = Imatrix({"blk.0.attn_q_a.weight": entry(1, 256, 3)}, ["wiki.txt"], 10, 512)
    ours = Imatrix({"blk.0.attn_q_a.weight": entry(1, 256, 4), "blk.4.nextn.eh_proj.weight": entry(1, 512, 5)}, ["calib"], 2, 256)
    before = theirs.entries["blk.0.attn_q_a.weight"]
    assert theirs.merge_missing(ours) == ["blk.4.nextn.eh_proj.weight"]
    assert theirs.entries["blk.0.attn_q_a.weight"] is before
    assert theirs.datasets == ["wiki.txt", "calib"] and theirs.chunk_count == 10


@pytest.mark.parametrize("damage, message", [
    (lambda im: setattr(im, "chunk_size", None), "missing imatrix metadata"),
    (lambda im: im.entries.update({"x.weight": ImatrixEntry(np.ones((1, 4), np.float32), np.ones(1, np.float32))}), None),
])
def test_read_errors(tmp_path, damage, message):
    im = Imatrix({"blk.0.attn_q_a.weight": entry(1, 256, 6)}, ["d"], 1, 256)
    if message is None:  # a healthy extra entry reads fine
        damage(im)
        assert "x.weight" in Imatrix.read(im.write(tmp_path / "ok.gguf")).entries
        return
    import gguf
    writer = gguf.GGUFWriter(tmp_path / "bad.gguf", arch="imatrix")
    writer.add_array("imatrix.datasets", ["d"])
    writer.add_uint32("imatrix.chunk_count", 1)
    writer.add_tensor("blk.0.attn_q_a.weight.in_sum2", np.ones((1, 256), np.float32))
    writer.add_tensor("blk.0.attn_q_a.weight.counts", np.ones((1, 1), np.float32))
    writer.write_header_to_file(); writer.write_kv_data_to_file(); writer.write_tensors_to_file(); writer.close()
    with pytest.raises(BadInputError, match=message):
        Imatrix.read(tmp_path / "bad.gguf")


@pytest.fixture(scope="module")
def second(tmp_path_factory):
    from mtpmanifest.fixtures.deepseek_v3 import write_checkpoint

    work = tmp_path_factory.mktemp("imx")
    ckpt = write_checkpoint(work / "ckpt", SECOND_CONFIG, fp8=False, seed=13)
    run_cli(f"model.path={ckpt}", f"output.dir={work / 'f32'}", "quant=f32", "stage=convert", cwd=work, check_rc=0)
    return work, ckpt


def synthetic_imatrix(manifest_path, path, skip=()):
    manifest = json.loads(manifest_path.read_text())
    entries = {}
    for i, t in enumerate(manifest["tensors"]):
        if t["wants_imatrix"] and t["name"] not in skip:
            n_mat = int(np.prod(t["shape"][2:])) if len(t["shape"]) > 2 else 1
            entries[t["name"]] = entry(n_mat, t["shape"][0], 100 + i, zero_counts=(1,) if n_mat > 2 else ())
    return Imatrix(entries, ["synthetic"], 4, 256).write(path)


@pytest.mark.parametrize("preset", ["q4_k_m", "q3_k_m", "q2_k", "q6_k"])
def test_quantized_bytes_equal_llama_model_quantize_with_the_same_imatrix(second, preset, tmp_path):
    work, ckpt = second
    run_cli(f"model.path={ckpt}", f"output.dir={tmp_path / 'plan'}", f"quant={preset}", "quant.mtp=inherit", "stage=plan",
            cwd=tmp_path, check_rc=0)
    imatrix = synthetic_imatrix(tmp_path / "plan" / "manifest.json", tmp_path / "im.gguf", skip=("blk.2.attn_q_a.weight",))
    run_cli(f"model.path={ckpt}", f"output.dir={tmp_path / 'ours'}", f"quant={preset}", "quant.mtp=inherit",
            f"calib.imatrix={imatrix}", "quant.requires_imatrix=false", "stage=convert", cwd=tmp_path, check_rc=0)
    cfg_ftype = {"q4_k_m": "MOSTLY_Q4_K_M", "q3_k_m": "MOSTLY_Q3_K_M", "q2_k": "MOSTLY_Q2_K", "q6_k": "MOSTLY_Q6_K"}[preset]
    theirs = tensor_table(llama_quantize(work / "f32" / "model-f32.gguf", tmp_path / "ref.gguf", cfg_ftype, imatrix=imatrix))
    ours = tensor_table(tmp_path / "ours" / f"model-{preset}.gguf")
    assert sorted(n for n in theirs if ours[n] != theirs[n]) == []
    without = tensor_table(llama_quantize(work / "f32" / "model-f32.gguf", tmp_path / "plain.gguf", cfg_ftype))
    assert any(without[n][2] != theirs[n][2] for n in theirs)  # the imatrix really changed the bytes


def test_preset_requiring_imatrix_names_uncovered_tensors(second, tmp_path):
    work, ckpt = second
    proc = run_cli(f"model.path={ckpt}", f"output.dir={tmp_path / 'o'}", "quant=q2_k", cwd=tmp_path, check_rc=2)
    line = error_line(proc)
    assert "needs an importance matrix" in line and "blk.0.attn_q_a.weight" in line
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())
