"""The vLLM linear method against ``Int8Linear``: per layer kind and tensor-parallel rank, no engine.

vLLM's own layer classes are built with this test's rank and TP size (its TP-group lookups patched),
loaded through their own weight loaders, and each rank's ``apply`` is compared with an ``Int8Linear``
holding the same codes and scales: bit-identical outputs, with and without bias, eager and through
the op's ``torch.compile`` route. Skipped without vLLM (``scripts/install.sh --vllm``).
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("vllm")

from vllm.model_executor.layers import linear as vllm_linear  # noqa: E402

from llm_int8 import Int8Linear  # noqa: E402
from llm_int8.integrations.serving.options import ServingOptions  # noqa: E402
from llm_int8.integrations.serving.vllm.config import LLMInt8VllmConfig  # noqa: E402
from llm_int8.integrations.serving.vllm.method import LLMInt8LinearMethod  # noqa: E402

K, HEAD = 96, 16  # in_features; head size of the QKV layer (6 query / 2 KV heads)
DTYPE = torch.bfloat16


@pytest.fixture
def tp(monkeypatch):
    """``tp(rank, size)``: vLLM's layers built after it see this rank of a TP group of this size."""

    def set_rank(rank: int, size: int) -> None:
        monkeypatch.setattr(vllm_linear, "get_tensor_model_parallel_rank", lambda: rank)
        monkeypatch.setattr(vllm_linear, "get_tensor_model_parallel_world_size", lambda: size)

    return set_rank


def _weights(*rows: int, k: int = K) -> list[torch.Tensor]:
    out = []
    for n in rows:
        W = torch.randn(n, k) * 0.05
        W[:, 3] *= 40  # a column far larger than the rest: its rows' scales are set by it
        out.append(W.to(DTYPE))
    return out


def _int8_reference(W: torch.Tensor, bias: torch.Tensor | None, rows=slice(None), cols=slice(None), **opts):
    """An ``Int8Linear`` quantized from the whole float ``W``, cut to ``rows`` / ``cols`` (the scale of whole rows)."""
    full = Int8Linear.from_linear(_linear(W, bias), **opts)
    codes = full.weight_int8[rows, cols]
    ref = Int8Linear(codes.shape[1], codes.shape[0], bias=bias is not None, dtype=DTYPE, **opts)
    ref.weight_int8 = codes.contiguous()
    ref.weight_scale = full.weight_scale[rows].clone()
    if bias is not None:
        ref.bias = torch.nn.Parameter(bias[rows].clone(), requires_grad=False)
    return ref


def _linear(W: torch.Tensor, bias: torch.Tensor | None) -> torch.nn.Linear:
    lin = torch.nn.Linear(W.shape[1], W.shape[0], bias=bias is not None, dtype=DTYPE)
    with torch.no_grad():
        lin.weight.copy_(W)
        if bias is not None:
            lin.bias.copy_(bias)
    return lin


def _input(tokens: int, k: int = K) -> torch.Tensor:
    x = torch.randn(tokens, k)
    x[:, 7] = 9.0  # an outlier dim above α = 6: the decomposition runs
    return x.to(DTYPE)


def _config(**options) -> LLMInt8VllmConfig:
    return LLMInt8VllmConfig(ServingOptions.from_config(options))


def _check(layer, ref: Int8Linear, x: torch.Tensor, compiled: bool = False) -> None:
    assert isinstance(layer.quant_method, LLMInt8LinearMethod)
    assert torch.equal(layer.weight_int8, ref.weight_int8)
    assert torch.equal(layer.weight_scale, ref.weight_scale)
    bias = None if layer.bias is None else layer.bias
    if compiled:
        got = torch.compile(lambda x: layer.quant_method.apply(layer, x, bias), fullgraph=True, backend="eager")(x)
        want = torch.compile(ref, fullgraph=True, backend="eager")(x)
    else:
        got, want = layer.quant_method.apply(layer, x, bias), ref(x)
    assert got.dtype == want.dtype == DTYPE
    assert torch.equal(got, want)


def _load(layer, weights, shard_ids) -> None:
    for W, shard in zip(weights, shard_ids, strict=True):
        args = () if shard is None else (shard,)
        layer.weight.weight_loader(layer.weight, W, *args)
    layer.quant_method.process_weights_after_loading(layer)


@pytest.mark.parametrize("tokens", [1, 5, 40], ids=lambda t: f"tokens{t}")
@pytest.mark.parametrize("size", [1, 2], ids=lambda s: f"tp{s}")
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
def test_column_and_merged_parallel(tp, size, bias, tokens):
    tp(0, size)
    gate, up = _weights(64, 64)
    b = torch.randn(128).to(DTYPE) if bias else None
    x = _input(tokens)
    for rank in range(size):
        tp(rank, size)
        layer = vllm_linear.MergedColumnParallelLinear(
            K, [64, 64], bias=bias, params_dtype=DTYPE, quant_config=_config(), prefix="mlp.gate_up_proj"
        )  # fmt: skip
        _load(layer, [gate, up], [0, 1])
        if bias:
            layer.bias.weight_loader(layer.bias, b[:64], 0)
            layer.bias.weight_loader(layer.bias, b[64:], 1)
        n = 64 // size
        rows = torch.cat([torch.arange(rank * n, (rank + 1) * n), 64 + torch.arange(rank * n, (rank + 1) * n)])
        _check(layer, _int8_reference(torch.cat([gate, up]), b, rows=rows), x)


@pytest.mark.parametrize("size", [1, 2], ids=lambda s: f"tp{s}")
@pytest.mark.parametrize("activation", ["zeropoint", "absmax"])
def test_qkv_parallel(tp, size, activation):
    q, k, v = _weights(6 * HEAD, 2 * HEAD, 2 * HEAD)
    b = torch.randn(10 * HEAD).to(DTYPE)
    x = _input(9)
    for rank in range(size):
        tp(rank, size)
        layer = vllm_linear.QKVParallelLinear(
            K, HEAD, 6, 2, bias=True, params_dtype=DTYPE, quant_config=_config(activation=activation),
            prefix="self_attn.qkv_proj",
        )  # fmt: skip
        _load(layer, [q, k, v], ["q", "k", "v"])
        for part, shard in zip(b.split([6 * HEAD, 2 * HEAD, 2 * HEAD]), "qkv", strict=True):
            layer.bias.weight_loader(layer.bias, part, shard)
        nq, nk = 6 * HEAD // size, 2 * HEAD // size
        rows = torch.cat([
            torch.arange(rank * nq, (rank + 1) * nq),
            6 * HEAD + torch.arange(rank * nk, (rank + 1) * nk),
            8 * HEAD + torch.arange(rank * nk, (rank + 1) * nk),
        ])  # fmt: skip
        _check(layer, _int8_reference(torch.cat([q, k, v]), b, rows=rows, activation=activation), x)


@pytest.mark.parametrize("size", [1, 2], ids=lambda s: f"tp{s}")
def test_row_parallel_keeps_the_scale_of_whole_rows(tp, size):
    """Each rank holds its half of K with the codes and scale of the whole row, so the weights are those of TP 1;
    the rank outputs add up to the unsharded layer's within the activation rounding of each half."""
    (W,) = _weights(80, k=2 * K)
    x = _input(12, k=2 * K)
    partial = []
    for rank in range(size):
        tp(rank, size)
        layer = vllm_linear.RowParallelLinear(
            2 * K, 80, bias=False, params_dtype=DTYPE, quant_config=_config(), prefix="mlp.down_proj",
            reduce_results=False,
        )  # fmt: skip
        _load(layer, [W], [None])
        cols = slice(rank * (2 * K // size), (rank + 1) * (2 * K // size))
        _check(layer, _int8_reference(W, None, cols=cols), x[:, cols])
        partial.append(layer.quant_method.apply(layer, x[:, cols]).float())
    whole = Int8Linear.from_linear(_linear(W, None))(x).float()
    torch.testing.assert_close(sum(partial), whole, rtol=0.05, atol=0.05 * whole.abs().max().item())


def test_replicated_with_bias_eager_and_compiled(tp):
    tp(0, 1)
    (W,) = _weights(48)
    b = torch.randn(48).to(DTYPE)
    layer = vllm_linear.ReplicatedLinear(K, 48, bias=True, params_dtype=DTYPE, quant_config=_config(), prefix="proj")
    _load(layer, [W], [None])
    layer.bias.weight_loader(layer.bias, b)
    ref = _int8_reference(W, b)
    for tokens in (3, 33):
        _check(layer, ref, _input(tokens))
        _check(layer, ref, _input(tokens), compiled=True)


def test_saved_int8_weights_load_as_they_are(tp):
    """A folder's ``weight_int8`` / ``weight_scale`` go to the layer unchanged (no re-quantization), sharded per
    rank; its empty ``weight`` placeholder is accepted and a float one refused."""
    tp(0, 1)
    gate, up = _weights(64, 64)
    saved = [Int8Linear.from_linear(_linear(W, None)) for W in (gate, up)]
    layer = vllm_linear.MergedColumnParallelLinear(
        K, [64, 64], bias=False, params_dtype=DTYPE, quant_config=_config(format_version=2), prefix="mlp.gate_up_proj"
    )
    names = {name for name, _ in layer.named_parameters()}
    assert names == {"weight", "weight_int8", "weight_scale"}  # all loaded from the folder
    for shard, ref in enumerate(saved):
        for name in ("weight_int8", "weight_scale"):
            param = getattr(layer, name)
            param.weight_loader(param, getattr(ref, name), shard)
        layer.weight.weight_loader(layer.weight, torch.zeros(0, dtype=torch.int8), shard)
    with pytest.raises(ValueError, match="holds a torch.bfloat16 weight"):
        layer.weight.weight_loader(layer.weight, gate, 0)
    with pytest.raises(ValueError, match="expected int8"):
        layer.weight_int8.weight_loader(layer.weight_int8, gate, 0)
    layer.quant_method.process_weights_after_loading(layer)
    _check(layer, _int8_reference(torch.cat([gate, up]), None), _input(6))


def test_online_layers_hold_no_float_weight(tp):
    tp(0, 1)
    layer = vllm_linear.ColumnParallelLinear(K, 64, bias=False, params_dtype=DTYPE, quant_config=_config(), prefix="p")
    (W,) = _weights(64)
    _load(layer, [W], [None])
    assert layer.weight.numel() == 0  # the only parameter: the name the model's loader looks for
    assert {n for n, _ in layer.named_buffers()} == {"weight_int8", "weight_scale"}
    assert layer.weight_int8.dtype == torch.int8 and layer.weight_int8.shape == (64, K)
    bad = W.clone()
    bad[2, 5] = float("nan")
    with pytest.raises(ValueError, match="p.weight: cannot quantize a weight holding NaN"):
        layer.weight.weight_loader(layer.weight, bad)


def test_skipped_and_fused_layers():
    config = _config(skip_modules=["down_proj"])
    config.packed_modules_mapping = {"qkv_proj": ["q_proj", "k_proj", "v_proj"]}
    layer = torch.nn.Linear(2, 2)
    assert config.get_quant_method(layer, "model.layers.0.mlp.down_proj") is None  # not a vLLM LinearBase
    assert ServingOptions.from_config({"skip_modules": ["down_proj"]}).skips(["model.layers.0.mlp.down_proj"])
    split = ServingOptions.from_config({"skip_modules": ["k_proj"]})
    with pytest.raises(ValueError, match="fused with skipped layers"):
        split.skips(["a.q_proj", "a.k_proj", "a.v_proj"])
