"""The remedies prototyped around ``Int8Linear``: each computes what the op would with the change."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from llm_int8 import Int8Linear
from llm_int8.evaluation.variants import (
    ClippedLinear,
    FloatRowsLinear,
    RelativeOutlierLinear,
    massive_values,
    wrap_linears,
)


def _layer(threshold: float = 6.0, seed: int = 0) -> tuple[nn.Linear, Int8Linear]:
    torch.manual_seed(seed)
    linear = nn.Linear(64, 48)
    return linear, Int8Linear.from_linear(linear, threshold=threshold, weight_only_max_tokens=0)


def _massive_row_input(tokens: int = 24) -> torch.Tensor:
    X = 0.05 * torch.randn(tokens, 64)
    X[5, 17] = 4.0  # a massive value in token 5: far above its row's scale, below α = 6
    X[9, 3] = 7.5  # an ordinary LLM.int8() outlier (|x| >= α)
    return X


def test_massive_values_are_relative_to_each_row():
    X = torch.tensor([[1.0, 1.0, 1.0, 40.0], [100.0, 100.0, 100.0, 100.0], [0.0, 0.0, 0.0, 0.0]])
    assert massive_values(X, beta=3.0).tolist() == [[False, False, False, True], [False] * 4, [False] * 4]


def test_relative_outlier_rule_is_the_decomposition_with_the_column_added():
    _, layer = _layer()
    X = _massive_row_input()
    wrapped = RelativeOutlierLinear(layer, beta=30.0)
    # the same columns through the op's own (absolute) rule: α = 3.9 catches dims 17 and 3 and nothing else
    reference = Int8Linear.from_linear(nn.Linear(64, 48), threshold=3.9, weight_only_max_tokens=0)
    reference.load_state_dict(layer.state_dict())
    reference.threshold = 3.9
    torch.testing.assert_close(wrapped(X), reference(X), rtol=1e-5, atol=1e-5)
    assert wrapped.extra_columns == 1
    # and it helps the token that holds the massive value
    exact = X.double() @ layer.dequantized_weight().double().T + layer.bias.double()
    err = lambda Y: ((Y.double() - exact)[5].norm() / exact[5].norm()).item()  # noqa: E731
    assert err(wrapped(X)) < 0.5 * err(layer(X))


def test_relative_outlier_rule_without_a_massive_value_is_the_layer_itself():
    _, layer = _layer()
    X = 0.05 * torch.randn(3, 24, 64)
    assert torch.equal(RelativeOutlierLinear(layer, beta=30.0)(X), layer(X))
    X = _massive_row_input()
    assert torch.equal(RelativeOutlierLinear(layer, beta=1e9)(X), layer(X))


def test_float_rows_take_only_the_flagged_tokens():
    _, layer = _layer()
    X = _massive_row_input()
    Y = FloatRowsLinear(layer, beta=30.0)(X)
    plain = layer(X)
    others = [i for i in range(X.shape[0]) if i != 5]
    assert torch.equal(Y[others], plain[others])
    expected = X[5].bfloat16().float() @ layer.dequantized_weight().T + layer.bias
    torch.testing.assert_close(Y[5], expected, rtol=1e-6, atol=1e-6)


def test_clipping_bounds_each_row_but_not_the_outlier_columns():
    _, layer = _layer()
    X = _massive_row_input()
    assert torch.equal(ClippedLinear(layer, kappa=1e6)(X), layer(X))
    seen = {}
    layer.register_forward_pre_hook(lambda m, a: seen.__setitem__("x", a[0]))
    ClippedLinear(layer, kappa=3.0)(X)
    assert seen["x"][9, 3] == 7.5  # |x| >= α: decomposed, not clipped
    rms = X[5].masked_fill(X[5].abs() >= 6, 0).pow(2).mean().sqrt()
    assert seen["x"][5, 17] == pytest.approx(3.0 * rms.item())  # the massive value below α is clipped


@pytest.mark.parametrize("only, wrapped", [(None, 2), (("b",), 1)])
def test_wrap_linears(only, wrapped):
    model = nn.Sequential()
    model.add_module("a", _layer()[1])
    model.add_module("b", _layer(seed=1)[1])
    wrap_linears(model, lambda layer: RelativeOutlierLinear(layer, 30.0), only=only)
    assert sum(isinstance(m, RelativeOutlierLinear) for m in model) == wrapped
