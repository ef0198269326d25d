"""Weight providers: model weights by GGUF tensor name, or in the source (Hugging Face) layout one
decoder layer at a time, read either from the source checkpoint or back from a written GGUF.

Both speak the same two languages:
- `array(gguf_name)`: float32 in GGUF space (numpy order = reversed GGML shape), after the op.
- `hf_layer(block)` / `hf_globals()`: {source tensor name: float32} as the checkpoint names them (a
  tensor whose rule names its torch parameter, `module:`, as `renamed.<block>.<module>` instead).
  The source provider reads the checkpoint (FP8 block scales applied). The GGUF provider reads the
  written file, dequantizes it and maps every tensor back through its manifest op's `invert`
  (split_kv_b -> kv_b_proj, stack_experts -> one matrix per expert), so a forward pass on it covers
  the whole conversion, quantization included, and not a copy kept in memory.
Only the tensors asked for are read, so a forward pass streams one decoder layer at a time.
"""
from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import gguf
import numpy as np

from .convert import TensorSource
from .errors import BadInputError
from .manifest import Manifest, TensorEntry
from .ops import op_registry
from .source import Checkpoint


RENAMED = "renamed"  # prefix of hf_name()s made from a rule's module: (stripped like model.layers.N.)


class WeightProvider:
    """Common part: the manifest's entries by name, by block and by source group."""

    kind = "?"

    def __init__(self, manifest: Manifest):
        self.manifest = manifest
        self.ops = op_registry()
        self.entries = {e.name: e for e in manifest.tensors}
        self._by_block: dict[int | None, list[TensorEntry]] = defaultdict(list)
        self._groups: dict[tuple[str, ...], list[TensorEntry]] = defaultdict(list)
        for entry in manifest.tensors:
            self._by_block[entry.block].append(entry)
            self._groups[tuple(entry.sources)].append(entry)

    def has(self, name: str) -> bool:
        return name in self.entries

    def array(self, name: str) -> np.ndarray:
        raise NotImplementedError

    def hf_arrays(self, entry: TensorEntry) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def blocks(self) -> list[int]:
        return sorted(b for b in self._by_block if b is not None)

    def entries_of(self, block: int | None) -> list[TensorEntry]:
        return list(self._by_block.get(block, []))

    def hf_layer(self, block: int | None, *, skip: set[str] = frozenset()) -> dict[str, np.ndarray]:
        """Every source tensor of decoder block `block` (None: the tensors outside blocks) in the
        checkpoint's layout, except those of GGUF tensors named in `skip` (e.g. an MTP head's own)."""
        out: dict[str, np.ndarray] = {}
        seen: set[tuple[str, ...]] = set()
        for entry in self.entries_of(block):
            key = tuple(entry.sources)
            if entry.name in skip or key in seen:
                continue
            seen.add(key)
            out.update({self.hf_name(entry, s): a for s, a in self.hf_arrays(entry).items()})
        return out

    @staticmethod
    def hf_name(entry: TensorEntry, source: str) -> str:
        """The name the torch forward reads a source tensor under: its own, or its rule's `module:`
        (placed in a block and given its expert) when the family renamed transformers' parameter."""
        if not entry.module:
            return source
        module = entry.module.replace("{xid}", str(entry.sources.index(source)))
        return f"{RENAMED}.{entry.block}.{module}"

    def hf_globals(self) -> dict[str, np.ndarray]:
        return self.hf_layer(None)

    def gguf_names_of_sources(self, block: int | None) -> dict[str, list[str]]:
        """source tensor name -> the GGUF tensors made from it (for hooks that want GGUF names)."""
        names: dict[str, list[str]] = defaultdict(list)
        for entry in self.entries_of(block):
            for source in entry.sources:
                names[self.hf_name(entry, source)].append(entry.name)
        return dict(names)


class SourceWeights(WeightProvider):
    """Weights of the source checkpoint (Checkpoint.read, then the manifest op for GGUF space)."""

    kind = "source"

    def __init__(self, manifest: Manifest, ckpt: Checkpoint):
        super().__init__(manifest)
        self.ckpt = ckpt
        self._source = TensorSource(manifest, ckpt)

    def array(self, name: str) -> np.ndarray:
        return self._source.array(self.entries[name])

    def hf_arrays(self, entry: TensorEntry) -> dict[str, np.ndarray]:
        return {s: self.ckpt.read(s) for s in entry.sources}


class GGUFWeights(WeightProvider):
    """Weights read back from a written GGUF: dequantized, and mapped back through the manifest."""

    kind = "output"

    def __init__(self, manifest: Manifest, path: Path, reader: gguf.GGUFReader | None = None):
        super().__init__(manifest)
        self.path = Path(path)
        if reader is None:
            from .verify import open_gguf

            reader = open_gguf(self.path)
        self.tensors = {t.name: t for t in reader.tensors}

    def has(self, name: str) -> bool:
        return name in self.entries and name in self.tensors

    def array(self, name: str) -> np.ndarray:
        if name not in self.tensors:
            raise BadInputError(f"{self.path}: tensor {name} is missing")
        tensor, entry = self.tensors[name], self.entries[name]
        shape = tuple(reversed(entry.shape))
        data = gguf.quants.dequantize(np.asarray(tensor.data), tensor.tensor_type)  # as ggml's dequantize_row_*
        if data.size != math.prod(shape):
            raise BadInputError(f"{self.path}: tensor {name} holds {data.size} values, the manifest says {list(entry.shape)}")
        return np.array(data.reshape(shape), dtype=np.float32)  # a copy: torch wants writable memory, not the mmap

    def hf_arrays(self, entry: TensorEntry) -> dict[str, np.ndarray]:
        op = self.ops[entry.op]
        if op.invert is None:
            raise BadInputError(f"{entry.name}: op {entry.op} has no inverse; its source tensors cannot be read back")
        group = sorted(self._groups[tuple(entry.sources)], key=lambda e: e.output_index)
        arrays = op.invert([self.array(e.name) for e in group], entry.params)
        return dict(zip(entry.sources, arrays))
