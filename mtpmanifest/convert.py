"""Convert: a function of (manifest, source checkpoint) only. Streams one output tensor at a time;
expert stacks and large tensors are produced in row chunks, so peak memory stays near one tensor."""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Iterator

import gguf
import numpy as np
from tqdm import tqdm

from . import kquants
from .errors import BadInputError
from .imatrix import Imatrix
from .gguf_out import ChunkedTensor, write_gguf
from .manifest import Manifest, TensorEntry
from .ops import op_registry
from .source import Checkpoint

log = logging.getLogger(__name__)
CHUNK_ELEMENTS = 1 << 24  # 64 MiB of float32 per encoded chunk


def encode(data: np.ndarray, qtype: gguf.GGMLQuantizationType, importance: np.ndarray | None = None) -> np.ndarray:
    """float32 rows -> the bytes GGUF stores for `qtype`, byte-identical to ggml's quantizers
    (rows are independent in every type, so row chunks encode exactly like the whole tensor).
    importance: None, one vector for every row, or [n, ne0] for data [n, rows, ne0] (per expert)."""
    if qtype == gguf.GGMLQuantizationType.F32:
        return np.ascontiguousarray(data, dtype=np.float32)
    if qtype == gguf.GGMLQuantizationType.F16:
        return np.ascontiguousarray(data, dtype=np.float16)
    if qtype in kquants.SUPPORTED:  # Q8_0, the K-quants and their fallbacks, in parallel over rows
        return kquants.quantize(data, qtype, importance)
    if importance is not None:
        raise ValueError(f"no importance-weighted quantizer for {qtype.name}")
    # BF16 and types without ggml importance weighting: gguf-py matches ggml's _ref bytes
    return gguf.quants.quantize(np.ascontiguousarray(data, dtype=np.float32), qtype)


def row_ranges(n_rows: int, row_length: int) -> Iterator[tuple[int, int]]:
    step = max(1, CHUNK_ELEMENTS // max(1, row_length))
    for start in range(0, n_rows, step):
        yield start, min(n_rows, start + step)


def _row_chunks(data: np.ndarray) -> Iterator[np.ndarray]:
    rows = data.reshape(-1, data.shape[-1]) if data.ndim > 1 else data.reshape(1, -1)
    for start, stop in row_ranges(rows.shape[0], rows.shape[1]):
        yield rows[start:stop]


class TensorSource:
    """Produces the encoded bytes of manifest tensors, one at a time, from the checkpoint."""

    def __init__(self, manifest: Manifest, ckpt: Checkpoint, imatrix: Imatrix | None = None):
        self.manifest = manifest
        self.ckpt = ckpt
        self.imatrix = imatrix
        self.ops = op_registry()
        self._cached_key: tuple | None = None
        self._cached: list[np.ndarray] = []

    def outputs(self, entry: TensorEntry) -> list[np.ndarray]:
        """All float32 outputs of the entry's op (cached so multi-output ops read their source once)."""
        key = (entry.op, tuple(entry.sources))
        if key != self._cached_key:
            self._cached = []  # release the previous op's outputs before reading new sources
            op = self.ops[entry.op]
            self._cached = op.apply([self.ckpt.read(s) for s in entry.sources], entry.params)
            self._cached_key = key
        return self._cached

    def array(self, entry: TensorEntry) -> np.ndarray:
        """The entry's float32 data in numpy (reversed GGML) order, after its op."""
        if self.ops[entry.op].many_inputs:
            return self.ops[entry.op].apply([self.ckpt.read(s) for s in entry.sources], entry.params)[0]
        return self.outputs(entry)[entry.output_index]

    def importance(self, entry: TensorEntry) -> np.ndarray | None:
        """[n_mat, ne0] importance weights for the entry, as llama-quantize derives them, if any."""
        if self.imatrix is None or not entry.wants_imatrix:
            return None
        weights = self.imatrix.weights(entry.name)
        if weights is None:
            return None  # uncovered: quantized without, as llama-quantize does; coverage reports it
        expected = (math.prod(entry.shape[2:]), entry.shape[0])
        if weights.shape != expected:
            raise BadInputError(f"imatrix entry {entry.name}: {weights.shape[0]} x {weights.shape[1]} values, "
                                f"the tensor needs {expected[0]} x {expected[1]} (ne0 per matrix)")
        return weights

    def chunks(self, entry: TensorEntry) -> Iterator[np.ndarray]:
        qtype = gguf.GGMLQuantizationType[entry.type]
        weights = self.importance(entry)
        if self.ops[entry.op].many_inputs:
            # one input per slice of the outermost axis (an expert): encode experts as they are read,
            # a few together so each quantizer call has enough rows to keep every core busy
            batch: list[np.ndarray] = []
            for index, source in enumerate(entry.sources):
                batch.append(self.ckpt.read(source))
                if sum(b.size for b in batch) >= CHUNK_ELEMENTS or index == len(entry.sources) - 1:
                    first = index + 1 - len(batch)
                    yield encode(np.stack(batch), qtype, None if weights is None else weights[first:index + 1])
                    batch = []
            return
        if entry.op == "copy" and len(entry.shape) == 2:
            # stream the source in row slices: a vocabulary-sized tensor is never whole in memory
            for start, stop in row_ranges(entry.shape[1], entry.shape[0]):
                yield encode(self.ckpt.read(entry.sources[0], rows=(start, stop)), qtype, None if weights is None else weights[0])
            return
        data = self.outputs(entry)[entry.output_index]
        if weights is not None and data.ndim == 3:  # per-matrix weights (e.g. MLA's per-head k_b/v_b)
            yield encode(data, qtype, weights)
            return
        for rows in _row_chunks(data):
            yield encode(rows, qtype, None if weights is None else weights[0])

    def tensor(self, index: int) -> ChunkedTensor:
        entry = self.manifest.tensors[index]
        return ChunkedTensor(entry.n_bytes, lambda: self.chunks(entry), entry.name)


def convert(manifest: Manifest, ckpt: Checkpoint, out_path: Path, *, overwrite: bool = False, progress: bool = True,
            imatrix: Imatrix | None = None) -> Path:
    source = TensorSource(manifest, ckpt, imatrix)
    total = sum(e.n_bytes for e in manifest.tensors)
    with tqdm(total=total, unit="B", unit_scale=True, desc="convert", disable=not progress, leave=False) as bar:
        path = write_gguf(manifest, ckpt.path, ckpt.config, out_path, source.tensor, overwrite=overwrite, progress=bar.update)
    log.debug("wrote %s (%d tensors)", path, len(manifest.tensors))
    return path

