"""Named tensor transforms that architecture YAML refers to by name (`op: split_kv_b`).

An op knows its output shapes from input shapes alone (so a plan needs headers only) and
transforms float32 arrays in numpy (row-major, Hugging Face) order. Shapes here are numpy order;
GGUF's ne order is the reverse. `invert` maps all of an op's outputs back to its inputs (source
order), so weights read from a written GGUF can run in the source model's layout.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np

from .errors import BadInputError

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Op:
    name: str
    n_outputs: int
    shapes: Callable[[Sequence[Shape], Mapping[str, int]], list[Shape]]
    apply: Callable[[Sequence[np.ndarray], Mapping[str, int]], list[np.ndarray]]
    params: tuple[str, ...] = ()
    many_inputs: bool = False  # takes one source per {xid}
    invert: Callable[[Sequence[np.ndarray], Mapping[str, int]], list[np.ndarray]] | None = None


def _copy_shapes(shapes: Sequence[Shape], params: Mapping[str, int]) -> list[Shape]:
    return [tuple(shapes[0])]


def _copy(arrays: Sequence[np.ndarray], params: Mapping[str, int]) -> list[np.ndarray]:
    return [arrays[0]]


def _split_kv_b_invert(arrays: Sequence[np.ndarray], params: Mapping[str, int]) -> list[np.ndarray]:
    k_b, v_b = arrays  # [n_head, rank, nope], [n_head, v_dim, rank]
    per_head = np.concatenate([k_b.transpose(0, 2, 1), v_b], axis=1)  # [n_head, nope + v_dim, rank]
    return [np.ascontiguousarray(per_head.reshape(-1, per_head.shape[-1]))]


def _kv_b_dims(shape: Shape, params: Mapping[str, int]) -> tuple[int, int, int, int]:
    n_head, nope, v_dim = params["n_head"], params["qk_nope_head_dim"], params["v_head_dim"]
    rows, kv_lora_rank = shape
    if rows != n_head * (nope + v_dim):
        raise BadInputError(
            f"kv_b_proj has {rows} rows, expected n_head * (qk_nope_head_dim + v_head_dim) = {n_head * (nope + v_dim)}"
        )
    return n_head, nope, v_dim, kv_lora_rank


def _split_kv_b_shapes(shapes: Sequence[Shape], params: Mapping[str, int]) -> list[Shape]:
    n_head, nope, v_dim, rank = _kv_b_dims(tuple(shapes[0]), params)
    return [(n_head, rank, nope), (n_head, v_dim, rank)]


def _split_kv_b(arrays: Sequence[np.ndarray], params: Mapping[str, int]) -> list[np.ndarray]:
    # MLA weight absorption: llama.cpp wants K_b per head transposed and V_b per head as is.
    n_head, nope, v_dim, rank = _kv_b_dims(arrays[0].shape, params)
    per_head = arrays[0].reshape(n_head, nope + v_dim, rank)
    k_b = np.ascontiguousarray(per_head[:, :nope, :].transpose(0, 2, 1))
    v_b = np.ascontiguousarray(per_head[:, nope:, :])
    return [k_b, v_b]


def _stack_shapes(shapes: Sequence[Shape], params: Mapping[str, int]) -> list[Shape]:
    first = tuple(shapes[0])
    for shape in shapes[1:]:
        if tuple(shape) != first:
            raise BadInputError(f"experts differ in shape: {first} and {tuple(shape)}")
    return [(len(shapes), *first)]


def _stack(arrays: Sequence[np.ndarray], params: Mapping[str, int]) -> list[np.ndarray]:
    return [np.stack(arrays, axis=0)]


def _unstack(arrays: Sequence[np.ndarray], params: Mapping[str, int]) -> list[np.ndarray]:
    return list(arrays[0])


def op_registry() -> dict[str, Op]:
    """A fresh registry per call: no module-level mutable state shared between runs."""
    ops = [
        Op("copy", 1, _copy_shapes, _copy, invert=_copy),
        Op("split_kv_b", 2, _split_kv_b_shapes, _split_kv_b, ("n_head", "qk_nope_head_dim", "v_head_dim"),
           invert=_split_kv_b_invert),
        Op("stack_experts", 1, _stack_shapes, _stack, ("n_expert",), many_inputs=True, invert=_unstack),
    ]
    return {op.name: op for op in ops}
