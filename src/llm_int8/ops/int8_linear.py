"""``int8_linear``: the LLM.int8() forward ``Y = X W^T + b`` with mixed-precision decomposition.

Steps, for ``X`` (tokens, K) and the stored int8 weight ``W_i8`` (N, K) with row scales ``s_w``:

1. ``O`` = outlier feature dims of ``X`` (``|x| >= threshold``; non-finite always).
2. Row-wise absmax quantization of ``X`` with the columns in ``O`` zeroed: ``X_i8``, ``s_x``.
3. ``C_i32 = X_i8 W_i8^T`` on the integer GEMM (``int8_mm``'s backends, read as float32).
4. Denormalize by the outer product ``s_x ⊗ s_w``, add ``X[:, O] (W_i8[:, O] s_w)^T`` computed in
   float, add the bias, cast to ``X``'s dtype.

The plain-PyTorch oracle is ``llm_int8.primitives.int8_linear_reference``.

Gradients flow to ``X`` only (the int8 weight is frozen): ``dX = dY · W`` with ``W`` dequantized,
as in bitsandbytes, so adapters can be trained on a frozen int8 model.
"""

from __future__ import annotations

import torch

from ..primitives import INT8_MAX
from .int8_mm import int8_mm_float
from .prepack import PackedWeight

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


def _quantize_activations(X: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Steps 1-2 from one ``|X|``: outlier dims ``O`` and the row-wise int8 codes of ``X`` without them.

    Bit-identical to ``outlier_columns(X, threshold)`` followed by
    ``rowwise_quantize(X.index_fill(1, O, 0))``, which read ``X`` three times and copy it twice.
    Returns the codes ``X_i8`` (M, K) as float32 integers in [-127, 127] (zero in ``O``; the CPU
    kernels read them in that form), ``s_x`` (M,) float32 and the indices of ``O``.
    """
    X = X.float()  # (M, K); no copy for float32
    X_abs = X.abs()  # (M, K), the only pass over X besides the scaling below
    col_absmax = X_abs.amax(dim=0)  # (K,); amax propagates NaN
    # "not (max < t)" so that a NaN column is an outlier for every threshold (see outlier_columns)
    O = ~(col_absmax < threshold) if threshold > 0 else ~torch.isfinite(col_absmax)
    outlier_idx = O.nonzero().squeeze(1)  # (|O|,)
    if outlier_idx.numel():
        X_abs.index_fill_(1, outlier_idx, 0)
    absmax = X_abs.amax(dim=1)  # (M,)
    # 127 / absmax; an all-zero row gets codes 0 and s_x 0 (rowwise_quantize gets the same codes
    # from 0 * inf = NaN cast to int8, which is 0 on CPU, but explicitly is better)
    inv_step = torch.where(absmax > 0, INT8_MAX / absmax, 0.0)  # (M,)
    X_scaled = X * inv_step[:, None]  # (M, K)
    if outlier_idx.numel():
        X_scaled.index_fill_(1, outlier_idx, 0)
    X_codes = X_scaled.round_().clamp_(-INT8_MAX, INT8_MAX)  # round half to even, as rowwise_quantize
    if torch.isinf(inv_step).any():
        # absmax < 127 / float32 max: nonzero entries became +-inf -> +-127 (as in rowwise_quantize),
        # zeros 0 * inf = NaN, which must be code 0 before any kernel reads it
        X_codes.nan_to_num_(nan=0.0)
    return X_codes, absmax / INT8_MAX, outlier_idx


def _forward_2d(
    X: torch.Tensor, W_i8: torch.Tensor, s_w: torch.Tensor, threshold: float, packed: PackedWeight | None
) -> torch.Tensor:
    """LLM.int8() product of (M, K) ``X`` with the int8 weight; float32 (M, N), no bias."""
    X_codes, s_x, outlier_idx = _quantize_activations(X, threshold)  # (M, K), (M,), (|O|,)
    C = int8_mm_float(X_codes, W_i8, packed=packed)  # (M, N) float32(C_i32)
    C.mul_(s_x[:, None]).mul_(s_w.float()[None, :])  # (s_x ⊗ s_w) · C_i32
    if outlier_idx.numel():
        X_O = X.index_select(1, outlier_idx).float()  # (M, |O|)
        # gather: 1.5-3x faster than index_select on dim 1 for a (N, K) int8 weight (torch 2.13 CPU)
        W_O = W_i8.gather(1, outlier_idx.expand(W_i8.shape[0], -1)).float() * s_w.float()[:, None]  # (N, |O|)
        C.addmm_(X_O, W_O.T)
    return C


class _Int8LinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, X, W_i8, s_w, threshold, packed):
        ctx.save_for_backward(W_i8, s_w)
        ctx.x_dtype = X.dtype
        return _forward_2d(X, W_i8, s_w, threshold, packed)  # float32; cast by the caller

    @staticmethod
    def backward(ctx, grad_C):
        W_i8, s_w = ctx.saved_tensors
        grad_X = None
        if ctx.needs_input_grad[0]:
            W = W_i8.float() * s_w.float()[:, None]  # (N, K) dequantized
            grad_X = (grad_C.float() @ W).to(ctx.x_dtype)
        return grad_X, None, None, None, None


def int8_linear(
    x: torch.Tensor,
    weight_int8: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    threshold: float = 6.0,
    *,
    packed_weight: PackedWeight | None = None,
) -> torch.Tensor:
    """LLM.int8() linear layer: ``x`` (..., K) float -> (..., N) in ``x``'s dtype.

    ``threshold`` is α of the decomposition; 0 disables it (pure vector-wise int8).
    ``packed_weight``: optionally ``llm_int8.ops.prepack_int8_weight(weight_int8)``, built once and
    reused (``Int8Linear`` does this); without it a backend that wants a packed layout packs per call.

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
        C = _Int8LinearFunction.apply(X, weight_int8, weight_scale, threshold, packed_weight)  # float32 (tokens, N)
    else:
        C = _forward_2d(X, weight_int8, weight_scale, threshold, packed_weight)  # float32 (tokens, N)
    if bias is not None:
        # out of place: under autograd the bias may itself be trained
        C = C + bias.float() if bias.requires_grad else C.add_(bias.float())
    return C.to(x.dtype).reshape(*lead, N)  # (..., out_features)
