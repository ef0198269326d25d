"""mtpmanifest.kquants against llama.cpp's own quantizers (ggml_quantize_chunk through ctypes): every byte
must match, for Q8_0 and Q2_K..Q6_K, with and without an importance matrix, on ordinary and adversarial data."""
from __future__ import annotations

import zlib

import gguf
import numpy as np
import pytest

pytest.importorskip("llama_cpp")
import ggml_oracle as oracle  # noqa: E402  (tests/kquants is on sys.path: rootdir-relative "prepend" imports)

from mtpmanifest import kquants  # noqa: E402
from mtpmanifest.kquants import api  # noqa: E402

T = gguf.GGMLQuantizationType
TYPES = [T.Q8_0, T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K]
F32 = np.float32


def assert_same_bytes(ours: np.ndarray, ref: np.ndarray, qtype, label: str, x: np.ndarray | None = None) -> None:
    """Byte equality; on failure name the first differing block, its differing offsets and its input."""
    assert ours.dtype == np.uint8 and ours.shape == ref.shape, (ours.dtype, ours.shape, ref.shape)
    if np.array_equal(ours, ref):
        return
    blk, ts = gguf.GGML_QUANT_SIZES[qtype]
    a, b = ours.reshape(-1, ts), ref.reshape(-1, ts)
    bad = np.flatnonzero((a != b).any(axis=1))
    i = int(bad[0])
    per_row = ours.shape[-1] // ts
    offs = np.flatnonzero(a[i] != b[i])[:12]
    msg = (f"{qtype.name} {label}: {bad.size}/{a.shape[0]} blocks differ; first is block {i} "
           f"(row {i // per_row}, block {i % per_row} of the row); byte offsets {offs.tolist()}: "
           f"ours {a[i][offs].tolist()} ggml {b[i][offs].tolist()}")
    if x is not None:
        msg += f"\ninput block: {x.reshape(-1, blk)[i].tolist()}"
    pytest.fail(msg)


def check(x: np.ndarray, qtype, imatrix=None, label: str = "") -> None:
    x = np.ascontiguousarray(x, dtype=F32)
    assert_same_bytes(kquants.quantize(x, qtype, imatrix), oracle.quantize(x, qtype, imatrix), qtype, label, x)


# ----------------------------------------------------------------------------------------------- data
def default_imatrix(rng, n: int) -> np.ndarray:
    im = rng.random(n) * np.exp(rng.standard_normal(n))
    im[rng.random(n) < 0.05] = 0.0
    return im.astype(F32)


def ties(rng) -> np.ndarray:
    """Values on x.5 points of the grids the quantizers divide by."""
    rows = []
    # Q8_0: amax = 127*s makes d = s and id = 1/s exact (s a power of two), the rest on (k + 0.5)*s
    s = 2.0 ** -4
    r = (rng.integers(-127, 127, (8, 32)) + 0.5) * s
    r[:, 0] = 127 * s * rng.choice([-1, 1], 8)
    rows.append(r.reshape(256))
    # 0.49999997 (the one value floor(v + 0.5f) gets wrong) and exact halves around it
    r = np.tile(np.array([127, 0.49999997, -0.49999997, 0.5, -0.5, 1.5, -2.5, 126.5], dtype=F32), 32)
    rows.append(r)
    # K-quants: small half-integer and quarter grids, power-of-two ranges
    rows.append(rng.integers(-8, 8, 256) + 0.5)
    rows.append(rng.integers(-16, 16, 256) * 0.25)
    rows.append(rng.integers(0, 32, 256) * 0.5)
    rows.append(np.tile(np.array([-4, -3.5, -2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 3, 3.5, 0, -4, 2, -2, 1, -1]), 16))
    return np.array(rows, dtype=F32)


def zero_blocks(rng) -> np.ndarray:
    x = rng.standard_normal((4, 768)).astype(F32)
    x[0] = 0.0                        # a whole zero row
    x[1, 256:512] = 0.0               # a zero super-block
    x[2, 32:64] = 0.0                 # zero 32-sub-block
    x[2, 512:528] = 0.0               # zero 16-sub-block
    x[3, ::2] = 0.0
    x[3, 0:16] = -0.0
    return x


def constant(rng) -> np.ndarray:
    x = np.empty((4, 512), dtype=F32)
    x[0] = 0.75
    x[1] = -3.25
    x[2] = np.repeat(rng.standard_normal(16), 32)      # constant 32-sub-blocks of both signs
    x[3] = np.repeat(rng.standard_normal(32), 16)      # constant 16-sub-blocks
    x[3, :256] = np.abs(x[3, :256])                    # a super-block of positive constants
    return x


def outlier(rng) -> np.ndarray:
    x = (rng.standard_normal((3, 512)) * 0.01).astype(F32)
    x[0, 37] = 100.0
    x[0, 300] = -100.0
    x[1, ::32] = 50.0 * rng.choice([-1, 1], 16)        # one outlier in every 32-block
    x[2, 5::16] = -7.0                                 # one outlier in every 16-block
    return x


def subnormal(rng) -> np.ndarray:
    x = np.empty((4, 256), dtype=F32)
    x[0] = rng.standard_normal(256) * 1e-39
    x[1] = rng.integers(-20, 20, 256) * np.float32(1.4e-45)
    x[2] = rng.standard_normal(256) * 1e-38
    x[2, ::7] = rng.standard_normal(37) * 1e-3         # subnormals next to normal values
    x[3] = rng.standard_normal(256) * 2e-37            # Q8_0: d subnormal, 1/d still finite or inf
    return x


def mixed_scale(rng) -> np.ndarray:
    x = rng.standard_normal((3, 1024))
    x *= 10.0 ** rng.uniform(-20, 20, (3, 64, 1)).repeat(16, axis=2).reshape(3, 1024)
    return x.astype(F32)


def non_finite(rng) -> np.ndarray:
    """Not required of a quantizer, but C's behaviour is deterministic on x86-64 and ported literally."""
    x = rng.standard_normal((6, 512)).astype(F32)
    x[0, 5] = np.inf
    x[1, 300] = -np.inf
    x[2, 7] = np.nan
    x[3] = np.inf
    x[4, 100:116] = np.nan
    x[5, ::3] = 3e38                                   # x*x overflows
    return x


CASES = {
    "normal": lambda rng: rng.standard_normal((3, 512)),
    "uniform": lambda rng: rng.uniform(-1, 1, (64, 256)),
    "student_t": lambda rng: rng.standard_t(2, (3, 768)),
    "lognormal_signed": lambda rng: np.exp(rng.standard_normal((1, 1024)) * 3) * rng.choice([-1, 1], (1, 1024)),
    "sparse": lambda rng: rng.standard_normal((3, 512)) * (rng.random((3, 512)) < 0.05),
    "positive": lambda rng: np.abs(rng.standard_normal((3, 512))) + 0.5,
    "negative": lambda rng: -np.abs(rng.standard_normal((3, 256))) - 0.5,
    "ties": ties,
    "zero_blocks": zero_blocks,
    "constant": constant,
    "outlier": outlier,
    "huge": lambda rng: rng.standard_normal((3, 512)) * 1e30,
    "tiny": lambda rng: rng.standard_normal((3, 512)) * 1e-30,
    "subnormal": subnormal,
    "mixed_scale": mixed_scale,
    "non_finite": non_finite,
}


@pytest.mark.parametrize("use_imatrix", [False, True], ids=["ref", "imatrix"])
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_bytes_match_ggml(qtype, case, use_imatrix):
    rng = np.random.default_rng(zlib.crc32(f"{case}/{qtype.name}".encode()))
    x = np.asarray(CASES[case](rng), dtype=F32)
    im = default_imatrix(rng, x.shape[-1]) if use_imatrix else None
    check(x, qtype, im, case)


def imatrix_cases(rng, n: int) -> dict[str, np.ndarray]:
    zeros = default_imatrix(rng, n)
    zeros[rng.random(n) < 0.3] = 0.0
    zeros[32:64] = 0.0                                  # a whole 32-sub-block
    zeros[96:112] = 0.0                                 # a whole 16-sub-block
    return {
        "with_zeros": zeros,
        "all_zero": np.zeros(n, dtype=F32),
        "one_nonzero": np.eye(1, n, 17, dtype=F32)[0],
        "ones": np.ones(n, dtype=F32),
        "wide_range": (10.0 ** rng.uniform(-12, 12, n)).astype(F32),
    }


@pytest.mark.parametrize("im_case", ["with_zeros", "all_zero", "one_nonzero", "ones", "wide_range"])
@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_imatrix_edge_cases(qtype, im_case):
    rng = np.random.default_rng(7)
    x = np.concatenate([rng.standard_normal((3, 512)), zero_blocks(rng)[:, :512], outlier(rng)]).astype(F32)
    check(x, qtype, imatrix_cases(rng, 512)[im_case], im_case)


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_expert_tensor_one_imatrix_slice_per_expert(qtype):
    rng = np.random.default_rng(11)
    x = rng.standard_normal((4, 3, 512)).astype(F32)
    x[2] *= 1e-3
    im = np.stack([default_imatrix(rng, 512) for _ in range(4)])
    im[1] = 0.0                                         # an expert the calibration never routed to
    im[3] = 1.0
    ours = kquants.quantize(x, qtype, im)
    ref = oracle.quantize(x, qtype, im)                 # ggml_quantize_chunk per expert, imatrix + e*n_per_row
    assert ours.shape == (4, 3, ref.shape[-1])
    assert_same_bytes(ours, ref, qtype, "experts", x)
    if qtype != T.Q8_0:                                 # the slices really are used per expert
        assert not np.array_equal(ours, kquants.quantize(x, qtype, im[0]))


# Sub-blocks found by searching for inputs on which a near-equivalent of the C arithmetic gives other bytes
# (float32 bit patterns; the rest of the super-block is zero):
#  * Q2_K ref: the candidate scale constant ``rmin + rdelta*is + nmax`` computed in double and rounded once
#    differs from C's float32 evaluation at is = 13, and here that candidate wins;
#  * Q6_K: ``fp16(1/iscale)`` with iscale = -128/max_scale is not ``fp16(max_scale/-128)`` here.
TRAPS = {
    "q2k_step_constant": (12, [3210884936, 3209703703, 3186168435, 1052572182, 3189229171, 3174695524, 1052142349,
                               1066897939, 3186691645, 3184606289, 3207789487, 3199541220, 3214489078, 1044305927,
                               3207315407, 3206915924]),
    "q6k_d_reciprocal": (8, [3184123700, 1042850306, 3177039898, 3214726422, 1051670530, 1057129979, 1063681647,
                             1056948725, 1057576122, 1064271371, 1054651612, 3209743072, 1054236951, 1078409944,
                             1055623836, 3214853487]),
}


@pytest.mark.parametrize("trap", list(TRAPS))
@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_arithmetic_traps(qtype, trap):
    pos, bits = TRAPS[trap]
    x = np.zeros((1, 256), dtype=F32)
    x[0, 16 * pos: 16 * pos + 16] = np.array(bits, dtype=np.uint32).view(F32)
    check(x, qtype, None, trap)
    check(x, qtype, np.ones(256, F32), trap + " imatrix")


@pytest.mark.parametrize("shape", [(1, 256), (3, 512), (64, 768), (2, 1280)], ids=str)
@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_row_shapes(qtype, shape):
    rng = np.random.default_rng(shape[0] * 7919 + shape[1])
    x = (rng.standard_normal(shape) * rng.uniform(0.1, 10)).astype(F32)
    check(x, qtype, None, f"{shape} ref")
    check(x, qtype, default_imatrix(rng, shape[1]), f"{shape} imatrix")


@pytest.mark.parametrize("use_imatrix", [False, True], ids=["ref", "imatrix"])
@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_large_matrix(qtype, use_imatrix):
    """A weight-sized matrix (16,384 super-blocks of mixed scales) through the default threaded path."""
    rng = np.random.default_rng(2024)
    x = (rng.standard_t(4, (512, 8192)) * np.exp(rng.standard_normal((512, 1)))).astype(F32)
    im = default_imatrix(rng, 8192) if use_imatrix else None
    assert_same_bytes(kquants.quantize(x, qtype, im), oracle.quantize(x, qtype, im, threads=2), qtype, "large", x)


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_dequantize_matches_ggml(qtype):
    rng = np.random.default_rng(3)
    x = rng.standard_t(3, (5, 512)).astype(F32)
    for im in (None, default_imatrix(rng, 512)):
        raw = kquants.quantize(x, qtype, im)
        ours = kquants.dequantize(raw, qtype)
        ref = oracle.dequantize(raw, qtype, 512)
        assert ours.dtype == F32 and ours.shape == x.shape
        assert np.array_equal(ours.view(np.uint32), ref.view(np.uint32))
        assert np.array_equal(ref, oracle.dequantize(oracle.quantize(x, qtype, im), qtype, 512))


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_thread_count_and_chunking_do_not_change_output(qtype, monkeypatch):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((24, 512)).astype(F32)
    x[5, :256] = 0.0
    im = default_imatrix(rng, 512)
    expected = {id_: oracle.quantize(x, qtype, imx) for id_, imx in (("ref", None), ("im", im))}
    for chunk in (api.CHUNK_ELEMS, 512, 1536):
        monkeypatch.setattr(api, "CHUNK_ELEMS", chunk)
        for threads in (1, 2, 3, None):
            for id_, imx in (("ref", None), ("im", im)):
                got = kquants.quantize(x, qtype, imx, threads=threads)
                assert_same_bytes(got, expected[id_], qtype, f"{id_} threads={threads} chunk={chunk}")


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_bad_row_length_raises(qtype):
    blk = gguf.GGML_QUANT_SIZES[qtype][0]
    for n in (blk + 16, blk // 2, 0):
        with pytest.raises(ValueError, match="row length"):
            kquants.quantize(np.zeros((2, n), dtype=F32), qtype)


def test_bad_imatrix_shape_raises():
    x = np.zeros((2, 3, 256), dtype=F32)
    for im in (np.ones(128, F32), np.ones((3, 256), F32), np.ones((2, 2, 256), F32)):
        with pytest.raises(ValueError, match="imatrix"):
            kquants.quantize(x, T.Q4_K, im)


def test_q8_0_ignores_imatrix():
    x = np.random.default_rng(9).standard_normal((2, 256)).astype(F32)
    assert np.array_equal(kquants.quantize(x, T.Q8_0), kquants.quantize(x, T.Q8_0, np.zeros(256, F32)))


def test_supported_and_unsupported_types():
    assert kquants.SUPPORTED == frozenset(TYPES) | {T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1}  # legacy: test_legacy_quants
    with pytest.raises(ValueError, match="not supported"):
        kquants.quantize(np.zeros((1, 256), F32), T.IQ4_NL)


def test_output_layout():
    x = np.random.default_rng(2).standard_normal((2, 3, 512)).astype(F32)
    for qtype in TYPES:
        blk, ts = gguf.GGML_QUANT_SIZES[qtype]
        out = kquants.quantize(x, qtype)
        assert out.dtype == np.uint8 and out.shape == (2, 3, 512 // blk * ts)
        assert out.shape[-1] == oracle.row_size(qtype, 512)
