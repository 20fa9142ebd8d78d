"""``int8_linear``: the LLM.int8() forward ``Y = X W^T + b`` with mixed-precision decomposition.

Steps, for ``X`` (tokens, K) and the stored int8 weight ``W_i8`` (N, K) with row scales ``s_w``:

1. ``O`` = outlier feature dims of ``X`` (``|x| >= threshold``; non-finite always).
2. Row-wise absmax quantization of ``X`` with the columns in ``O`` zeroed: ``X_i8``, ``s_x``.
3. ``C_i32 = X_i8 W_i8^T`` on the integer GEMM (``int8_mm``).
4. Denormalize by the outer product ``s_x ⊗ s_w``, add ``X[:, O] (W_i8[:, O] s_w)^T`` computed in
   float, add the bias, cast to ``X``'s dtype.

The plain-PyTorch oracle is ``llm_int8.primitives.int8_linear_reference``.

Gradients flow to ``X`` only (the int8 weight is frozen): ``dX = dY · W`` with ``W`` dequantized,
as in bitsandbytes, so adapters can be trained on a frozen int8 model.
"""

from __future__ import annotations

import torch

from ..primitives import outlier_columns, rowwise_quantize
from .int8_mm import int8_mm

__all__ = ["int8_linear"]


def _check_inputs(x, weight_int8, weight_scale, bias, threshold):
    if not x.is_floating_point():
        raise TypeError(f"int8_linear: input must be a float tensor, got {x.dtype}")
    if weight_int8.dtype != torch.int8 or weight_int8.dim() != 2:
        raise TypeError(
            f"int8_linear: weight must be a 2-D int8 tensor, got {weight_int8.dtype} {tuple(weight_int8.shape)}"
        )
    N, K = weight_int8.shape
    if x.dim() == 0 or x.shape[-1] != K:
        raise ValueError(
            f"int8_linear: input has {x.shape[-1] if x.dim() else 'no'} features in its last "
            f"dimension (shape {tuple(x.shape)}), but the layer expects in_features={K}"
        )
    if weight_scale.shape != (N,):
        raise ValueError(f"int8_linear: weight_scale must have shape ({N},), got {tuple(weight_scale.shape)}")
    if bias is not None and bias.shape != (N,):
        raise ValueError(f"int8_linear: bias must have shape ({N},), got {tuple(bias.shape)}")
    if threshold < 0:
        raise ValueError(f"int8_linear: threshold must be >= 0, got {threshold}")


def _forward_2d(X: torch.Tensor, W_i8: torch.Tensor, s_w: torch.Tensor, threshold: float) -> torch.Tensor:
    """LLM.int8() product of (M, K) ``X`` with the int8 weight; float32 (M, N), no bias."""
    O = outlier_columns(X, threshold)  # (K,) bool
    outlier_idx = O.nonzero().squeeze(1)  # (|O|,)
    has_outliers = outlier_idx.numel() > 0
    X_regular = X.index_fill(1, outlier_idx, 0) if has_outliers else X  # (M, K)
    X_i8, s_x = rowwise_quantize(X_regular, dim=-1)  # (M, K) int8, (M,) float32
    C_i32 = int8_mm(X_i8, W_i8)  # (M, N)
    C = C_i32.float().mul_(s_x[:, None]).mul_(s_w.float()[None, :])  # (s_x ⊗ s_w) · C_i32
    if has_outliers:
        X_O = X.index_select(1, outlier_idx).float()  # (M, |O|)
        W_O = W_i8.index_select(1, outlier_idx).float() * s_w.float()[:, None]  # (N, |O|)
        C.addmm_(X_O, W_O.T)
    return C


class _Int8LinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, X, W_i8, s_w, threshold):
        ctx.save_for_backward(W_i8, s_w)
        ctx.x_dtype = X.dtype
        return _forward_2d(X, W_i8, s_w, threshold)  # float32; cast by the caller

    @staticmethod
    def backward(ctx, grad_C):
        W_i8, s_w = ctx.saved_tensors
        grad_X = None
        if ctx.needs_input_grad[0]:
            W = W_i8.float() * s_w.float()[:, None]  # (N, K) dequantized
            grad_X = (grad_C.float() @ W).to(ctx.x_dtype)
        return grad_X, None, None, None


def int8_linear(
    x: torch.Tensor,
    weight_int8: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    threshold: float = 6.0,
) -> torch.Tensor:
    """LLM.int8() linear layer: ``x`` (..., K) float -> (..., N) in ``x``'s dtype.

    ``threshold`` is α of the decomposition; 0 disables it (pure vector-wise int8).

    NaN/Inf policy: a column of ``x`` that holds a non-finite value is always computed in float,
    so non-finite values propagate to exactly the outputs ``nn.Linear`` would make non-finite,
    and never corrupt the int8 scale of other values.
    """
    _check_inputs(x, weight_int8, weight_scale, bias, threshold)
    N, K = weight_int8.shape
    lead = x.shape[:-1]
    X = x.reshape(-1, K)  # (tokens, in_features)
    if X.shape[0] == 0:
        out = x.new_zeros(*lead, N)
        return out if bias is None else out + bias.to(x.dtype)
    if torch.is_grad_enabled() and x.requires_grad:
        C = _Int8LinearFunction.apply(X, weight_int8, weight_scale, threshold)  # float32 (tokens, N)
    else:
        C = _forward_2d(X, weight_int8, weight_scale, threshold)  # float32 (tokens, N)
    if bias is not None:
        # out of place: under autograd the bias may itself be trained
        C = C + bias.float() if bias.requires_grad else C.add_(bias.float())
    return C.to(x.dtype).reshape(*lead, N)  # (..., out_features)
