"""Kernel (a): LLM.int8()'s activation quantization, fused into two launches.

For ``X`` (M, K) and the threshold α:

1. ``_column_outliers_kernel``, one program per block of columns: ``max_i |X[i, k]|`` over the tokens
   gives ``O = {k : not (max_i |X[i, k]| < α)}`` (every column holding NaN or Inf is in ``O``, for any
   α, also α = 0); static float columns ``S`` are never in ``O`` but are left out of the codes as well.
2. ``_row_quantize_kernel``, one program per row: the row's max and min without the columns of
   ``O ∪ S`` (read as 0), then the scale (absmax: ``s_x = max|x| / 127``) or scale and zero point
   (zeropoint: ``zeropoint_params``), the int8 codes, and the gather ``X[i, O]``.

Between them, ``torch.nonzero`` turns the mask of ``O`` into indices: their count sizes the gathered
``X[:, O]``, so the host has to know it (the CPU path synchronizes there too).

The codes are bit-identical to the library's CPU quantizers (``primitives.outlier_columns``,
``rowwise_quantize``, ``zeropoint_quantize``; the reference below composes them): the same float32
operations in the same order, each rounded once. That needs three precautions on a GPU:

* divisions through ``tl.math.div_rn`` (Triton's ``/`` on float32 is an approximate division there);
  and PyTorch evaluates ``scalar / tensor`` as ``tensor.reciprocal() * scalar`` (two roundings: on
  torch 2.13 CPU, ``127 / absmax`` differs from the correctly rounded quotient for a quarter of
  float32 inputs), so ``127 / absmax`` and ``254 / width`` are computed that way here too, while
  ``tensor / scalar`` (``absmax / 127``) is one correctly rounded division;
* launches with ``enable_fp_fusion=False``: ``x * nd + zp`` must round after the product, as in
  PyTorch, not once in an FMA;
* rounding half to even as ``(v + 1.5 * 2**23) - 1.5 * 2**23``: for ``|v| <= 2**22`` the sum lands where
  the float32 spacing is 1, so the add rounds ``v`` to an integer, ties to even, and the subtraction
  is exact. ``libdevice.rint`` would do the same on a GPU but does not exist under the interpreter.
  The codes are clamped to [-127, 127] before rounding, which gives the same result as after it.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from ....primitives import INT8_MAX, outlier_columns, rowwise_quantize, zeropoint_quantize
from . import _bind, interpreting

_bind()  # records the mode the kernels below are bound to

__all__ = ["QuantizedActivations", "quantize_activations", "quantize_activations_reference"]

# globals a @triton.jit function reads must be tl.constexpr
_RNE_MAGIC = tl.constexpr(12582912.0)  # 1.5 * 2**23
_FLOAT32_MAX = tl.constexpr(torch.finfo(torch.float32).max)
_Q = tl.constexpr(float(INT8_MAX))
_COL_BLOCK = (16, 32) if interpreting() else (64, 64)  # (rows, columns) per step of kernel 1; K / 64 programs
_ROW_BLOCK_K = 64 if interpreting() else 1024  # columns per step of kernel 2
_BLOCK_O = 16


class QuantizedActivations(NamedTuple):
    """What kernel (a) produces for ``X`` (M, K)."""

    X_i8: torch.Tensor  # (M, K) int8 codes
    s_x: torch.Tensor  # (M,) float32 dequantization steps
    zp_x: torch.Tensor | None  # (M,) float32 integer zero points (zeropoint), None (absmax)
    outlier_idx: torch.Tensor  # (|O|,) int64 indices of O
    X_O: torch.Tensor  # (M, |O|) X[:, O] in X's dtype


@triton.jit
def _round_half_even(v):
    return (v + _RNE_MAGIC) - _RNE_MAGIC


@triton.jit
def _column_outliers_kernel(
    X_ptr,
    static_ptr,
    outlier_ptr,
    float_ptr,
    M,
    K,
    stride_xm,
    threshold,
    USE_THRESHOLD: tl.constexpr,
    HAS_STATIC: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    cols = tl.program_id(0) * BLOCK_K + tl.arange(0, BLOCK_K)  # (BLOCK_K,)
    col_ok = cols < K
    absmax = tl.zeros([BLOCK_K], dtype=tl.float32)  # max |x| over the finite entries
    nonfinite = tl.zeros([BLOCK_K], dtype=tl.int32)
    for m0 in range(0, M, BLOCK_M):
        rows = (m0 + tl.arange(0, BLOCK_M)).to(tl.int64)
        ok = (rows[:, None] < M) & col_ok[None, :]
        x = tl.load(X_ptr + rows[:, None] * stride_xm + cols[None, :], mask=ok, other=0.0).to(tl.float32)
        ax = tl.abs(x)
        finite = ax < float("inf")  # False for NaN and Inf
        # NaN is counted apart rather than through max: max's NaN propagation differs between backends
        absmax = tl.maximum(absmax, tl.max(tl.where(finite, ax, 0.0), axis=0))
        nonfinite += tl.sum((~finite).to(tl.int32), axis=0)
    is_outlier = nonfinite > 0
    if USE_THRESHOLD:
        is_outlier = is_outlier | (absmax >= threshold)  # = not (max|x| < α), NaN counted above
    is_float = is_outlier
    if HAS_STATIC:
        static = tl.load(static_ptr + cols, mask=col_ok, other=0) != 0
        is_outlier = is_outlier & ~static  # S is multiplied by its float weight columns instead
        is_float = is_outlier | static
    tl.store(outlier_ptr + cols, is_outlier.to(tl.int8), mask=col_ok)
    tl.store(float_ptr + cols, is_float.to(tl.int8), mask=col_ok)


@triton.jit
def _row_quantize_kernel(
    X_ptr,
    float_ptr,
    idx_ptr,
    codes_ptr,
    sx_ptr,
    zp_ptr,
    xo_ptr,
    K,
    n_O,
    stride_xm,
    stride_cm,
    stride_om,
    ZEROPOINT: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_O: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    x_row = X_ptr + row * stride_xm
    offs = tl.arange(0, BLOCK_K)
    # pass 1: the row's max and min with the columns of O ∪ S read as 0 (they are zeroed in the CPU path)
    hi = tl.full([BLOCK_K], float("-inf"), tl.float32)
    lo = tl.full([BLOCK_K], float("inf"), tl.float32)
    for k0 in range(0, K, BLOCK_K):
        cols = k0 + offs
        ok = cols < K
        x = tl.load(x_row + cols, mask=ok, other=0.0).to(tl.float32)
        x = tl.where(tl.load(float_ptr + cols, mask=ok, other=0) != 0, 0.0, x)
        hi = tl.maximum(hi, tl.where(ok, x, float("-inf")))
        lo = tl.minimum(lo, tl.where(ok, x, float("inf")))
    row_max = tl.max(hi, axis=0)
    row_min = tl.min(lo, axis=0)
    if ZEROPOINT:
        # zeropoint_params: the range widened to hold 0, its width in float64
        hi0 = tl.maximum(row_max, 0.0)
        lo0 = tl.minimum(row_min, 0.0)
        width = hi0.to(tl.float64) - lo0.to(tl.float64)
        nd = tl.where(width > 0, (1.0 / tl.where(width > 0, width, 1.0)) * (2 * _Q), 1.0)  # no 1 / 0 evaluated
        nd = tl.minimum(nd, _FLOAT32_MAX).to(tl.float32)
        zp = -_round_half_even(nd * lo0) - _Q
        tl.store(sx_ptr + row, tl.math.div_rn(1.0, nd))
        tl.store(zp_ptr + row, zp)
    else:
        absmax = tl.maximum(row_max, -row_min)
        # 127 / absmax; an all-zero row gets codes 0 and s_x 0
        inv_step = tl.where(absmax > 0, tl.math.div_rn(1.0, tl.where(absmax > 0, absmax, 1.0)) * _Q, 0.0)
        tl.store(sx_ptr + row, tl.math.div_rn(absmax, _Q))
    # pass 2: the codes
    for k0 in range(0, K, BLOCK_K):
        cols = k0 + offs
        ok = cols < K
        x = tl.load(x_row + cols, mask=ok, other=0.0).to(tl.float32)
        x = tl.where(tl.load(float_ptr + cols, mask=ok, other=0) != 0, 0.0, x)
        if ZEROPOINT:
            v = x * nd + zp  # two roundings: the launch disables FMA contraction
        else:
            v = x * inv_step
        q = _round_half_even(tl.minimum(tl.maximum(v, -_Q), _Q))
        if not ZEROPOINT:
            # a denormal absmax makes inv_step inf, and 0 * inf NaN: zeros are code 0 (rowwise_quantize)
            q = tl.where(x == 0.0, 0.0, q)
        tl.store(codes_ptr + row * stride_cm + cols, q.to(tl.int8), mask=ok)
    # the gather X[i, O], in X's dtype
    offs_o = tl.arange(0, BLOCK_O)
    for j0 in range(0, n_O, BLOCK_O):
        j = j0 + offs_o
        ok = j < n_O
        idx = tl.load(idx_ptr + j, mask=ok, other=0)
        tl.store(xo_ptr + row * stride_om + j, tl.load(x_row + idx, mask=ok, other=0.0), mask=ok)


def _check(X: torch.Tensor, threshold: float, activation: str) -> None:
    if X.dim() != 2 or not X.is_floating_point():
        raise ValueError(f"quantize_activations: X must be a 2-D float tensor, got {X.dtype} {tuple(X.shape)}")
    if not threshold >= 0:
        raise ValueError(f"quantize_activations: threshold must be >= 0, got {threshold}")
    if activation not in ("absmax", "zeropoint"):
        raise ValueError(f"quantize_activations: activation must be 'absmax' or 'zeropoint', got {activation!r}")


def quantize_activations(
    X: torch.Tensor, threshold: float, activation: str = "absmax", static_idx: torch.Tensor | None = None
) -> QuantizedActivations:
    """Steps 1-2 of LLM.int8() on ``X`` (M, K) in two Triton launches; see the module docstring.

    ``static_idx``: optional (|S|,) int64 indices of columns always computed in float (``float_columns``):
    excluded from ``O`` and from the codes (code 0, or ``zp_x`` for zeropoint, as the CPU path gives).
    """
    _check(X, threshold, activation)
    X = X.contiguous()
    M, K = X.shape
    device = X.device
    if M == 0 or K == 0:  # nothing to launch: no column has a value, so O is empty
        zp = torch.zeros(M, device=device) if activation == "zeropoint" else None
        empty_idx = torch.zeros(0, dtype=torch.int64, device=device)
        return QuantizedActivations(torch.zeros(M, K, dtype=torch.int8, device=device), torch.zeros(M, device=device),
                                    zp, empty_idx, X.new_zeros(M, 0))  # fmt: skip
    outlier = torch.empty(K, dtype=torch.int8, device=device)
    is_float = torch.empty(K, dtype=torch.int8, device=device)
    has_static = static_idx is not None and static_idx.numel() > 0
    static = torch.zeros(K, dtype=torch.int8, device=device)
    if has_static:
        static[static_idx] = 1
    BM, BK = _COL_BLOCK
    _column_outliers_kernel[(triton.cdiv(K, BK),)](
        X, static, outlier, is_float, M, K, X.stride(0), float(threshold),
        USE_THRESHOLD=threshold > 0, HAS_STATIC=has_static, BLOCK_M=BM, BLOCK_K=BK,
    )  # fmt: skip
    outlier_idx = outlier.nonzero().squeeze(1)  # (|O|,) int64
    n_O = outlier_idx.numel()
    zeropoint = activation == "zeropoint"
    codes = torch.empty(M, K, dtype=torch.int8, device=device)
    s_x = torch.empty(M, dtype=torch.float32, device=device)
    zp_x = torch.empty(M, dtype=torch.float32, device=device) if zeropoint else None
    X_O = torch.empty(M, n_O, dtype=X.dtype, device=device)
    _row_quantize_kernel[(M,)](
        # an empty tensor has no storage to point at: unused pointers get a live buffer instead
        X, is_float, outlier_idx if n_O else outlier, codes, s_x, s_x if zp_x is None else zp_x,
        X_O if n_O else X, K, n_O,
        X.stride(0), codes.stride(0), max(n_O, 1),
        ZEROPOINT=zeropoint, BLOCK_K=min(_ROW_BLOCK_K, triton.next_power_of_2(K)), BLOCK_O=_BLOCK_O,
        enable_fp_fusion=False,
    )  # fmt: skip
    return QuantizedActivations(codes, s_x, zp_x, outlier_idx, X_O)


def quantize_activations_reference(
    X: torch.Tensor, threshold: float, activation: str = "absmax", static_idx: torch.Tensor | None = None
) -> QuantizedActivations:
    """The same five results from the library's plain-PyTorch primitives (the oracle of the kernel)."""
    _check(X, threshold, activation)
    O = outlier_columns(X.float(), threshold)  # (K,) bool
    S = torch.zeros_like(O)
    if static_idx is not None:
        S[static_idx] = True
    O &= ~S
    X_regular = X.float().masked_fill(O | S, 0)  # (M, K)
    if activation == "zeropoint":
        X_i8, s_x, zp_x = zeropoint_quantize(X_regular, dim=-1)
        zp_x = zp_x.float()
    else:
        X_i8, s_x = rowwise_quantize(X_regular, dim=-1)
        zp_x = None
    outlier_idx = O.nonzero().squeeze(1)
    return QuantizedActivations(X_i8, s_x, zp_x, outlier_idx, X.index_select(1, outlier_idx))
