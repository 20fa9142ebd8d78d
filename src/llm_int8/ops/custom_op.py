"""``llm_int8::int8_linear``: the LLM.int8() forward as one ``torch.library`` custom op, for ``torch.compile``.

Traced op by op, the forward has data-dependent steps (the outlier set ``O`` has as many columns as
the input makes it have; the CPU kernels take opaque packed weights), so Dynamo would break the
graph around them, and ``fullgraph=True`` would fail. As one opaque op with a fake implementation
(output shape and dtype from the input shapes alone) and an autograd formula, a compiled model sees
one node per layer, and the eager kernels run inside it unchanged: the numerics are those of
``int8_linear`` bit for bit.

``linear.int8_linear`` calls the op only while Dynamo traces (``torch.compiler.is_compiling()``), so eager
calls keep their few microseconds of Python. Inside the op the packed layout and the row sums of a
weight come from a cache per weight tensor (a weak reference to it; the layout is rebuilt when the
tensor is written to, as ``PackedWeightCache`` does for ``Int8Linear``).

Gradients: to ``x`` (``dY · W`` with ``W`` dequantized, the float columns as stored) and to the
bias (``Σ dY``); the int8 weight is frozen. Needs ``torch.library.custom_op`` (torch >= 2.4);
without it, ``OP`` is ``None`` and compiled models trace the eager code (with graph breaks).
"""

import weakref
from typing import Optional

import torch

from .forward import dequantized_weight, forward
from .kernels.epilogue import compute_weight_row_sums
from .prepack import PackedWeightCache

__all__ = ["OP", "OP_NAME", "available"]

OP_NAME = "llm_int8::int8_linear"

_caches: dict = {}  # id(weight_int8) -> (weak reference to it, packed-layout cache, row-sum cache)


def _caches_for(weight_int8: torch.Tensor):
    """The packed-layout and row-sum caches of this weight tensor, dropped when the tensor is freed."""
    key = id(weight_int8)
    entry = _caches.get(key)
    if entry is None or entry[0]() is not weight_int8:
        ref = weakref.ref(weight_int8, lambda _, key=key: _caches.pop(key, None))
        entry = (ref, PackedWeightCache(), PackedWeightCache(compute_weight_row_sums))
        _caches[key] = entry
    return entry[1], entry[2]


# no `from __future__ import annotations` in this file, and typing.Optional: torch.library infers the
# op's schema from these annotations, and older torch releases read neither strings nor `X | None`
def _forward(
    x: torch.Tensor,
    weight_int8: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: Optional[torch.Tensor],  # noqa: UP045
    threshold: float,
    activation: str,
    weight_only_max_tokens: Optional[int],  # noqa: UP045
    float_dims: Optional[torch.Tensor],  # noqa: UP045
    float_weight: Optional[torch.Tensor],  # noqa: UP045
    batch_invariant: bool = False,
    stat_max: Optional[torch.Tensor] = None,  # noqa: UP045
    stat_min: Optional[torch.Tensor] = None,  # noqa: UP045
) -> torch.Tensor:
    packed, row_sums = _caches_for(weight_int8) if x.device.type == "cpu" else (None, None)
    with torch.no_grad():  # the op's gradient is its registered formula, not the eager autograd.Function
        float_columns = None if float_dims is None else (float_dims, float_weight)
        statistics = None if stat_max is None else (stat_max, stat_min)
        return forward(
            x, weight_int8, weight_scale, bias, threshold, activation, packed, row_sums, weight_only_max_tokens,
            float_columns, batch_invariant, statistics,
        )  # fmt: skip


def _fake(x, weight_int8, weight_scale, bias, threshold, activation, weight_only_max_tokens, float_dims, float_weight,
          batch_invariant=False, stat_max=None, stat_min=None):  # fmt: skip
    return x.new_empty(*x.shape[:-1], weight_int8.shape[0])  # (..., out_features) in x's dtype


def _setup_context(ctx, inputs, output) -> None:
    x, weight_int8, weight_scale, bias, _, _, _, float_dims, float_weight = inputs[:9]
    ctx.save_for_backward(weight_int8, weight_scale, float_dims, float_weight)
    ctx.x_dtype = x.dtype
    ctx.bias_dtype = None if bias is None else bias.dtype


def _backward(ctx, grad_out):
    weight_int8, weight_scale, float_dims, float_weight = ctx.saved_tensors
    grad_x = grad_bias = None
    if ctx.needs_input_grad[0]:
        float_columns = None if float_dims is None else (float_dims, float_weight)
        W = dequantized_weight(weight_int8, weight_scale, float_columns)  # (N, K) float32
        grad_x = (grad_out.float() @ W).to(ctx.x_dtype)
    if ctx.needs_input_grad[3]:
        grad_bias = grad_out.reshape(-1, grad_out.shape[-1]).float().sum(0).to(ctx.bias_dtype)
    return grad_x, None, None, grad_bias, None, None, None, None, None, None, None, None


def _register():
    if not hasattr(torch.library, "custom_op"):  # torch < 2.4
        return None
    op = torch.library.custom_op(OP_NAME, mutates_args=())(_forward)
    op.register_fake(_fake)
    op.register_autograd(_backward, setup_context=_setup_context)
    return op


OP = _register()
"""The registered op (``torch.ops.llm_int8.int8_linear``), or ``None`` where torch has no ``custom_op``."""


def available() -> bool:
    return OP is not None
