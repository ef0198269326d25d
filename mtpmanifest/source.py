"""Checkpoint inventory from safetensors headers, and lazy float32 reads of single tensors.

`Checkpoint.open` runs every structural check on config.json, the shard index and the shard headers alone,
never reading tensor data; `Checkpoint.read` loads one tensor's byte range and decodes it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import pathlib
import struct

import numpy as np

from .errors import BadInputError

# safetensors dtype -> (numpy storage dtype, itemsize): BF16 and F8_E4M3 are kept as raw bits for read() to decode.
SAFETENSORS_DTYPES: dict[str, tuple[np.dtype, int]] = {
    name: (np.dtype(code), np.dtype(code).itemsize)
    for name, code in {
        "F32": "<f4", "F16": "<f2", "BF16": "<u2", "F8_E4M3": "u1",
        "F64": "<f8", "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1", "U8": "u1", "BOOL": "?",
    }.items()
}
INDEX_NAME = "model.safetensors.index.json"
SCALE_SUFFIX = "_scale_inv"
DEFAULT_BLOCK_SIZE = (128, 128)
MAX_HEADER_BYTES = 100_000_000  # the safetensors format's own cap; a larger length field is corrupt


def _e4m3fn_table() -> np.ndarray:
    """float32 value of each float8 e4m3fn code: bias 7, subnormal at exponent 0, no Inf, 0x7F/0xFF NaN."""
    codes = np.arange(256)
    exponent, mantissa = (codes >> 3) & 0xF, (codes & 0x7) / 8.0
    magnitude = np.where(exponent == 0, mantissa * 2.0**-6, (1.0 + mantissa) * np.exp2(exponent - 7.0))
    table = np.where(codes & 0x80, -magnitude, magnitude).astype(np.float32)
    table[(codes & 0x7F) == 0x7F] = np.nan
    return table


E4M3FN_TO_F32 = _e4m3fn_table()


@dataclasses.dataclass(frozen=True)
class SourceTensor:
    name: str
    dtype: str                 # safetensors dtype string
    shape: tuple[int, ...]
    file: str                  # shard file name, relative to the model dir
    offset: int                # absolute byte offset of the data in that file
    nbytes: int
    scale: str | None = None   # for an F8_E4M3 weight: the name of its `<name>_scale_inv` companion


def _bad(where: os.PathLike | str, problem: str) -> BadInputError:
    # Names and paths come from untrusted files; keep the message on one line whatever they hold.
    return BadInputError(f"{where}: {problem}".replace("\r", "\\r").replace("\n", "\\n"))


def _as_matrix(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape with leading 1s so it has at least two dims: the last two are the FP8 block matrix."""
    return (1,) * max(0, 2 - len(shape)) + tuple(shape)


def _scale_shape(weight_shape: tuple[int, ...], block_size: tuple[int, int]) -> tuple[int, ...]:
    *lead, rows, cols = _as_matrix(weight_shape)
    return (*lead, -(-rows // block_size[0]), -(-cols // block_size[1]))


def _load_json(file: pathlib.Path):
    try:
        with open(file, "rb") as handle:
            return json.loads(handle.read().decode("utf-8"))
    except OSError as err:
        problem = "file is missing" if isinstance(err, FileNotFoundError) else f"cannot read: {err.strerror}"
        raise _bad(file, problem) from None
    except json.JSONDecodeError as err:
        raise _bad(file, f"malformed JSON at line {err.lineno} col {err.colno}: {err.msg}") from None
    except UnicodeDecodeError as err:
        raise _bad(file, f"not UTF-8 text: {err.reason} at byte {err.start}") from None


def load_json_object(file: pathlib.Path, *, optional: bool = False) -> dict | None:
    """A JSON object file (config.json, tokenizer_config.json …); None when `optional` and absent. Every
    problem is one BadInputError naming the file."""
    if optional and not pathlib.Path(file).is_file():
        return None
    data = _load_json(file)
    if not isinstance(data, dict):
        raise _bad(file, f"JSON is {type(data).__name__}, not an object")
    return data


def _read_weight_map(index_file: pathlib.Path) -> dict[str, str]:
    index = _load_json(index_file)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(rel, str) and rel for rel in weight_map.values()):
        raise _bad(index_file, "no 'weight_map' object mapping tensor names to shard file names")
    return weight_map


def _shard_path(model_dir: pathlib.Path, rel: str, referrer: pathlib.Path) -> pathlib.Path:
    """The shard's path, refusing any that leaves the model directory (absolute, `..`, or via a symlink)."""
    if pathlib.PurePath(rel).is_absolute() or ".." in pathlib.PurePath(rel).parts \
            or not (model_dir / rel).resolve().is_relative_to(model_dir.resolve()):
        raise _bad(referrer, f"shard {rel!r} escapes the model directory")
    if not (model_dir / rel).is_file():
        raise _bad(referrer, f"shard {rel!r} does not exist")
    return model_dir / rel


def _parse_entry(file, rel, name, entry, data_start: int, data_size: int) -> SourceTensor:
    where = f"tensor {name!r}"
    if not isinstance(entry, dict):
        raise _bad(file, f"{where}: header entry is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")  # None if missing
    if not isinstance(dtype, str):
        raise _bad(file, f"{where}: 'dtype' is missing or not a string: {dtype!r}")
    if not (isinstance(shape, list) and all(type(dim) is int and dim >= 0 for dim in shape)):
        raise _bad(file, f"{where}: 'shape' is missing or not a list of non-negative integers: {shape!r}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)):
        raise _bad(file, f"{where}: 'data_offsets' is missing or not a pair of integers: {offsets!r}")
    if dtype not in SAFETENSORS_DTYPES:
        raise _bad(file, f"{where}: unsupported dtype {dtype!r}")
    begin, end = offsets
    if begin < 0 or end < begin:
        raise _bad(file, f"{where}: data_offsets {offsets} are negative or have begin > end")
    if end > data_size:  # either the offsets are wrong or the file was cut short
        raise _bad(file, f"{where}: data_offsets end {end} is beyond the {data_size}-byte data region (truncated?)")
    needed = math.prod(shape) * SAFETENSORS_DTYPES[dtype][1]
    if end - begin != needed:
        raise _bad(file, f"{where}: data_offsets span {end - begin} bytes but {dtype} {shape} needs {needed}")
    return SourceTensor(name, dtype, tuple(shape), rel, data_start + begin, end - begin)


def _parse_shard(file: pathlib.Path, rel: str) -> dict[str, SourceTensor]:
    """Every tensor of one shard, from its header alone (the 8-byte length, then that much JSON)."""
    try:
        with open(file, "rb") as handle:
            file_size = os.fstat(handle.fileno()).st_size
            if file_size < 8:
                raise _bad(file, f"{file_size}-byte file is too short to hold a safetensors header length")
            (header_len,) = struct.unpack("<Q", handle.read(8))
            if header_len > file_size - 8:
                raise _bad(file, f"header length {header_len} exceeds the {file_size - 8} bytes after it")
            if header_len > MAX_HEADER_BYTES:
                raise _bad(file, f"header length {header_len} exceeds the {MAX_HEADER_BYTES}-byte safetensors limit")
            header_bytes = handle.read(header_len)
    except OSError as err:
        raise _bad(file, f"cannot read shard: {err.strerror}") from None
    try:
        header = json.loads(header_bytes.decode("utf-8"))
    except ValueError as err:  # also covers JSONDecodeError and UnicodeDecodeError
        raise _bad(file, f"malformed header JSON: {err}") from None
    if not isinstance(header, dict):
        raise _bad(file, f"header JSON is {type(header).__name__}, not an object")
    data_start, data_size = 8 + header_len, file_size - 8 - header_len
    tensors = {name: _parse_entry(file, rel, name, entry, data_start, data_size)
               for name, entry in header.items() if name != "__metadata__"}
    spans = sorted((t.offset, t.offset + t.nbytes, t.name) for t in tensors.values() if t.nbytes)
    for (_, previous_end, previous), (begin, _, name) in zip(spans, spans[1:]):
        if begin < previous_end:
            raise _bad(file, f"tensors {previous!r} and {name!r} have overlapping data_offsets")
    return tensors


def _pair_fp8_scales(model_dir: pathlib.Path, tensors: dict[str, SourceTensor],
                     block_size: tuple[int, int]) -> dict[str, SourceTensor]:
    paired = dict(tensors)
    for name, weight in tensors.items():
        if weight.dtype != "F8_E4M3":
            continue
        scale = tensors.get(name + SCALE_SUFFIX)
        if scale is None:
            raise _bad(model_dir / weight.file, f"FP8 weight {name!r} has no {name + SCALE_SUFFIX!r} scale tensor")
        expected = _scale_shape(weight.shape, block_size)
        if scale.dtype not in ("F32", "BF16", "F16") or _as_matrix(scale.shape) != expected:
            raise _bad(model_dir / scale.file, f"scale {scale.name!r} is {scale.dtype} {list(scale.shape)}, but FP8"
                       f" weight {name!r} {list(weight.shape)} needs F32/BF16/F16 {list(expected)}"
                       f" for {block_size[0]}x{block_size[1]} blocks")
        paired[name] = dataclasses.replace(weight, scale=scale.name)
    return paired


@dataclasses.dataclass
class Checkpoint:
    """A Hugging Face safetensors checkpoint: its config, an inventory of every tensor, and lazy reads."""

    path: pathlib.Path                     # model directory
    config: dict                           # parsed config.json
    tensors: dict[str, SourceTensor]       # every tensor of every shard (scales included), sorted by name
    block_size: tuple[int, int] | None     # quantization_config.weight_block_size, if present

    @classmethod
    def open(cls, path) -> "Checkpoint":
        model_dir = pathlib.Path(path)
        config_file = model_dir / "config.json"
        config = load_json_object(config_file)
        quant = config.get("quantization_config") or {}
        block_size = quant.get("weight_block_size") if isinstance(quant, dict) else quant
        if block_size is not None and not (isinstance(block_size, list) and len(block_size) == 2
                                           and all(type(n) is int and n > 0 for n in block_size)):
            raise _bad(config_file, f"'quantization_config.weight_block_size' is not two positive ints: {block_size}")
        block_size = None if block_size is None else tuple(block_size)
        index_file = model_dir / INDEX_NAME
        has_index = index_file.exists()  # without an index, every *.safetensors file is a shard
        weight_map = _read_weight_map(index_file) if has_index else {}
        shard_names = set(weight_map.values()) if has_index else {p.name for p in model_dir.glob("*.safetensors")}
        if not shard_names:
            raise _bad(index_file if has_index else model_dir, "no safetensors shards")
        tensors: dict[str, SourceTensor] = {}
        for rel in sorted(shard_names):
            shard_file = _shard_path(model_dir, rel, index_file if has_index else model_dir / rel)
            for name, tensor in _parse_shard(shard_file, rel).items():
                if name in tensors:
                    raise _bad(shard_file, f"tensor {name!r} also appears in shard {tensors[name].file!r}")
                tensors[name] = tensor
        for name, rel in weight_map.items():
            if name not in tensors or tensors[name].file != rel:
                raise _bad(model_dir / rel, f"tensor {name!r} of {INDEX_NAME} is absent from this shard's header")
        tensors = _pair_fp8_scales(model_dir, tensors, block_size or DEFAULT_BLOCK_SIZE)
        return cls(model_dir, config, dict(sorted(tensors.items())), block_size)

    def scale_names(self) -> set[str]:
        return {t.scale for t in self.tensors.values() if t.scale is not None}

    def read(self, name: str, rows: tuple[int, int] | None = None) -> np.ndarray:
        """float32 values of a tensor, or of rows [start, stop) of a 2-D one (so a vocabulary-sized
        tensor can be streamed in slices); FP8 weights come back multiplied by their block scales."""
        tensor, file = self.tensors[name], self.path / self.tensors[name].file
        storage, itemsize = SAFETENSORS_DTYPES[tensor.dtype]
        shape, offset, count = tensor.shape, tensor.offset, tensor.nbytes // itemsize
        if rows is not None:
            if len(shape) != 2 or not 0 <= rows[0] <= rows[1] <= shape[0]:
                raise ValueError(f"{name}: cannot read rows {rows} of a tensor of shape {shape}")
            shape = (rows[1] - rows[0], shape[1])
            offset, count = offset + rows[0] * shape[1] * itemsize, shape[0] * shape[1]
        try:  # only this byte range is read
            raw = np.fromfile(file, dtype=storage, count=count, offset=offset)
        except OSError as err:
            raise _bad(file, f"cannot read tensor {name!r}: {err.strerror}") from None
        if raw.size != count:
            raise _bad(file, f"tensor {name!r} is truncated: {raw.size} of {count} elements present")
        if tensor.dtype == "F8_E4M3":
            values = self._fp8_values(tensor, raw, rows[0] if rows else 0, shape)
        elif tensor.dtype == "BF16":  # bf16 bits are the high half of a float32
            bits = np.zeros(count, dtype=np.uint32)
            bits.view(np.uint16)[1::2] = raw
            values = bits.view(np.float32)
        else:
            with np.errstate(over="ignore"):  # F64 beyond float32 range becomes Inf, reported below
                values = raw.astype(np.float32)
        if not np.isfinite(values).all():
            nan_count, inf_count = int(np.isnan(values).sum()), int(np.isinf(values).sum())
            raise _bad(file, f"tensor {name!r} contains {nan_count} NaN and {inf_count} Inf values")
        return values.reshape(shape)

    def _fp8_values(self, tensor: SourceTensor, raw: np.ndarray, first_row: int, shape: tuple[int, ...]) -> np.ndarray:
        """Decode e4m3fn codes and multiply each by its block's scale (edge blocks cropped to the weight)."""
        *lead, n_rows, n_cols = matrix = _as_matrix(shape)
        block_rows, block_cols = self.block_size or DEFAULT_BLOCK_SIZE
        scale = self.read(tensor.scale).reshape(_scale_shape(tensor.shape, (block_rows, block_cols)))
        row_blocks = (np.arange(first_row, first_row + n_rows) // block_rows)
        col_blocks = np.arange(n_cols) // block_cols
        per_element = scale[..., row_blocks, :][..., col_blocks]
        values = E4M3FN_TO_F32[raw].reshape(matrix)
        values *= per_element
        return values

    def fingerprint(self) -> str:
        inventory = [[t.name, t.dtype, list(t.shape), t.file] for _, t in sorted(self.tensors.items())]
        canonical = json.dumps({"config": self.config, "tensors": inventory}, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("ascii")).hexdigest()
