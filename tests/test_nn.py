"""Int8Linear: explicit int8 state, conversion, state_dict, devices and dtypes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from llm_int8 import Int8Linear
from llm_int8.ops.choice import cpu as cpu_choice
from llm_int8.ops.forward import weight_only_limit
from llm_int8.ops.kernels import probes
from llm_int8.primitives import int8_linear_reference, int8_weight_only_reference

needs_weight_only = pytest.mark.skipif(
    not probes.has_weight_int8pack_mm(), reason="torch._weight_int8pack_mm does not run on this CPU build"
)


def _linear(K=40, N=24, bias=True, dtype=torch.float32):
    return nn.Linear(K, N, bias=bias).to(dtype)


def test_from_linear_stores_only_int8_weight_and_float32_scales():
    lin = _linear()
    q = Int8Linear.from_linear(lin)
    assert q.weight_int8.dtype == torch.int8 and q.weight_int8.shape == (24, 40)
    assert q.weight_scale.dtype == torch.float32 and q.weight_scale.shape == (24,)
    assert [n for n, _ in q.named_parameters()] == ["bias"]  # no float weight kept
    assert set(q.state_dict()) == {"weight_int8", "weight_scale", "bias"}
    assert q.memory_bytes() == 24 * 40 + 24 * 4 + 24 * 4
    # the stored weight is the row-wise (vector-wise) quantization of the float weight
    err = (q.dequantized_weight() - lin.weight).abs()
    assert torch.all(err <= q.weight_scale[:, None] / 2 * (1 + 1e-5))


@pytest.mark.parametrize("activation", ["absmax", "zeropoint"])
def test_forward_is_the_llm_int8_reference(activation):
    lin = _linear()
    # weight_only_max_tokens=0: the LLM.int8() product even for few tokens (the few-token path is tested below)
    q = Int8Linear.from_linear(lin, threshold=6.0, activation=activation, weight_only_max_tokens=0)
    X = torch.randn(11, 40) + 0.3
    X[:, 7] *= 20
    ref = int8_linear_reference(X.double(), q.weight_int8, q.weight_scale, q.bias, 6.0, activation=activation)
    torch.testing.assert_close(q(X).double(), ref, rtol=0, atol=1e-5 * ref.abs().max().item())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_bias_keeps_its_dtype_and_output_follows_input(dtype):
    q = Int8Linear.from_linear(_linear(dtype=dtype))
    assert q.bias.dtype == dtype
    assert q(torch.randn(3, 40, dtype=dtype)).dtype == dtype


def test_state_dict_round_trip_gives_identical_outputs():
    q = Int8Linear.from_linear(_linear(), threshold=4.0)
    fresh = Int8Linear(40, 24, bias=True, threshold=4.0)
    fresh.load_state_dict(q.state_dict())
    X = torch.randn(5, 40) * 3
    assert torch.equal(q(X), fresh(X))


def test_state_dict_assign_onto_meta_module():
    q = Int8Linear.from_linear(_linear(bias=False))
    with torch.device("meta"):
        shell = Int8Linear(40, 24, bias=False)
    shell.load_state_dict(q.state_dict(), assign=True)
    X = torch.randn(2, 40)
    assert torch.equal(shell(X), q(X))


def test_to_dtype_keeps_int8_codes_and_float32_scales():
    q = Int8Linear.from_linear(_linear())
    codes = q.weight_int8.clone()
    q = q.to(torch.bfloat16)
    assert q.weight_int8.dtype == torch.int8 and torch.equal(q.weight_int8, codes)
    assert q.weight_scale.dtype == torch.float32
    assert q.bias.dtype == torch.bfloat16
    q.half()
    assert q.weight_scale.dtype == torch.float32


def test_to_meta_device_moves_every_tensor():
    q = Int8Linear.from_linear(_linear()).to("meta")
    assert all(t.is_meta for t in (q.weight_int8, q.weight_scale, q.bias))


def test_repr_names_shape_and_threshold():
    text = repr(Int8Linear.from_linear(_linear(bias=False), threshold=5.5))
    assert "in_features=40" in text and "out_features=24" in text and "threshold=5.5" in text and "bias=False" in text


def test_conv1d_from_transformers_is_converted_with_its_transposed_weight():
    from transformers.pytorch_utils import Conv1D

    conv = Conv1D(nf=24, nx=40)
    nn.init.normal_(conv.weight, std=0.2)
    nn.init.normal_(conv.bias)
    q = Int8Linear.from_linear(conv)
    assert q.weight_int8.shape == (24, 40)
    X = torch.randn(6, 40)
    exact = conv(X).double()
    assert ((q(X).double() - exact).norm() / exact.norm()) < 0.02


def test_bad_construction_is_refused():
    with pytest.raises(ValueError, match="threshold"):
        Int8Linear(4, 4, threshold=-1)
    with pytest.raises(ValueError, match="threshold"):
        Int8Linear(4, 4, threshold=float("nan"))
    with pytest.raises(ValueError, match="positive"):
        Int8Linear(0, 4)
    with pytest.raises(ValueError, match="activation must be one of"):
        Int8Linear(4, 4, activation="asym")
    lin = _linear()
    with torch.no_grad():
        lin.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        Int8Linear.from_linear(lin)
    with pytest.raises(ValueError, match="meta"):
        Int8Linear.from_linear(nn.Linear(4, 4, device="meta"))
    with pytest.raises(TypeError, match="nn.Linear"):
        Int8Linear.from_linear(nn.Conv2d(3, 3, 1))


def test_wrong_in_features_is_a_clear_error():
    q = Int8Linear.from_linear(_linear())
    with pytest.raises(ValueError, match="in_features=40"):
        q(torch.randn(3, 39))


def test_frozen_weight_gradient_reaches_an_adapter_below():
    """A LoRA-style adapter trained through a frozen int8 layer gets the float layer's gradient."""
    lin = _linear()
    q = Int8Linear.from_linear(lin)
    adapter = nn.Linear(40, 40)
    X = torch.randn(8, 40)
    q(adapter(X)).pow(2).sum().backward()
    grad_int8 = adapter.weight.grad.clone()
    adapter.zero_grad()
    lin(adapter(X)).pow(2).sum().backward()
    rel = (grad_int8 - adapter.weight.grad).norm() / adapter.weight.grad.norm()
    assert rel < 0.03
    assert q.weight_int8.grad is None and not q.bias.requires_grad


def test_zeropoint_layer_saves_the_same_state_and_follows_weight_changes():
    lin = _linear()
    q = Int8Linear.from_linear(lin, activation="zeropoint", weight_only_max_tokens=0)
    assert set(q.state_dict()) == {"weight_int8", "weight_scale", "bias"}  # row sums are derived, not saved
    assert "activation=zeropoint" in repr(q)
    X = torch.randn(12, 40) + 1.0
    before = q(X)
    # the cached row sums follow an in-place write to the weight (load_state_dict copies in place)
    other = Int8Linear.from_linear(_linear(), activation="zeropoint", weight_only_max_tokens=0)
    q.load_state_dict(other.state_dict())
    assert torch.equal(q(X), other(X)) and not torch.equal(q(X), before)
    ref = int8_linear_reference(X.double(), q.weight_int8, q.weight_scale, q.bias, 6.0, activation="zeropoint")
    torch.testing.assert_close(q(X).double(), ref, rtol=0, atol=1e-5 * ref.abs().max().item())


@needs_weight_only
def test_few_tokens_take_the_weight_only_path_by_default():

    q = Int8Linear.from_linear(_linear(K=48))
    assert q.weight_only_max_tokens is None and weight_only_limit(48, 24) == cpu_choice.AUTO_MAX_TOKENS
    assert weight_only_limit(4096, 4096) == 1 and weight_only_limit(4096, 11008) == 0
    X = torch.randn(1, 48)
    ref = int8_weight_only_reference(X.double(), q.weight_int8, q.weight_scale, q.bias)
    torch.testing.assert_close(q(X).double(), ref, rtol=0, atol=2**-8 * ref.abs().max().item())
    # decoding alone builds neither the packed copy of the weight nor its row sums
    assert not q._packed_weight.is_built and not q._row_sums.is_built
    q(torch.randn(cpu_choice.AUTO_MAX_TOKENS + 1, 48))
    assert q._row_sums.is_built  # the int8 x int8 path ran and built what it needs
    q.weight_only_max_tokens = 0  # off: the LLM.int8() product for every input
    ref8 = int8_linear_reference(X.double(), q.weight_int8, q.weight_scale, q.bias, 6.0, activation=q.activation)
    torch.testing.assert_close(q(X).double(), ref8, rtol=0, atol=1e-5 * ref8.abs().max().item())


def test_weight_only_path_only_for_k_a_multiple_of_16():
    # torch's x86 kernel has no remainder loop over K: other K must take the int8 x int8 path
    from llm_int8.ops.kernels import weight_only

    q = Int8Linear.from_linear(_linear(K=40))
    assert not weight_only.available(torch.device("cpu"), 40)
    X = torch.randn(2, 40)
    ref = int8_linear_reference(X.double(), q.weight_int8, q.weight_scale, q.bias, 6.0, activation=q.activation)
    torch.testing.assert_close(q(X).double(), ref, rtol=0, atol=1e-5 * ref.abs().max().item())
    with pytest.raises(ValueError, match="in_features % 16"):
        weight_only.int8_weight_only_linear(X, q.weight_int8, q.weight_scale, q.bias)


@needs_weight_only
def test_weight_only_path_takes_a_misaligned_view():
    q = Int8Linear.from_linear(_linear(K=64), weight_only_max_tokens=8)
    flat = torch.randn(1 + 3 * 64, dtype=torch.bfloat16)
    X = flat[1:].view(3, 64)  # starts 2 bytes into its storage: not aligned for the kernel's loads
    assert X.data_ptr() % 64 and torch.equal(q(X), q(X.clone()))  # as for an aligned copy
    ref = int8_weight_only_reference(X.double(), q.weight_int8, q.weight_scale, q.bias)
    # the kernel's bf16 output, then the bf16 result: two roundings
    torch.testing.assert_close(q(X).double(), ref, rtol=0, atol=2**-7 * ref.abs().max().item())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("lead", [(3,), (2, 5), (0,)])
def test_meta_tensors_give_the_shape_and_dtype_of_nn_linear(dtype, lead):
    # tools infer shapes on meta tensors: no data, so no outlier search (torch.nonzero has no meta kernel)
    linear = nn.Linear(64, 24)
    layer = Int8Linear.from_linear(linear).to("meta")
    x = torch.empty(*lead, 64, dtype=dtype, device="meta", requires_grad=True)
    want = linear.to(device="meta", dtype=dtype)(x)
    got = layer(x)
    assert (got.shape, got.dtype, got.device) == (want.shape, want.dtype, want.device)
    assert got.requires_grad
    with pytest.raises(ValueError, match="in_features=64"):
        layer(torch.empty(3, 63, device="meta"))
