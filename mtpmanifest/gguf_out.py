"""Write a GGUF from a manifest with gguf-py's GGUFWriter, one tensor (one chunk) at a time,
into a temporary file that is renamed into place only when complete."""
from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Callable, Iterator

import gguf
import numpy as np

from .errors import ConfigError
from .manifest import Manifest
from .metadata import add_to_writer
from .vocab import add_vocab

log = logging.getLogger(__name__)


class ChunkedTensor:
    """Quacks like the ndarray GGUFWriter.write_tensor_data expects (nbytes, tofile), but produces
    its bytes chunk by chunk so a tensor never has to sit in memory whole."""

    def __init__(self, nbytes: int, chunks: Callable[[], Iterator[np.ndarray]], name: str):
        self.nbytes = nbytes
        self._chunks = chunks
        self._name = name
        self.written = 0

    def tofile(self, fout) -> None:
        for chunk in self._chunks():
            chunk.tofile(fout)
            self.written += chunk.nbytes
        if self.written != self.nbytes:
            raise RuntimeError(f"{self._name}: wrote {self.written} bytes, the manifest says {self.nbytes}")


@contextlib.contextmanager
def atomic_output(path: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise ConfigError(f"{path}: exists; set output.overwrite=true to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def model_name(model_dir: Path, config: dict) -> str:
    return str(config.get("_name_or_path") or Path(model_dir).resolve().name)


def write_gguf(
    manifest: Manifest,
    model_dir: Path,
    config: dict,
    out_path: Path,
    tensor_data: Callable[[int], ChunkedTensor],
    *,
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Write `manifest` to `out_path`; tensor_data(i) gives the bytes of manifest.tensors[i]."""
    writer = gguf.GGUFWriter(path=None, arch=manifest.gguf_arch)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(model_name(model_dir, config))
    writer.add_block_count(manifest.layers["trunk"] + manifest.layers["mtp_kept"])
    if manifest.layers["mtp_kept"]:
        writer.add_nextn_predict_layers(manifest.layers["mtp_kept"])
    add_to_writer(writer, manifest.metadata)
    writer.add_file_type(gguf.LlamaFileType[manifest.file_type].value)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    add_vocab(writer, model_dir, manifest.vocab["model"], manifest.vocab["pre"], manifest.vocab["n_tokens"])
    for entry in manifest.tensors:
        writer.add_tensor_info(
            entry.name, list(reversed(entry.shape)), np.dtype(np.float32), entry.n_bytes,
            raw_dtype=gguf.GGMLQuantizationType[entry.type],
        )
    with atomic_output(out_path, overwrite) as tmp:
        try:
            writer.write_header_to_file(tmp)
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            for index, entry in enumerate(manifest.tensors):
                writer.write_tensor_data(tensor_data(index))
                if progress:
                    progress(entry.n_bytes)
        finally:
            writer.close()
    log.debug("wrote %s", out_path)
    return Path(out_path)
