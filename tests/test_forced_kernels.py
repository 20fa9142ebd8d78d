"""The op under every CPU integer GEMM admitted on this machine, forced as a user forces it
(``LLM_INT8_CPU_BACKEND``): exact integers against the reference for M from 1 to 600, both
activation modes, and ``K`` past int32's reach. A kernel that is not admitted here is a skip that
names it and says why.

A kernel that wraps in int32 is staged on any CPU by a stand-in for ``torch._int_mm``: the
``K_CHUNK`` blocks make it exact, and without them the exactness check of this file fails.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from llm_int8 import Int8Linear
from llm_int8.ops import int8_linear, int8_mm
from llm_int8.ops.choice import admission
from llm_int8.ops.choice import cpu as cpu_choice
from llm_int8.ops.kernels import accumulate, cpu_gemm, probes
from llm_int8.primitives import int8_matmul_reference

LONG_K = 140_000  # 127 * 127 * LONG_K > 2**31: a single int32 accumulator over K would wrap


def _codes(*shape, low=-128):
    return torch.randint(low, 128, shape, dtype=torch.int8)


def _extreme(M: int, N: int, K: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of +-127 against rows of +-127: every product is +-127**2, every sum as large as it gets."""
    A = torch.full((M, K), 127, dtype=torch.int8)
    A[1::2] = -127
    W = torch.full((N, K), 127, dtype=torch.int8)
    W[1::3] = -127
    return A, W


def assert_exact(A: torch.Tensor, W: torch.Tensor) -> None:
    """``int8_mm`` on the forced kernel equals the float64-exact reference: values and dtype."""
    got, want = int8_mm(A, W), int8_matmul_reference(A, W)
    assert got.dtype == want.dtype, (got.dtype, want.dtype)
    assert torch.equal(got, want)


@pytest.mark.parametrize("M", [1, 2, 17, 128, 600])
@pytest.mark.parametrize("K", [1, 2, 3, 5, 17, 77, 4099])
def test_int8_mm_is_exact(kernel, M, K):
    assert_exact(_codes(M, K), _codes(45, K))
    assert_exact(*_extreme(M, 45, K))


@pytest.mark.parametrize("M", [1, 5, 130])
def test_int8_mm_is_exact_past_int32(kernel, M):
    A, W = _extreme(M, 4, LONG_K)
    assert int8_matmul_reference(A, W).dtype == torch.int64  # the sums do leave int32
    assert_exact(A, W)


def _layer_agrees_with_the_reference_kernel(monkeypatch, kernel, X, W_i8, activation):
    # every kernel returns the exact integers, so the whole layer agrees bit for bit; the weight-only
    # path is off so that every M takes the integer GEMM
    s_w = torch.rand(W_i8.shape[0]) / 100
    got = int8_linear(X, W_i8, s_w, None, 6.0, activation=activation, weight_only_max_tokens=0)
    monkeypatch.setenv(cpu_choice.BACKEND_ENV, probes.REFERENCE)
    want = int8_linear(X, W_i8, s_w, None, 6.0, activation=activation, weight_only_max_tokens=0)
    monkeypatch.setenv(cpu_choice.BACKEND_ENV, kernel)
    assert torch.equal(got, want)


@pytest.mark.parametrize("activation", ["absmax", "zeropoint"])
@pytest.mark.parametrize("M", [1, 17, 600])
@pytest.mark.parametrize("K", [1, 2, 3, 5, 17, 300, 4099])
def test_op_is_bit_identical_to_the_reference_kernel(kernel, monkeypatch, activation, M, K):
    X = torch.randn(M, K)
    X[:, K // 2] *= 20  # an outlier dim (at K = 1 the only one: the int8 part is then all zero codes)
    _layer_agrees_with_the_reference_kernel(monkeypatch, kernel, X, _codes(96, K, low=-127), activation)
    if K > 1:  # no outlier
        _layer_agrees_with_the_reference_kernel(monkeypatch, kernel, torch.randn(M, K), _codes(45, K, low=-127),
                                                activation)  # fmt: skip


@pytest.mark.parametrize("activation", ["absmax", "zeropoint"])
def test_op_is_bit_identical_to_the_reference_kernel_past_int32(kernel, monkeypatch, activation):
    X = torch.rand(3, LONG_K) + 1.0  # same-signed inputs: the integer sums are as large as they get
    _layer_agrees_with_the_reference_kernel(monkeypatch, kernel, X, torch.full((4, LONG_K), 127, dtype=torch.int8),
                                            activation)  # fmt: skip


def test_a_size_one_dimension_of_stride_zero_is_read_right(kernel):
    """pytorch/pytorch#195066: ``torch._int_mm`` on CPU is wrong when a size-1 dimension has stride 0
    (Inductor gives single-token activations that stride), and ``.contiguous()`` keeps such a stride."""
    K = 64
    A = _codes(K, low=-127).as_strided((1, K), (0, 1))  # (1, K), stride 0 on the token dimension
    W1 = _codes(K, low=-127).as_strided((1, K), (0, 1))  # (1, K): a single output row, stride 0
    assert_exact(A, _codes(48, K))
    assert_exact(A.clone(), W1)
    X = torch.randn(K).as_strided((1, K), (0, 1))
    W_i8, s_w = _codes(48, K, low=-127), torch.rand(48) / 100
    for activation in ("absmax", "zeropoint"):
        got = int8_linear(X, W_i8, s_w, None, 6.0, activation=activation, weight_only_max_tokens=0)
        assert torch.equal(got, int8_linear(X.clone(), W_i8, s_w, None, 6.0, activation=activation,
                                            weight_only_max_tokens=0))  # fmt: skip


@pytest.mark.parametrize("activation", ["absmax", "zeropoint"])
def test_layer_past_int32_is_right(kernel, activation):
    # the report of issue 18: equal weights, inputs of ones, 140,000 input features
    linear = nn.Linear(LONG_K, 2)
    with torch.no_grad():
        linear.weight.fill_(0.01)
        linear.bias.zero_()
    x = torch.ones(3, LONG_K)
    layer = Int8Linear.from_linear(linear, activation=activation, weight_only_max_tokens=0)
    with torch.no_grad():
        want, got = linear(x).double(), layer(x).double()
    assert ((got - want).norm() / want.norm()).item() < 0.01


# --- a kernel that wraps: made exact by the blocks of K_CHUNK, caught without them --------------------


def _wrapping_int_mm(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """What an int32 accumulator over the whole of K returns: the exact sum modulo 2**32."""
    exact = A.to(torch.int64) @ B.to(torch.int64)
    return ((exact + 2**31) % 2**32 - 2**31).to(torch.int32)


def test_a_wrapping_kernel_is_exact_in_blocks_and_caught_without(monkeypatch):
    monkeypatch.setattr(torch, "_int_mm", _wrapping_int_mm)
    monkeypatch.setenv(cpu_choice.BACKEND_ENV, probes.INT_MM)
    monkeypatch.setattr(probes, "exact_cpu_kernels", lambda: [probes.INT_MM])
    A, W = _extreme(3, 4, LONG_K)
    assert_exact(A, W)  # each block of K_CHUNK fits int32: the stand-in never wraps
    monkeypatch.setattr(accumulate, "K_CHUNK", 2**40)  # one block over the whole of K
    with pytest.raises(AssertionError):
        assert_exact(A, W)


def test_a_packed_kernel_is_cut_into_blocks(monkeypatch):
    kernels = [k for k in admission.admitted_kernels() if k in cpu_gemm.KERNELS]
    if not kernels:
        pytest.skip("no packed CPU kernel admitted here")
    monkeypatch.setattr(accumulate, "K_CHUNK", 64)
    monkeypatch.setattr(cpu_gemm, "K_CHUNK", 64)
    W = _codes(5, 150, low=-127)
    packed = cpu_gemm.prepack(W, kernels[0])
    assert [c.in_features for c in packed.chunks] == [64, 64, 22]
    A = _codes(7, 150, low=-127)
    assert torch.equal(cpu_gemm.int8_mm_integer(A, W, packed), int8_matmul_reference(A, W))
    assert torch.equal(cpu_gemm.int8_mm_float(A.float(), W, packed), int8_matmul_reference(A, W).float())
