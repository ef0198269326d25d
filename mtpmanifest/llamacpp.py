"""Run llama.cpp (llama-cpp-python) on a GGUF in a child process and report what it did.

Creating an MTP context from a bad file aborts the whole process (GGML_ASSERT), so every call into
llama.cpp happens in `python -m mtpmanifest.llamacpp`. The child streams every llama.cpp log line to
its stderr as it comes and writes `info.json` plus `.npy` arrays into a temp dir after each stage, so
the parent still sees what was reached when the child dies half-way.

Child settings match a float32 PyTorch reference: CPU only, flash attention off, F32 KV cache, one
batch holding every token with logits on for all of them.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

WARNING_PATTERNS = ("unused tensor", "wrong number of tensors", "not found", "wrong shape",
                    "falling back", "failed to", "error loading", "ggml_assert", "mtp requested but",
                    "missing")


@dataclass
class LlamaProbe:
    ok: bool
    returncode: int
    n_layer: int = -1
    n_layer_nextn: int = -1
    log: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    logits: np.ndarray | None = None
    hidden: np.ndarray | None = None
    mtp_logits: np.ndarray | None = None
    error: str | None = None
    stage: str = ""        # last stage the child reached: start, model, trunk, mtp_context, done


def probe(gguf_path, tokens: list[int], *, load_mtp: bool = True, mtp: bool = True,
          n_threads: int = 2, timeout: float = 300) -> LlamaProbe:
    """Load `gguf_path` in a child llama.cpp process, decode `tokens`, and (mtp=True) run the MTP head."""
    tokens = [int(t) for t in tokens]
    if not tokens:
        raise ValueError("probe needs at least one token")
    pkg_root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_root, env.get("PYTHONPATH", "")) if p)
    env["GGML_NO_BACKTRACE"] = "1"  # an abort prints the assert line, not a gdb backtrace
    with tempfile.TemporaryDirectory(prefix="mtpm-llama-") as out:
        cmd = [sys.executable, "-m", "mtpmanifest.llamacpp", "--model", str(gguf_path),
               "--tokens", ",".join(map(str, tokens)), "--out", out, "--threads", str(n_threads),
               "--load-mtp", str(int(load_mtp)), "--mtp", str(int(mtp))]
        try:
            proc = subprocess.run(cmd, capture_output=True, timeout=timeout, env=env)
            rc, stderr = proc.returncode, proc.stderr
        except subprocess.TimeoutExpired as exc:
            rc, stderr = -9, (exc.stderr or b"") + f"\nprobe: child timed out after {timeout}s".encode()
        log = [ln.rstrip() for ln in stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
        res = LlamaProbe(ok=False, returncode=rc, log=log,
                         warnings=[ln for ln in log if any(p in ln.lower() for p in WARNING_PATTERNS)])
        info_path = Path(out) / "info.json"
        info = json.loads(info_path.read_text()) if info_path.exists() else {}
        res.n_layer = int(info.get("n_layer", -1))
        res.n_layer_nextn = int(info.get("n_layer_nextn", -1))
        res.stage = info.get("stage", "")
        for name in ("logits", "hidden", "mtp_logits"):
            f = Path(out) / f"{name}.npy"
            if f.exists():
                setattr(res, name, np.load(f))
    res.ok = rc == 0 and res.stage == "done"
    if not res.ok:
        tail = log[-12:]
        asserts = [ln for ln in log[:-12] if "GGML_ASSERT" in ln or "GGML_ABORT" in ln]
        res.error = "\n".join(asserts + tail) or f"child exited with {rc}"
        if info.get("error"):
            res.error = info["error"] + "\n" + res.error
    return res


# ----------------------------------------------------------------------------------------- child

def _child(args) -> int:
    out = Path(args.out)
    info: dict = {"stage": "start"}

    def save(stage: str, **extra) -> None:
        info.update(extra, stage=stage)
        tmp = out / "info.json.tmp"
        tmp.write_text(json.dumps(info))
        os.replace(tmp, out / "info.json")

    save("start")
    import ctypes

    from llama_cpp import llama_cpp as L
    from llama_cpp import llama_cpp_ext as X

    def _on_log(level, text, user_data):  # every llama.cpp / ggml log piece goes straight to fd 2
        if text:
            os.write(2, text)

    log_cb = L.llama_log_callback(_on_log)
    L.llama_log_set(log_cb, ctypes.c_void_p(0))
    L.llama_backend_init()

    tokens = [int(t) for t in args.tokens.split(",")]
    n = len(tokens)

    mparams = L.llama_model_default_params()
    mparams.n_gpu_layers = 0
    mparams.load_mtp = bool(args.load_mtp)
    model = L.llama_model_load_from_file(args.model.encode(), mparams)
    if not model:
        save("model_failed", error=f"llama_model_load_from_file failed for {args.model}")
        return 3
    vocab = L.llama_model_get_vocab(model)
    n_vocab = L.llama_vocab_n_tokens(vocab)
    n_embd = L.llama_model_n_embd_out(model)
    save("model", n_layer=L.llama_model_n_layer(model), n_layer_nextn=L.llama_model_n_layer_nextn(model),
         n_vocab=n_vocab, n_embd=n_embd)
    bad = [t for t in tokens if not 0 <= t < n_vocab]
    if bad:
        save("model", error=f"token ids out of range [0, {n_vocab}): {bad[:8]}")
        return 2

    cparams = L.llama_context_default_params()
    cparams.n_ctx = n + 8
    cparams.n_batch = cparams.n_ubatch = max(n, 8)
    cparams.n_seq_max = 1
    cparams.n_threads = cparams.n_threads_batch = args.threads
    cparams.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_DISABLED
    cparams.type_k = cparams.type_v = L.GGML_TYPE_F32
    cparams.embeddings = False
    cparams.no_perf = True
    ctx = L.llama_init_from_model(model, cparams)
    if not ctx:
        save("context_failed", error="llama_init_from_model failed for the target context")
        return 4
    if args.mtp:
        X.llama_set_embeddings_nextn(ctx, True, False)

    batch = L.llama_batch_init(n, 0, 1)
    for i, t in enumerate(tokens):
        batch.token[i], batch.pos[i], batch.n_seq_id[i] = t, i, 1
        batch.seq_id[i][0] = 0
        batch.logits[i] = 1
    batch.n_tokens = n
    rc = L.llama_decode(ctx, batch)
    L.llama_batch_free(batch)
    if rc != 0:
        save("decode_failed", error=f"llama_decode returned {rc}")
        return 5

    def rows(get, c, width: int) -> np.ndarray:
        res = np.empty((n, width), dtype=np.float32)
        for i in range(n):
            ptr = get(c, i)
            if not ptr:
                raise RuntimeError(f"{get.__name__}({i}) returned NULL")
            res[i] = np.ctypeslib.as_array(ptr, shape=(width,))
        return res

    np.save(out / "logits.npy", rows(L.llama_get_logits_ith, ctx, n_vocab))
    if not args.mtp:
        save("done")
        L.llama_free(ctx)
        L.llama_model_free(model)
        return 0
    hidden = rows(X.llama_get_embeddings_nextn_ith, ctx, n_embd)
    np.save(out / "hidden.npy", hidden)
    save("trunk")

    # MTP context: same model, ctx_type MTP, linked to the target as common/speculative.cpp does.
    cparams_mtp = L.llama_context_default_params()
    ctypes.memmove(ctypes.byref(cparams_mtp), ctypes.byref(cparams), ctypes.sizeof(cparams))
    cparams_mtp.ctx_type = L.LLAMA_CONTEXT_TYPE_MTP
    cparams_mtp.ctx_other = ctx
    save("mtp_context")  # an abort from here on leaves this stage in info.json
    ctx_mtp = L.llama_init_from_model(model, cparams_mtp)
    if not ctx_mtp:
        save("mtp_context_failed", error="llama_init_from_model returned NULL for the MTP context")
        return 6

    # entry p = token x_p at position p with hidden row h_{p-1}; the first entry gets a zero row
    shifted = np.zeros_like(hidden)
    shifted[1:] = hidden[:-1]
    shifted = np.ascontiguousarray(shifted)
    bx = L.llama_batch_ext_init(ctx_mtp)
    for p, t in enumerate(tokens):
        idx = L.llama_batch_ext_add_token(bx, 0, t)
        if idx < 0:
            save("mtp_batch_failed", error=f"llama_batch_ext_add_token({p}) returned {idx}")
            return 7
        pos = L.llama_pos(p)
        row = shifted[p]
        embd = L.llama_embd(row.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), 1, n_embd)
        if not (L.llama_batch_ext_set_pos(bx, idx, ctypes.byref(pos))
                and L.llama_batch_ext_set_embd_token(bx, idx, embd)
                and L.llama_batch_ext_set_output_logits(bx, idx, True)):
            save("mtp_batch_failed", error=f"llama_batch_ext_set_* failed for entry {p}")
            return 7
    rc = L.llama_process(ctx_mtp, L.LLAMA_PROCESS_TYPE_DECODE, bx)
    if rc != 0:
        save("mtp_process_failed", error=f"llama_process on the MTP context returned {rc}")
        return 8
    np.save(out / "mtp_logits.npy", rows(L.llama_get_logits_ith, ctx_mtp, n_vocab))
    L.llama_batch_ext_free(bx)
    save("done")
    L.llama_free(ctx_mtp)
    L.llama_free(ctx)
    L.llama_model_free(model)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mtpmanifest.llamacpp",
                                 description="child process of mtpmanifest.llamacpp.probe")
    ap.add_argument("--model", required=True)
    ap.add_argument("--tokens", required=True, help="comma-separated token ids")
    ap.add_argument("--out", required=True, help="directory for info.json and .npy results")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--load-mtp", type=int, default=1)
    ap.add_argument("--mtp", type=int, default=1)
    return _child(ap.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
