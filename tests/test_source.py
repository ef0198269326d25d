"""Tests for mtpmanifest.source: header-only inventory, structural checks, and float32 decoding."""
from __future__ import annotations

import builtins
import contextlib
import json
import os
import struct
import time

import numpy as np
import pytest
import torch

from mtpmanifest import source
from mtpmanifest.errors import BadInputError
from mtpmanifest.source import E4M3FN_TO_F32, Checkpoint, SourceTensor

CONFIG = {"architectures": ["TinyForCausalLM"], "hidden_size": 8}


# ---------------------------------------------------------------- hand-written safetensors files

def entry(array: np.ndarray, dtype: str | None = None) -> tuple[str, list[int], bytes]:
    """(safetensors dtype, shape, little-endian bytes) for a numpy array."""
    dtype = dtype or {"float32": "F32", "float16": "F16", "int64": "I64", "uint8": "U8"}[array.dtype.name]
    return dtype, list(array.shape), array.astype(array.dtype.newbyteorder("<")).tobytes()


def bf16_entry(values: np.ndarray) -> tuple[str, list[int], bytes]:
    bits = (np.ascontiguousarray(values, dtype=np.float32).view(np.uint32) >> 16).astype("<u2")
    return "BF16", list(values.shape), bits.tobytes()


def header_and_data(tensors: dict[str, tuple[str, list[int], bytes]]) -> tuple[dict, bytes]:
    """A header with contiguous data_offsets for the tensors, and their concatenated data."""
    header, position = {"__metadata__": {"format": "pt"}}, 0
    for name, (dtype, shape, data) in tensors.items():
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [position, position + len(data)]}
        position += len(data)
    return header, b"".join(data for _, _, data in tensors.values())


def write_raw(path, header: dict | list | bytes, data: bytes = b"", header_len: int | None = None):
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text) if header_len is None else header_len) + text + data)


def write_shard(path, tensors):
    write_raw(path, *header_and_data(tensors))


def make_model(root, shards: dict[str, dict], config=CONFIG, index: bool | dict = False):
    """A model dir with config.json, the given shards and, if asked, an index built from them (or given)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps(config))
    for file_name, tensors in shards.items():
        write_shard(root / file_name, tensors)
    if index is True:
        index = {"metadata": {}, "weight_map": {n: f for f, ts in shards.items() for n in ts}}
    if index:
        (root / source.INDEX_NAME).write_text(json.dumps(index))
    return root


@contextlib.contextmanager
def raises_naming(file_name: str, *fragments: str):
    """Expect a one-line BadInputError (exit code 3) of the form "<path ending in file_name>: <problem>",
    the problem containing every fragment (checked apart from the path, which holds the test's name)."""
    with pytest.raises(BadInputError) as info:
        yield
    message = str(info.value)
    assert "\n" not in message and info.value.exit_code == 3
    where, _, problem = message.partition(": ")
    assert where.endswith(file_name), f"{file_name!r} does not end {where!r}"
    for fragment in fragments:
        assert fragment in problem, f"{fragment!r} not in {problem!r}"


def small_f32(seed=0, shape=(3, 4)):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def fp8_codes(shape, seed=0):
    """Random e4m3fn codes that are never NaN (0x7F / 0xFF)."""
    codes = np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)
    codes[(codes & 0x7F) == 0x7F] = 0x3F
    return codes


def torch_dequant(codes: np.ndarray, scale: np.ndarray, block=(128, 128)) -> np.ndarray:
    weight = torch.from_numpy(codes).view(torch.float8_e4m3fn).to(torch.float32)
    expanded = torch.from_numpy(scale).repeat_interleave(block[0], -2).repeat_interleave(block[1], -1)
    return (weight * expanded[..., : codes.shape[-2], : codes.shape[-1]]).numpy()


# ---------------------------------------------------------------- happy paths

def test_single_file_inventory(tmp_path):
    weight, bias = small_f32(), np.arange(4, dtype=np.float32)
    make_model(tmp_path, {"model.safetensors": {"w": entry(weight), "b": entry(bias)}})
    ckpt = Checkpoint.open(tmp_path)
    assert ckpt.config == CONFIG and ckpt.block_size is None and ckpt.path == tmp_path
    assert list(ckpt.tensors) == ["b", "w"]
    header_len = struct.unpack("<Q", (tmp_path / "model.safetensors").read_bytes()[:8])[0]
    assert ckpt.tensors["w"] == SourceTensor("w", "F32", (3, 4), "model.safetensors", 8 + header_len, 48)
    assert ckpt.tensors["b"].offset == 8 + header_len + 48
    np.testing.assert_array_equal(ckpt.read("w"), weight)
    np.testing.assert_array_equal(ckpt.read("b"), bias)
    assert ckpt.scale_names() == set()


def test_sharded_with_index(tmp_path):
    a, b, c = small_f32(1), small_f32(2, (5,)), small_f32(3, (2, 2))
    make_model(tmp_path, {"model-00001-of-00002.safetensors": {"z.a": entry(a), "y.b": entry(b)},
                          "model-00002-of-00002.safetensors": {"x.c": entry(c)}}, index=True)
    (tmp_path / "stray.safetensors").write_bytes(b"not a shard: the index decides which files are shards")
    ckpt = Checkpoint.open(tmp_path)
    assert list(ckpt.tensors) == ["x.c", "y.b", "z.a"]
    assert ckpt.tensors["x.c"].file == "model-00002-of-00002.safetensors"
    for name, expected in {"z.a": a, "y.b": b, "x.c": c}.items():
        np.testing.assert_array_equal(ckpt.read(name), expected)


def test_shards_without_index_are_every_safetensors_file(tmp_path):
    make_model(tmp_path, {"b.safetensors": {"t1": entry(small_f32(1))}, "a.safetensors": {"t2": entry(small_f32(2))}})
    ckpt = Checkpoint.open(tmp_path)
    assert {t.file for t in ckpt.tensors.values()} == {"a.safetensors", "b.safetensors"}


def test_bf16_f16_f32_round_trip_exact(tmp_path):
    values = small_f32(7, (6, 5)) * 1000
    bf16_values = ((values.view(np.uint32) >> 16) << 16).view(np.float32)   # exactly representable in BF16
    f16_values = values.astype(np.float16)
    make_model(tmp_path, {"model.safetensors": {
        "bf16": bf16_entry(bf16_values), "f16": entry(f16_values), "f32": entry(values)}})
    ckpt = Checkpoint.open(tmp_path)
    for name, expected in {"bf16": bf16_values, "f16": f16_values.astype(np.float32), "f32": values}.items():
        result = ckpt.read(name)
        assert result.dtype == np.float32 and result.shape == (6, 5)
        np.testing.assert_array_equal(result.view(np.uint32), expected.view(np.uint32))
    torch_bf16 = torch.from_numpy(bf16_values).to(torch.bfloat16).to(torch.float32).numpy()
    np.testing.assert_array_equal(ckpt.read("bf16"), torch_bf16)


def test_e4m3fn_table_matches_torch_for_all_codes():
    reference = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).to(torch.float32).numpy()
    assert E4M3FN_TO_F32.dtype == np.float32
    np.testing.assert_array_equal(np.isnan(E4M3FN_TO_F32), np.isnan(reference))
    assert set(np.flatnonzero(np.isnan(E4M3FN_TO_F32))) == {0x7F, 0xFF}
    finite = ~np.isnan(reference)
    np.testing.assert_array_equal(E4M3FN_TO_F32[finite].view(np.uint32), reference[finite].view(np.uint32))
    assert np.nanmax(E4M3FN_TO_F32) == 448.0 and not np.isinf(E4M3FN_TO_F32).any()


@pytest.mark.parametrize("shape, config", [
    ((256, 384), {**CONFIG, "quantization_config": {"weight_block_size": [128, 128]}}),
    ((200, 300), CONFIG),  # non-multiple of 128, no quantization_config: default 128x128 blocks
])
def test_fp8_block_dequant_matches_torch(tmp_path, shape, config):
    codes = fp8_codes(shape)
    scale = np.random.default_rng(1).uniform(1e-4, 1e-2, size=(-(-shape[0] // 128), -(-shape[1] // 128)))
    scale = scale.astype(np.float32)
    make_model(tmp_path, {"model.safetensors": {
        "mlp.weight": entry(codes, "F8_E4M3"), "mlp.weight_scale_inv": entry(scale)}}, config=config)
    ckpt = Checkpoint.open(tmp_path)
    assert ckpt.tensors["mlp.weight"].scale == "mlp.weight_scale_inv"
    assert ckpt.scale_names() == {"mlp.weight_scale_inv"}
    result = ckpt.read("mlp.weight")
    assert result.dtype == np.float32 and result.shape == shape
    np.testing.assert_array_equal(result, torch_dequant(codes, scale))


def test_fp8_custom_block_size_bf16_scale_and_3d_weight(tmp_path):
    codes = fp8_codes((2, 10, 7))
    scale = np.random.default_rng(2).uniform(0.5, 2, size=(2, 3, 2)).astype(np.float32)
    scale = ((scale.view(np.uint32) >> 16) << 16).view(np.float32)
    config = {**CONFIG, "quantization_config": {"weight_block_size": [4, 4]}}
    make_model(tmp_path, {"m.safetensors": {"experts": entry(codes, "F8_E4M3"),
                                            "experts_scale_inv": bf16_entry(scale)}}, config=config)
    ckpt = Checkpoint.open(tmp_path)
    assert ckpt.block_size == (4, 4)
    np.testing.assert_array_equal(ckpt.read("experts"), torch_dequant(codes, scale, (4, 4)))


def test_reads_files_written_by_the_safetensors_library(tmp_path):
    from safetensors.torch import save_file
    tensors = {
        "bf16": torch.randn(5, 3).to(torch.bfloat16), "f16": torch.randn(4).to(torch.float16),
        "f32": torch.randn(2, 2), "ids": torch.arange(6, dtype=torch.int64),
        "w": torch.randn(130, 20).to(torch.float8_e4m3fn), "w_scale_inv": torch.rand(2, 1) + 0.5,
    }
    make_model(tmp_path, {})
    save_file(tensors, str(tmp_path / "model.safetensors"))
    ckpt = Checkpoint.open(tmp_path)
    for name in ("bf16", "f16", "f32", "ids"):
        np.testing.assert_array_equal(ckpt.read(name), tensors[name].to(torch.float32).numpy())
    expected = tensors["w"].to(torch.float32) * tensors["w_scale_inv"].repeat_interleave(128, 0)[:130]
    np.testing.assert_array_equal(ckpt.read("w"), expected.numpy())


def test_fingerprint_stable_and_sensitive_to_shape(tmp_path):
    shards = {"model.safetensors": {"a": entry(small_f32(shape=(3, 4))), "b": entry(small_f32(shape=(2,)))}}
    make_model(tmp_path / "one", shards)
    first, again = Checkpoint.open(tmp_path / "one").fingerprint(), Checkpoint.open(tmp_path / "one").fingerprint()
    assert first == again and len(first) == 64 and int(first, 16) >= 0
    reshaped = {"model.safetensors": {"a": entry(small_f32(shape=(4, 3))), "b": entry(small_f32(shape=(2,)))}}
    make_model(tmp_path / "two", reshaped)
    assert Checkpoint.open(tmp_path / "two").fingerprint() != first
    # Only headers count: different values with the same inventory give the same fingerprint.
    make_model(tmp_path / "three", {"model.safetensors": {"a": entry(small_f32(9)), "b": entry(small_f32(8, (2,)))}})
    assert Checkpoint.open(tmp_path / "three").fingerprint() == first


def test_open_reads_headers_only(tmp_path, monkeypatch):
    """A 1 GiB sparse data region: open() must touch only the 8-byte length and the header JSON."""
    make_model(tmp_path, {})
    big_bytes = 1 << 30
    header = {"big": {"dtype": "F32", "shape": [big_bytes // 4], "data_offsets": [0, big_bytes]},
              "small": {"dtype": "U8", "shape": [3], "data_offsets": [big_bytes, big_bytes + 3]}}
    header_bytes = json.dumps(header).encode()
    shard = tmp_path / "model.safetensors"
    write_raw(shard, header_bytes)
    with open(shard, "r+b") as handle:
        handle.truncate(8 + len(header_bytes) + big_bytes + 3)

    bytes_read: dict[str, int] = {}
    real_open = builtins.open

    class CountingFile:
        def __init__(self, handle, key):
            self._handle, self._key = handle, key

        def read(self, size=-1):
            data = self._handle.read(size)
            bytes_read[self._key] = bytes_read.get(self._key, 0) + len(data)
            return data

        def __getattr__(self, attr):
            assert attr not in {"readinto", "readinto1", "read1", "readline", "readlines", "fileno_mmap"}, attr
            return getattr(self._handle, attr)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._handle.close()

    def counting_open(file, *args, **kwargs):
        return CountingFile(real_open(file, *args, **kwargs), os.path.basename(os.fspath(file)))

    def no_data_reads(*args, **kwargs):
        raise AssertionError("open() read tensor data")

    monkeypatch.setattr(builtins, "open", counting_open)
    monkeypatch.setattr(np, "fromfile", no_data_reads)
    monkeypatch.setattr(np, "memmap", no_data_reads)
    started = time.perf_counter()
    ckpt = Checkpoint.open(tmp_path)
    assert time.perf_counter() - started < 2.0
    assert bytes_read["model.safetensors"] == 8 + len(header_bytes)
    assert ckpt.tensors["big"].nbytes == big_bytes
    monkeypatch.undo()
    np.testing.assert_array_equal(ckpt.read("small"), [0, 0, 0])  # lazy read touches only its 3 bytes


# ---------------------------------------------------------------- 1. config.json

def test_config_missing(tmp_path):
    make_model(tmp_path, {"model.safetensors": {"a": entry(small_f32())}})
    (tmp_path / "config.json").unlink()
    with raises_naming("config.json", "file is missing"):
        Checkpoint.open(tmp_path)


def test_config_malformed_names_line_and_col(tmp_path):
    make_model(tmp_path, {"model.safetensors": {"a": entry(small_f32())}})
    (tmp_path / "config.json").write_text('{\n  "hidden_size": 8,\n  oops\n}')
    with raises_naming("config.json", "malformed JSON", "line 3 col 3"):
        Checkpoint.open(tmp_path)


def test_config_not_an_object(tmp_path):
    make_model(tmp_path, {"model.safetensors": {"a": entry(small_f32())}}, config=[1, 2])
    with raises_naming("config.json", "not an object"):
        Checkpoint.open(tmp_path)


def test_config_bad_block_size_names_key(tmp_path):
    make_model(tmp_path, {"model.safetensors": {"a": entry(small_f32())}},
               config={**CONFIG, "quantization_config": {"weight_block_size": [128, 0]}})
    with raises_naming("config.json", "weight_block_size"):
        Checkpoint.open(tmp_path)


# ---------------------------------------------------------------- 2. index file

def test_index_malformed_json(tmp_path):
    make_model(tmp_path, {"model.safetensors": {"a": entry(small_f32())}})
    (tmp_path / source.INDEX_NAME).write_text('{"weight_map": {')
    with raises_naming(source.INDEX_NAME, "malformed JSON", "line 1"):
        Checkpoint.open(tmp_path)


@pytest.mark.parametrize("index", [{"metadata": {}}, {"weight_map": ["a"]}, ["weight_map"]])
def test_index_without_weight_map(tmp_path, index):
    make_model(tmp_path, {"model.safetensors": {"a": entry(small_f32())}}, index=index)
    with raises_naming(source.INDEX_NAME, "weight_map"):
        Checkpoint.open(tmp_path)


# ---------------------------------------------------------------- 3. index vs shards

def test_index_names_missing_shard(tmp_path):
    make_model(tmp_path, {"model.safetensors": {"a": entry(small_f32())}},
               index={"weight_map": {"a": "model.safetensors", "b": "model-00002.safetensors"}})
    with raises_naming(source.INDEX_NAME, "model-00002.safetensors", "does not exist"):
        Checkpoint.open(tmp_path)


def test_index_tensor_absent_from_shard_header(tmp_path):
    make_model(tmp_path, {"model.safetensors": {"a": entry(small_f32())}},
               index={"weight_map": {"a": "model.safetensors", "lm_head.weight": "model.safetensors"}})
    with raises_naming("model.safetensors", "'lm_head.weight'", "absent"):
        Checkpoint.open(tmp_path)


# ---------------------------------------------------------------- 4. shard paths escaping the model dir

@pytest.mark.parametrize("shard_name", ["/etc/passwd", "../outside.safetensors", "sub/../../outside.safetensors"])
def test_index_shard_path_escapes(tmp_path, shard_name):
    model = make_model(tmp_path / "model", {"model.safetensors": {"a": entry(small_f32())}})
    write_shard(tmp_path / "outside.safetensors", {"b": entry(small_f32())})
    (model / source.INDEX_NAME).write_text(json.dumps({"weight_map": {"a": "model.safetensors", "b": shard_name}}))
    with raises_naming(source.INDEX_NAME, shard_name, "escapes the model directory"):
        Checkpoint.open(model)


def test_symlinked_shard_resolving_outside(tmp_path):
    model = make_model(tmp_path / "model", {"model.safetensors": {"a": entry(small_f32())}})
    write_shard(tmp_path / "outside.safetensors", {"b": entry(small_f32())})
    (model / "linked.safetensors").symlink_to(tmp_path / "outside.safetensors")
    with raises_naming("model/linked.safetensors", "'linked.safetensors'", "escapes the model directory"):
        Checkpoint.open(model)
    (model / source.INDEX_NAME).write_text(json.dumps({"weight_map": {"b": "linked.safetensors"}}))
    with raises_naming(source.INDEX_NAME, "'linked.safetensors'", "escapes the model directory"):
        Checkpoint.open(model)


def test_symlinked_shard_inside_model_dir_is_fine(tmp_path):
    model = make_model(tmp_path, {"real.data": {"a": entry(small_f32())}})
    (model / "model.safetensors").symlink_to(model / "real.data")
    assert list(Checkpoint.open(model).tensors) == ["a"]


# ---------------------------------------------------------------- 5. headers

def test_header_length_exceeds_file(tmp_path):
    make_model(tmp_path, {})
    write_raw(tmp_path / "model.safetensors", {"a": {}}, header_len=10_000)
    with raises_naming("model.safetensors", "header length 10000"):
        Checkpoint.open(tmp_path)


def test_header_length_beyond_safetensors_limit(tmp_path):
    make_model(tmp_path, {})
    shard = tmp_path / "model.safetensors"
    write_raw(shard, b"{}", header_len=source.MAX_HEADER_BYTES + 1)
    with open(shard, "r+b") as handle:
        handle.truncate(2 * source.MAX_HEADER_BYTES)  # sparse: large enough that only the cap catches it
    with raises_naming("model.safetensors", f"header length {source.MAX_HEADER_BYTES + 1}", "limit"):
        Checkpoint.open(tmp_path)


def test_no_shards(tmp_path):
    make_model(tmp_path, {})
    with raises_naming(tmp_path.name, "no safetensors shards"):
        Checkpoint.open(tmp_path)
    (tmp_path / source.INDEX_NAME).write_text('{"weight_map": {}}')
    with raises_naming(source.INDEX_NAME, "no safetensors shards"):
        Checkpoint.open(tmp_path)


def test_file_too_short_for_length_field(tmp_path):
    make_model(tmp_path, {})
    (tmp_path / "model.safetensors").write_bytes(b"\x01\x02")
    with raises_naming("model.safetensors", "too short"):
        Checkpoint.open(tmp_path)


@pytest.mark.parametrize("header_bytes, problem", [
    (b'{"a": {"dtype": "F32",', "malformed header JSON"),
    (b"\xff\xfe{}", "malformed header JSON"),
    (b"[1, 2, 3]", "not an object"),
])
def test_header_json_malformed_or_not_object(tmp_path, header_bytes, problem):
    make_model(tmp_path, {})
    write_raw(tmp_path / "model.safetensors", header_bytes)
    with raises_naming("model.safetensors", problem):
        Checkpoint.open(tmp_path)


@pytest.mark.parametrize("missing", ["dtype", "shape", "data_offsets"])
def test_header_entry_missing_key(tmp_path, missing):
    make_model(tmp_path, {})
    header, data = header_and_data({"tok_embd": entry(small_f32())})
    del header["tok_embd"][missing]
    write_raw(tmp_path / "model.safetensors", header, data)
    with raises_naming("model.safetensors", "'tok_embd'", repr(missing)):
        Checkpoint.open(tmp_path)


@pytest.mark.parametrize("key, bad_value", [
    ("dtype", 32), ("shape", "3x4"), ("shape", [3, -4]), ("shape", [3, True]), ("shape", [3.0, 4]),
    ("data_offsets", [0]), ("data_offsets", ["0", 48]), ("data_offsets", {"begin": 0}),
])
def test_header_entry_wrong_types(tmp_path, key, bad_value):
    make_model(tmp_path, {})
    header, data = header_and_data({"tok_embd": entry(small_f32())})
    header["tok_embd"][key] = bad_value
    write_raw(tmp_path / "model.safetensors", header, data)
    with raises_naming("model.safetensors", "'tok_embd'", repr(key)):
        Checkpoint.open(tmp_path)


def test_header_entry_not_an_object(tmp_path):
    make_model(tmp_path, {})
    write_raw(tmp_path / "model.safetensors", {"tok_embd": [1, 2]})
    with raises_naming("model.safetensors", "'tok_embd'", "not an object"):
        Checkpoint.open(tmp_path)


# ---------------------------------------------------------------- 6. data_offsets

def write_with_offsets(tmp_path, offsets: dict[str, list[int]], shapes=None):
    """Two F32 [3, 4] tensors (48 bytes each) in a 96-byte data region, with the given data_offsets."""
    make_model(tmp_path, {})
    header = {name: {"dtype": "F32", "shape": (shapes or {}).get(name, [3, 4]), "data_offsets": span}
              for name, span in offsets.items()}
    write_raw(tmp_path / "model.safetensors", header, bytes(96))


@pytest.mark.parametrize("offsets, problem", [
    ({"a": [0, 48], "b": [48, 144]}, "beyond the 96-byte data region"),
    ({"a": [0, 48], "b": [96, 48]}, "begin > end"),
    ({"a": [0, 48], "b": [-48, 0]}, "negative"),
])
def test_data_offsets_out_of_range(tmp_path, offsets, problem):
    write_with_offsets(tmp_path, offsets)
    with raises_naming("model.safetensors", "'b'", problem):
        Checkpoint.open(tmp_path)


def test_overlapping_data_offsets(tmp_path):
    write_with_offsets(tmp_path, {"a": [0, 48], "b": [40, 88]})
    with raises_naming("model.safetensors", "'a'", "'b'", "overlapping"):
        Checkpoint.open(tmp_path)


def test_data_offsets_span_does_not_match_shape(tmp_path):
    write_with_offsets(tmp_path, {"a": [0, 48], "b": [48, 96]}, shapes={"b": [3, 5]})
    with raises_naming("model.safetensors", "'b'", "span 48 bytes", "needs 60"):
        Checkpoint.open(tmp_path)


# ---------------------------------------------------------------- 7. truncated shard

def test_truncated_shard(tmp_path):
    make_model(tmp_path, {"model.safetensors": {"a": entry(small_f32()), "b": entry(small_f32(1))}})
    shard = tmp_path / "model.safetensors"
    shard.write_bytes(shard.read_bytes()[:-10])
    with raises_naming("model.safetensors", "'b'", "truncated"):
        Checkpoint.open(tmp_path)


def test_shard_truncated_after_open_fails_on_read(tmp_path):
    make_model(tmp_path, {"model.safetensors": {"a": entry(small_f32())}})
    ckpt = Checkpoint.open(tmp_path)
    shard = tmp_path / "model.safetensors"
    shard.write_bytes(shard.read_bytes()[:-4])
    with raises_naming("model.safetensors", "'a'", "truncated"):
        ckpt.read("a")


# ---------------------------------------------------------------- 8. dtype and duplicates

def test_unsupported_dtype(tmp_path):
    make_model(tmp_path, {"model.safetensors": {"a": ("F8_E5M2", [4], bytes(4))}})
    with raises_naming("model.safetensors", "'a'", "unsupported dtype 'F8_E5M2'"):
        Checkpoint.open(tmp_path)


def test_tensor_in_two_shards(tmp_path):
    make_model(tmp_path, {"a.safetensors": {"dup": entry(small_f32())}, "b.safetensors": {"dup": entry(small_f32())}})
    with raises_naming("b.safetensors", "a.safetensors", "'dup'"):
        Checkpoint.open(tmp_path)


# ---------------------------------------------------------------- 9. FP8 scales

def test_fp8_weight_without_scale(tmp_path):
    make_model(tmp_path, {"model.safetensors": {"down_proj.weight": entry(fp8_codes((4, 4)), "F8_E4M3")}})
    with raises_naming("model.safetensors", "'down_proj.weight'", "'down_proj.weight_scale_inv'"):
        Checkpoint.open(tmp_path)


@pytest.mark.parametrize("scale_shape", [(1, 1), (3, 2), (2, 2, 3), (6,)])
def test_fp8_scale_shape_mismatch(tmp_path, scale_shape):
    scale = np.ones(scale_shape, dtype=np.float32)
    make_model(tmp_path, {"model.safetensors": {"w": entry(fp8_codes((200, 300)), "F8_E4M3"),
                                                "w_scale_inv": entry(scale)}})
    with raises_naming("model.safetensors", "'w_scale_inv'", "'w'", "[2, 3] for 128x128 blocks"):
        Checkpoint.open(tmp_path)


def test_fp8_scale_with_wrong_dtype(tmp_path):
    make_model(tmp_path, {"model.safetensors": {"w": entry(fp8_codes((4, 4)), "F8_E4M3"),
                                                "w_scale_inv": entry(np.ones((1, 1), np.int64))}})
    with raises_naming("model.safetensors", "'w_scale_inv'", "I64"):
        Checkpoint.open(tmp_path)


# ---------------------------------------------------------------- 10. NaN / Inf on read

@pytest.mark.parametrize("make_entry, problem", [
    (lambda: entry(np.array([1.0, np.nan, 2.0], np.float32)), "1 NaN"),
    (lambda: bf16_entry(np.array([1.0, -np.inf], np.float32)), "1 Inf"),
    (lambda: entry(np.array([1e300], np.float64), "F64"), "1 Inf"),
])
def test_non_finite_values_fail_on_read(tmp_path, make_entry, problem):
    make_model(tmp_path, {"model.safetensors": {"bad.weight": make_entry(), "good": entry(small_f32())}})
    ckpt = Checkpoint.open(tmp_path)  # open() never looks at values
    ckpt.read("good")
    with raises_naming("model.safetensors", "'bad.weight'", problem):
        ckpt.read("bad.weight")


def test_fp8_nan_code_fails_on_read(tmp_path):
    codes = fp8_codes((4, 4))
    codes[2, 3] = 0x7F
    make_model(tmp_path, {"model.safetensors": {"w": entry(codes, "F8_E4M3"),
                                                "w_scale_inv": entry(np.ones((1, 1), np.float32))}})
    with raises_naming("model.safetensors", "'w'", "1 NaN"):
        Checkpoint.open(tmp_path).read("w")
