"""The batch-invariant mode (``batch_invariant=True``, ``LLM_INT8_BATCH_INVARIANT=1``): a token's
output row is a function of its own row alone, bit for bit, whatever its batch mates and the batch
size, on every admitted CPU kernel, eagerly and compiled; within its quantization bound of float64;
and split over K (a row-parallel layer) with shared statistics, the halves add up to the whole."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import llm_int8
from llm_int8 import Int8Config, Int8Linear, quantize_model
from llm_int8.ops import forward_invariant, int8_linear, int8_mm
from llm_int8.ops.choice import cpu as cpu_choice
from llm_int8.ops.kernels import native, probes
from llm_int8.ops.kernels import quantize_tokenwise as tokenwise

SIZES = (1, 16, 17, 64, 512)
K, N = 96, 80  # K a multiple of 16: the weight-only kernel would apply to the default mode
INT_VIEW = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}


def bits(t: torch.Tensor) -> torch.Tensor:
    """The bit patterns (so -0.0 and +0.0 differ, and NaNs compare)."""
    return t.contiguous().view(INT_VIEW[t.dtype])


def _layer(activation="zeropoint", float_dims=None, bias=True, seed=0) -> Int8Linear:
    gen = torch.Generator().manual_seed(seed)
    lin = nn.Linear(K, N, bias=bias)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(N, K, generator=gen) / K**0.5)
        if bias:
            lin.bias.copy_(torch.randn(N, generator=gen))
    return Int8Linear.from_linear(lin, activation=activation, float_dims=float_dims, batch_invariant=True)


def _token(dtype) -> torch.Tensor:
    """The token we follow: one outlier entry (dim 5) and one at the threshold exactly (dim 40)."""
    x = torch.randn(1, K, generator=torch.Generator().manual_seed(1))
    x[0, 5], x[0, 40] = 9.5, -6.0
    return x.to(dtype)


def _mates(kind: str, M: int, dtype) -> torch.Tensor:
    """M - 1 batch mates: plain, with outliers in other dims, or in the token's own dims."""
    X = torch.randn(M - 1, K, generator=torch.Generator().manual_seed(M))
    if kind == "other_dims":
        X[::2, 11] = 30.0
        X[1::3, 70] = -8.0
    elif kind == "same_dims":
        X[:, 5] = -20.0
        X[::2, 40] = 7.0
        X[1::4, 90] = float("inf")  # a non-finite mate: only its own row may become non-finite
    return X.to(dtype)


def _rows_of_token(layer, dtype, kind, sizes=SIZES):
    x = _token(dtype)
    rows = []
    for M in sizes:
        mates = _mates(kind, M, dtype)
        X = torch.cat([mates[: M // 2], x, mates[M // 2 :]])  # the token in the middle
        rows.append(layer(X)[M // 2])
    return rows


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("activation", ["zeropoint", "absmax"])
@pytest.mark.parametrize("kind", ["plain", "other_dims", "same_dims"])
def test_row_is_bit_identical_at_every_batch_size_and_company(dtype, activation, kind):
    layer = _layer(activation)
    alone = layer(_token(dtype))[0]
    assert torch.isfinite(alone).all()
    for M, row in zip(SIZES, _rows_of_token(layer, dtype, kind), strict=True):
        assert row.dtype == dtype
        assert torch.equal(bits(row), bits(alone)), f"M = {M}, mates {kind}"


def test_the_column_rule_does_depend_on_the_batch():
    # the property above is not free: the default mode moves the token's row with its mates
    layer = _layer()
    layer.batch_invariant = False
    x = _token(torch.float32)
    alone = layer(torch.cat([x, _mates("plain", 64, torch.float32)]))[0]
    mates = layer(torch.cat([x, _mates("other_dims", 64, torch.float32)]))[0]
    assert not torch.equal(alone, mates)


def test_only_the_non_finite_rows_are_non_finite():
    layer = _layer()
    X = _mates("same_dims", 65, torch.float32)
    out = layer(X)
    bad = ~torch.isfinite(X).all(dim=1)
    assert bad.any() and not torch.isfinite(out[bad]).all(dim=1).any()
    assert torch.isfinite(out[~bad]).all()


@pytest.mark.parametrize("activation", ["zeropoint", "absmax"])
def test_every_admitted_kernel_gives_the_same_bits(kernel, monkeypatch, activation):
    layer = _layer(activation)
    for dtype in (torch.float32, torch.bfloat16):
        rows = _rows_of_token(layer, dtype, "other_dims", sizes=(1, 17, 512))
        monkeypatch.setenv(cpu_choice.BACKEND_ENV, probes.REFERENCE)
        want = layer(_token(dtype))[0]
        monkeypatch.setenv(cpu_choice.BACKEND_ENV, kernel)
        for row in rows:
            assert torch.equal(bits(row), bits(want)), (kernel, dtype)


@pytest.mark.parametrize("activation", ["zeropoint", "absmax"])
def test_pytorch_sequence_and_cpu_passes_agree_bit_for_bit(monkeypatch, activation):
    # the C++ passes, the PyTorch fallback, and the autograd route: one numeric definition
    if native.ops() is None:
        pytest.skip(f"the C++ kernels are not built here: {native.reason()}")
    layer = _layer(activation, float_dims=[3, 50])
    X = torch.cat([_mates("same_dims", 40, torch.float32), _mates("other_dims", 40, torch.float32)])
    native_out = layer(X)
    monkeypatch.setattr(native, "ops", lambda: None)
    assert torch.equal(bits(layer(X)), bits(native_out))
    monkeypatch.undo()
    x = X.clone().requires_grad_(True)
    y = layer(x)
    assert torch.equal(bits(y.detach()), bits(native_out))
    y[torch.isfinite(y)].sum().backward()
    assert x.grad is not None and x.grad.shape == X.shape


def test_float_columns_stay_float_and_invariant():
    layer = _layer(float_dims=[5, 17])  # the token's outlier dim 5 is also a static float dim
    for dtype in (torch.float32, torch.bfloat16):
        alone = layer(_token(dtype))[0]
        for row in _rows_of_token(layer, dtype, "same_dims", sizes=(1, 17, 64)):
            assert torch.equal(bits(row), bits(alone))
    # a static dim multiplies its float weight column: a huge value there costs no int8 resolution
    x = torch.randn(3, K)
    x[:, 17] = 1e4
    exact = x.double() @ layer.dequantized_weight().double().T + layer.bias.double()
    assert ((layer(x).double() - exact).abs().max() / exact.abs().max()) < 2e-2


def test_compiled_gives_the_eager_bits():
    layer = _layer()
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    for dtype in (torch.float32, torch.bfloat16):
        x = _token(dtype)
        alone = layer(x)[0]
        for M in (1, 17, 64):
            X = torch.cat([x, _mates("other_dims", M, dtype)])
            assert torch.equal(bits(compiled(X)[0]), bits(alone)), (dtype, M)


def test_environment_variable_turns_it_on_for_every_layer(monkeypatch):
    invariant = _layer()
    plain = _layer()
    plain.batch_invariant = False
    X = torch.cat([_token(torch.float32), _mates("other_dims", 20, torch.float32)])
    assert not torch.equal(plain(X), invariant(X))
    monkeypatch.setenv(forward_invariant.ENV, "1")
    assert torch.equal(bits(plain(X)), bits(invariant(X)))


def test_no_weight_only_kernel_in_the_mode(monkeypatch):
    # on a CPU with the weight-only kernel, a few tokens would take it (bf16 activations): not here
    called = []
    monkeypatch.setattr(probes, "has_weight_int8pack_mm", lambda: True)
    monkeypatch.setattr(torch, "_weight_int8pack_mm", lambda *a: called.append(1) or None)
    layer = _layer()
    layer.weight_only_max_tokens = 16
    layer(_token(torch.float32))
    assert not called


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("activation", ["zeropoint", "absmax"])
def test_within_its_quantization_bound_of_float64(dtype, activation):
    layer = _layer(activation, bias=False)
    X = torch.randn(300, K).to(dtype)
    X[::7, 3] = 25.0
    X[::5, 60] = -7.0
    X[1::9, 61] = 0.5  # small values in a dim that is an outlier elsewhere: int8 in their own rows
    y = layer(X)
    X64 = X.double()
    W = layer.dequantized_weight().double()  # (N, K)
    exact = X64 @ W.T
    regular = X64.masked_fill(tokenwise.float_mask(X.float(), layer.threshold), 0)  # the int8 entries
    if activation == "absmax":
        step = regular.abs().amax(dim=1, keepdim=True) / 127
    else:
        step = (regular.clamp_min(0).amax(dim=1, keepdim=True) - regular.clamp_max(0).amin(dim=1, keepdim=True)) / 254
    unit = {torch.float32: 2.0**-24, torch.bfloat16: 2.0**-8}[dtype]
    bound = (
        step / 2 * W.abs().sum(dim=1)[None, :]  # int8 codes of the regular entries
        + (K + 8) * 2.0**-23 * (X64.abs() @ W.abs().T)  # float32 arithmetic
        + unit * exact.abs()  # the output dtype
        + 1e-44
    )
    err = (y.double() - exact).abs()
    assert (err <= bound * 1.01).all(), (err / bound).max()
    # and the outliers cost this row nothing: its step is that of its regular entries
    assert (step[::7] < 25.0 / 127).all()


@pytest.mark.parametrize("activation", ["zeropoint", "absmax"])
def test_row_parallel_halves_with_shared_statistics_add_up(activation):
    # tensor parallelism: each rank holds half of K; the ranks all-reduce the per-token statistics
    layer = _layer(activation)
    X = torch.cat([_mates("other_dims", 33, torch.float32), _token(torch.float32)])
    halves = (slice(0, K // 2), slice(K // 2, K))
    stats = [tokenwise.token_statistics(X[:, h], layer.threshold) for h in halves]
    shared = (torch.maximum(stats[0][0], stats[1][0]), torch.minimum(stats[0][1], stats[1][1]))  # the all-reduce
    assert all(torch.equal(a, b) for a, b in zip(shared, tokenwise.token_statistics(X, layer.threshold), strict=True))
    # the codes of each half are those of the unsplit layer, so the integer products add up exactly
    whole = tokenwise.quantize_with_statistics(X, layer.threshold, None, activation)
    parts = [tokenwise.quantize_with_statistics(X[:, h], layer.threshold, None, activation, shared) for h in halves]
    assert torch.equal(torch.cat([p[0] for p in parts], dim=1), whole[0])
    for p in parts:
        assert torch.equal(p[1], whole[1]) and (p[2] is None or torch.equal(p[2], whole[2]))
    W = layer.weight_int8
    C = int8_mm(whole[0].to(torch.int8), W)
    assert torch.equal(sum(int8_mm(p[0].to(torch.int8), W[:, h]) for p, h in zip(parts, halves, strict=True)), C)
    # the layers: rank 0 adds the bias; the sum is the unsplit output up to float summation order
    outs = [
        int8_linear(X[:, h], W[:, h].contiguous(), layer.weight_scale, layer.bias if i == 0 else None,
                    layer.threshold, activation=activation, batch_invariant=True, statistics=shared)
        for i, h in enumerate(halves)
    ]  # fmt: skip
    unsplit = layer(X)
    torch.testing.assert_close(outs[0] + outs[1], unsplit, rtol=1e-5, atol=1e-5)
    # without the shared statistics each half has its own scale: not the same numbers
    own = [int8_linear(X[:, h], W[:, h].contiguous(), layer.weight_scale, None, layer.threshold,
                       activation=activation, batch_invariant=True) for h in halves]  # fmt: skip
    assert (own[0] + own[1] + layer.bias - unsplit).abs().max() > 1e-4


def test_statistics_are_checked():
    layer = _layer()
    X = torch.randn(4, K)
    with pytest.raises(ValueError, match="batch_invariant=True"):
        int8_linear(X, layer.weight_int8, layer.weight_scale, None, 6.0, statistics=(torch.ones(4), -torch.ones(4)))
    with pytest.raises(ValueError, match="one per token"):
        int8_linear(X, layer.weight_int8, layer.weight_scale, None, 6.0, batch_invariant=True,
                    statistics=(torch.ones(3), -torch.ones(3)))  # fmt: skip


def test_setting_is_validated_and_reaches_every_layer():
    with pytest.raises(TypeError, match="batch_invariant"):
        Int8Config(batch_invariant="yes")
    with pytest.raises(TypeError, match="batch_invariant"):
        Int8Linear(4, 4, batch_invariant=1)
    model = quantize_model(nn.Sequential(nn.Linear(K, N), nn.ReLU(), nn.Linear(N, 8)), batch_invariant=True,
                           skip_modules=())  # fmt: skip
    layers = [m for m in model.modules() if isinstance(m, Int8Linear)]
    assert len(layers) == 2 and all(m.batch_invariant for m in layers)
    assert "batch_invariant=True" in repr(layers[0])


def test_saved_model_keeps_the_setting(tmp_path):
    pytest.importorskip("transformers")
    from _hf_tiny import tiny_model

    tiny_model("llama").save_pretrained(tmp_path / "fp")
    model = llm_int8.from_pretrained(tmp_path / "fp", batch_invariant=True, progress=False)
    layers = [m for m in model.modules() if isinstance(m, Int8Linear)]
    assert layers and all(m.batch_invariant for m in layers)
    out = llm_int8.save_pretrained(model, tmp_path / "int8")
    reloaded = llm_int8.from_pretrained(out, progress=False)
    assert all(m.batch_invariant for m in reloaded.modules() if isinstance(m, Int8Linear))
    assert reloaded.config.quantization_config.batch_invariant
    assert not any(
        m.batch_invariant
        for m in llm_int8.from_pretrained(out, batch_invariant=False, progress=False).modules()
        if isinstance(m, Int8Linear)
    )


def test_a_row_without_outliers_gets_the_same_bits_whether_or_not_a_mate_has_some():
    # rows of tiny values whose outputs underflow to -0.0: a float part starting from +0 would turn
    # them into +0.0 whenever another row of the batch brings one (x + +0 is not x for x = -0)
    lin = nn.Linear(K, N, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(N, K) * 1e-9)
    layer = Int8Linear.from_linear(lin, batch_invariant=True)
    x = torch.randn(2, K) * 1e-37
    alone = layer(x)
    assert (bits(alone) == bits(torch.tensor(-0.0))).any()  # the case is there
    mates = torch.cat([x, _mates("other_dims", 8, torch.float32)])
    assert torch.equal(bits(layer(mates)[:2]), bits(alone))


def test_the_pytorch_route_is_invariant_too():
    # float64 inputs (like CUDA tensors and autograd) take the PyTorch steps, one op at a time
    layer = _layer()
    x = _token(torch.float64)
    alone = layer(x)[0]
    for M in (1, 17, 64):
        X = torch.cat([_mates("other_dims", M, torch.float64), x])
        assert torch.equal(layer(X)[-1], alone)
    assert torch.equal(alone.float(), layer(x.float())[0])  # float64 is rounded to float32 first: same numbers
