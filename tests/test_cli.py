"""Bad input through the command line: one line naming the file/tensor/key, a documented exit
code, no traceback, nothing at the output path. Also usage errors."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from conftest import error_line, run_cli
from mtpmanifest.fixtures.deepseek_v3 import write_checkpoint


def read_header(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def write_header(path: Path, header: dict, data: bytes) -> None:
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


def mutate_header(path: Path, change) -> None:
    header, data = read_header(path)
    change(header)
    write_header(path, header, data)


SHARD = "model-00002-of-00002.safetensors"
TENSOR = "model.layers.4.eh_proj.weight"  # in the last shard with the whole MTP layer


def _missing_config(d):
    (d / "config.json").unlink()


def _malformed_config(d):
    (d / "config.json").write_text('{"hidden_size": 256,,}')


def _truncated_shard(d):
    p = d / SHARD
    p.write_bytes(p.read_bytes()[:-1000])


def _header_length_too_large(d):
    p = d / SHARD
    raw = p.read_bytes()
    p.write_bytes(struct.pack("<Q", len(raw) * 2) + raw[8:])


def _malformed_header_json(d):
    p = d / SHARD
    raw = bytearray(p.read_bytes())
    raw[8] = ord("[")
    p.write_bytes(bytes(raw))


def _overlapping_offsets(d):
    def change(h):
        names = [k for k in h if k != "__metadata__"]
        a, b = sorted(names, key=lambda k: h[k]["data_offsets"][0])[:2]
        begin_b = h[b]["data_offsets"][0]
        size_a = h[a]["data_offsets"][1] - h[a]["data_offsets"][0]
        h[a]["data_offsets"] = [begin_b - size_a + 2, begin_b + 2]
    mutate_header(d / SHARD, change)


def _out_of_range_offsets(d):
    def change(h):
        h[TENSOR]["data_offsets"][1] += 10**9
    mutate_header(d / SHARD, change)


def _index_names_missing_shard(d):
    p = d / "model.safetensors.index.json"
    index = json.loads(p.read_text())
    index["weight_map"][TENSOR] = "model-00009-of-00002.safetensors"
    p.write_text(json.dumps(index))


def _tensor_absent_from_shard(d):
    p = d / "model.safetensors.index.json"
    index = json.loads(p.read_text())
    index["weight_map"]["model.layers.4.phantom.weight"] = SHARD
    p.write_text(json.dumps(index))


def _shard_escapes_dir(d):
    p = d / "model.safetensors.index.json"
    index = json.loads(p.read_text())
    index["weight_map"][TENSOR] = "../../etc/passwd"
    p.write_text(json.dumps(index))


def _shape_contradicts_config(d):
    config = json.loads((d / "config.json").read_text())
    config["moe_intermediate_size"] = 96
    (d / "config.json").write_text(json.dumps(config))


def _fp8_without_scale(d):
    name = "model.layers.4.self_attn.o_proj.weight_scale_inv"
    p = d / "model.safetensors.index.json"
    index = json.loads(p.read_text())
    del index["weight_map"][name]
    p.write_text(json.dumps(index))
    mutate_header(d / SHARD, lambda h: h.pop(name))


CASES = {
    "missing config.json": (_missing_config, "config.json"),
    "malformed config.json": (_malformed_config, "config.json"),
    "truncated shard": (_truncated_shard, SHARD),
    "header length beyond file": (_header_length_too_large, SHARD),
    "malformed header JSON": (_malformed_header_json, SHARD),
    "overlapping data_offsets": (_overlapping_offsets, SHARD),
    "out-of-range data_offsets": (_out_of_range_offsets, SHARD),
    "index names a missing shard": (_index_names_missing_shard, "model-00009-of-00002.safetensors"),
    "tensor absent from its shard": (_tensor_absent_from_shard, "model.layers.4.phantom.weight"),
    "shard path escapes the model dir": (_shard_escapes_dir, "../../etc/passwd"),
    "shape contradicts config": (_shape_contradicts_config, "moe_intermediate_size"),
    "FP8 weight without its scale": (_fp8_without_scale, "model.layers.4.self_attn.o_proj.weight"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_exit_3_one_line_no_output(case, tmp_path):
    model = write_checkpoint(tmp_path / "ckpt", shards=2, seed=5)
    corrupt, named = CASES[case]
    corrupt(model)
    out = tmp_path / "out"
    proc = run_cli(f"model.path={model}", f"output.dir={out}", cwd=tmp_path, check_rc=3)
    line = error_line(proc)
    assert named in line, line
    assert not out.exists() or sorted(p.name for p in out.iterdir()) == []


def test_usage_errors_exit_2(tmp_path):
    unknown_stage = run_cli("stage=explode", cwd=tmp_path, check_rc=2)
    assert "stage=explode" in error_line(unknown_stage)
    unknown_preset = run_cli("quant=q7_z", cwd=tmp_path, check_rc=2)
    assert "q7_z" in unknown_preset.stderr
    unknown_key = run_cli("output.directory=x", cwd=tmp_path, check_rc=2)
    assert "directory" in unknown_key.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_debug_shows_traceback(tmp_path):
    proc = run_cli(f"model.path={tmp_path / 'nowhere'}", "debug=true", cwd=tmp_path)
    assert proc.returncode != 0 and "Traceback" in proc.stderr
