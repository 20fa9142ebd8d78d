"""Primitives: quantizers, outlier detection and the exact integer reference."""

from __future__ import annotations

import pytest
import torch

from llm_int8.primitives import (
    INT8_MAX,
    absmax_quantize,
    dequantize,
    int8_matmul_reference,
    outlier_columns,
    rowwise_quantize,
    zeropoint_quantize,
)


def test_absmax_maps_absmax_to_127_and_rounds_within_half_a_step():
    A = torch.randn(33, 17) * 3
    A_i8, scale = absmax_quantize(A)
    assert A_i8.dtype == torch.int8 and scale.dim() == 0
    assert A_i8.abs().max().item() == INT8_MAX
    assert torch.equal(scale, A.abs().max() / INT8_MAX)
    err = (dequantize(A_i8, scale, dim=None) - A).abs().max()
    assert err <= scale / 2 * (1 + 1e-5)


def test_absmax_is_odd_and_never_emits_minus_128():
    A = torch.randn(64, 64)
    A_i8, _ = absmax_quantize(A)
    neg_i8, _ = absmax_quantize(-A)
    assert torch.equal(neg_i8, -A_i8)
    assert A_i8.min() >= -INT8_MAX


@pytest.mark.parametrize("dim", [0, 1, -1])
def test_rowwise_has_one_scale_per_slice(dim):
    A = torch.randn(7, 13) * torch.linspace(0.1, 10, 13)
    A_i8, scale = rowwise_quantize(A, dim=dim)
    assert scale.shape == A.abs().amax(dim=dim).shape
    assert torch.equal(scale, A.abs().amax(dim=dim) / INT8_MAX)
    assert torch.all(A_i8.abs().amax(dim=dim) == INT8_MAX)
    err = (dequantize(A_i8, scale, dim=dim) - A).abs()
    assert torch.all(err <= scale.unsqueeze(dim) / 2 * (1 + 1e-5))


def test_rowwise_zero_rows_give_zero_codes_and_zero_scale():
    A = torch.randn(4, 9)
    A[1] = 0
    A_i8, scale = rowwise_quantize(A)
    assert scale[1] == 0 and torch.all(A_i8[1] == 0)
    assert torch.isfinite(scale).all()


def test_rowwise_accepts_half_precision_inputs():
    A = torch.randn(5, 8)
    for dtype in (torch.float16, torch.bfloat16):
        A_i8, scale = rowwise_quantize(A.to(dtype))
        assert scale.dtype == torch.float32
        assert torch.equal(A_i8, rowwise_quantize(A.to(dtype).float())[0])


def test_zeropoint_follows_the_papers_formula():
    A = torch.tensor([-1.0, 0.0, 3.0, 0.5])
    A_q, scale, zp = zeropoint_quantize(A)
    nd = 2 * 127 / (3.0 - -1.0)  # 63.5
    assert scale.item() == pytest.approx(1 / nd)
    assert zp.item() == -round(nd * -1.0) - 127  # Python round is half-to-even, as torch.round
    expected = torch.clamp(torch.round(torch.tensor([-1.0, 0.0, 3.0, 0.5]) * nd + zp.item()), -127, 127)
    assert torch.equal(A_q.float(), expected)


def test_zeropoint_uses_the_full_range_on_one_sided_data():
    A = torch.rand(1000) * 5  # post-ReLU-like: all >= 0
    A_q, scale, zp = zeropoint_quantize(A)
    assert A_q.min() <= -126 and A_q.max() >= 126
    err = (dequantize(A_q, scale, zp, dim=None) - A).abs().max()
    assert err <= scale * (1 + 1e-5)  # at most one step: round(nd*min) may shift the grid by half a step
    A_abs, s_abs = absmax_quantize(A)
    assert scale < s_abs  # twice the resolution of absmax on one-sided data


def test_zeropoint_per_row():
    A = torch.randn(6, 40) + torch.arange(6)[:, None]
    A_q, scale, zp = zeropoint_quantize(A, dim=1)
    assert scale.shape == (6,) and zp.shape == (6,) and zp.dtype == torch.int32
    err = (dequantize(A_q, scale, zp, dim=1) - A).abs()
    assert torch.all(err <= scale[:, None] * (1 + 1e-5))


def test_outlier_columns_finds_planted_dims_at_and_above_threshold():
    X = torch.randn(20, 32).clamp(-3, 3)
    X[5, 3] = 6.0  # exactly at the threshold counts (|x| >= α)
    X[0, 17] = -9.0
    X[2, 30] = 5.999
    O = outlier_columns(X, 6.0)
    assert O.nonzero().flatten().tolist() == [3, 17]


def test_outlier_columns_nonfinite_always_and_threshold_zero_disables():
    X = torch.randn(4, 8).clamp(-3, 3)
    X[1, 2] = float("nan")
    X[3, 5] = float("-inf")
    X[0, 6] = 50.0
    assert outlier_columns(X, 6.0).nonzero().flatten().tolist() == [2, 5, 6]
    assert outlier_columns(X, 0.0).nonzero().flatten().tolist() == [2, 5]


@pytest.mark.parametrize("M,K,N", [(1, 1, 1), (5, 37, 23), (64, 4096, 8), (0, 16, 4)])
def test_int8_matmul_reference_is_exact_integer_arithmetic(M, K, N):
    A = torch.randint(-127, 128, (M, K), dtype=torch.int8)
    B = torch.randint(-127, 128, (N, K), dtype=torch.int8)
    C = int8_matmul_reference(A, B)
    assert C.dtype == torch.int32
    exact = (A.long()[:, None, :] * B.long()[None, :, :]).sum(-1)  # (M, N) int64, no float involved
    assert torch.equal(C.long(), exact)


def test_int8_matmul_reference_extreme_values_do_not_lose_bits():
    K = 8192  # 8192 * 127**2 = 132 million: beyond float32's 2**24, exact in float64
    A = torch.full((2, K), 127, dtype=torch.int8)
    B = torch.full((3, K), -127, dtype=torch.int8)
    B[0, 0] = 126
    C = int8_matmul_reference(A, B)
    assert C[0, 1].item() == -(127**2) * K
    assert C[0, 0].item() == -(127**2) * (K - 1) + 127 * 126


def test_int8_matmul_reference_rejects_bad_operands():
    with pytest.raises(TypeError, match="int8"):
        int8_matmul_reference(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.int8))
    with pytest.raises(ValueError, match="inner dimensions"):
        int8_matmul_reference(torch.zeros(2, 3, dtype=torch.int8), torch.zeros(2, 4, dtype=torch.int8))


def test_rowwise_scaling_of_zero_and_denormal_rows_stays_finite(monkeypatch):
    import llm_int8.primitives.quantize as q

    seen = []
    original = q._round_to_int8
    monkeypatch.setattr(q, "_round_to_int8", lambda scaled: seen.append(scaled.clone()) or original(scaled))
    A = torch.zeros(3, 5)
    A[1, 2] = 1e-40  # denormal absmax
    A_i8, scale = q.rowwise_quantize(A)
    assert not torch.isnan(seen[0]).any()  # no 0 * inf before the cast hides it
    assert A_i8[1, 2] == INT8_MAX and torch.all(A_i8[0] == 0) and torch.all(A_i8[2] == 0)


def test_zeropoint_degenerate_rows_are_well_defined():
    """Constant, all-zero, near-constant and huge-range rows: finite step, |zp| <= 127, exact-ish values."""
    rows = torch.tensor(
        [
            [0.0, 0.0, 0.0, 0.0],  # all zero
            [2.5, 2.5, 2.5, 2.5],  # constant, positive
            [-7.0, -7.0, -7.0, -7.0],  # constant, negative
            [1000.0, 1000.0001, 1000.0, 1000.0001],  # nearly constant far from 0
            [-3e38, 3e38, 0.0, 1.0],  # max - min overflows float32
        ]
    )
    A_q, scale, zp = zeropoint_quantize(rows, dim=1)
    assert torch.isfinite(scale).all() and (scale > 0).all()
    assert (zp.abs() <= 127).all() and A_q.min() >= -127
    back = dequantize(A_q, scale, zp, dim=1)
    assert torch.equal(back[0], rows[0])
    torch.testing.assert_close(back[1:3], rows[1:3])  # a constant row is its range's end: exact
    # the range always holds 0, so the error is at most one step of max(|A|) / 127
    err = (back - rows).abs()
    assert torch.all(err <= rows.abs().amax(dim=1, keepdim=True) / 127 * (1 + 1e-5))


def test_zeropoint_params_is_the_shared_definition():
    from llm_int8.primitives import zeropoint_params

    nd, zp = zeropoint_params(torch.tensor([3.0, 5.0, 0.0]), torch.tensor([-1.0, 1.0, 0.0]))
    assert nd.dtype == torch.float32 and zp.dtype == torch.float32
    assert nd[0].item() == pytest.approx(254 / 4) and zp[0].item() == -round(254 / 4 * -1.0) - 127
    assert nd[1].item() == pytest.approx(254 / 5) and zp[1].item() == -127  # [1, 5] widened to [0, 5]
    assert nd[2].item() == 1.0 and zp[2].item() == -127  # all-zero range
