"""Calibrated float dims: input dims always computed in float with their float weight columns."""

from __future__ import annotations

import json

import pytest
import torch
from _hf_tiny import VOCAB, logits, tiny_model
from torch import nn
from transformers import AutoModelForCausalLM

import llm_int8
from llm_int8 import Int8Linear, LLMInt8Config, quantize_model
from llm_int8.analysis import calibrate_outlier_dims
from llm_int8.ops import int8_linear
from llm_int8.primitives import int8_linear_reference, rowwise_quantize


def _layer_with_outlier_dim(dim=3, K=32, N=24, M=16):
    X = torch.randn(M, K)
    X[:, dim] = -8.0 + torch.randn(M)  # a systematic outlier dim, as in real models
    linear = nn.Linear(K, N)
    with torch.no_grad():
        linear.weight[:, dim] *= 5  # its weight column also sets every row absmax
    return X, linear


@pytest.mark.parametrize("activation", ["absmax", "zeropoint"])
def test_int8_linear_with_float_columns_matches_reference(activation):
    X, linear = _layer_with_outlier_dim()
    X[2, 10] = 7.0  # a dynamic outlier outside S: still the dequantized int8 column
    S = torch.tensor([3, 20])
    W = linear.weight.detach()
    W_i8, s_w = rowwise_quantize(W.index_fill(1, S, 0), dim=-1)
    cols = (S, W[:, S].clone())
    got = int8_linear(X, W_i8, s_w, linear.bias, 6.0, activation=activation, float_columns=cols)
    ref = int8_linear_reference(X.double(), W_i8, s_w, linear.bias.double(), 6.0, activation, cols).float()
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    # the codes of S are not read, and the float columns enter linearly, as X_S W_S^T
    garbage = W_i8.clone()
    garbage[:, S] = 99
    again = int8_linear(X, garbage, s_w, linear.bias, 6.0, activation=activation, float_columns=cols)
    torch.testing.assert_close(again, got, rtol=0, atol=0)
    dW = torch.randn(24, 2)
    moved = int8_linear(X, W_i8, s_w, linear.bias, 6.0, activation=activation, float_columns=(S, cols[1] + dW))
    torch.testing.assert_close(moved - got, X[:, S] @ dW.T, rtol=1e-4, atol=1e-4)


def test_float_dims_reduce_the_error_against_float64():
    X, linear = _layer_with_outlier_dim()
    exact = X.double() @ linear.weight.double().T + linear.bias.double()
    plain = Int8Linear.from_linear(linear)
    calibrated = Int8Linear.from_linear(linear, float_dims=[3])

    def err(m):
        return ((m(X).double() - exact).norm() / exact.norm()).item()

    assert err(calibrated) < 0.5 * err(plain)
    assert calibrated.weight_int8[:, 3].eq(0).all()  # codes 0 there, out of the row absmax
    assert (calibrated.weight_scale <= plain.weight_scale).all() and (
        calibrated.weight_scale < plain.weight_scale
    ).any()
    torch.testing.assert_close(calibrated.dequantized_weight()[:, 3], linear.weight[:, 3].detach())


def test_float_dims_on_the_weight_only_and_backward_paths():
    X, linear = _layer_with_outlier_dim()
    layer = Int8Linear.from_linear(linear, float_dims=[3], weight_only_max_tokens=0)
    decode = Int8Linear.from_linear(linear, float_dims=[3], weight_only_max_tokens=10**6)
    exact = X @ linear.weight.detach().T + linear.bias.detach()
    # the weight-only kernel adds the float columns too (X in bf16 there: looser tolerance)
    torch.testing.assert_close(decode(X), exact, rtol=0.05, atol=0.1)
    x = X.clone().requires_grad_(True)
    layer(x).sum().backward()
    torch.testing.assert_close(x.grad[:, 3], linear.weight.detach()[:, 3].sum().expand(16), rtol=1e-5, atol=1e-5)


def test_state_dict_round_trip_and_old_states():
    _, linear = _layer_with_outlier_dim()
    calibrated = Int8Linear.from_linear(linear, float_dims=[3, 7])
    state = calibrated.state_dict()
    assert state["float_dims"].tolist() == [3, 7] and state["float_weight"].shape == (24, 2)
    fresh = Int8Linear(32, 24)
    fresh.load_state_dict(state)  # resized to the stored |S|
    X = torch.randn(5, 32)
    torch.testing.assert_close(fresh(X), calibrated(X), rtol=0, atol=0)
    plain = Int8Linear.from_linear(linear)
    assert "float_dims" not in plain.state_dict()  # a layer without them saves as before
    fresh.load_state_dict(plain.state_dict())  # and loading such a state clears them
    assert fresh.float_dims is None and fresh.float_weight is None
    empty = {**plain.state_dict(), "float_dims": torch.zeros(0, dtype=torch.int64), "float_weight": torch.zeros(24, 0)}
    fresh.load_state_dict(empty)  # an empty pair is the same as none (strict: not unexpected)
    assert fresh.float_dims is None
    state.pop("float_weight")
    with pytest.raises(RuntimeError, match="come together"):
        Int8Linear(32, 24).load_state_dict(state)


@pytest.mark.parametrize(
    ("dims", "error"),
    [([32], ValueError), ([1, 1], ValueError), ([-1], ValueError), ([0.5], TypeError), ([[1]], TypeError)],
)
def test_bad_float_dims_are_refused(dims, error):
    _, linear = _layer_with_outlier_dim()
    with pytest.raises(error, match="float_dims"):
        Int8Linear.from_linear(linear, float_dims=dims)


def test_calibration_finds_a_planted_outlier_dim():
    model = tiny_model("llama")
    with torch.no_grad():  # dim 5 of every layer input that reads the residual stream: large on every token
        model.model.embed_tokens.weight[:, 5] = 40.0
    ids = torch.randint(0, VOCAB, (2, 16))
    dims = calibrate_outlier_dims(model, ids, threshold=6.0)
    q = "model.layers.0.self_attn.q_proj"
    assert 5 in dims[q] and "lm_head" not in dims
    assert all(isinstance(d, int) for v in dims.values() for d in v)
    with pytest.raises(ValueError, match="min_fraction"):
        calibrate_outlier_dims(model, ids, min_fraction=0)
    converted = quantize_model(model, float_dims=dims)
    assert converted.get_submodule(q).float_dims.tolist() == list(dims[q])
    with pytest.raises(ValueError, match="not converted linear layers"):
        quantize_model(tiny_model("llama"), float_dims={"model.nope": [1]})


def _calibrated_tiny(family="llama"):
    model = tiny_model(family)
    first = next(n for n, m in model.named_modules() if isinstance(m, nn.Linear))
    return quantize_model(model, float_dims={first: [2, 9]}), first


def test_calibrated_model_saves_and_reloads_both_ways(tmp_path):
    model, first = _calibrated_tiny()
    out = llm_int8.save_pretrained(model, tmp_path / "int8")
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["float_dims"] == {first: [2, 9]}
    ours = llm_int8.from_pretrained(out, progress=False)
    assert ours.get_submodule(first).float_dims.tolist() == [2, 9]
    torch.testing.assert_close(logits(ours), logits(model), rtol=0, atol=0)
    theirs = AutoModelForCausalLM.from_pretrained(out)  # transformers' own loader, through our quantizer
    torch.testing.assert_close(logits(theirs), logits(model), rtol=0, atol=0)
    with pytest.raises(ValueError, match="bitsandbytes format cannot hold"):
        llm_int8.save_bitsandbytes(model, tmp_path / "bnb")
    assert not (tmp_path / "bnb").exists()


def test_quantization_config_float_dims_apply_to_a_float_checkpoint(tmp_path):
    tiny_model("llama").save_pretrained(tmp_path)
    layer = "model.layers.0.mlp.down_proj"
    hf = AutoModelForCausalLM.from_pretrained(tmp_path, quantization_config=LLMInt8Config(float_dims={layer: [4]}))
    mem, _ = quantize_model(tiny_model("llama"), float_dims={layer: [4]}), None
    assert hf.get_submodule(layer).float_dims.tolist() == [4]
    torch.testing.assert_close(logits(hf), logits(mem), rtol=0, atol=0)
