"""mtpmanifest.kquants' Q4_0, Q4_1, Q5_0 and Q5_1 against llama.cpp's own quantizers (ggml_quantize_chunk through
ctypes): every byte must match, without an importance matrix (quantize_row_*_ref) and with one
(quantize_row_*_impl: row-wide sigma2, make_qx_quants / make_qkx3_quants), on ordinary and adversarial data and
on the short rows (32..288) that make llama.cpp fall back to these types."""
from __future__ import annotations

import zlib

import gguf
import numpy as np
import pytest

pytest.importorskip("llama_cpp")
import ggml_oracle as oracle  # noqa: E402
import test_kquants as kq  # noqa: E402  (data generators and the byte comparison of the K-quant battery)

from mtpmanifest import kquants  # noqa: E402
from mtpmanifest.kquants import api  # noqa: E402

T = gguf.GGMLQuantizationType
TYPES = [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1]
F32 = np.float32
ROW_LENGTHS = [32, 64, 96, 128, 160, 256, 288]
tid = lambda t: t.name  # noqa: E731


def seed(*parts) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32("/".join(map(str, parts)).encode()))


def bits(*u32) -> np.ndarray:
    return np.array(u32, dtype=np.uint32).view(F32)


# ----------------------------------------------------------------------------------------------- data
def legacy_ties(rng, n: int) -> np.ndarray:
    """Inputs whose scaled values land exactly on the truncation points of ``(int8_t)(v + 8.5f)`` etc.
    (power-of-two steps make d and 1/d exact), on both sides, plus the first-occurrence rules."""
    s = 2.0 ** -3
    rows = []
    r = (rng.integers(-16, 16, n) + 0.5) * s           # (k + 0.5)*s: x*id + 8.5 or 16.5 an integer
    r[::32] = -8 * s                                    # Q4_0: max = -8s -> d = s
    rows.append(r)
    r = (rng.integers(-16, 16, n) + 0.5) * s
    r[::32] = -16 * s                                   # Q5_0: d = s
    rows.append(r)
    r = rng.integers(0, 16, n) * s + 0.5 * s            # Q4_1: min + (k + 0.5)*d
    r[::32], r[1::32] = 0.0, 15 * s
    rows.append(r)
    r = rng.integers(0, 32, n) * s + 0.5 * s            # Q5_1
    r[::32], r[1::32] = -1.0, -1.0 + 31 * s
    rows.append(r)
    r = np.tile(np.array([1.0, -1.0, 0.5, -0.5] * 8), n // 32)     # +a first, then -a: signed max is +a
    rows.append(r)
    rows.append(-r)                                                # -a first
    rows.append(rng.integers(-8, 8, n) * 0.5)                      # small half-integer grid
    rows.append(np.tile(np.array([0.49999997, -0.49999997, 8.5, -8.5, 7.5, -7.5, 0.5, -0.5]), n // 8))
    return np.array(rows, dtype=F32)


def legacy_zeros(rng, n: int) -> np.ndarray:
    x = rng.standard_normal((5, n)).astype(F32)
    x[0] = 0.0                                  # zero row: Q4_0/Q5_0 d = 0/-8 = -0.0
    x[1] = -0.0
    x[2, :32] = 0.0
    x[2, 0] = -0.0                              # Q4_1/Q5_1: min and max are the first zero, -0.0
    x[3, ::2] = 0.0
    x[3, 1::2] = -0.0
    x[3, n // 2:] = rng.standard_normal(n - n // 2)
    x[4, 32 * (n // 64):] = 0.0
    return x


def legacy_constant(rng, n: int) -> np.ndarray:
    x = np.empty((4, n), dtype=F32)
    x[0] = 0.75                                 # positive constant: min clamps to 0 in make_qkx3
    x[1] = -3.25                                # negative constant: max == min, early exit
    x[2] = np.repeat(rng.standard_normal(n // 32), 32)
    x[3] = np.repeat(np.abs(rng.standard_normal(n // 32)) * 1e4, 32)
    return x


def legacy_extremes(rng, n: int) -> np.ndarray:
    x = rng.standard_normal((9, n)).astype(F32)
    x[0] *= 1e30                                # x*x overflows: sigma2 = inf
    x[1] *= F32(1e-30)
    x[2] = rng.standard_normal(n) * 1e-39       # subnormal: d subnormal, 1/d overflows to inf
    x[3] = rng.integers(-20, 20, n) * F32(1.4e-45)
    x[4] = rng.standard_normal(n) * 5e-38       # d subnormal, 1/d finite
    x[5] = rng.standard_normal(n) * 1e6         # d beyond fp16: d = inf
    x[6, ::2] = 3e38
    x[6, 1::2] = -3e38                          # max - min overflows
    x[7] *= 0.01
    x[7, ::32] = 100.0 * rng.choice([-1, 1], n // 32)    # one outlier per block
    x[8] = np.abs(x[8]) + 1e3                   # far from zero, small spread
    return x


def legacy_non_finite(rng, n: int) -> np.ndarray:
    """Not required of a quantizer; x86-64 C is deterministic here and the port follows it literally,
    including the payload of a NaN that reaches nearest_int."""
    x = rng.standard_normal((8, n)).astype(F32)
    x[0, 5] = np.inf
    x[1, n - 3] = -np.inf
    x[2, 7] = np.nan
    x[3, 0] = np.nan                            # a NaN first element sticks as make_qkx3's min and max
    x[4] = np.nan
    x[5, :32] = np.inf
    x[6, 3] = bits(0x7FC00003)[0]               # quiet NaN with payload 3
    x[6, 40 % n] = bits(0xFF800005)[0]          # negative signalling NaN
    x[7, 1::4] = np.nan
    x[7, 2::4] = 0.0
    return x


def legacy_nan(rng, n: int) -> np.ndarray:
    """NaNs without any inf in the same call (an inf anywhere sends the solvers down their literal path):
    the solvers' fast rounding meets the NaN and the port must still store C's nearest_int(NaN) level."""
    x = rng.standard_normal((6, n)).astype(F32)
    x[0, 5] = np.nan
    x[1, 1::7] = np.nan
    x[2, 3] = bits(0x7FC00003)[0]               # payload 3: nearest_int gives 3
    x[2, n - 1] = bits(0xFF800005)[0]           # negative signalling NaN, quieted: 5
    x[3, :32] = 0.0
    x[3, 9] = np.nan                            # NaN in an otherwise zero block: make_qx_quants' early exit
    x[4, :32] = -2.0
    x[4, 9] = np.nan                            # ... and in a constant negative block: make_qkx3's early exit
    x[5, :32] = np.nan                          # a whole NaN block (x[0] NaN only here, in its own call below)
    return x


LEGACY_CASES = {"ties": legacy_ties, "zeros": legacy_zeros, "constant": legacy_constant,
                "extremes": legacy_extremes, "non_finite": legacy_non_finite, "nan": legacy_nan}


def imatrix_for(rng, n: int) -> np.ndarray:
    im = kq.default_imatrix(rng, n)
    im[:32] = im[:32] * (rng.random(32) < 0.5)
    return im


# ---------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("use_imatrix", [False, True], ids=["ref", "imatrix"])
@pytest.mark.parametrize("case", list(kq.CASES))
@pytest.mark.parametrize("qtype", TYPES, ids=tid)
def test_kquant_battery(qtype, case, use_imatrix):
    """The K-quant data set (random distributions, ties, zero/constant blocks, outliers, huge, tiny,
    subnormal, mixed scales, non-finite) on the legacy types."""
    rng = seed(case, qtype.name, "legacy")
    x = np.asarray(kq.CASES[case](rng), dtype=F32)
    kq.check(x, qtype, kq.default_imatrix(rng, x.shape[-1]) if use_imatrix else None, case)


@pytest.mark.parametrize("use_imatrix", [False, True], ids=["ref", "imatrix"])
@pytest.mark.parametrize("n", ROW_LENGTHS)
@pytest.mark.parametrize("case", list(LEGACY_CASES))
@pytest.mark.parametrize("qtype", TYPES, ids=tid)
def test_short_rows(qtype, case, n, use_imatrix):
    rng = seed(case, qtype.name, n)
    x = LEGACY_CASES[case](rng, n)
    im = imatrix_for(rng, n) if use_imatrix else None
    if case == "nan":
        kq.check(x[:5], qtype, im, f"{case} n={n}")
        x = x[5:]
    kq.check(x, qtype, im, f"{case} n={n}")


@pytest.mark.parametrize("im_case", ["with_zeros", "all_zero", "one_nonzero", "ones", "wide_range"])
@pytest.mark.parametrize("qtype", TYPES, ids=tid)
def test_imatrix_edge_cases(qtype, im_case):
    rng = np.random.default_rng(7)
    x = np.concatenate([rng.standard_normal((3, 512)), kq.zero_blocks(rng)[:, :512], kq.outlier(rng)]).astype(F32)
    check_im = kq.imatrix_cases(rng, 512)[im_case]
    kq.check(x, qtype, check_im, im_case)
    kq.check(x[:, :96], qtype, check_im[:96], im_case + " n=96")


@pytest.mark.parametrize("n", [96, 256])
@pytest.mark.parametrize("qtype", TYPES, ids=tid)
def test_expert_tensor_one_imatrix_slice_per_expert(qtype, n):
    rng = seed("experts", qtype.name, n)
    x = rng.standard_normal((4, 3, n)).astype(F32)
    x[2] *= 1e-3
    x[3, 1] = 0.0
    im = np.stack([imatrix_for(rng, n) for _ in range(4)])
    im[1] = 0.0                                         # an expert the calibration never routed to
    im[3] = 1.0
    ours = kquants.quantize(x, qtype, im)
    ref = oracle.quantize(x, qtype, im)                 # ggml_quantize_chunk per expert, imatrix + e*n_per_row
    assert ours.shape == (4, 3, ref.shape[-1])
    kq.assert_same_bytes(ours, ref, qtype, "experts", x)
    assert not np.array_equal(ours, kquants.quantize(x, qtype, im[0]))
    assert not np.array_equal(ours, kquants.quantize(x, qtype))


@pytest.mark.parametrize("shape", [(1, 32), (2, 64), (7, 96), (33, 128), (5, 160), (3, 256), (64, 288),
                                   (2, 4096)], ids=str)
@pytest.mark.parametrize("qtype", TYPES, ids=tid)
def test_row_shapes(qtype, shape):
    rng = seed("shape", qtype.name, *shape)
    x = (rng.standard_normal(shape) * rng.uniform(0.1, 10)).astype(F32)
    kq.check(x, qtype, None, f"{shape} ref")
    kq.check(x, qtype, kq.default_imatrix(rng, shape[1]), f"{shape} imatrix")


@pytest.mark.parametrize("use_imatrix", [False, True], ids=["ref", "imatrix"])
@pytest.mark.parametrize("qtype", TYPES, ids=tid)
def test_large_matrix(qtype, use_imatrix):
    """A weight-sized matrix with an odd row length (the fallback case) through the default threaded path."""
    rng = np.random.default_rng(2025)
    x = (rng.standard_t(4, (1024, 1440)) * np.exp(rng.standard_normal((1024, 1)))).astype(F32)
    im = kq.default_imatrix(rng, 1440) if use_imatrix else None
    kq.assert_same_bytes(kquants.quantize(x, qtype, im), oracle.quantize(x, qtype, im, threads=2), qtype, "large", x)


@pytest.mark.parametrize("qtype", TYPES, ids=tid)
def test_dequantize_matches_ggml(qtype):
    rng = np.random.default_rng(3)
    x = rng.standard_t(3, (5, 96)).astype(F32)
    x[4] *= 1e6                                         # fp16 d overflows: inf*0 gives NaN in both
    for im in (None, kq.default_imatrix(rng, 96)):
        raw = kquants.quantize(x, qtype, im)
        with np.errstate(invalid="ignore"):
            ours = kquants.dequantize(raw, qtype)
        ref = oracle.dequantize(raw, qtype, 96)
        assert ours.dtype == F32 and ours.shape == x.shape
        assert np.array_equal(ours.view(np.uint32), ref.view(np.uint32))
        via_ggml = oracle.dequantize(oracle.quantize(x, qtype, im), qtype, 96)
        assert np.array_equal(ref.view(np.uint32), via_ggml.view(np.uint32))
        assert np.abs(ours[:4] - x[:4]).max() < np.abs(x[:4]).max() / 4


@pytest.mark.parametrize("qtype", TYPES, ids=tid)
def test_thread_count_and_chunking_do_not_change_output(qtype, monkeypatch):
    """sigma2 is taken over a whole row, so chunks must hold whole rows."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((24, 160)).astype(F32)
    x[5] = 0.0
    x[9] *= 1e4
    im = kq.default_imatrix(rng, 160)
    expected = {id_: oracle.quantize(x, qtype, imx) for id_, imx in (("ref", None), ("im", im))}
    for chunk in (api.CHUNK_ELEMS, 160, 480, 1000):
        monkeypatch.setattr(api, "CHUNK_ELEMS", chunk)
        for threads in (1, 2, 3, None):
            for id_, imx in (("ref", None), ("im", im)):
                got = kquants.quantize(x, qtype, imx, threads=threads)
                kq.assert_same_bytes(got, expected[id_], qtype, f"{id_} threads={threads} chunk={chunk}")


@pytest.mark.parametrize("qtype", TYPES, ids=tid)
def test_bad_row_length_raises(qtype):
    for n in (48, 16, 0):
        with pytest.raises(ValueError, match="row length"):
            kquants.quantize(np.zeros((2, n), dtype=F32), qtype)


@pytest.mark.parametrize("qtype", TYPES, ids=tid)
def test_output_layout(qtype):
    x = np.random.default_rng(2).standard_normal((2, 3, 96)).astype(F32)
    blk, ts = gguf.GGML_QUANT_SIZES[qtype]
    for im in (None, np.ones(96, F32), np.ones((2, 96), F32)):
        out = kquants.quantize(x, qtype, im)
        assert out.dtype == np.uint8 and out.shape == (2, 3, 96 // blk * ts)
        assert out.shape[-1] == oracle.row_size(qtype, 96)
    assert qtype in kquants.SUPPORTED
