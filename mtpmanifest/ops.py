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


# Qwen3-Next (qwen3next in llama.cpp): zero-centred norms, the linear-attention decay, conv kernel and fused qkvz


def _plus_one(arrays: Sequence[np.ndarray], params: Mapping[str, int]) -> list[np.ndarray]:
    """A zero-centred RMSNorm stores w - 1 (the model scales by 1 + w); llama.cpp stores the scale itself."""
    return [np.asarray(arrays[0], dtype=np.float32) + np.float32(1.0)]


def _minus_one(arrays: Sequence[np.ndarray], params: Mapping[str, int]) -> list[np.ndarray]:
    return [np.asarray(arrays[0], dtype=np.float32) - np.float32(1.0)]


def _neg_exp(arrays: Sequence[np.ndarray], params: Mapping[str, int]) -> list[np.ndarray]:
    """A_log -> A = -exp(A_log), the per-head decay rate llama.cpp multiplies by directly."""
    return [-np.exp(np.asarray(arrays[0], dtype=np.float32))]


def _log_neg(arrays: Sequence[np.ndarray], params: Mapping[str, int]) -> list[np.ndarray]:
    a = np.asarray(arrays[0], dtype=np.float32)
    if (a >= 0).any():
        raise BadInputError("ssm_a holds values >= 0; it is not -exp(A_log)")
    return [np.log(-a)]


def _squeeze_shapes(shapes: Sequence[Shape], params: Mapping[str, int]) -> list[Shape]:
    shape, axis = tuple(shapes[0]), params["axis"]
    if not 0 <= axis < len(shape) or shape[axis] != 1:
        raise BadInputError(f"shape {list(shape)} has no axis {axis} of size 1 to drop")
    return [shape[:axis] + shape[axis + 1:]]


def _squeeze(arrays: Sequence[np.ndarray], params: Mapping[str, int]) -> list[np.ndarray]:
    return [np.squeeze(arrays[0], axis=params["axis"])]


def _unsqueeze(arrays: Sequence[np.ndarray], params: Mapping[str, int]) -> list[np.ndarray]:
    return [np.expand_dims(arrays[0], axis=params["axis"])]


def _qkvz_dims(shape: Shape, params: Mapping[str, int]) -> tuple[int, int, int, int]:
    """(n_k_heads, head_k_dim, rows of v (and of z) per key head, hidden)."""
    n_k, n_v, dk, dv = params["n_k_heads"], params["n_v_heads"], params["head_k_dim"], params["head_v_dim"]
    if n_v % n_k:
        raise BadInputError(f"linear_num_value_heads {n_v} is not a multiple of linear_num_key_heads {n_k}")
    per_v = n_v // n_k * dv
    rows, hidden = shape
    if rows != n_k * (2 * dk + 2 * per_v):
        raise BadInputError(f"in_proj_qkvz has {rows} rows, expected 2 * n_k_heads * head_k_dim + "
                            f"2 * n_v_heads * head_v_dim = {n_k * (2 * dk + 2 * per_v)}")
    return n_k, dk, per_v, hidden


def _split_qkvz_shapes(shapes: Sequence[Shape], params: Mapping[str, int]) -> list[Shape]:
    n_k, dk, per_v, hidden = _qkvz_dims(tuple(shapes[0]), params)
    return [(n_k * (2 * dk + per_v), hidden), (n_k * per_v, hidden)]


def _split_qkvz(arrays: Sequence[np.ndarray], params: Mapping[str, int]) -> list[np.ndarray]:
    """Rows grouped per key head [q_g, k_g, v_g, z_g] for g = 0..n_k-1 -> attn_qkv [all q; all k; all v]
    and attn_gate [all z] (each part keeps its heads in order)."""
    n_k, dk, per_v, hidden = _qkvz_dims(arrays[0].shape, params)
    grouped = arrays[0].reshape(n_k, 2 * dk + 2 * per_v, hidden)
    q, k, v, z = np.split(grouped, [dk, 2 * dk, 2 * dk + per_v], axis=1)
    qkv = np.concatenate([part.reshape(-1, hidden) for part in (q, k, v)])
    return [np.ascontiguousarray(qkv), np.ascontiguousarray(z.reshape(-1, hidden))]


def _split_qkvz_invert(arrays: Sequence[np.ndarray], params: Mapping[str, int]) -> list[np.ndarray]:
    qkv, z = arrays
    n_k, dk = params["n_k_heads"], params["head_k_dim"]
    hidden, per_v = qkv.shape[1], z.shape[0] // n_k
    q, k, v = np.split(qkv, [n_k * dk, 2 * n_k * dk])
    parts = [q.reshape(n_k, dk, hidden), k.reshape(n_k, dk, hidden), v.reshape(n_k, per_v, hidden),
             z.reshape(n_k, per_v, hidden)]
    return [np.ascontiguousarray(np.concatenate(parts, axis=1).reshape(-1, hidden))]


# MiMo-7B: the MTP input projection takes cat[hidden, embedding]; llama.cpp's nextn.eh_proj takes
# cat[embedding, hidden] (DeepSeek's order), so the two column halves trade places.


def _halves_shapes(shapes: Sequence[Shape], params: Mapping[str, int]) -> list[Shape]:
    shape = tuple(shapes[0])
    if len(shape) != 2 or shape[1] % 2:
        raise BadInputError(f"shape {list(shape)} has no two equal column halves to swap")
    return [shape]


def _swap_halves(arrays: Sequence[np.ndarray], params: Mapping[str, int]) -> list[np.ndarray]:
    """[A | B] -> [B | A] along the columns (its own inverse)."""
    w = np.asarray(arrays[0])
    half = w.shape[1] // 2
    return [np.ascontiguousarray(np.concatenate([w[:, half:], w[:, :half]], axis=1))]


def op_registry() -> dict[str, Op]:
    """A fresh registry per call: no module-level mutable state shared between runs."""
    ops = [
        Op("copy", 1, _copy_shapes, _copy, invert=_copy),
        Op("split_kv_b", 2, _split_kv_b_shapes, _split_kv_b, ("n_head", "qk_nope_head_dim", "v_head_dim"),
           invert=_split_kv_b_invert),
        Op("stack_experts", 1, _stack_shapes, _stack, ("n_expert",), many_inputs=True, invert=_unstack),
        Op("plus_one", 1, _copy_shapes, _plus_one, invert=_minus_one),
        Op("neg_exp", 1, _copy_shapes, _neg_exp, invert=_log_neg),
        Op("squeeze", 1, _squeeze_shapes, _squeeze, ("axis",), invert=_unsqueeze),
        Op("split_qkvz", 2, _split_qkvz_shapes, _split_qkvz, ("n_k_heads", "n_v_heads", "head_k_dim", "head_v_dim"),
           invert=_split_qkvz_invert),
        Op("swap_halves", 1, _halves_shapes, _swap_halves, invert=_swap_halves),
    ]
    return {op.name: op for op in ops}
