"""Steps 1-2 and the float product of the batch-invariant mode: each token's own outliers.

The paper's outlier set is a set of *columns*: a dim is in ``O`` when any token of the batch has
``|x| >= α`` there, and then every token computes it in float. A token's output then depends on
its batch mates. Here the decision is made per *entry*: for row ``m`` of ``X`` (tokens, K),

    E_m = {k : |X[m, k]| >= α, or X[m, k] non-finite}           (α = 0: the non-finite entries only)

(the static float columns ``S`` are never in ``E_m``: they are always float). The row's int8
statistics (absmax, or min and max for zeropoint) are taken over its other entries, the entries of
``E_m`` and ``S`` read as 0, so they get the code of 0 (0 for absmax, the zero point for
zeropoint) and add nothing to the integer product. Their contribution is added in float:

    F[m, :] = (((-0 + x_k1 w_k1) + x_k2 w_k2) + ...) + x_s1 W_S[:, s1] + ...   k1 < k2 < ... in E_m

with ``w_k = W_i8[:, k] ⊙ s_w`` (float32, as the column rule's outlier product uses it), each
product and each sum rounded as written, in that order. ``-0`` is the identity of float addition
(``x + -0`` is ``x`` for every ``x``, ``+0`` included): a row without entries adds exactly nothing,
so where no row of the batch has any, ``F`` is left out with the same bits. ``F`` is a function of row ``m`` alone: no
BLAS reduction whose blocking depends on M, no other row's columns. The layer's output row is then
``((C_i32 - zp_x r_w) s_w s_x + F) + bias``, cast (``epilogue.finish``' steps, with ``F`` as its
product).

``token_statistics`` / ``quantize_with_statistics`` split step 2 in two, for a row-parallel layer
(tensor parallelism): each rank computes its half's ``(row_max, row_min)``, the ranks all-reduce
them (max of the maxima, min of the minima: M floats each), and each rank quantizes its half with
the shared range, so that the ranks' partial outputs add up to the unsplit layer's
(docs/batch_invariance.md).

The functions below are the reference; ``native/cpu_kernels.cpp`` (``quantize_rows_tokenwise``,
``tokenwise_float_sum``) computes the same bits in one pass per row where the extension is built.
"""

from __future__ import annotations

import torch

from ...primitives import INT8_MAX, zeropoint_params
from . import native

__all__ = [
    "TokenEntries",
    "float_mask",
    "float_operands",
    "quantize_into_tokenwise",
    "quantize_with_statistics",
    "token_statistics",
    "tokenwise_float_sum",
]

TokenEntries = tuple[torch.Tensor, torch.Tensor]
"""``(crow, cols)``: row ``m``'s outlier entries are ``cols[crow[m]:crow[m + 1]]``, increasing (int64)."""


def float_mask(X: torch.Tensor, threshold: float, static_idx: torch.Tensor | None = None) -> torch.Tensor:
    """(M, K) bool: the entries computed in float, ``E_m`` of every row plus the static columns.

    ``X`` float32 (a 16-bit ``X`` is compared after an exact widening, with α cast to float32, as
    the C++ pass and the column rule compare it). "not (|x| < α)" makes NaN an outlier at any α.
    """
    t = float(threshold) if threshold > 0 else float("inf")
    mask = ~(X.abs() < torch.tensor(t, dtype=torch.float32))
    if static_idx is not None and static_idx.numel():
        mask[:, static_idx] = True
    return mask


def _entries(mask: torch.Tensor, static_idx: torch.Tensor | None) -> TokenEntries:
    if static_idx is not None and static_idx.numel():
        mask = mask.clone()
        mask[:, static_idx] = False
    counts = mask.sum(dim=1)  # (M,)
    crow = torch.zeros(mask.shape[0] + 1, dtype=torch.int64, device=mask.device)
    torch.cumsum(counts, 0, out=crow[1:])
    return crow, mask.nonzero()[:, 1].contiguous()  # row-major order: per row, increasing k


def token_statistics(
    X: torch.Tensor, threshold: float, static_idx: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(row_max, row_min)`` (M,) float32 of each row of ``X`` over its int8 entries (the others read as 0).

    The statistics a row-parallel layer all-reduces (max, min) before ``quantize_with_statistics``.
    """
    X = X.float()
    X_regular = X.masked_fill(float_mask(X, threshold, static_idx), 0)
    return X_regular.amax(dim=1), X_regular.amin(dim=1)


def quantize_with_statistics(
    X: torch.Tensor,
    threshold: float,
    static_idx: torch.Tensor | None,
    activation: str,
    statistics: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, TokenEntries]:
    """Step 2 per token: ``(codes (M, K) float32 integers, s_x (M,), zp_x (M,) or None, entries)``.

    ``statistics``: ``(row_max, row_min)`` to quantize with (each row's own, ``token_statistics``,
    when ``None``); codes beyond [-127, 127] (a range that does not hold the row) are clamped.
    Bit-identical to the column rule's quantizers on a row whose outliers are the same columns.
    """
    Xf = X.float()
    mask = float_mask(Xf, threshold, static_idx)
    X_regular = Xf.masked_fill(mask, 0)  # (M, K)
    hi, lo = (X_regular.amax(dim=1), X_regular.amin(dim=1)) if statistics is None else statistics
    hi, lo = hi.float(), lo.float()
    if activation == "zeropoint":
        nd, zp = zeropoint_params(hi, lo)  # (M,) each
        codes = (X_regular * nd[:, None]).add_(zp[:, None]).round_().clamp_(-INT8_MAX, INT8_MAX)
        return codes, 1.0 / nd, zp, _entries(mask, static_idx)
    absmax = torch.maximum(hi, lo.neg())  # (M,)
    inv_step = torch.where(absmax > 0, INT8_MAX / absmax, 0.0)
    X_scaled = X_regular * inv_step[:, None]
    tiny = torch.isinf(inv_step)
    if tiny.any():  # absmax < 127 / float32 max: divide, as the column rule's quantizer does
        X_scaled = torch.where(tiny[:, None], X_regular / absmax[:, None] * INT8_MAX, X_scaled)
    codes = X_scaled.round_().clamp_(-INT8_MAX, INT8_MAX)
    return codes, absmax / INT8_MAX, None, _entries(mask, static_idx)


def quantize_into_tokenwise(
    X: torch.Tensor,
    threshold: float,
    static_idx: torch.Tensor | None,
    activation: str,
    codes: torch.Tensor,
    statistics: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, TokenEntries]:
    """``quantize_with_statistics`` with the codes written into the first M rows of ``codes`` (float32
    or int8, the form the GEMM reads). Returns ``(s_x, zp_x or None, entries)``; one C++ pass on CPU."""
    zeropoint = activation == "zeropoint"
    X = (X if X.dtype in (torch.float32, torch.bfloat16, torch.float16) else X.float()).contiguous()
    ops = native.ops() if X.device.type == "cpu" and X.numel() else None
    if ops is not None:
        hi, lo = (None, None) if statistics is None else (t.float().contiguous() for t in statistics)
        s_x, zp, crow, cols = ops.quantize_rows_tokenwise(X, float(threshold), static_idx, zeropoint, codes, hi, lo)
        return s_x, (zp if zeropoint else None), (crow, cols)
    X_codes, s_x, zp, entries = quantize_with_statistics(X, threshold, static_idx, activation, statistics)
    codes[: X_codes.shape[0]].copy_(X_codes)  # integers in [-127, 127]: exact in int8
    return s_x, zp, entries


def float_operands(entries: TokenEntries, W_i8, s_w, float_columns=None, weight_columns=None):
    """``(U, WUT, S, WST)``: the sorted columns ``U`` holding any row's entry with their weight columns
    ``w_k = W_i8[:, k] ⊙ s_w`` as rows of ``WUT`` (|U|, N) float32, and the static dims ``S`` with
    ``WST = W_S^T`` (|S|, N) float32 (``None, None`` without float columns)."""
    U = torch.unique(entries[1])  # sorted
    W_U = weight_columns(U) if weight_columns is not None and U.numel() else W_i8.index_select(1, U)  # (N, |U|)
    WUT = (W_U.float() * s_w.float()[:, None]).T.contiguous()  # (|U|, N)
    S, WST = (None, None) if float_columns is None else (float_columns[0], float_columns[1].float().T.contiguous())
    return U, WUT, S, WST


def tokenwise_float_sum(
    X: torch.Tensor,
    entries: TokenEntries,
    W_i8: torch.Tensor,
    s_w: torch.Tensor,
    float_columns: tuple[torch.Tensor, torch.Tensor] | None = None,
    weight_columns=None,
) -> torch.Tensor:
    """``F`` (M, N) float32 of the module docstring: each row's outlier entries, then the static columns.

    ``weight_columns(U)``: optionally returns ``W_i8[:, U]`` (N, |U|) int8 (a cache of recent outlier
    columns); the columns are gathered once for the union ``U`` of the rows' entries, which changes
    which columns are read, never a row's arithmetic.
    """
    crow, cols = entries
    M, N = X.shape[0], W_i8.shape[0]
    U, WUT, S, WST = float_operands(entries, W_i8, s_w, float_columns, weight_columns)
    ops = native.ops() if X.device.type == "cpu" else None
    X = X if X.dtype in (torch.float32, torch.bfloat16, torch.float16) else X.float()
    if ops is not None:
        return ops.tokenwise_float_sum(X.contiguous(), crow, cols, U, WUT, S, WST)
    F = torch.full((M, N), -0.0, dtype=torch.float32, device=X.device)  # -0: see the module docstring
    if cols.numel():
        rows = torch.repeat_interleave(torch.arange(M, device=X.device), crow.diff())
        mask = torch.zeros(M, X.shape[1], dtype=torch.bool, device=X.device)
        mask[rows, cols] = True
        for j, k in enumerate(U.tolist()):
            x = X[:, k].float()[:, None]  # (M, 1)
            F = torch.where(mask[:, k, None], F + x * WUT[j], F)
    for j, s in enumerate([] if S is None else S.tolist()):
        F = F + X[:, s].float()[:, None] * WST[j]
    return F
