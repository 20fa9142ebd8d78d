"""Every int8 GEMM backend, forced in turn by patching the capability probe, against the references.

``int8_mm`` must equal ``int8_matmul_reference`` bit for bit on every backend, including operands
that saturate an int16 pair sum or leave float32's exact-integer range; ``int8_linear`` must match
``int8_linear_reference`` within the output dtype's resolution, and be bit-identical across backends.
"""

from __future__ import annotations

import copy
import pickle

import _cpu
import pytest
import torch

from llm_int8 import Int8Linear
from llm_int8.ops import PackedWeightCache, int8_linear, int8_mm, prepack_int8_weight
from llm_int8.ops.choice import admission
from llm_int8.ops.kernels import cpu_gemm, probes
from llm_int8.ops.kernels.quantize import quantize_activations as _quantize_activations
from llm_int8.primitives import int8_linear_reference, int8_matmul_reference, outlier_columns, rowwise_quantize

BACKENDS = [
    probes.ONEDNN_S8,
    probes.FBGEMM_PAIRS,
    probes.FBGEMM,
    probes.ONEDNN,
    probes.INT_MM,
    probes.REFERENCE,
]
PACKING = [probes.FBGEMM_PAIRS, probes.FBGEMM, probes.ONEDNN]
# what the torch build ships, not what the probes accept: a kernel that fails its self-test here
# must fail these tests, not skip them
_AVAILABLE = {
    # except the no-split kernel: it is exact only with VNNI / AMX, and failing its self-test elsewhere is right
    probes.ONEDNN_S8: probes.has_onednn_s8_linear,
    probes.FBGEMM_PAIRS: lambda: "fbgemm" in torch.backends.quantized.supported_engines,
    probes.FBGEMM: lambda: "fbgemm" in torch.backends.quantized.supported_engines,
    probes.ONEDNN: lambda: torch.backends.mkldnn.is_available() and hasattr(torch.ops.onednn, "qlinear_pointwise"),
    probes.INT_MM: probes.has_int_mm,
    probes.REFERENCE: lambda: True,
}
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# same quantization, float32 vs float64 denormalization, rounded to the output dtype
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 1.6e-2, torch.float16: 2e-3}


def _ids(value):
    if isinstance(value, torch.dtype):
        return str(value).removeprefix("torch.")
    return None


def _force(monkeypatch, backend: str) -> None:
    if not _AVAILABLE[backend]():
        why = "fails its exactness self-test here (it needs VNNI or AMX)" if backend == probes.ONEDNN_S8 else None
        pytest.skip(f"CPU int8 kernel {backend} {why or 'is not available in this torch build'}")
    monkeypatch.setattr(admission, "fixed_kernel", lambda: backend)


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    _force(monkeypatch, request.param)
    return request.param


@pytest.fixture(params=PACKING)
def packing_backend(request, monkeypatch):
    _force(monkeypatch, request.param)
    return request.param


def _codes(*shape):
    return torch.randint(-127, 128, shape, dtype=torch.int8)


def _full_range(M, N, K):
    """All-extreme codes: every product is +-127*127, every pair sum would saturate an int16."""
    A = torch.full((M, K), 127, dtype=torch.int8)
    A[1::2] = -127
    B = torch.full((N, K), 127, dtype=torch.int8)
    B[::3] = -127
    return A, B


def _planted(M, K, dims=(3, 11), magnitude=15.0):
    X = torch.randn(M, K)
    for d in dims:
        if d < K:
            X[:, d] = magnitude * torch.sign(torch.randn(M)) * (1 + torch.rand(M))
    return X


def _layer(K, N):
    W_i8, s_w = rowwise_quantize(torch.randn(N, K) / K**0.5)
    return W_i8, s_w, torch.randn(N)


# --- int8_mm: bit-exact on every backend ---------------------------------------------------------


@pytest.mark.parametrize("M,K,N", [(1, 64, 32), (2, 37, 23), (17, 77, 45), (130, 300, 70), (5, 1, 1)])
def test_int8_mm_is_exact(backend, M, K, N):
    A, B = _codes(M, K), _codes(N, K)
    C = int8_mm(A, B)
    assert C.dtype == torch.int32 and C.shape == (M, N)
    assert torch.equal(C, int8_matmul_reference(A, B))


@pytest.mark.parametrize("K", [64, 4099], ids=["small-K", "K>2^24/127^2"])
def test_int8_mm_full_range_codes(backend, K):
    # K=4099: |C| = 127^2 * 4099 > 2^24 and odd, so not a float32: the inexact-row fallback must run
    A, B = _full_range(6, 10, K)
    assert torch.equal(int8_mm(A, B), int8_matmul_reference(A, B))


def test_int8_mm_mixed_exact_and_inexact_rows(backend):
    A, B = _full_range(4, 8, 2051)
    A[1] = torch.randint(-3, 4, (2051,), dtype=torch.int8)  # a row that stays in float32's exact range
    A[2] = 0
    assert torch.equal(int8_mm(A, B), int8_matmul_reference(A, B))


@pytest.mark.parametrize("low", [0, 3], ids=["zeros", "small-codes"])
def test_int8_mm_codes_below_full_scale(backend, low):
    # fbgemm picks its activation scale from the data: a sentinel row must pin it to 1
    A = torch.randint(-low, low + 1, (7, 96), dtype=torch.int8)
    B = _codes(12, 96)
    assert torch.equal(int8_mm(A, B), int8_matmul_reference(A, B))


def test_int8_mm_minus_128(backend):
    A, B = _codes(9, 50), _codes(11, 50)
    A[3, 7] = -128
    B[:, 0] = -128
    assert torch.equal(int8_mm(A, B), int8_matmul_reference(A, B))


def test_int8_mm_empty(backend):
    assert int8_mm(_codes(0, 16), _codes(8, 16)).shape == (0, 8)
    assert torch.equal(int8_mm(_codes(3, 0), _codes(4, 0)), torch.zeros(3, 4, dtype=torch.int32))


def test_int8_mm_reuses_a_packed_weight(packing_backend):
    B = _codes(40, 64)
    packed = prepack_int8_weight(B)
    assert packed is not None and packed.kernel == packing_backend
    for M in (1, 3, 33):
        A = _codes(M, 64)
        assert torch.equal(int8_mm(A, B, packed=packed), int8_matmul_reference(A, B))


def test_packed_weight_of_another_tensor_is_rejected(packing_backend):
    packed = prepack_int8_weight(_codes(40, 64))
    with pytest.raises(ValueError, match="belongs to another tensor"):
        int8_mm(_codes(2, 64), _codes(41, 64), packed=packed)


def test_static_exactness_bound_counts_minus_128():
    W = torch.full((2, 1040), -128, dtype=torch.int8)  # 127 * 128 * 1040 > 2^24; |int8(-128)| overflows
    assert not cpu_gemm.prepack(W, probes.ONEDNN).always_exact
    assert cpu_gemm.prepack(_codes(4, 64), probes.ONEDNN).always_exact


# --- the probes ----------------------------------------------------------------------------------


def test_self_test_rejects_a_kernel_that_saturates(monkeypatch):
    def clipped(A_i8, W_i8, weight):
        return int8_matmul_reference(A_i8, W_i8).clamp(-32767, 32767)

    monkeypatch.setattr(cpu_gemm, "int8_mm_integer", clipped)
    assert not probes._self_test(probes.ONEDNN)


def test_the_real_kernels_pass_their_self_test():
    assert probes.has_fbgemm_linear() == _AVAILABLE[probes.FBGEMM]()
    assert probes.has_fbgemm_pairs_linear() == _AVAILABLE[probes.FBGEMM_PAIRS]()
    assert probes.has_onednn_linear() == _AVAILABLE[probes.ONEDNN]()


def test_fixed_kernel_is_the_fastest_admitted_exact_one(monkeypatch):
    admission.forget()
    monkeypatch.setattr(probes, "exact_cpu_kernels", lambda: [probes.FBGEMM, probes.ONEDNN, probes.INT_MM])
    monkeypatch.setattr(admission, "admission", lambda: {"admitted": [probes.ONEDNN, probes.FBGEMM]})
    assert admission.fixed_kernel() == probes.ONEDNN
    admission.forget()
    # a cache file written before a kernel stopped passing its self-test does not bring it back
    monkeypatch.setattr(probes, "exact_cpu_kernels", lambda: [probes.FBGEMM])
    assert admission.admitted_kernels() == [probes.FBGEMM] and admission.fixed_kernel() == probes.FBGEMM
    admission.forget()
    monkeypatch.setattr(admission, "admission", lambda: {"admitted": []})
    assert admission.fixed_kernel() == probes.REFERENCE
    admission.forget()


def test_exact_kernels_in_order_of_preference(monkeypatch):
    for probe_name in [
        "has_onednn_s8_linear",
        "has_fbgemm_pairs_linear",
        "has_fbgemm_linear",
        "has_onednn_linear",
        "has_int_mm_cpu",
    ]:
        monkeypatch.setattr(probes, probe_name, lambda: True)
    assert probes.exact_cpu_kernels() == list(probes.ALL_CPU_KERNELS)
    monkeypatch.setattr(probes, "has_onednn_s8_linear", lambda: False)
    monkeypatch.setattr(probes, "has_fbgemm_linear", lambda: False)
    assert probes.exact_cpu_kernels() == [probes.FBGEMM_PAIRS, probes.ONEDNN, probes.INT_MM]


# --- activation quantization: one pass, same codes as the primitives ----------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
@pytest.mark.parametrize("threshold", [0.0, 6.0], ids=["vectorwise", "llm.int8"])
def test_fused_quantization_equals_primitives(dtype, threshold):
    X = _planted(33, 70).to(dtype)
    X[4] = 0  # an all-zero row
    X[5] = 0
    X[5, :3] = torch.tensor([1e-38, -3e-39, 2e-45])  # absmax so small that 127 / absmax is inf
    X[7, 20] = float("nan")
    X[9, 21] = float("inf")
    codes, s_x, outlier_idx = _quantize_activations(X, threshold)
    O = outlier_columns(X.float(), threshold)
    assert torch.equal(outlier_idx, O.nonzero().squeeze(1))
    X_i8, s_x_ref = rowwise_quantize(X.float().masked_fill(O, 0))
    assert torch.equal(codes.to(torch.int8), X_i8)
    assert torch.equal(s_x, s_x_ref)
    assert codes.abs().max() <= 127 and torch.equal(codes, codes.round())


# --- int8_linear on every backend ----------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
@pytest.mark.parametrize("threshold", [0.0, 6.0], ids=["vectorwise", "llm.int8"])
@pytest.mark.parametrize("M,K,N", [(1, 64, 48), (19, 77, 45), (64, 576, 192)])
def test_int8_linear_matches_reference(backend, dtype, threshold, M, K, N):
    W_i8, s_w, b = _layer(K, N)
    X = _planted(M, K).to(dtype)
    Y = int8_linear(X, W_i8, s_w, b.to(dtype), threshold)
    ref = int8_linear_reference(X.double(), W_i8, s_w, b.to(dtype), threshold)
    assert Y.dtype == dtype and Y.shape == (M, N)
    torch.testing.assert_close(Y.double(), ref, rtol=0, atol=TOLERANCE[dtype] * ref.abs().max().item())


@pytest.mark.parametrize("threshold", [0.0, 6.0], ids=["vectorwise", "llm.int8"])
def test_int8_linear_is_identical_on_every_backend(monkeypatch, threshold):
    # every backend yields float32(C_i32), so the whole layer agrees bit for bit
    W_i8, s_w, b = _layer(300, 130)
    X = _planted(21, 300)
    outputs = {}
    for name in BACKENDS:
        if _AVAILABLE[name]():
            monkeypatch.setattr(admission, "fixed_kernel", lambda name=name: name)
            outputs[name] = int8_linear(X, W_i8, s_w, b, threshold)
    first = outputs.pop(probes.REFERENCE)
    for name, Y in outputs.items():
        assert torch.equal(Y, first), name


def test_int8_linear_full_range_activations(backend):
    # rows of +-max: every code is +-127; a large odd K pushes C past float32's exact integers
    K, N = 4099, 24
    W_i8 = torch.full((N, K), 127, dtype=torch.int8)
    W_i8[::2, ::3] = -127
    s_w = torch.full((N,), 1e-3)
    X = torch.ones(3, K)
    X[1] = -1
    X[2, ::2] = -1
    Y = int8_linear(X, W_i8, s_w, None, 6.0)
    ref = int8_linear_reference(X.double(), W_i8, s_w, None, 6.0)
    torch.testing.assert_close(Y.double(), ref, rtol=1e-6, atol=0)


def test_int8_linear_leading_dims_and_empty(backend):
    W_i8, s_w, b = _layer(40, 24)
    X = _planted(2 * 3 * 5, 40)
    Y3 = int8_linear(X.view(2, 3, 5, 40), W_i8, s_w, b)
    assert Y3.shape == (2, 3, 5, 24)
    assert torch.equal(Y3.reshape(-1, 24), int8_linear(X, W_i8, s_w, b))
    assert int8_linear(torch.randn(0, 7, 40), W_i8, s_w, b).shape == (0, 7, 24)


@pytest.mark.parametrize("threshold", [0.0, 6.0], ids=["vectorwise", "llm.int8"])
def test_int8_linear_nan_propagates(backend, threshold):
    K, N = 32, 12
    W_i8, s_w, b = _layer(K, N)
    X = torch.randn(6, K)
    X[1, 4] = float("nan")
    X[3, 9] = float("inf")
    Y = int8_linear(X, W_i8, s_w, b, threshold)
    expected = torch.nn.functional.linear(X, W_i8.float() * s_w[:, None], b)
    assert torch.equal(torch.isnan(Y), torch.isnan(expected))
    assert torch.isfinite(Y[[0, 2, 4, 5]]).all()


def test_int8_linear_gradient(backend):
    W_i8, s_w, b = _layer(48, 20)
    X = _planted(9, 48).requires_grad_()
    int8_linear(X, W_i8, s_w, b).sum().backward()
    expected = (W_i8.double() * s_w.double()[:, None]).sum(0).expand(9, 48)
    torch.testing.assert_close(X.grad.double(), expected, rtol=1e-5, atol=1e-6)


# --- the packed layout a module keeps ------------------------------------------------------------


def _bell_linear(in_features: int, out_features: int) -> torch.nn.Linear:
    """A linear layer with a trained model's heavy-tailed weights: most codes small, a few large
    (``nn.Linear``'s uniform init would send ``FBGEMM_PAIRS`` to another kernel: a quarter of its
    pairs break the bound)."""
    linear = torch.nn.Linear(in_features, out_features)
    with torch.no_grad():
        linear.weight.normal_(0, 0.02)
        linear.weight[:, 0] = 0.2
    return linear


def test_module_packs_once_and_repacks_when_the_weight_changes(packing_backend, monkeypatch):
    calls = []
    real = cpu_gemm.prepack
    monkeypatch.setattr(cpu_gemm, "prepack", lambda W, kernel: calls.append(kernel) or real(W, kernel))
    layer = Int8Linear.from_linear(_bell_linear(64, 32), weight_only_max_tokens=0)  # the int8 x int8 path packs
    X = _planted(5, 64)
    Y = layer(X)
    layer(X)
    assert calls == [packing_backend]
    other = Int8Linear.from_linear(_bell_linear(64, 32), weight_only_max_tokens=0)
    layer.load_state_dict(other.state_dict())  # in-place copy into the buffers: version bump
    assert torch.equal(layer(X), other(X)) and not torch.equal(layer(X), Y)
    assert len(calls) == 3  # layer repacked once, other packed once
    layer.to(torch.bfloat16)  # buffers replaced or kept; the cache is dropped either way
    layer(X.bfloat16())
    assert len(calls) == 4


def test_module_with_a_packed_weight_deepcopies_and_pickles(packing_backend):
    layer = Int8Linear.from_linear(_bell_linear(64, 32), weight_only_max_tokens=0)
    X = _planted(5, 64)
    Y = layer(X)  # builds the (uncopyable, for oneDNN) packed layout
    for clone in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
        assert torch.equal(clone(X), Y)
    assert set(layer.state_dict()) == {"weight_int8", "weight_scale", "bias"}


def test_pairs_kernel_hands_a_uniform_weight_to_another_kernel(monkeypatch):
    packed_kernels = [k for k in admission.admitted_kernels() if k in cpu_gemm.KERNELS]
    if probes.FBGEMM_PAIRS not in packed_kernels or len(packed_kernels) < 2:
        pytest.skip(f"needs fbgemm_pairs and another packed kernel admitted, not {packed_kernels}")
    monkeypatch.setattr(admission, "fixed_kernel", lambda: probes.FBGEMM_PAIRS)
    uniform = _codes(96, 256)  # codes of a uniform weight: a quarter of the pairs break the bound
    packed = prepack_int8_weight(uniform)
    assert packed.kernel == probes.FBGEMM_PAIRS and packed.fix_density > cpu_gemm.PAIRS_MAX_FIX_DENSITY
    A = _codes(9, 256)
    assert torch.equal(int8_mm(A, uniform, packed=packed), int8_matmul_reference(A, uniform))
    other = [k for k in admission.admitted_kernels() if k in cpu_gemm.KERNELS and k != probes.FBGEMM_PAIRS][0]
    assert set(packed.others) == {other}  # the layout the GEMM ran on
    bell = Int8Linear.from_linear(_bell_linear(256, 96)).weight_int8
    packed = prepack_int8_weight(bell)
    assert packed.fix_density < cpu_gemm.PAIRS_MAX_FIX_DENSITY
    assert torch.equal(int8_mm(A, bell, packed=packed), int8_matmul_reference(A, bell)) and not packed.others


def test_cache_returns_none_where_nothing_is_packed(monkeypatch):
    monkeypatch.setattr(admission, "fixed_kernel", lambda: probes.REFERENCE)
    assert PackedWeightCache().get(_codes(4, 8)) is None


def test_cached_outlier_columns_give_the_same_output(monkeypatch):
    # the packed weight keeps recent outlier columns of W_i8; a changing outlier set, beyond the
    # cache's size, must give what a gather per call gives
    from llm_int8.ops.kernels import epilogue

    monkeypatch.setattr(epilogue, "_MAX_CACHED_COLUMNS", 3)
    W_i8, s_w, b = _layer(96, 40)
    packed = prepack_int8_weight(W_i8)
    if packed is None:
        pytest.skip("no packed CPU kernel in this torch build")
    for dims in ([5], [5, 17], [60, 2, 17], [1, 2, 3, 4], [17, 90]):
        X = torch.randn(6, 96)
        X[:, dims] = 30.0
        Y = int8_linear(X, W_i8, s_w, b, 6.0, packed_weight=packed)
        assert torch.equal(Y, int8_linear(X, W_i8, s_w, b, 6.0)), dims
        assert len(packed.columns) <= 3


def test_pair_bounded_weight():
    W = _codes(33, 71)
    W[0] = 127
    W[1, ::2], W[1, 1::2] = -128, 127  # |-128| + 127: the largest violation
    W_safe, W_fix = cpu_gemm.pair_bounded(W)
    assert torch.equal(W_safe.to(torch.int16) + W_fix, W.to(torch.int16))
    pairs = torch.nn.functional.pad(W_safe.to(torch.int16).abs(), (0, 1)).view(33, -1, 2).sum(-1)
    assert int(pairs.max()) == 128
    ok = torch.nn.functional.pad(W.to(torch.int16).abs(), (0, 1)).view(33, -1, 2).sum(-1) <= 128
    fix_pairs = torch.nn.functional.pad(W_fix.abs(), (0, 1)).view(33, -1, 2).sum(-1)
    assert not fix_pairs[ok].any()  # a pair within the bound is left as it is


def test_pairs_kernel_self_test_on_a_weight_beyond_the_bound(monkeypatch):
    """The raw weight packed, not W_safe: pairs of +-127 times u8 activations of 255 sum past int16.

    Which behaviour is right depends on the CPU class, and both are checked: without an int8 dot
    product (AVX2, AVX-512 without VNNI) fbgemm's ``vpmaddubsw`` saturates such pair sums, and the
    self-test must refuse the kernel; with VNNI / AMX (``vpdpbusd`` adds into int32) nothing saturates,
    and the self-test must pass it, since the pair bound is then only a precaution."""
    if not _AVAILABLE[probes.FBGEMM_PAIRS]():
        pytest.skip("no fbgemm")
    dot = _cpu.int8_dot_products()
    if dot is None:
        pytest.skip("the CPU's flags are unknown: cannot tell which behaviour is right")
    monkeypatch.setattr(cpu_gemm, "pair_bounded", lambda W: (W, torch.zeros_like(W, dtype=torch.int16)))
    # VNNI / AMX: no saturation, the self-test passes; AVX2: saturation, the self-test refuses
    assert probes._self_test(probes.FBGEMM_PAIRS) == dot
