"""Checks shared by the families whose MTP heads llama.cpp's runtime cannot use (mimo, ernie4_5_moe): the GGUF
keeps the heads under nextn names, llama.cpp refuses such a file, and the same file without the MTP block is
exactly what llama.cpp runs (its logits equal our torch trunk)."""
from __future__ import annotations

import gguf
import numpy as np

from conftest import copy_gguf
from mtpmanifest.forward import ModelForward
from mtpmanifest.llamacpp import probe
from mtpmanifest.weights import GGUFWeights

# float32 on both sides: only summation order differs (~1e-6 here); a wrong rope or router moves logits by ~0.1
LOGIT_ATOL = 1e-3


def tensor_data(path) -> dict[str, np.ndarray]:
    return {t.name: np.array(t.data) for t in gguf.GGUFReader(str(path)).tensors}


def arch_of(path) -> str:
    return gguf.GGUFReader(str(path)).get_field("general.architecture").contents()


def trunk_only(path, dst, n_trunk: int):
    """The GGUF without its MTP blocks: no blk.N (N >= n_trunk), no nextn_predict_layers, block_count n_trunk."""
    arch = arch_of(path)

    def is_mtp(name: str) -> bool:
        return name.startswith("blk.") and int(name.split(".")[1]) >= n_trunk

    return copy_gguf(path, dst, drop_tensor=is_mtp, drop_keys=(f"{arch}.nextn_predict_layers",),
                     set_uint32={f"{arch}.block_count": n_trunk})


def llamacpp_refusals(path, tokens) -> dict[bool, str]:
    """load_mtp -> the loader's error line, for a file llama.cpp must refuse with and without load_mtp."""
    refusals = {}
    for load_mtp in (True, False):
        result = probe(path, tokens, load_mtp=load_mtp, mtp=False)
        assert not result.ok and result.stage == "model_failed", (load_mtp, result.stage, result.error)
        refusals[load_mtp] = next(w for w in result.warnings if "error loading model" in w)
    return refusals


def llamacpp_trunk_logits(path, tokens) -> np.ndarray:
    result = probe(path, tokens, load_mtp=False, mtp=False)
    assert result.ok, result.error
    assert result.n_layer_nextn == 0
    assert [w for w in result.warnings if "unused tensor" in w or "wrong" in w] == []
    return result.logits


def assert_refused_but_trunk_runs(f32_gguf, n_mtp_tensors: int, n_trunk: int, tokens, tmp_path) -> None:
    """llama.cpp's loader of a family without MTP support refuses the file whatever load_mtp says ("wrong number
    of tensors", counting the MTP block's as extra); without the MTP block the very same file runs, and its
    logits are our torch trunk's."""
    cfg, manifest, ckpt, path = f32_gguf
    refusals = llamacpp_refusals(path, tokens)
    print(f"llama.cpp on {path.name}:", refusals)
    n_ours = len(manifest.tensors)
    for line in refusals.values():
        assert f"wrong number of tensors; expected {n_ours}, got {n_ours - n_mtp_tensors}" in line
    logits = llamacpp_trunk_logits(trunk_only(path, tmp_path / "trunk.gguf", n_trunk), tokens)
    trunk = ModelForward(ckpt.config, cfg.arch.mtp_head, GGUFWeights(manifest, path), keep_logits=True).trunk(tokens)
    assert np.abs(logits - trunk.scores.logits[0]).max() < LOGIT_ATOL
    assert (logits.argmax(-1) == trunk.scores.argmax[0]).all()
