"""llama.cpp's own llama_model_quantize, run in a child process (a bad file may abort it): the
reference mtpmanifest's per-tensor types and bytes are compared against."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import gguf

CHILD = r"""
import ctypes, sys, llama_cpp
src, dst, ftype, nthread, imatrix_file = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
llama_cpp.llama_backend_init()
params = llama_cpp.llama_model_quantize_default_params()
params.ftype = ftype
params.nthread = nthread
if imatrix_file:
    # what tools/quantize does with an imatrix file: sums / count per matrix (1 where count is 0)
    from mtpmanifest.imatrix import Imatrix
    loaded = Imatrix.read(imatrix_file)
    keep = []
    entries = (llama_cpp.llama_model_imatrix_data * (len(loaded.entries) + 1))()
    for i, name in enumerate(sorted(loaded.entries)):
        values = loaded.weights(name).reshape(-1).copy()
        keep.append((name.encode(), values))
        entries[i].name = keep[-1][0]
        entries[i].data = values.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        entries[i].size = values.size
    entries[len(loaded.entries)].name = None
    params.imatrix = entries
sys.exit(llama_cpp.llama_model_quantize(src.encode(), dst.encode(), params))
"""


def llama_quantize(src: Path, dst: Path, file_type: str, nthread: int = 2, imatrix: Path | None = None) -> Path:
    ftype = gguf.LlamaFileType[file_type].value
    proc = subprocess.run([sys.executable, "-c", CHILD, str(src), str(dst), str(ftype), str(nthread), str(imatrix or "")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dst


def tensor_table(path: Path) -> dict[str, tuple[str, list[int], bytes]]:
    reader = gguf.GGUFReader(path)
    return {t.name: (t.tensor_type.name, [int(n) for n in t.shape], bytes(t.data.tobytes())) for t in reader.tensors}
