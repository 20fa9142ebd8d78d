"""LLM.int8()'s forward on Triton: kernel (a) then kernels (b) + (c), three launches in all.

Same numerics as ``ops/forward.py`` on CPU: bit-identical codes, scales and zero points, an exact
int32 product; the float parts (zero-point correction in int32 rather than float32, the outlier
product with fp16 / bf16 operands and float32 accumulation) differ from the CPU path only by float32
rounding. The oracle is ``llm_int8.primitives.int8_linear_reference``.
"""

from __future__ import annotations

import torch

from ..epilogue import compute_weight_row_sums
from .gemm import int8_gemm
from .quantize import quantize_activations

__all__ = ["int8_linear_triton"]


def int8_linear_triton(
    X: torch.Tensor,
    W_i8: torch.Tensor,
    s_w: torch.Tensor,
    bias: torch.Tensor | None = None,
    threshold: float = 6.0,
    activation: str = "absmax",
    row_sums: torch.Tensor | None = None,
    float_columns: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """``X`` (M, K) float x int8 ``W_i8`` (N, K) with steps ``s_w`` (N,) -> (M, N) in X's dtype.

    ``row_sums``: ``compute_weight_row_sums(W_i8)``, for ``activation="zeropoint"`` (computed if absent).
    ``float_columns = (S, W_S)``: dims always in float with their float weight columns (see ``int8_linear``).
    The caller validates shapes (``int8_linear`` does).
    """
    static_idx = None if float_columns is None else float_columns[0]
    X_i8, s_x, zp_x, outlier_idx, X_O = quantize_activations(X, threshold, activation, static_idx)
    if zp_x is not None and row_sums is None:
        row_sums = compute_weight_row_sums(W_i8)  # (N,)
    addend = None
    if float_columns is not None:
        addend = X.index_select(1, float_columns[0]).float() @ float_columns[1].float().T  # (M, N) X_S W_S^T
    return int8_gemm(
        X_i8, W_i8, s_x, s_w,
        zp_x=zp_x, row_sums=None if zp_x is None else row_sums, bias=bias,
        X_O=X_O, outlier_idx=outlier_idx, addend=addend, out_dtype=X.dtype,
    )  # fmt: skip
