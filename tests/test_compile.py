"""``torch.compile(model, fullgraph=True)`` on an int8 model: one ``llm_int8::int8_linear`` node per layer.

The compiler backend here is ``aot_eager`` (Dynamo + AOTAutograd, which run the op's fake
implementation and its autograd formula) rather than Inductor, whose C++ build takes a minute on a
two-core machine; Inductor only lowers the same graph (measured in ``benchmarks/bench_e2e.py``).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import llm_int8
from llm_int8 import Int8Linear
from llm_int8.ops import custom_op

pytestmark = pytest.mark.skipif(not custom_op.available(), reason="torch.library.custom_op needs torch >= 2.4")


def _model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 48), nn.GELU(), nn.Linear(48, 32, bias=False), nn.ReLU(), nn.Linear(32, 16))
    return llm_int8.quantize_model(model)


def _input(M: int = 5) -> torch.Tensor:
    x = torch.randn(2, M, 64)
    x[..., 3] = 20.0  # an outlier dim: the data-dependent part of the forward
    return x


def _op_nodes(gm: torch.fx.GraphModule) -> int:
    target = torch.ops.llm_int8.int8_linear.default
    return sum(1 for node in gm.graph.nodes if node.target in (target, torch.ops.llm_int8.int8_linear))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_opcheck(dtype):
    torch.manual_seed(0)
    W_i8 = torch.randint(-127, 128, (24, 48), dtype=torch.int8)
    s_w = torch.rand(24) / 100
    x = torch.randn(7, 48, dtype=dtype)
    x[:, 5] = 9.0
    S, W_S = torch.tensor([1, 30]), torch.randn(24, 2, dtype=dtype)
    samples = [
        (x, W_i8, s_w, torch.randn(24, dtype=dtype), 6.0, "zeropoint", 0, None, None),
        (x, W_i8, s_w, None, 6.0, "absmax", None, S, W_S),
        (x.requires_grad_(), W_i8, s_w, None, 0.0, "zeropoint", 0, None, None),
    ]
    for args in samples:
        torch.library.opcheck(torch.ops.llm_int8.int8_linear.default, args)


def test_fullgraph_one_op_per_layer_same_output():
    model, x = _model(), _input()
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    with torch.no_grad():
        expected = model(x)
        explained = torch._dynamo.explain(model)(x)
        assert explained.graph_count == 1 and explained.graph_break_count == 0
        out = torch.compile(model, fullgraph=True, backend=backend)(x)
    assert torch.equal(out, expected)  # the eager kernels run inside the op: bit for bit
    assert len(graphs) == 1 and _op_nodes(graphs[0]) == sum(isinstance(m, Int8Linear) for m in model.modules())


def test_compiled_gradients_match_eager():
    model = _model()
    model[0].bias.requires_grad_(True)
    x = _input(3)
    x_eager, x_compiled = x.clone().requires_grad_(), x.clone().requires_grad_()
    model(x_eager).square().sum().backward()
    grad_bias = model[0].bias.grad.clone()
    model[0].bias.grad = None
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    compiled(x_compiled).square().sum().backward()
    torch.testing.assert_close(x_compiled.grad, x_eager.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model[0].bias.grad, grad_bias, rtol=1e-5, atol=1e-6)


def test_op_reuses_the_packed_layout_of_a_weight():
    layer = _model()[0]
    x = _input(20)  # above the weight-only limit: the int8 x int8 path, which packs
    with torch.no_grad():
        torch.ops.llm_int8.int8_linear(x, layer.weight_int8, layer.weight_scale, None, 6.0, "absmax", 0, None, None)
        packed, _ = custom_op._caches_for(layer.weight_int8)
        first = packed.get(layer.weight_int8)
        torch.ops.llm_int8.int8_linear(x, layer.weight_int8, layer.weight_scale, None, 6.0, "absmax", 0, None, None)
        assert packed.get(layer.weight_int8) is first
