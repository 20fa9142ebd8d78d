"""Triton kernels of ``llm_int8.ops.kernels.triton``: natively on CUDA where there is a GPU, else under the interpreter.

Without a GPU the kernels run on CPU tensors with ``TRITON_INTERPRET=1``, which ``conftest.py`` sets
before anything imports triton (the interpreter is chosen at ``import triton``, and bitsandbytes
imports it). Every test runs in both modes; none is skipped under the interpreter.
"""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("triton")  # a dev dependency on Linux x86-64; the library itself does not need it

from llm_int8.ops import forward_cuda, int8_linear
from llm_int8.ops.choice import cuda as cuda_choice  # noqa: E402
from llm_int8.ops.kernels import triton as triton_kernels  # noqa: E402
from llm_int8.ops.kernels.triton.decode import MAX_TOKENS, decode_linear, decode_linear_reference  # noqa: E402
from llm_int8.ops.kernels.triton.gemm import int8_gemm, int8_gemm_reference  # noqa: E402
from llm_int8.ops.kernels.triton.linear import int8_linear_triton  # noqa: E402
from llm_int8.ops.kernels.triton.quantize import quantize_activations, quantize_activations_reference  # noqa: E402
from llm_int8.primitives import int8_linear_reference, rowwise_quantize  # noqa: E402

NATIVE = torch.cuda.is_available()
DEVICE = "cuda" if NATIVE else "cpu"
assert NATIVE or triton_kernels.interpreting(), "without a GPU, tests/conftest.py sets TRITON_INTERPRET=1"

pytestmark = [
    pytest.mark.triton,
    # numpy's notes on the inputs the tests mean (127 / a denormal, NaN through a matmul)
    pytest.mark.filterwarnings("ignore::RuntimeWarning:triton.runtime.interpreter"),
]

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# one rounding of the output dtype (bf16: the interpreter casts float32 -> bf16 toward zero, one ulp)
OUT_RTOL = {torch.float32: 1e-5, torch.float16: 2**-10, torch.bfloat16: 2**-7}


def _activations(M: int, K: int, case: str, dtype: torch.dtype, g: torch.Generator) -> torch.Tensor:
    """(M, K) activations ~N(0, 1) with two outlier columns and the edge case named by ``case``."""
    X = torch.randn(M, K, generator=g)
    X[:, 1] *= 9.0  # outlier column
    X[:, K - 2] += 7.5
    if case == "zero_rows" and M > 2:
        X[0] = 0.0
        X[M - 1] = 0.0
    elif case == "nonfinite":
        X[M // 2, 3] = float("nan")
        X[0, 5] = float("inf")
        X[M - 1, 6] = float("-inf")
    elif case == "tiny_row":
        X[M - 1] = 1e-42 * torch.sign(X[M - 1])  # a denormal absmax: 127 / absmax overflows to inf
    return X.to(dtype)


def _same(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.cpu().nan_to_num(7.0), b.nan_to_num(7.0))


@pytest.mark.parametrize("activation", ["absmax", "zeropoint"])
@pytest.mark.parametrize("threshold", [0.0, 6.0])
@pytest.mark.parametrize(
    "M,K,case,dtype",
    [
        (1, 37, "odd", "fp32"),
        (7, 45, "zero_rows", "fp16"),
        (13, 70, "nonfinite", "bf16"),
        (5, 33, "nonfinite", "fp32"),
        (9, 130, "tiny_row", "fp32"),
    ],
)
def test_quantize_bit_identical_to_library_quantizers(activation, threshold, M, K, case, dtype):
    g = torch.Generator().manual_seed(M * K)
    X = _activations(M, K, case, DTYPES[dtype], g)
    got = quantize_activations(X.to(DEVICE), threshold, activation)
    want = quantize_activations_reference(X, threshold, activation)
    for name, a, b in zip(("X_i8", "s_x", "zp_x", "outlier_idx", "X_O"), got, want, strict=True):
        assert _same(a, b), f"{name} differs: {a} vs {b}"
    if case == "nonfinite":  # every non-finite column is in O, whatever the threshold
        assert {3, 5, 6} <= set(got.outlier_idx.tolist())
    if case == "zero_rows" and threshold > 0:
        assert (got.s_x[0] == 0) == (activation == "absmax") and got.X_i8[0].eq(got.X_i8[0, 0]).all()


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_quantize_many_rows_bit_identical(dtype):
    # low-precision inputs make exact ties (x * 127 / absmax = n + 0.5) common: each must round as on CPU
    g = torch.Generator().manual_seed(17)
    X = (torch.randn(96, 24, generator=g) * 2).to(DTYPES[dtype])
    for activation in ("absmax", "zeropoint"):
        got = quantize_activations(X.to(DEVICE), 6.0, activation)
        want = quantize_activations_reference(X, 6.0, activation)
        for name, a, b in zip(("X_i8", "s_x", "zp_x", "outlier_idx", "X_O"), got, want, strict=True):
            assert _same(a, b), f"{activation} {name} differs"


def test_quantize_static_columns_match_reference():
    g = torch.Generator().manual_seed(3)
    X = _activations(6, 41, "nonfinite", torch.float16, g)
    S = torch.tensor([1, 3, 20])  # an outlier column, a NaN column and a plain one: none may land in O
    for activation in ("absmax", "zeropoint"):
        got = quantize_activations(X.to(DEVICE), 6.0, activation, S.to(DEVICE))
        want = quantize_activations_reference(X, 6.0, activation, S)
        assert all(_same(a, b) for a, b in zip(got, want, strict=True))
        assert not set(S.tolist()) & set(got.outlier_idx.tolist())


@pytest.mark.parametrize("M,K,N", [(1, 37, 19), (37, 50, 70), (17, 130, 33)])
def test_gemm_int32_accumulator_exact(M, K, N):
    g = torch.Generator().manual_seed(K)
    A = torch.randint(-127, 128, (M, K), generator=g, dtype=torch.int8)
    B = torch.randint(-127, 128, (N, K), generator=g, dtype=torch.int8)
    A[0, :] = 127  # the largest sums: 127 * 127 * K
    B[0, :] = 127
    B[N - 1, :] = -127
    C = int8_gemm(A.to(DEVICE), B.to(DEVICE))
    assert C.dtype == torch.int32 and torch.equal(C.cpu(), int8_gemm_reference(A, B))


@pytest.mark.parametrize("dtype", list(DTYPES), ids=list(DTYPES))
@pytest.mark.parametrize("zeropoint", [False, True], ids=["absmax", "zeropoint"])
def test_gemm_epilogue_matches_float64(dtype, zeropoint):
    dtype = DTYPES[dtype]
    g = torch.Generator().manual_seed(11)
    M, K, N = 19, 45, 27
    A = torch.randint(-127, 128, (M, K), generator=g, dtype=torch.int8)
    W = torch.randint(-127, 128, (N, K), generator=g, dtype=torch.int8)
    s_x, s_w = torch.rand(M, generator=g) / 100, torch.rand(N, generator=g) / 100
    kwargs = {
        "bias": torch.randn(N, generator=g).to(dtype),
        "X_O": (torch.randn(M, 3, generator=g) * 10).to(dtype),
        "outlier_idx": torch.tensor([0, 17, 44]),
        "addend": torch.randn(M, N, generator=g),
        "out_dtype": dtype,
    }
    if zeropoint:
        kwargs["zp_x"] = torch.randint(-127, 128, (M,), generator=g).float()
        kwargs["row_sums"] = W.sum(1, dtype=torch.float32)
    got = int8_gemm(A.to(DEVICE), W.to(DEVICE), s_x.to(DEVICE), s_w.to(DEVICE), **_to(kwargs, DEVICE)).cpu()
    want = int8_gemm_reference(A, W, s_x, s_w, **kwargs)
    exact = int8_gemm_reference(A, W, s_x, s_w, **{**kwargs, "out_dtype": torch.float64})
    assert got.dtype == dtype
    torch.testing.assert_close(got.double(), exact, rtol=OUT_RTOL[dtype], atol=1e-6)
    assert (got.double() - want.double()).abs().max() <= OUT_RTOL[dtype] * want.double().abs().max()


def _to(kwargs: dict, device: str) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}


def _layer(N: int, K: int, g: torch.Generator):
    W = torch.randn(N, K, generator=g) / K**0.5
    W_i8, s_w = rowwise_quantize(W)
    return W_i8, s_w, torch.randn(N, generator=g) / 10


@pytest.mark.parametrize("activation", ["absmax", "zeropoint"])
@pytest.mark.parametrize(
    "M,K,N,case,dtype",
    [(1, 37, 19, "odd", "fp16"), (23, 50, 41, "zero_rows", "bf16"), (9, 45, 30, "nonfinite", "fp32")],
)
def test_linear_matches_reference_and_cpu_path(activation, M, K, N, case, dtype):
    dtype = DTYPES[dtype]
    g = torch.Generator().manual_seed(M + K + N)
    X = _activations(M, K, case, dtype, g)
    W_i8, s_w, b = _layer(N, K, g)
    b = b.to(dtype)
    got = int8_linear_triton(X.to(DEVICE), W_i8.to(DEVICE), s_w.to(DEVICE), b.to(DEVICE), 6.0, activation).cpu()
    want = int8_linear_reference(X.double(), W_i8, s_w, b, 6.0, activation)  # float64 throughout
    cpu_path = int8_linear(X, W_i8, s_w, b, 6.0, activation=activation)
    assert got.dtype == dtype and got.shape == (M, N)
    # NaN / Inf reach exactly the outputs nn.Linear would spoil: the rows that hold them
    assert torch.equal(got.isnan(), want.isnan()) and torch.equal(got.isnan(), cpu_path.isnan())
    finite = want.isfinite().all(dim=1)
    rtol = OUT_RTOL[dtype] * 2
    torch.testing.assert_close(got[finite].double(), want[finite], rtol=rtol, atol=rtol * want[finite].abs().max())
    torch.testing.assert_close(got[finite], cpu_path[finite], rtol=rtol, atol=rtol * float(want[finite].abs().max()))


def test_linear_float_columns_match_reference():
    g = torch.Generator().manual_seed(5)
    M, K, N = 11, 40, 24
    X = _activations(M, K, "odd", torch.float16, g)
    W_i8, s_w, b = _layer(N, K, g)
    S = torch.tensor([1, 7])
    W_S = torch.randn(N, 2, generator=g).half()
    W_i8[:, S] = 0  # the stored codes of S are 0 (Int8Linear's layout)
    for activation in ("absmax", "zeropoint"):
        got = int8_linear_triton(
            X.to(DEVICE), W_i8.to(DEVICE), s_w.to(DEVICE), None, 6.0, activation, None, (S.to(DEVICE), W_S.to(DEVICE))
        ).cpu()
        want = int8_linear_reference(X.double(), W_i8, s_w, None, 6.0, activation, (S, W_S))
        torch.testing.assert_close(got.double(), want, rtol=2e-3, atol=2e-3 * want.abs().max())


@pytest.mark.parametrize("M", [1, 5, MAX_TOKENS])
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_decode_matches_float64(M, dtype):
    dtype = DTYPES[dtype]
    g = torch.Generator().manual_seed(M)
    K, N = 70, 45
    X = torch.randn(M, K, generator=g).to(dtype)
    W_i8, s_w, b = _layer(N, K, g)
    got = decode_linear(X.to(DEVICE), W_i8.to(DEVICE), s_w.to(DEVICE), b.to(dtype).to(DEVICE)).cpu()
    exact = (X.double() @ W_i8.double().T) * s_w.double() + b.to(dtype).double()
    assert got.dtype == dtype
    torch.testing.assert_close(got.double(), exact, rtol=OUT_RTOL[dtype], atol=OUT_RTOL[dtype])
    torch.testing.assert_close(got, decode_linear_reference(X, W_i8, s_w, b.to(dtype)), rtol=OUT_RTOL[dtype], atol=0)


def test_bad_inputs_name_the_problem():
    X = torch.randn(3, 8, device=DEVICE)
    with pytest.raises(ValueError, match="2-D float"):
        quantize_activations(X[0], 6.0)
    with pytest.raises(ValueError, match="activation"):
        quantize_activations(X, 6.0, "minmax")
    with pytest.raises(ValueError, match=f"at most {MAX_TOKENS} tokens"):
        decode_linear(
            torch.randn(17, 8, device=DEVICE).half(),
            torch.zeros(4, 8, dtype=torch.int8, device=DEVICE),
            torch.ones(4, device=DEVICE),
        )
    with pytest.raises(ValueError, match="differ in K"):
        int8_gemm(torch.zeros(2, 8, dtype=torch.int8), torch.zeros(2, 9, dtype=torch.int8))


# --- dispatch: the CUDA entry of int8_linear, run on DEVICE (CPU tensors under the interpreter) ------------


@pytest.fixture
def choice_env(tmp_path, monkeypatch):
    """A fresh backend cache in a temporary folder, timing on, no forced backend."""
    monkeypatch.setenv(cuda_choice.ENV_CACHE_DIR, str(tmp_path))
    monkeypatch.delenv(cuda_choice.ENV_BACKEND, raising=False)
    monkeypatch.delenv(cuda_choice.ENV_NO_TIMING, raising=False)
    monkeypatch.setenv("LLM_INT8_AUTOTUNE", "1")  # conftest turns timing off for the rest of the suite
    cuda_choice.clear_memory_cache()
    yield tmp_path
    cuda_choice.clear_memory_cache()


def _dispatch_case(activation="zeropoint", weight_only_max_tokens=0, M=6, dtype=torch.float16):
    g = torch.Generator().manual_seed(1)
    K, N = 36, 20
    X = _activations(M, K, "odd", dtype, g).to(DEVICE)
    W_i8, s_w, b = (t.to(DEVICE) for t in _layer(N, K, g))
    b = b.to(dtype)
    calls = []

    def cublaslt():  # the PyTorch forward, on the CPU so that it cannot re-enter the CUDA dispatch
        calls.append("cublaslt")
        return int8_linear(X.float().cpu(), W_i8.cpu(), s_w.cpu(), None, 6.0, activation=activation).to(DEVICE)

    def run():
        args = (6.0, activation, None, None, weight_only_max_tokens, cublaslt)
        return forward_cuda.int8_linear_cuda(X, W_i8, s_w, b, *args)

    want = int8_linear_reference(X.double().cpu(), W_i8.cpu(), s_w.cpu(), b.cpu(), 6.0, activation)
    return run, calls, want


def test_dispatch_times_once_then_uses_the_cache(choice_env, monkeypatch):
    timed = []

    def fake_time(fn, device):
        timed.append(fn)
        fn()
        return {0: 2.0, 1: 1.0}[len(timed) - 1]  # cuBLASLt is timed first: 2 ms; Triton 1 ms

    monkeypatch.setattr(cuda_choice, "_time_ms", fake_time)
    run, calls, want = _dispatch_case()
    out = run()
    assert len(timed) == 2
    torch.testing.assert_close(out.cpu().double(), want.double(), rtol=4e-3, atol=4e-3 * want.abs().max())
    decisions = json.loads(cuda_choice.cache_path(DEVICE).read_text())["decisions"]
    assert [d["choice"] for d in decisions.values()] == [cuda_choice.TRITON]
    calls.clear()
    run()
    assert len(timed) == 2 and not calls  # cached: no timing, Triton ran
    cuda_choice.clear_memory_cache()  # a new process reads the file
    run()
    assert len(timed) == 2 and not calls


def test_dispatch_forced_and_untimed(choice_env, monkeypatch):
    monkeypatch.setattr(cuda_choice, "_time_ms", lambda fn, device: pytest.fail("must not time"))
    run, calls, want = _dispatch_case(activation="absmax")
    monkeypatch.setenv(cuda_choice.ENV_BACKEND, "cublaslt")
    torch.testing.assert_close(run().cpu().double(), want.double(), rtol=4e-3, atol=4e-3 * want.abs().max())
    assert calls == ["cublaslt"]
    monkeypatch.setenv(cuda_choice.ENV_BACKEND, "auto")
    monkeypatch.setenv(cuda_choice.ENV_NO_TIMING, "1")
    calls.clear()
    run()
    assert calls == []  # untimed: Triton where it runs
    monkeypatch.setenv(cuda_choice.ENV_NO_TIMING, "0")
    monkeypatch.setenv("LLM_INT8_AUTOTUNE", "0")  # the switch that stops the CPU timing stops this one too
    run()
    assert calls == []
    monkeypatch.setenv(cuda_choice.ENV_BACKEND, "cudnn")
    with pytest.raises(ValueError, match=cuda_choice.ENV_BACKEND):
        run()


def test_dispatch_decode_kernel_for_few_tokens(choice_env, monkeypatch):
    monkeypatch.setattr(cuda_choice, "_time_ms", lambda fn, device: pytest.fail("decode is not timed"))
    run, calls, _ = _dispatch_case(weight_only_max_tokens=16, M=3)
    out = run()
    assert calls == [] and out.shape == (3, 20)


def test_real_timing_picks_a_runnable_backend(choice_env):
    run, _, want = _dispatch_case(M=2)
    out = run()
    torch.testing.assert_close(out.cpu().double(), want.double(), rtol=4e-3, atol=4e-3 * want.abs().max())
    decisions = json.loads(cuda_choice.cache_path(DEVICE).read_text())["decisions"]
    assert {d["choice"] for d in decisions.values()} <= set(cuda_choice.BACKENDS)


def test_interpreter_mode_is_fixed_at_import():
    assert triton_kernels.interpreting() == (not NATIVE)
    assert triton_kernels.available(torch.device(DEVICE))


@pytest.mark.parametrize("backend", list(cuda_choice.BACKENDS))
def test_cuda_entry_matches_cpu_path(choice_env, monkeypatch, backend):
    """int8_linear on CUDA tensors (natively), or its CUDA entry on CPU tensors (interpreter), per backend."""
    monkeypatch.setenv(cuda_choice.ENV_BACKEND, backend)
    g = torch.Generator().manual_seed(2)
    X = _activations(24, 40, "nonfinite", torch.float16, g)
    W_i8, s_w, b = _layer(30, 40, g)
    b = b.half()
    want = int8_linear(X, W_i8, s_w, b, activation="zeropoint")  # CPU path
    if NATIVE:
        got = int8_linear(X.cuda(), W_i8.cuda(), s_w.cuda(), b.cuda(), activation="zeropoint").cpu()
    else:
        got = forward_cuda.int8_linear_cuda(
            X, W_i8, s_w, b, 6.0, "zeropoint", None, None, 0,
            lambda: int8_linear(X.float(), W_i8, s_w, None, activation="zeropoint"),
        )  # fmt: skip
    assert torch.equal(got.isnan(), want.isnan())
    torch.testing.assert_close(got.nan_to_num(), want.nan_to_num(), rtol=2e-3, atol=2e-3)


def test_empty_batch():
    X = torch.zeros(0, 12, device=DEVICE, dtype=torch.float16)
    q = quantize_activations(X, 6.0, "zeropoint")
    assert q.X_i8.shape == (0, 12) and q.s_x.shape == (0,) and q.outlier_idx.numel() == 0
    W = torch.ones(5, 12, dtype=torch.int8, device=DEVICE)
    assert int8_gemm(q.X_i8, W).shape == (0, 5)
    assert decode_linear(X, W, torch.ones(5, device=DEVICE)).shape == (0, 5)
