"""The public ops against their references: int8_mm exact, int8_linear vs float64."""

from __future__ import annotations

import pytest
import torch

from llm_int8.ops import int8_linear, int8_mm
from llm_int8.primitives import int8_linear_reference, int8_matmul_reference, rowwise_quantize

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
ACTIVATIONS = ["absmax", "zeropoint"]
# int8_linear vs int8_linear_reference: the same quantization, float32 vs float64 denormalization,
# then rounding to the output dtype; so the tolerance is the output dtype's resolution.
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 1.6e-2, torch.float16: 2e-3}


def _ids(value):
    if isinstance(value, torch.dtype):
        return str(value).removeprefix("torch.")
    return None


def _layer(K, N, bias=True):
    W = torch.randn(N, K) / K**0.5
    W_i8, s_w = rowwise_quantize(W)
    b = torch.randn(N) if bias else None
    return W, W_i8, s_w, b


def _planted(M, K, dims=(3, 11), magnitude=15.0):
    """Activations ~N(0,1) with a few emergent-outlier feature dims, as in the paper."""
    X = torch.randn(M, K)
    for d in dims:
        if d < K:
            X[:, d] = magnitude * torch.sign(torch.randn(M)) * (1 + torch.rand(M))
    return X


def _dequantized_linear(W_i8, s_w, b) -> torch.nn.Linear:
    """``nn.Linear`` holding the weight the int8 codes stand for: what non-finite inputs should do."""
    linear = torch.nn.Linear(W_i8.shape[1], W_i8.shape[0])
    with torch.no_grad():
        linear.weight.copy_(W_i8.float() * s_w[:, None])
        linear.bias.copy_(b)
    return linear


def _rel_err(Y, exact):
    return ((Y.double() - exact).norm() / exact.norm()).item()


@pytest.mark.parametrize("M,K,N", [(1, 64, 32), (17, 37, 23), (128, 576, 192), (0, 16, 8), (3, 1, 1)])
def test_int8_mm_equals_exact_integer_reference(M, K, N):
    A = torch.randint(-127, 128, (M, K), dtype=torch.int8)
    B = torch.randint(-127, 128, (N, K), dtype=torch.int8)
    C = int8_mm(A, B)
    assert C.dtype == torch.int32 and C.shape == (M, N)
    assert torch.equal(C, int8_matmul_reference(A, B))


def test_int8_mm_full_range_operands_do_not_saturate():
    # all-extreme codes: every pair product is +-127*127; any int16 intermediate would saturate
    A = torch.full((8, 1024), 127, dtype=torch.int8)
    A[1::2] = -127
    B = torch.full((16, 1024), 127, dtype=torch.int8)
    B[::3] = -127
    assert torch.equal(int8_mm(A, B), int8_matmul_reference(A, B))


def test_int8_mm_rejects_bad_operands():
    with pytest.raises(TypeError):
        int8_mm(torch.zeros(2, 4), torch.zeros(3, 4, dtype=torch.int8))
    with pytest.raises(ValueError, match=r"\(M, K\)"):
        int8_mm(torch.zeros(2, 4, dtype=torch.int8), torch.zeros(3, 5, dtype=torch.int8))


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
@pytest.mark.parametrize("threshold", [0.0, 6.0], ids=["vectorwise", "llm.int8"])
@pytest.mark.parametrize("M,K,N", [(1, 64, 48), (19, 77, 45), (256, 576, 1536)])
def test_int8_linear_matches_reference(dtype, threshold, M, K, N, activation):
    _, W_i8, s_w, b = _layer(K, N)
    X = _planted(M, K).to(dtype)
    if activation == "zeropoint":
        X = X + 0.5  # rows not centred on 0, so the zero points are not all 0
    Y = int8_linear(X, W_i8, s_w, b.to(dtype), threshold, activation=activation)
    ref = int8_linear_reference(X.double(), W_i8, s_w, b.to(dtype), threshold, activation=activation)
    assert Y.dtype == dtype and Y.shape == (M, N)
    scale = ref.abs().max().item()
    torch.testing.assert_close(Y.double(), ref, rtol=0, atol=TOLERANCE[dtype] * scale)


@pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
def test_decomposition_beats_vectorwise_on_planted_outliers(dtype):
    K, N, M = 512, 384, 64
    W, W_i8, s_w, b = _layer(K, N)
    X = _planted(M, K, dims=(3, 100, 257)).to(dtype)
    exact = X.double() @ W.double().T + b.double()
    err_llm = _rel_err(int8_linear(X, W_i8, s_w, b, 6.0), exact)
    err_vec = _rel_err(int8_linear(X, W_i8, s_w, b, 0.0), exact)
    assert err_llm < 0.02
    assert err_llm < err_vec / 3


def test_no_outliers_means_decomposition_changes_nothing():
    _, W_i8, s_w, b = _layer(64, 32)
    X = torch.randn(10, 64).clamp(-5, 5)
    assert torch.equal(int8_linear(X, W_i8, s_w, b, 6.0), int8_linear(X, W_i8, s_w, b, 0.0))


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_leading_dimensions_and_empty_batch(activation):
    _, W_i8, s_w, b = _layer(40, 24)
    X = _planted(2 * 3 * 5, 40)
    Y3 = int8_linear(X.view(2, 3, 5, 40), W_i8, s_w, b, activation=activation)
    assert Y3.shape == (2, 3, 5, 24)
    # per-token quantization: the result for a token doesn't depend on the batch layout
    Y2 = int8_linear(X, W_i8, s_w, b, activation=activation)
    torch.testing.assert_close(Y3.reshape(-1, 24), Y2, rtol=0, atol=0)
    empty = int8_linear(torch.randn(0, 7, 40), W_i8, s_w, b, activation=activation)
    assert empty.shape == (0, 7, 24)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_all_zero_rows_give_the_bias_and_no_nan(activation):
    _, W_i8, s_w, b = _layer(32, 16)
    X = torch.randn(4, 32)
    X[2] = 0
    Y = int8_linear(X, W_i8, s_w, b, activation=activation)
    assert torch.isfinite(Y).all()
    torch.testing.assert_close(Y[2], b)
    Y0 = int8_linear(torch.zeros(3, 32), W_i8, s_w, None, activation=activation)
    assert torch.equal(Y0, torch.zeros(3, 16))


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("threshold", [0.0, 6.0], ids=["vectorwise", "llm.int8"])
def test_nan_and_inf_propagate_like_nn_linear(threshold, activation):
    K, N = 32, 12
    W, W_i8, s_w, b = _layer(K, N)
    linear = _dequantized_linear(W_i8, s_w, b)
    X = torch.randn(6, K)
    X[1, 4] = float("nan")
    X[3, 9] = float("inf")
    X[4, 9] = -float("inf")
    Y = int8_linear(X, W_i8, s_w, b, threshold, activation=activation)
    expected = linear(X)
    assert torch.equal(torch.isnan(Y), torch.isnan(expected))
    assert torch.equal(torch.isinf(Y), torch.isinf(expected))
    # rows without non-finite inputs stay finite and accurate (their int8 scales are not poisoned)
    clean = [0, 2, 5]
    assert _rel_err(Y[clean], expected[clean].double()) < 0.02


def test_bad_inputs_name_what_was_wrong():
    _, W_i8, s_w, b = _layer(32, 16)
    with pytest.raises(ValueError, match="in_features=32"):
        int8_linear(torch.randn(4, 31), W_i8, s_w, b)
    with pytest.raises(ValueError, match="threshold"):
        int8_linear(torch.randn(4, 32), W_i8, s_w, b, threshold=-1.0)
    with pytest.raises(TypeError, match="float"):
        int8_linear(torch.ones(4, 32, dtype=torch.int64), W_i8, s_w, b)
    with pytest.raises(TypeError, match="int8"):
        int8_linear(torch.randn(4, 32), W_i8.float(), s_w, b)
    with pytest.raises(ValueError, match="weight_scale"):
        int8_linear(torch.randn(4, 32), W_i8, s_w[:-1], b)
    with pytest.raises(ValueError, match="bias"):
        int8_linear(torch.randn(4, 32), W_i8, s_w, b[:-1])
    with pytest.raises(ValueError, match="activation must be one of .*absmax.*zeropoint.*'minmax'"):
        int8_linear(torch.randn(4, 32), W_i8, s_w, b, activation="minmax")


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=_ids)
def test_gradient_flows_to_the_input(dtype, activation):
    K, N = 48, 20
    W, W_i8, s_w, b = _layer(K, N)
    X = _planted(9, K).to(dtype).requires_grad_()
    Y = int8_linear(X, W_i8, s_w, b.to(dtype), activation=activation)
    G = torch.randn_like(Y)
    (Y * G).sum().backward()
    assert X.grad.dtype == dtype
    # dX = dY · W with the dequantized weight ...
    W_deq = W_i8.double() * s_w.double()[:, None]
    exact = G.double() @ W_deq
    torch.testing.assert_close(X.grad.double(), exact, rtol=0, atol=TOLERANCE[dtype] * exact.abs().max().item() * 2)
    # ... which is within int8 rounding of the float layer's input gradient
    float_grad = G.double() @ W.double()
    assert _rel_err(X.grad, float_grad) < 0.02


def test_trainable_bias_receives_its_gradient():
    _, W_i8, s_w, b = _layer(16, 8)
    bias = b.clone().requires_grad_()
    X = torch.randn(5, 16)
    int8_linear(X, W_i8, s_w, bias).sum().backward()
    torch.testing.assert_close(bias.grad, torch.full((8,), 5.0))


def test_zeropoint_activations_are_the_same_codes_as_the_primitive():
    """The fused quantizer of int8_linear is zeropoint_quantize of X with the outlier columns zeroed."""
    from llm_int8.ops.kernels.quantize import quantize_activations_zeropoint as _quantize_activations_zeropoint
    from llm_int8.primitives import outlier_columns, zeropoint_quantize

    X = _planted(64, 96) + torch.rand(64, 1) * 3  # rows shifted by different amounts
    X[5] = 0  # an all-zero row
    X[7] = 2.5  # a constant row (after the outlier columns are removed it spans [0, 2.5])
    for threshold in (0.0, 6.0):
        codes, s_x, zp_x, outlier_idx = _quantize_activations_zeropoint(X, threshold)
        O = outlier_columns(X, threshold)
        q, scale, zp = zeropoint_quantize(X.masked_fill(O, 0), dim=-1)
        assert torch.equal(outlier_idx, O.nonzero().squeeze(1))
        assert torch.equal(codes, q.float())
        assert torch.equal(s_x, scale) and torch.equal(zp_x, zp.float())
        assert torch.equal(codes[:, O], zp_x[:, None].expand(-1, int(O.sum())))  # code of 0 in O


def test_zeropoint_activations_halve_the_error_on_skewed_rows():
    """On rows that are not centred on 0 (as after RMSNorm with a one-sided outlier dim, or after
    SiLU), asymmetric codes use the whole int8 range; absmax wastes the unused sign."""
    K, N, M = 512, 256, 64
    W, W_i8, s_w, _ = _layer(K, N)
    X = torch.randn(M, K).abs() * 0.5  # one-sided, as post-ReLU inputs are
    X[:, 7] = 3.0  # a one-sided feature dim below the threshold sets every row's range
    dequant = X.double() @ (W_i8.double() * s_w.double()[:, None]).T  # the weight error is common to both
    err_abs = _rel_err(int8_linear(X, W_i8, s_w, None, 6.0, activation="absmax"), dequant)
    err_zp = _rel_err(int8_linear(X, W_i8, s_w, None, 6.0, activation="zeropoint"), dequant)
    assert err_zp < 0.6 * err_abs  # half the step: about half the error


def test_zeropoint_uses_the_row_sums_it_is_given():
    from llm_int8.ops import compute_weight_row_sums

    _, W_i8, s_w, b = _layer(32, 16)
    X = torch.randn(5, 32) + 1
    r_w = compute_weight_row_sums(W_i8)
    assert r_w.dtype == torch.float32 and torch.equal(r_w, W_i8.sum(1).float())
    Y = int8_linear(X, W_i8, s_w, b, activation="zeropoint", weight_row_sums=r_w)
    assert torch.equal(Y, int8_linear(X, W_i8, s_w, b, activation="zeropoint"))
    Y_wrong = int8_linear(X, W_i8, s_w, b, activation="zeropoint", weight_row_sums=r_w + 1)
    assert not torch.allclose(Y, Y_wrong)


# --- the weight-only path (int8 weight, bf16 activations) for a few tokens -------------------------

needs_weight_only = pytest.mark.skipif(
    not __import__("llm_int8.ops.kernels.probes", fromlist=["x"]).has_weight_int8pack_mm(),
    reason="torch._weight_int8pack_mm does not run on this CPU build",
)


@needs_weight_only
@pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
@pytest.mark.parametrize("M,K,N", [(1, 64, 48), (8, 576, 1536), (3, 96, 40)])
def test_weight_only_path_matches_its_reference(dtype, M, K, N):
    from llm_int8.ops.kernels.weight_only import int8_weight_only_linear
    from llm_int8.primitives import int8_weight_only_reference

    W, W_i8, s_w, b = _layer(K, N)
    X = _planted(M, K).to(dtype)
    Y = int8_weight_only_linear(X, W_i8, s_w, b.to(dtype))
    ref = int8_weight_only_reference(X.double(), W_i8, s_w, b.to(dtype))
    assert Y.dtype == dtype and Y.shape == (M, N)
    # the kernel rounds each output to bf16 once (float32 accumulation inside)
    torch.testing.assert_close(Y.double(), ref, rtol=0, atol=2**-8 * ref.abs().max().item())
    # and it is closer to the float layer than LLM.int8() is (no activation quantization)
    exact = X.double() @ W.double().T + b.to(dtype).double()
    assert _rel_err(Y, exact) <= _rel_err(int8_linear(X, W_i8, s_w, b.to(dtype)), exact) + 2**-8


@needs_weight_only
def test_int8_linear_takes_the_weight_only_path_only_where_asked(monkeypatch):
    from llm_int8.ops.kernels import weight_only

    calls = []
    real = weight_only.int8_weight_only_linear
    monkeypatch.setattr(weight_only, "int8_weight_only_linear", lambda *a: calls.append(a[0].shape) or real(*a))
    _, W_i8, s_w, b = _layer(64, 32)
    int8_linear(torch.randn(2, 3, 64), W_i8, s_w, b, weight_only_max_tokens=8)  # 6 tokens
    assert calls == [(2, 3, 64)]
    int8_linear(torch.randn(9, 64), W_i8, s_w, b, weight_only_max_tokens=8)  # above the limit
    int8_linear(torch.randn(1, 64), W_i8, s_w, b)  # default 0: never
    int8_linear(torch.randn(1, 64, requires_grad=True), W_i8, s_w, b, weight_only_max_tokens=8)  # autograd
    int8_linear(torch.randn(1, 64), W_i8, s_w, b.clone().requires_grad_(), weight_only_max_tokens=8)
    assert len(calls) == 1
    monkeypatch.setattr(weight_only, "available", lambda device, in_features: False)  # e.g. a GPU tensor
    int8_linear(torch.randn(1, 64), W_i8, s_w, b, weight_only_max_tokens=8)
    assert len(calls) == 1


@needs_weight_only
def test_weight_only_path_propagates_nan_and_inf_like_nn_linear():
    from llm_int8.ops.kernels.weight_only import int8_weight_only_linear

    K, N = 32, 12
    _, W_i8, s_w, b = _layer(K, N)
    linear = _dequantized_linear(W_i8, s_w, b)
    X = torch.randn(3, K)
    X[0, 4] = float("nan")
    X[1, 9] = float("inf")
    Y = int8_weight_only_linear(X, W_i8, s_w, b)
    expected = linear(X)
    assert torch.equal(torch.isnan(Y), torch.isnan(expected)) and torch.equal(torch.isinf(Y), torch.isinf(expected))
