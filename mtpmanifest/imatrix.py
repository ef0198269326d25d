"""Importance matrices in llama.cpp's GGUF imatrix format: read, write, merge, and the per-row
weights llama-quantize derives from them.

File format (tools/imatrix, common/imatrix-loader): general.type = "imatrix", imatrix.datasets
(string array), imatrix.chunk_count and imatrix.chunk_size (u32); per weight W the tensors
`W.in_sum2` F32 [ne0, n_mat] (raw sums of squared inputs per column, per matrix or expert) and
`W.counts` F32 [1, n_mat] (rows that contributed), names sorted.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np

from .errors import BadInputError
from .gguf_out import atomic_output

log = logging.getLogger(__name__)
SUMS, COUNTS = ".in_sum2", ".counts"
KEY_DATASETS, KEY_CHUNK_COUNT, KEY_CHUNK_SIZE = "imatrix.datasets", "imatrix.chunk_count", "imatrix.chunk_size"


@dataclass
class ImatrixEntry:
    sums: np.ndarray  # float32 [n_mat, ne0]
    counts: np.ndarray  # float32 [n_mat]

    def weights(self) -> np.ndarray:
        """What llama-quantize quantizes with: sums / count per matrix in float32, 1 where count is 0."""
        counts = np.round(self.counts).astype(np.float32)  # the loader rounds counts to integers
        out = np.ones_like(self.sums, dtype=np.float32)
        seen = counts > 0
        out[seen] = self.sums[seen].astype(np.float32) / counts[seen, None]
        return out


@dataclass
class Imatrix:
    entries: dict[str, ImatrixEntry] = field(default_factory=dict)
    datasets: list[str] = field(default_factory=list)
    chunk_count: int = 0
    chunk_size: int = 0

    def weights(self, name: str) -> np.ndarray | None:
        """Importance weights for GGUF tensor `name` ([n_mat, ne0] float32), or None without an entry."""
        entry = self.entries.get(name)
        return None if entry is None else entry.weights()

    def merge_missing(self, other: "Imatrix") -> list[str]:
        """Add other's entries this one lacks; existing entries are never changed. Returns the added names."""
        added = sorted(set(other.entries) - set(self.entries))
        for name in added:
            self.entries[name] = other.entries[name]
        self.datasets += [d for d in other.datasets if d not in self.datasets]
        return added

    def write(self, path: Path, *, overwrite: bool = True) -> Path:
        writer = gguf.GGUFWriter(path=None, arch="imatrix")
        writer.kv_data[0].pop(gguf.Keys.General.ARCHITECTURE, None)  # llama.cpp's imatrix files have none
        writer.add_string(gguf.Keys.General.TYPE, "imatrix")
        writer.add_array(KEY_DATASETS, list(self.datasets))
        writer.add_uint32(KEY_CHUNK_COUNT, int(self.chunk_count))
        writer.add_uint32(KEY_CHUNK_SIZE, int(self.chunk_size))
        for name in sorted(self.entries):
            entry = self.entries[name]
            n_mat = entry.sums.shape[0]
            writer.add_tensor(name + SUMS, np.ascontiguousarray(entry.sums, dtype=np.float32))
            writer.add_tensor(name + COUNTS, np.ascontiguousarray(entry.counts, dtype=np.float32).reshape(n_mat, 1))
        with atomic_output(path, overwrite) as tmp:
            writer.write_header_to_file(tmp)
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
            writer.close()
        return Path(path)

    @classmethod
    def read(cls, path: Path) -> "Imatrix":
        path = Path(path)
        try:
            reader = gguf.GGUFReader(path)
        except (OSError, ValueError) as exc:
            raise BadInputError(f"{path}: not a readable GGUF imatrix file: {exc}") from None
        missing = [k for k in (KEY_DATASETS, KEY_CHUNK_COUNT, KEY_CHUNK_SIZE) if reader.get_field(k) is None]
        if missing:
            raise BadInputError(f"{path}: missing imatrix metadata {', '.join(missing)} (llama-quantize refuses such a file)")
        tensors = {t.name: t for t in reader.tensors}
        names = sorted({n[: -len(SUMS)] for n in tensors if n.endswith(SUMS)} | {n[: -len(COUNTS)] for n in tensors if n.endswith(COUNTS)})
        if not names:
            raise BadInputError(f"{path}: no imatrix entries")
        imatrix = cls(
            datasets=list(reader.get_field(KEY_DATASETS).contents()),
            chunk_count=int(reader.get_field(KEY_CHUNK_COUNT).contents()),
            chunk_size=int(reader.get_field(KEY_CHUNK_SIZE).contents()),
        )
        for name in names:
            sums, counts = tensors.get(name + SUMS), tensors.get(name + COUNTS)
            if sums is None or counts is None:
                raise BadInputError(f"{path}: mismatched sums and counts for {name}")
            if sums.tensor_type != gguf.GGMLQuantizationType.F32 or counts.tensor_type != gguf.GGMLQuantizationType.F32:
                raise BadInputError(f"{path}: sums and counts for {name} must be F32")
            n_mat = int(np.prod(counts.shape))
            values = np.asarray(sums.data, dtype=np.float32).reshape(-1)
            if n_mat < 1 or values.size % n_mat:
                raise BadInputError(f"{path}: {name} has {values.size} sums for {n_mat} matrices")
            imatrix.entries[name] = ImatrixEntry(values.reshape(n_mat, -1).copy(), np.asarray(counts.data, dtype=np.float32).reshape(-1).copy())
        return imatrix


def coverage(entries, imatrix: Imatrix | None, source: str | None) -> dict:
    """Which tensors that want importance data (TensorEntry.wants_imatrix) the imatrix covers,
    per tensor and per role (covered, wanted)."""
    wanted = [e for e in entries if e.wants_imatrix]
    covered = {e.name: imatrix is not None and e.name in imatrix.entries for e in wanted}
    totals = {role: [sum(covered[e.name] for e in wanted if e.role == role), sum(e.role == role for e in wanted)]
              for role in ("trunk", "mtp", "shared")}
    return {"file": source, "tensors": covered, "totals": totals}


def uncovered(cov: dict) -> list[str]:
    return [name for name, ok in cov["tensors"].items() if not ok]
