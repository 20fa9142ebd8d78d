"""Step 4 of LLM.int8() on CPU: from the integer product to the layer's output, in place on ``C``.

``C`` arrives as ``float32(C_i32)`` (M, N) from the GEMM of ``cpu_gemm.py`` and leaves as
``X W^T`` (no bias), float32:

* zero-point codes: ``C_i32 - zp_x ⊗ r_w``, with ``r_w = Σ_k W_i8[:, k]`` the weight's row sums, is
  the integer product of ``(X_q - zp_x)`` (exact: all terms are integers below 2**24);
* denormalize by ``s_x ⊗ s_w``, ``s_w`` first: ``C_i32 s_w`` is of the order of the output over
  ``s_x``, so a row with ``|x|`` near float32's maximum (``s_x`` ~ 1e34) overflows only where the
  output itself does;
* add the outlier product ``X[:, O] (W_i8[:, O] ⊙ s_w)^T`` in float, and ``X_S W_S^T`` for the static
  float columns.

Oracle: ``llm_int8.primitives.int8_linear_reference``.
"""

from __future__ import annotations

import torch

__all__ = [
    "add_float_columns",
    "add_outlier_product",
    "compute_weight_row_sums",
    "denormalize",
    "outlier_weight_columns",
]


def compute_weight_row_sums(weight_int8: torch.Tensor) -> torch.Tensor:
    """``r_w = Σ_k W_i8[:, k]`` (N,) as float32: the exact integer sum, rounded once (exact below
    2**24 / 127 = 132k input features)."""
    return weight_int8.sum(dim=1, dtype=torch.int64).float()


_MAX_CACHED_COLUMNS = 64  # per weight: N bytes each (256 KiB for N = 4096), far more dims than α = 6 finds


def outlier_weight_columns(W_i8: torch.Tensor, idx: torch.Tensor, packed: object | None) -> torch.Tensor:
    """``W_i8[:, O]`` (N, |O|) int8, from the packed weight's cache of recent outlier columns where there is one."""
    cache = getattr(packed, "columns", None)
    if cache is None or idx.numel() > _MAX_CACHED_COLUMNS:
        # gather: 1.5-3x faster than index_select on dim 1 for a (N, K) int8 weight (torch 2.13 CPU)
        return W_i8.gather(1, idx.expand(W_i8.shape[0], -1))
    dims = idx.tolist()
    missing = [k for k in dims if k not in cache]
    if missing:
        excess = len(cache) + len(missing) - _MAX_CACHED_COLUMNS
        if excess > 0:  # drop the oldest columns this call does not use
            for k in [k for k in cache if k not in dims][:excess]:
                del cache[k]
        gathered = W_i8.gather(1, torch.tensor(missing).expand(W_i8.shape[0], -1)).T  # (|missing|, N)
        cache.update(zip(missing, gathered.contiguous().unbind(0), strict=True))
    return torch.stack([cache[k] for k in dims], dim=1)  # (N, |O|)


def denormalize(
    C: torch.Tensor,
    s_x: torch.Tensor,
    s_w: torch.Tensor,
    zp_x: torch.Tensor | None = None,
    row_sums: torch.Tensor | None = None,
) -> torch.Tensor:
    """``(s_x ⊗ s_w) · (C_i32 - zp_x ⊗ r_w)`` in place on ``C`` (M, N) float32; ``zp_x`` ``None`` for absmax codes."""
    if zp_x is not None:
        C.addr_(zp_x, row_sums, alpha=-1)  # C_i32 - zp_x ⊗ r_w: the integer product of (X_q - zp_x)
    return C.mul_(s_w.float()[None, :]).mul_(s_x[:, None])


def add_outlier_product(
    C: torch.Tensor,
    X: torch.Tensor,
    outlier_idx: torch.Tensor,
    W_i8: torch.Tensor,
    s_w: torch.Tensor,
    packed: object | None = None,
) -> torch.Tensor:
    """``C += X[:, O] (W_i8[:, O] ⊙ s_w)^T`` in float32, in place (nothing when ``O`` is empty)."""
    if outlier_idx.numel():
        X_O = X.index_select(1, outlier_idx).float()  # (M, |O|)
        W_O = outlier_weight_columns(W_i8, outlier_idx, packed).float() * s_w.float()[:, None]  # (N, |O|)
        C.addmm_(X_O, W_O.T)
    return C


def add_float_columns(
    C: torch.Tensor, X: torch.Tensor, float_columns: tuple[torch.Tensor, torch.Tensor] | None
) -> torch.Tensor:
    """``C += X[:, S] W_S^T`` in place for the static float columns ``(S, W_S)`` (nothing for ``None``)."""
    if float_columns is not None and float_columns[0].numel():
        S, W_S = float_columns
        C.addmm_(X.index_select(1, S).float(), W_S.float().T)
    return C
