"""llama.cpp's own llama_model_quantize, run in a child process (a bad file may abort it): the
reference mtpmanifest's per-tensor types and bytes are compared against."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import gguf

CHILD = r"""
import sys, llama_cpp
src, dst, ftype, nthread = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
llama_cpp.llama_backend_init()
params = llama_cpp.llama_model_quantize_default_params()
params.ftype = ftype
params.nthread = nthread
sys.exit(llama_cpp.llama_model_quantize(src.encode(), dst.encode(), params))
"""


def llama_quantize(src: Path, dst: Path, file_type: str, nthread: int = 2) -> Path:
    ftype = gguf.LlamaFileType[file_type].value
    proc = subprocess.run([sys.executable, "-c", CHILD, str(src), str(dst), str(ftype), str(nthread)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dst


def tensor_table(path: Path) -> dict[str, tuple[str, list[int], bytes]]:
    reader = gguf.GGUFReader(path)
    return {t.name: (t.tensor_type.name, [int(n) for n in t.shape], bytes(t.data.tobytes())) for t in reader.tensors}
