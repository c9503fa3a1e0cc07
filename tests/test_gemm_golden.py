"""The GEMM spec (golden_model.intops.gemm) and the overlay configuration."""
import numpy as np
import pytest

from golden_model.intops import MAX_K, gemm, requantize
from hw.config import PRESETS, preset


def _reference(a, b, bias, mult, shift, relu, out_int32):
    """Independent reading of the spec with Python ints."""
    m, k = a.shape
    n = b.shape[1]
    out = np.zeros((m, n), dtype=np.int64)
    for i in range(m):
        for j in range(n):
            t = sum(int(a[i, x]) * int(b[x, j]) for x in range(k)) + int(bias[j])
            t = max(-2**31, min(2**31 - 1, t))
            if out_int32:
                out[i, j] = max(t, 0) if relu else t
            else:
                s = int(shift[j])
                y = (t * int(mult[j]) + ((1 << (s - 1)) if s else 0)) >> s
                y = max(y, 0) if relu else y
                out[i, j] = max(-128, min(127, y))
    return out


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("out_int32", [False, True])
def test_gemm_matches_bigint_reading(relu, out_int32):
    rng = np.random.default_rng(1 + relu + 2 * out_int32)
    for m, k, n in [(1, 1, 1), (3, 17, 5), (9, 40, 6)]:
        a = rng.integers(-128, 128, (m, k)).astype(np.int8)
        b = rng.integers(-128, 128, (k, n)).astype(np.int8)
        a[0, :] = -128                      # extremes: the largest products
        b[:, 0] = -128
        bias = rng.integers(-2**31, 2**31, n).astype(np.int64)
        bias[0] = 2**31 - 1                 # forces the saturating add
        mult = rng.integers(0, 2**31, n)
        shift = rng.integers(20, 45, n)
        got = gemm(a, b, bias, mult, shift, relu=relu, out_int32=out_int32)
        assert got.dtype == (np.int32 if out_int32 else np.int8)
        assert np.array_equal(got, _reference(a, b, bias, mult, shift, relu, out_int32))


def test_gemm_big_k_is_exact_and_int32():
    a = np.full((2, MAX_K), -128, np.int8)
    b = np.full((MAX_K, 2), -128, np.int8)
    got = gemm(a, b, out_int32=True)
    assert got[0, 0] == MAX_K * 16384 < 2**31
    with pytest.raises(ValueError, match="exceeds"):
        gemm(np.zeros((1, MAX_K + 1), np.int8), np.zeros((MAX_K + 1, 1), np.int8), out_int32=True)


def test_gemm_bad_input():
    a = np.zeros((2, 3), np.int8)
    with pytest.raises(ValueError, match="do not chain"):
        gemm(a, np.zeros((4, 2), np.int8), out_int32=True)
    with pytest.raises(ValueError, match="int8"):
        gemm(a.astype(np.int16), np.zeros((3, 2), np.int8), out_int32=True)
    with pytest.raises(ValueError, match="multiplier"):
        gemm(a, np.zeros((3, 2), np.int8))


def test_gemm_int8_is_requantize_of_int32():
    rng = np.random.default_rng(7)
    a = rng.integers(-128, 128, (6, 33)).astype(np.int8)
    b = rng.integers(-128, 128, (33, 4)).astype(np.int8)
    bias = rng.integers(-5000, 5000, 4)
    t = gemm(a, b, bias, out_int32=True)
    assert np.array_equal(gemm(a, b, bias, [1 << 20] * 4, [30] * 4), requantize(t, 1 << 20, 30))


def test_presets_are_valid_and_named():
    assert {"kv260", "zcu104", "pynq-z2", "sim"} <= set(PRESETS)
    assert preset("pynq-z2").axi_data_bits == 64       # Zynq-7000 HP ports
    assert preset("kv260").axi_data_bits == 128        # UltraScale+ HP ports
    with pytest.raises(ValueError, match="unknown preset"):
        preset("nope")


@pytest.mark.parametrize("bad", [dict(rows=1), dict(cols=33), dict(a_depth=1000), dict(axi_data_bits=32),
                                 dict(engines=("gemm", "fft")), dict(engines=("conv",)), dict(cols=4),
                                 dict(axi_addr_bits=64), dict(attn_max_dim=512), dict(attn_pv_lut_rows=-1),
                                 dict(attn_pv_lut_rows=5)])
def test_bad_config_is_a_clear_error(bad):
    with pytest.raises(ValueError, match="overlay config"):
        PRESETS["sim"].replace(**bad)
    assert PRESETS["sim"].replace(attn_pv_lut_rows=4).attn_pv_lut_rows == 4      # all 4 rows: allowed


def test_int8_matmul_exact_across_float32_chunks():
    """K over several F32_EXACT_K chunks, all -128 (the largest partial sums) and random: == exact int64."""
    from golden_model.intops import F32_EXACT_K, int8_matmul
    k = 3 * F32_EXACT_K + 5
    a = np.full((3, k), -128, np.int8)
    b = np.full((k, 2), -128, np.int8)
    assert (int8_matmul(a, b) == k * 128 * 128).all()
    rng = np.random.default_rng(3)
    a = rng.integers(-128, 128, (7, k), dtype=np.int8)
    b = rng.integers(-128, 128, (k, 5), dtype=np.int8)
    np.testing.assert_array_equal(int8_matmul(a, b), a.astype(np.int64) @ b.astype(np.int64))
