"""Steps 1-2 of LLM.int8() on CPU (and any device PyTorch runs): outlier dims ``O`` and per-token int8 codes.

For ``X`` (tokens, K): ``O`` = feature dims holding a value with ``|x| >= threshold`` (non-finite
values always), then each row of ``X`` without ``O`` is quantized with its own scale, symmetric
(absmax, the paper's) or asymmetric (zeropoint). The codes are returned as float32 integers in
[-127, 127], the form the CPU GEMMs of ``cpu_gemm.py`` read. Bit-identical to the plain quantizers
of ``llm_int8.primitives`` (``outlier_columns``, ``rowwise_quantize``, ``zeropoint_quantize``), which
are their oracle; the GPU version is ``triton/quantize.py``.

``quantize_into`` is the same computation in C++ (``native/cpu_kernels.cpp``), the codes written
straight into the buffer the GEMM reads, float32 or int8. Where it is built for AVX-512, ``X`` is read
once from memory: each row's first look finds its outlier entries (their columns join ``O``) and its
range over the other columns, the second look (the row still in L1) writes its codes, and the few rows
coded before a column of ``O`` was known are done again. Elsewhere (AVX2) ``X`` is read once for the
column maxima that define ``O``, then once per row for its range and its codes. Its output equals the functions
below bit for bit (tests/test_native_kernels.py); they are its reference and, where the extension
is not built, what runs instead.
"""

from __future__ import annotations

import torch

from ...primitives import INT8_MAX, zeropoint_params
from . import native

__all__ = ["quantize_activations", "quantize_activations_zeropoint", "quantize_into", "split_outliers"]


def _outlier_index(col_absmax: torch.Tensor, threshold: float) -> torch.Tensor:
    """Indices of ``O`` from the per-column max of ``|X|``, as ``outlier_columns`` defines it."""
    # "not (max < t)" so that a NaN column is an outlier for every threshold (see outlier_columns)
    O = ~(col_absmax < threshold) if threshold > 0 else ~torch.isfinite(col_absmax)
    return O.nonzero().squeeze(1)  # (|O|,)


def split_outliers(X: torch.Tensor, threshold: float, static_idx: torch.Tensor | None = None):
    """Step 1 and the row ranges for step 2, from four reductions over ``X`` (M, K) float32, bf16 or fp16.

    Returns ``X_regular`` (``X`` with the columns in ``O`` and in ``static_idx`` zeroed; ``X``
    itself when both are empty), the indices of ``O`` outside ``static_idx``, and the per-row max
    and min of ``X_regular``. ``max|x|`` is taken as
    ``max(max x, -min x)``: the same value as ``|X|.amax()``, without an ``|X|`` copy (4x slower
    than the reductions on torch 2.13 CPU); ``amax`` / ``amin`` propagate NaN, so a NaN column is an
    outlier. (``torch.aminmax`` is 15x slower than the two reductions there.)
    """
    # in X's own dtype: max and min are exact in any float format, and a bf16 X is read at 2 bytes a
    # value rather than copied to float32 first (the reductions' (K,) and (M,) results are widened)
    col_absmax = torch.maximum(X.amax(dim=0), X.amin(dim=0).neg()).float()  # (K,)
    if static_idx is not None and static_idx.numel():
        col_absmax[static_idx] = 0.0  # in the float part anyway, with their float weight columns
    outlier_idx = _outlier_index(col_absmax, threshold)
    float_idx = outlier_idx if static_idx is None else torch.cat([outlier_idx, static_idx])
    X_regular = X.index_fill(1, float_idx, 0) if float_idx.numel() else X  # (M, K)
    return X_regular, outlier_idx, X_regular.amax(dim=1).float(), X_regular.amin(dim=1).float()


def _as_compute_dtype(X: torch.Tensor) -> torch.Tensor:
    # 16-bit floats widen exactly inside the float32 arithmetic that reads them; anything else
    # (float64) is rounded to float32 first, as the quantizers of primitives/quantize.py do
    return X if X.dtype in (torch.float32, torch.bfloat16, torch.float16) else X.float()


def quantize_activations(
    X: torch.Tensor, threshold: float, static_idx: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Steps 1-2: outlier dims ``O`` and the row-wise absmax int8 codes of ``X`` without them.

    Bit-identical to ``outlier_columns(X, threshold)`` followed by
    ``rowwise_quantize(X.index_fill(1, O, 0))``, which read ``X`` three times and copy it twice.
    Returns the codes ``X_i8`` (M, K) as float32 integers in [-127, 127] (zero in ``O``; the CPU
    kernels read them in that form), ``s_x`` (M,) float32 and the indices of ``O``.
    """
    X_regular, outlier_idx, row_max, row_min = split_outliers(_as_compute_dtype(X), threshold, static_idx)
    absmax = torch.maximum(row_max, row_min.neg())  # (M,)
    # 127 / absmax; an all-zero row gets codes 0 and s_x 0
    inv_step = torch.where(absmax > 0, INT8_MAX / absmax, 0.0)  # (M,)
    # a bf16/fp16 X_regular times float32 steps is computed and returned in float32 (type promotion):
    # the same products as X.float() * inv_step, without the float32 copy of X
    X_scaled = X_regular * inv_step[:, None]
    tiny = torch.isinf(inv_step)
    if tiny.any():
        # absmax < 127 / float32 max (3.7e-37): divide instead, as rowwise_quantize does, so such rows
        # keep 8-bit codes rather than their signs
        X_scaled = torch.where(tiny[:, None], X_regular / absmax[:, None] * INT8_MAX, X_scaled)
    X_codes = X_scaled.round_().clamp_(-INT8_MAX, INT8_MAX)  # half to even
    return X_codes, absmax / INT8_MAX, outlier_idx


def quantize_activations_zeropoint(
    X: torch.Tensor, threshold: float, static_idx: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Steps 1-2 with asymmetric codes: bit-identical to ``zeropoint_quantize(X_regular, dim=-1)``.

    ``X_regular`` is ``X`` with the columns in ``O`` zeroed. Returns the codes ``X_q`` (M, K) as
    float32 integers in [-127, 127] (``zp_x`` in ``O``), ``s_x`` (M,), ``zp_x`` (M,) float32 and the
    indices of ``O``.
    """
    X_regular, outlier_idx, row_max, row_min = split_outliers(_as_compute_dtype(X), threshold, static_idx)
    nd, zp = zeropoint_params(row_max, row_min)  # (M,) each: codes per unit, zero point
    X_codes = (X_regular * nd[:, None]).add_(zp[:, None]).round_().clamp_(-INT8_MAX, INT8_MAX)
    return X_codes, 1.0 / nd, zp, outlier_idx


def quantize_into(
    X: torch.Tensor, threshold: float, static_idx: torch.Tensor | None, activation: str, codes: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Steps 1-2 with the codes written into ``codes`` (M, K), float32 or int8 (the dtype the GEMM reads);
    or into the first M rows of a (M + 2, K) float32 ``codes``, whose last two rows then get fbgemm's
    sentinel rows (``codes_gemm.write_sentinels``).

    Returns ``(s_x, zp_x, outlier_idx)`` as ``quantize_activations_zeropoint`` (``activation="zeropoint"``)
    or ``quantize_activations`` (``"absmax"``, ``zp_x`` ``None``) return them, and ``codes`` holds their
    codes. One C++ pass where the extension is built (``native.ops()``), else those functions and a copy.
    """
    zeropoint = activation == "zeropoint"
    X = _as_compute_dtype(X).contiguous()
    ops = native.ops() if X.device.type == "cpu" and X.numel() else None
    if ops is not None:
        s_x, zp, outlier_idx = ops.quantize_rows(X, float(threshold), static_idx, zeropoint, codes)
        return s_x, (zp if zeropoint else None), outlier_idx
    if zeropoint:
        X_codes, s_x, zp, outlier_idx = quantize_activations_zeropoint(X, threshold, static_idx)
    else:
        (X_codes, s_x, outlier_idx), zp = quantize_activations(X, threshold, static_idx), None
    codes[: X_codes.shape[0]].copy_(X_codes)  # integers in [-127, 127]: exact in int8
    if codes.shape[0] == X_codes.shape[0] + 2:
        codes[-2:].zero_()
        codes[-2, 0], codes[-1, 0] = -128, INT8_MAX
    return s_x, zp, outlier_idx
