"""The C++ CPU kernels (``ops/kernels/native``) against the PyTorch sequences they replace, bit for bit.

Each kernel is compared with its reference (``quantize_activations*``, the ``denormalize`` /
``addmm_`` / bias / cast sequence of ``epilogue.py``, ``cpu_gemm.int8_mm_float``), and the whole
layer with the extension against the layer with it forced off. Where a C++ compiler and ninja exist
the extension must build (a build that fails there is a bug, not a skip); the fallback is forced by
patching ``native.ops``, so both sides run on every machine that can build.
"""

from __future__ import annotations

import logging

import pytest
import torch

from llm_int8 import Int8Linear
from llm_int8.ops import forward
from llm_int8.ops.choice import cpu as cpu_choice
from llm_int8.ops.kernels import codes_gemm, cpu_gemm, epilogue, native, probes
from llm_int8.ops.kernels.quantize import quantize_activations, quantize_activations_zeropoint, quantize_into
from llm_int8.primitives import rowwise_quantize


@pytest.fixture
def fresh_native(monkeypatch):
    """``native``'s memo of the build emptied for the test and restored after it."""
    saved = dict(native._state)
    native._state.clear()
    yield native
    native._state.clear()
    native._state.update(saved)


@pytest.fixture(scope="module")
def ops():
    namespace = native.ops()
    if namespace is None:
        pytest.skip(f"the C++ extension is not built here: {native.reason()}")
    return namespace


@pytest.fixture
def no_native(monkeypatch):
    monkeypatch.setattr(native, "ops", lambda: None)


def test_extension_builds_where_a_compiler_exists():
    why = native._unavailable()
    if why is not None:
        pytest.skip(f"cannot build here: {why}")
    assert native.ops() is not None, native.reason()


def test_disabled_by_environment_with_a_reason(fresh_native, monkeypatch, caplog):
    monkeypatch.setenv(native.DISABLE_ENV, "0")
    with caplog.at_level(logging.WARNING, logger=native.__name__):
        assert native.ops() is None
    assert native.reason() == f"{native.DISABLE_ENV}=0"
    assert "fallback" in caplog.text


def test_no_compiler_falls_back_with_a_reason(fresh_native, monkeypatch):
    monkeypatch.delenv(native.DISABLE_ENV, raising=False)
    monkeypatch.setattr(native, "_compiler", lambda: None)
    assert native.ops() is None
    assert "compiler" in native.reason()


def test_a_failed_build_never_raises(fresh_native, monkeypatch):
    monkeypatch.delenv(native.DISABLE_ENV, raising=False)

    def broken():
        raise RuntimeError("Error building extension 'llm_int8_cpu'\nc++: fatal error")

    monkeypatch.setattr(native, "_load", broken)
    monkeypatch.setattr(native, "_unavailable", lambda: None)
    assert native.ops() is None
    assert native.reason().startswith("build failed: RuntimeError")
    layer = Int8Linear.from_linear(torch.nn.Linear(16, 8))
    assert layer(torch.randn(3, 16)).shape == (3, 8)  # the layer runs on the fallback


def _activations(M: int, K: int, case: str, dtype: torch.dtype) -> torch.Tensor:
    gen = torch.Generator().manual_seed(M * 1000 + K)
    X = torch.randn(M, K, generator=gen)
    if K > 3:
        X[:, 1] *= 30  # an outlier dim at α = 6
    if case == "nonfinite" and K > 4:
        X[0, 2], X[-1, 4] = float("nan"), float("-inf")
    elif case == "zero_row":
        X[0] = 0
    elif case == "tiny":
        X = X * 1e-38  # absmax rows below 127 / float32 max: the divide branch
    elif case == "huge":
        X = X * 1e36
    elif case == "one_sided":
        X = X.abs() + 2
    return X.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64], ids=str)
@pytest.mark.parametrize("activation", ["zeropoint", "absmax"])
@pytest.mark.parametrize("case", ["normal", "nonfinite", "zero_row", "tiny", "huge", "one_sided"])
@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (5, 16), (33, 301)], ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("codes_dtype", [torch.float32, torch.int8], ids=str)
def test_quantize_into_equals_the_reference(ops, dtype, activation, case, shape, codes_dtype):
    if dtype == torch.float16 and case in ("tiny", "huge"):
        pytest.skip("out of float16's range")
    M, K = shape
    X = _activations(M, K, case, dtype)
    for threshold, static in ((6.0, None), (0.0, None), (1.5, torch.tensor([0])), (1e9, None)):
        codes = torch.empty(M, K, dtype=codes_dtype)
        s_x, zp, idx = quantize_into(X, threshold, static, activation, codes)
        if activation == "zeropoint":
            ref_codes, ref_s, ref_zp, ref_idx = quantize_activations_zeropoint(X, threshold, static)
            assert torch.equal(zp, ref_zp)
        else:
            (ref_codes, ref_s, ref_idx), ref_zp = quantize_activations(X, threshold, static), None
            assert zp is None
        assert torch.equal(codes.float(), ref_codes)
        assert torch.equal(s_x, ref_s)
        assert torch.equal(idx, ref_idx)


@pytest.mark.parametrize("with_native", [True, False], ids=["native", "fallback"])
def test_quantize_into_writes_fbgemms_sentinel_rows(ops, monkeypatch, with_native):
    if not with_native:
        monkeypatch.setattr(native, "ops", lambda: None)
    X = _activations(5, 33, "normal", torch.float32)
    A = torch.full((7, 33), 99.0)  # (M + 2, K): stale values everywhere
    quantize_into(X, 6.0, None, "zeropoint", A)
    assert torch.equal(A[:5], quantize_activations_zeropoint(X, 6.0)[0])
    assert torch.equal(A[5:], codes_gemm.write_sentinels(torch.empty(7, 33))[5:])
    assert A[5, 0] == -128 and A[6, 0] == 127 and not A[5:, 1:].any()


def test_quantize_into_fallback_writes_the_same_codes(no_native):
    X = _activations(7, 40, "nonfinite", torch.bfloat16)
    codes = torch.empty(7, 40, dtype=torch.int8)
    s_x, zp, idx = quantize_into(X, 6.0, None, "zeropoint", codes)
    ref_codes, ref_s, ref_zp, ref_idx = quantize_activations_zeropoint(X, 6.0)
    assert torch.equal(codes.float(), ref_codes) and torch.equal(s_x, ref_s) and torch.equal(zp, ref_zp)


def _pairs_case(M: int, K: int, N: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    W = torch.randn(N, K, generator=gen)
    W[:, : min(K, 3)] *= 8  # large codes: pairs above the bound, a non-empty W_fix
    W_i8, s_w = rowwise_quantize(W)
    layout = cpu_gemm.prepack(W_i8, cpu_gemm.FBGEMM_PAIRS)
    X = torch.randn(M, K, generator=gen)
    X[:, 0] *= 20
    return X, W_i8, s_w, layout


def _sequence(C, s_w, s_x, zp, r, products, bias, out_dtype):
    """Today's epilogue, op by op: the reference of ``finish``."""
    epilogue.denormalize(C, s_x, s_w, zp, r)
    for A, B in products:
        C.addmm_(A, B.T)
    if bias is not None:
        C.add_(bias.float())
    return C.to(out_dtype)


@pytest.mark.skipif(
    cpu_gemm.FBGEMM_PAIRS not in probes.exact_cpu_kernels(), reason="fbgemm_pairs is not exact on this CPU"
)
@pytest.mark.parametrize("shape", [(1, 9, 5), (70, 130, 64), (513, 576, 40)], ids=str)
def test_pairs_product_float_equals_the_kernel(ops, shape):
    """The FBGEMM_PAIRS product with the fix in the C++ pass, as ``ops/choice`` could time it."""
    M, K, N = shape
    X, W_i8, s_w, layout = _pairs_case(M, K, N, seed=7)
    codes = quantize_activations_zeropoint(X, 6.0)[0]
    assert torch.equal(codes_gemm.pairs_product_float(codes, W_i8, layout), cpu_gemm.int8_mm_float(codes, W_i8, layout))


@pytest.mark.skipif(
    cpu_gemm.FBGEMM_PAIRS not in probes.exact_cpu_kernels(), reason="fbgemm_pairs is not exact on this CPU"
)
@pytest.mark.parametrize("adversarial", [False, True], ids=["products_below_2**24", "a_product_at_2**24"])
def test_a_weight_whose_products_may_leave_float32_still_gives_the_same_bits(ops, monkeypatch, adversarial):
    """Not ``always_exact`` (127 * max row L1 >= 2**24): the fused route runs and reports a main
    product of 2**24 or more, and the op recomputes that call exactly; the same bits either way."""
    monkeypatch.setenv(cpu_choice.BACKEND_ENV, cpu_gemm.FBGEMM_PAIRS)
    K, N = 1200, 24
    gen = torch.Generator().manual_seed(5)
    W = torch.where(torch.rand(N, K, generator=gen) < 0.5, -1.0, 1.0) * (0.9 + 0.1 * torch.rand(N, K, generator=gen))
    linear = torch.nn.Linear(K, N)
    with torch.no_grad():
        linear.weight.copy_(W)
    layer = Int8Linear.from_linear(linear, weight_only_max_tokens=0)
    W_i8 = layer._buffers["weight_int8"]
    layout = cpu_gemm.prepack(W_i8, cpu_gemm.FBGEMM_PAIRS)
    assert not layout.always_exact and codes_gemm.fused_pairs(layout)
    X = torch.randn(10, K, generator=gen)
    if adversarial:
        X[3] = W[0].sign()  # row 3 times weight row 0: about 1200 * 127 * 120 > 2**24
    codes = quantize_activations_zeropoint(X, 6.0)[0]
    assert (cpu_gemm.int8_mm_float(codes, W_i8, layout).abs() >= 2**24).any() == adversarial
    assert torch.equal(codes_gemm.pairs_product_float(codes, W_i8, layout), cpu_gemm.int8_mm_float(codes, W_i8, layout))
    with torch.no_grad():
        got = layer(X)
        monkeypatch.setattr(native, "ops", lambda: None)
        fallback = layer(X)
        C = forward._forward_2d(X, W_i8, layer.weight_scale, 6.0, layer._packed_weight.get(W_i8), "zeropoint",
                                layer._row_sums.get(W_i8))  # fmt: skip
    assert torch.equal(got, C.add_(layer.bias)) and torch.equal(fallback, got)


ROUTES = {  # how finish adds the float products: the BLAS' sums in the one pass, or addmm_ between two passes
    "one_pass": {},
    "two_pass": {"product_columns_limit": lambda: 0},
}


@pytest.mark.skipif(
    cpu_gemm.FBGEMM_PAIRS not in probes.exact_cpu_kernels(), reason="fbgemm_pairs is not exact on this CPU"
)
@pytest.mark.parametrize("shape", [(1, 9, 5), (7, 40, 13), (70, 130, 64), (9, 64, 200)], ids=str)
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("with_zp", [True, False])
@pytest.mark.parametrize("n_products", [0, 1, 2])
@pytest.mark.parametrize("route", list(ROUTES))
def test_finish_with_the_fix_equals_the_sequence(ops, monkeypatch, shape, out_dtype, with_zp, n_products, route):
    for name, probe in ROUTES[route].items():
        monkeypatch.setattr(epilogue, name, probe)
    M, K, N = shape
    X, W_i8, s_w, layout = _pairs_case(M, K, N, seed=sum(shape))
    assert codes_gemm.fused_pairs(layout) and layout.fix._nnz() > 0
    activation = "zeropoint" if with_zp else "absmax"
    A = codes_gemm.codes_buffer(cpu_gemm.FBGEMM_PAIRS, M, K, pairs=True)
    s_x, zp, idx = quantize_into(X, 6.0, None, activation, A)
    r = epilogue.compute_weight_row_sums(W_i8) if with_zp else None
    C_main = codes_gemm.pairs_main_product(A, layout)
    gen = torch.Generator().manual_seed(1)
    products = tuple((torch.randn(M, j, generator=gen), torch.randn(N, j, generator=gen)) for j in (3, 1)[:n_products])
    bias = torch.randn(N, generator=gen)
    ref = _sequence(cpu_gemm.int8_mm_float(A[:M], W_i8, layout), s_w, s_x, zp, r, products, bias, out_dtype)
    fix = dict(fix=layout.fix, codes=A)
    got = epilogue.finish(C_main, s_w, s_x, zp, r, **fix, products=products, bias=bias, out_dtype=out_dtype)
    assert torch.equal(got, ref)


@pytest.mark.parametrize("route", list(ROUTES))
@pytest.mark.parametrize("inner", [4, 128, 200], ids=lambda j: f"outlier_dims{j}")
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("M", [1, 37])
def test_finish_without_fix_native_fallback_and_sequence_agree(ops, monkeypatch, route, inner, out_dtype, bias, M):
    """Every route of the float products equals the sequence; a product wider than the BLAS' one block
    (200 outlier dims, as SmolLM2's last down_proj layers have at α = 6) always takes ``addmm_``."""
    for name, probe in ROUTES[route].items():
        monkeypatch.setattr(epilogue, name, probe)
    N = 75
    gen = torch.Generator().manual_seed(inner)
    C = torch.randint(-(2**20), 2**20, (M, N), generator=gen).float()
    s_w, s_x = torch.rand(N, generator=gen) * 1e-2, torch.rand(M, generator=gen) * 1e-2
    zp = torch.randint(-127, 128, (M,), generator=gen).float()
    r = torch.randint(-5000, 5000, (N,), generator=gen).float()
    products = ((torch.randn(M, inner, generator=gen) * 10, torch.randn(N, inner, generator=gen) * 0.1),)
    b = torch.randn(N, generator=gen) if bias else None
    ref = _sequence(C.clone(), s_w, s_x, zp, r, products, b, out_dtype)
    assert torch.equal(epilogue.finish(C.clone(), s_w, s_x, zp, r, products=products, bias=b, out_dtype=out_dtype), ref)
    monkeypatch.setattr(native, "ops", lambda: None)
    assert torch.equal(epilogue.finish(C.clone(), s_w, s_x, zp, r, products=products, bias=b, out_dtype=out_dtype), ref)


def test_zero_point_correction_is_rounded_once_for_any_row_sums(ops, no_native):
    """``C_i32 - zp_x r_w`` beyond 2**24: the exact integer rounded once, native and fallback alike
    (``addr_``'s remainder loop alone would round ``zp_x r_w`` first)."""
    M, N = 3, 19  # 19: a remainder after 16 vector lanes
    C = torch.randint(-(2**23), 2**23, (M, N)).float()
    zp = torch.tensor([127.0, -101.0, 3.0])
    r = torch.randint(2**19, 2**20, (N,)).float() * torch.where(torch.arange(N) % 2 == 0, 1.0, -1.0)
    ones_n, ones_m = torch.ones(N), torch.ones(M)
    exact = (C.double() - zp.double()[:, None] * r.double()[None, :]).float()
    assert torch.equal(epilogue.denormalize(C.clone(), ones_m, ones_n, zp, r), exact)
    got = ops.epilogue(C, ones_n, ones_m, zp, r, *(None,) * 4, [], False, None, torch.float32)
    assert torch.equal(got, exact)


def _layer(K: int, N: int, activation: str, float_dims, bias: bool) -> Int8Linear:
    gen = torch.Generator().manual_seed(K * N)
    linear = torch.nn.Linear(K, N, bias=bias)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(N, K, generator=gen) / K**0.5)
        linear.weight[:, :2] *= 8
    return Int8Linear.from_linear(linear, activation=activation, weight_only_max_tokens=0, float_dims=float_dims)


@pytest.mark.parametrize("kernel", probes.exact_cpu_kernels() + ["reference"])
@pytest.mark.parametrize("activation", ["zeropoint", "absmax"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("float_dims", [None, [5]], ids=["no_float_dims", "float_dims"])
def test_layer_with_and_without_the_extension_agree(ops, monkeypatch, kernel, activation, dtype, float_dims):
    """The layer's whole CPU route (``forward._forward_cpu``) with the C++ kernels, with their
    fallbacks, and the op-by-op ``_forward_2d`` plus bias and cast: the same bits, on every admitted GEMM."""
    monkeypatch.setenv(cpu_choice.BACKEND_ENV, kernel)
    layer = _layer(48, 40, activation, float_dims, bias=True)
    X = torch.randn(2, 9, 48)
    X[..., 3] = 25.0  # an outlier dim
    X = X.to(dtype)
    with torch.no_grad():
        got = layer(X)
        W = layer._buffers["weight_int8"]
        packed, row_sums = layer._packed_weight.get(W), layer._row_sums.get(W)
        fc = None if float_dims is None else (layer.float_dims, layer.float_weight)
        C = forward._forward_2d(X.reshape(-1, 48), W, layer.weight_scale, 6.0, packed, activation, row_sums, fc)
        ref = C.add_(layer.bias.float()).to(dtype).reshape(2, 9, 40)
        monkeypatch.setattr(native, "ops", lambda: None)
        fallback = layer(X)
    assert got.dtype == dtype and torch.equal(got, ref)
    assert torch.equal(fallback, ref)


# --- bf16 models and the weight-only path --------------------------------------------------------


@pytest.mark.parametrize("in_dtype", [torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("bias", [True, False])
def test_scale_bias_cast_equals_the_three_steps(ops, in_dtype, out_dtype, bias):
    gen = torch.Generator().manual_seed(3)
    C = (torch.randn(5, 37, generator=gen) * 100).to(in_dtype)
    s_w = torch.rand(37, generator=gen) * 1e-2
    b = torch.randn(37, generator=gen) if bias else None
    ref = C.float().clone().mul_(s_w)  # clone: .float() of a float32 C is C itself
    if b is not None:
        ref.add_(b)
    assert torch.equal(ops.scale_bias_cast(C, s_w, b, out_dtype), ref.to(out_dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_weight_only_path_with_and_without_the_extension_agree(ops, monkeypatch, dtype):
    from llm_int8.ops.kernels import weight_only

    if not weight_only.available(torch.device("cpu"), 64):
        pytest.skip("no _weight_int8pack_mm here")
    linear = torch.nn.Linear(64, 48)
    layer = Int8Linear.from_linear(linear, weight_only_max_tokens=16)
    X = torch.randn(3, 64).to(dtype)
    with torch.no_grad():
        got = layer(X)
        monkeypatch.setattr(native, "ops", lambda: None)
        ref = layer(X)
    assert got.dtype == dtype and torch.equal(got, ref)


def test_bf16_route_forms_the_products_in_the_pass_within_the_float64_bound(ops, monkeypatch):
    """The bf16 route's own summation (``inline_products``) against the float64 product: within the
    bound of a float32 dot product of j terms, as the BLAS' is; no BLAS product is formed."""
    M, N, j = 33, 70, 9
    gen = torch.Generator().manual_seed(4)
    C = torch.randint(-(2**20), 2**20, (M, N), generator=gen).float()
    s_w, s_x = torch.rand(N, generator=gen) * 1e-2, torch.rand(M, generator=gen) * 1e-2
    A, B = torch.randn(M, j, generator=gen) * 10, torch.randn(N, j, generator=gen)
    blas = epilogue.finish(C.clone(), s_w, s_x, products=((A, B),))
    with monkeypatch.context() as patch:
        patch.setattr(torch, "mm", None)  # the route must not call the BLAS
        got = epilogue.finish(C.clone(), s_w, s_x, products=((A, B),), inline_products=True)
    scaled = C.clone().mul_(s_w).mul_(s_x[:, None]).double()  # the same bits on both routes
    exact = scaled + A.double() @ B.double().T
    bound = (j + 2) * 2.0**-24 * (scaled.abs() + A.double().abs() @ B.double().abs().T)
    assert ((got.double() - exact).abs() <= bound).all()
    assert ((blas.double() - exact).abs() <= bound).all()


def test_bf16_route_is_taken_only_with_bf16_hardware(ops, monkeypatch):
    from llm_int8.ops.kernels import bf16

    seen = []
    real = epilogue.finish

    def spy(*args, **kwargs):
        seen.append(kwargs.get("inline_products"))
        return real(*args, **kwargs)

    monkeypatch.setattr(epilogue, "finish", spy)
    layer = _layer(48, 40, "zeropoint", None, bias=True)
    X = torch.randn(9, 48)
    X[:, 3] = 25.0
    with torch.no_grad():
        monkeypatch.setattr(bf16, "has_native_bf16", lambda: False)  # the probe says so, whatever this CPU has
        default = layer(X.bfloat16())
        monkeypatch.setattr(bf16, "has_native_bf16", lambda: True)
        routed = layer(X.bfloat16())
        fp32 = layer(X)  # fp32 activations never take it
    assert seen == [False, True, False]
    # same layer, other rounding of the outlier sum: at most one bf16 step apart
    assert ((routed.float() - default.float()).abs() <= default.float().abs() * 2.0**-7 + 1e-30).all()
    assert fp32.dtype == torch.float32


def test_a_converted_bf16_model_stays_bf16_outside_the_int8_layers():
    from _hf_tiny import tiny_model

    import llm_int8

    model = tiny_model("llama", dtype=torch.bfloat16)
    llm_int8.quantize_model(model)
    int8_state = {id(t) for m in model.modules() if isinstance(m, Int8Linear) for t in (m.weight_int8, m.weight_scale)}
    others = [(n, t.dtype) for n, t in [*model.named_parameters(), *model.named_buffers()] if id(t) not in int8_state]
    assert others and all(dtype == torch.bfloat16 for _, dtype in others), [o for o in others if o[1] != torch.bfloat16]
    outputs = []
    for layer in model.model.layers:
        layer.register_forward_hook(lambda mod, args, out: outputs.append(out[0] if isinstance(out, tuple) else out))
    with torch.no_grad():
        logits = model(torch.randint(0, 100, (1, 12))).logits
    assert logits.dtype == torch.bfloat16 and outputs and all(o.dtype == torch.bfloat16 for o in outputs)


@pytest.mark.parametrize("shape", [(1, 5), (7, 13), (70, 64), (9, 200), (33, 47)], ids=str)
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("with_zp", [True, False])
@pytest.mark.parametrize("n_products", [0, 1, 2])
@pytest.mark.parametrize("with_native", [True, False], ids=["native", "fallback"])
def test_finish_reads_int32_as_float_does(monkeypatch, shape, out_dtype, with_zp, n_products, with_native):
    """``torch._int_mm``'s int32 output handed to ``finish`` as it is: the same bits as ``C.float()`` handed
    to it, with values past 2**24 (rounded once either way), in the 16-lane, 8-lane and scalar loops."""
    if with_native and native.ops() is None:
        pytest.skip(f"the C++ extension is not built here: {native.reason()}")
    if not with_native:
        monkeypatch.setattr(native, "ops", lambda: None)
    M, N = shape
    gen = torch.Generator().manual_seed(M * N)
    C = torch.randint(-(2**26), 2**26, (M, N), generator=gen, dtype=torch.int32)
    s_w, s_x = torch.rand(N, generator=gen) / 100, torch.rand(M, generator=gen)
    zp = torch.randint(-127, 128, (M,), generator=gen).float() if with_zp else None
    r = torch.randint(-3000, 3000, (N,), generator=gen).float() if with_zp else None
    products = tuple((torch.randn(M, j, generator=gen), torch.randn(N, j, generator=gen)) for j in (3, 1)[:n_products])
    bias = torch.randn(N, generator=gen)
    args = dict(products=products, bias=bias, out_dtype=out_dtype)
    want = epilogue.finish(C.float(), s_w, s_x, zp, r, **args)
    assert torch.equal(epilogue.finish(C, s_w, s_x, zp, r, **args), want)


@pytest.mark.parametrize("where", ["last_row", "middle_rows", "every_row", "first_row"])
@pytest.mark.parametrize("activation", ["zeropoint", "absmax"])
@pytest.mark.parametrize("codes_dtype", [torch.float32, torch.int8], ids=str)
@pytest.mark.parametrize("static", [False, True], ids=["", "static_dims"])
def test_quantize_into_when_outlier_columns_appear_late(ops, where, activation, codes_dtype, static):
    """A column joins ``O`` only at a late row: every earlier row (coded before it was known, where the
    quantizer reads X once) must end up with the codes of the column rule, as in the reference."""
    M, K = 300, 67
    X = torch.randn(M, K, generator=torch.Generator().manual_seed(M))  # |x| < 6: no outlier by itself
    rows = {"last_row": [M - 1], "middle_rows": [150, 151, 299], "every_row": list(range(M)), "first_row": [0]}[where]
    X[rows, 5] = 9.0
    X[rows[-1], 66] = -float("inf")  # a tail column (past the last 16 lanes), non-finite
    static_idx = torch.tensor([2, 40]) if static else None
    codes = torch.empty(M, K, dtype=codes_dtype)
    s_x, zp, idx = quantize_into(X, 6.0, static_idx, activation, codes)
    if activation == "zeropoint":
        want_codes, want_s, want_zp, want_idx = quantize_activations_zeropoint(X, 6.0, static_idx)
        assert torch.equal(zp, want_zp)
    else:
        want_codes, want_s, want_idx = quantize_activations(X, 6.0, static_idx)
    assert idx.tolist() == want_idx.tolist() == [5, 66]
    assert torch.equal(s_x, want_s) and torch.equal(codes.float(), want_codes)
