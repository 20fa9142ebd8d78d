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

``finish`` does all of it, plus the bias and the cast to the output dtype (and, for ``FBGEMM_PAIRS``,
the pair-bounded weight's sparse fix), in one C++ pass over ``C`` (``native/cpu_kernels.cpp``), bit
for bit equal to the sequence of the functions below, which it runs where the extension is not
built. Each step's rounding is kept: ``C`` is an exact integer; ``C - zp_x r_w`` is rounded once (the
exact value: ``denormalize`` makes sure of it); ``s_w`` then ``s_x``; then each float product
``A B^T`` as ``addmm_`` adds it (the BLAS forms ``A B^T`` and adds it to ``C``, so the kernel
receives ``A B^T`` from the same BLAS call and adds it; forming it inside the kernel in MKL's order
was tried and dropped, since MKL's remainder rows sum in another order); then the bias; then one
cast. ``addmm_`` adds the BLAS' product only up to an inner dimension that the BLAS sums in one
block (MKL on the AVX2 machine adds ``C`` into a running sum from 200 outlier dims on, which the
late ``down_proj`` layers of SmolLM2 reach at α = 6): ``product_columns_limit`` measures it once per
process, and wider products are added by ``addmm_`` itself between two passes of the kernel.

Oracle: ``llm_int8.primitives.int8_linear_reference``.
"""

from __future__ import annotations

import functools

import torch

from . import native

__all__ = [
    "add_float_columns",
    "add_outlier_product",
    "compute_weight_row_sums",
    "denormalize",
    "finish",
    "outlier_operands",
    "outlier_weight_columns",
    "product_columns_limit",
]

_F32_EXACT_INT = 2**24  # every integer of magnitude <= 2**24 is exact in float32


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
    """``(s_x ⊗ s_w) · (C_i32 - zp_x ⊗ r_w)`` in place on ``C`` (M, N) float32; ``zp_x`` ``None`` for absmax codes.

    ``C_i32 - zp_x ⊗ r_w`` is the exact integer rounded once to float32. ``addr_`` gives that where
    ``|zp_x r_w| <= 2**24`` (each term exact; with |zp_x| <= 127 that is any weight with
    ``|r_w| <= 132104``, every real one); beyond, its vectorized body rounds once (a fused
    multiply-add) but its remainder loop rounds the product first, so such weights take float64.
    """
    if zp_x is not None:
        if 127 * float(row_sums.abs().amax()) <= _F32_EXACT_INT:
            C.addr_(zp_x, row_sums, alpha=-1)  # C_i32 - zp_x ⊗ r_w: the integer product of (X_q - zp_x)
        else:  # exact in float64 (|C_i32| < 2**31, |zp_x r_w| < 2**38), rounded once
            C.copy_(C.double().addr_(zp_x.double(), row_sums.double(), alpha=-1))
    return C.mul_(s_w.float()[None, :]).mul_(s_x[:, None])


def outlier_operands(
    X: torch.Tensor, outlier_idx: torch.Tensor, W_i8: torch.Tensor, s_w: torch.Tensor, packed: object | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(X[:, O], W_i8[:, O] ⊙ s_w)`` float32, (M, |O|) and (N, |O|): the outlier product is ``A B^T``."""
    X_O = X.index_select(1, outlier_idx).float()  # (M, |O|)
    W_O = outlier_weight_columns(W_i8, outlier_idx, packed).float() * s_w.float()[:, None]  # (N, |O|)
    return X_O, W_O


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
        X_O, W_O = outlier_operands(X, outlier_idx, W_i8, s_w, packed)
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


@functools.cache
def product_columns_limit() -> int:
    """The widest inner dimension j (a power of two up to 128) at which ``C.addmm_(A, B^T)`` equals
    ``C + A @ B^T`` bit for bit here, at that j and every smaller one, over a few shapes; 0 if none."""
    gen = torch.Generator().manual_seed(0)
    limit = 0
    for j in (1, 2, 4, 8, 16, 32, 64, 128):
        for M, N in ((1, 40), (9, 100), (70, 300)):
            C, A, B = (torch.randn(*shape, generator=gen) for shape in ((M, N), (M, j), (N, j)))
            if not torch.equal(C.clone().addmm_(A, B.T), C + torch.mm(A, B.T)):
                return limit
        limit = j
    return limit


def _finish_native(ops, C, s_w, s_x, zp_x, row_sums, fix, codes, products, bias, out_dtype, inline, inexact):
    csr, codes = (None, None, None), codes if fix is not None else None
    if fix is not None:  # float64 values where the weight is not always_exact: integers <= 126, exact in float32
        csr = (fix.crow_indices(), fix.col_indices(), fix.values().float())
    if inline and products:  # formed in the pass (bf16.py), from A (M, j) and B^T (j, N)
        factors = [t.float().contiguous() for A, B in products for t in (A, B.T)]
        return ops.epilogue(C, s_w, s_x, zp_x, row_sums, codes, *csr, factors, True, bias, out_dtype, inexact)
    if all(A.shape[1] <= product_columns_limit() for A, _ in products):  # one pass
        sums = [torch.mm(A, B.T) for A, B in products]  # (M, N) each: the product addmm_ would add
        return ops.epilogue(C, s_w, s_x, zp_x, row_sums, codes, *csr, sums, False, bias, out_dtype, inexact)
    # a product the BLAS sums into C block by block: addmm_ adds it, between two passes
    out = ops.epilogue(C, s_w, s_x, zp_x, row_sums, codes, *csr, [], False, None, torch.float32, inexact)
    for A, B in products:
        out.addmm_(A, B.T)
    if bias is None and out_dtype == torch.float32:
        return out
    ones = torch.ones(max(out.shape), dtype=torch.float32)  # x 1 is exact: the second pass adds the bias and casts
    return ops.epilogue(out, ones[: out.shape[1]], ones[: out.shape[0]], *(None,) * 6, [], False, bias, out_dtype)


def finish(
    C: torch.Tensor,
    s_w: torch.Tensor,
    s_x: torch.Tensor,
    zp_x: torch.Tensor | None = None,
    row_sums: torch.Tensor | None = None,
    *,
    fix: torch.Tensor | None = None,
    codes: torch.Tensor | None = None,
    products: tuple[tuple[torch.Tensor, torch.Tensor], ...] = (),
    bias: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.float32,
    inline_products: bool = False,
    inexact: torch.Tensor | None = None,
) -> torch.Tensor:
    """Step 4, the bias and the cast in one pass: a new (M, N) tensor of ``out_dtype``, M = ``s_x.numel()``.

    ``out = ((C + codes W_fix^T - zp_x ⊗ r_w) ⊙ s_w ⊙ s_x + Σ A B^T + bias)``, with
    ``C`` (>= M, N) float32 holding integers (its first M rows are read: the GEMM's output may carry
    sentinel rows below), or int32 as ``torch._int_mm`` writes it (converted in the pass, as ``.float()``
    rounds; not with ``fix``); ``fix``: ``FBGEMM_PAIRS``' ``W_fix`` (N, K) sparse CSR float32 (exact
    integers), with the float32 ``codes`` (>= M, K) it multiplies; ``products``: ``(A, B)`` pairs,
    (M, j) and (N, j) float32, added in order (the outlier product, then the float columns).
    ``C`` is consumed: where the extension is not built, the steps run in place on it.
    ``inline_products``: the C++ pass forms the products itself (the bf16 route of ``bf16.py``: its
    own rounding, not the BLAS'); ignored without the extension. ``inexact``: with ``fix``, a one-element
    int32 tensor set to 1 if a value of ``C`` reaches 2**24 (``C`` may then be rounded, and the output
    is not the exact product's: the caller recomputes; only weights that are not ``always_exact`` can).
    """
    M = s_x.numel()
    s_w = s_w.float().contiguous()
    bias = None if bias is None else bias.float().contiguous()
    ops = native.ops() if C.device.type == "cpu" else None
    if len(products) > 2:
        raise ValueError(f"finish adds at most two float products (outliers, float columns), got {len(products)}")
    if ops is not None and C.is_contiguous():
        return _finish_native(
            ops, C, s_w, s_x, zp_x, row_sums, fix, codes, products, bias, out_dtype, inline_products, inexact
        )
    C = C[:M] if C.dtype == torch.float32 else C[:M].float()  # int32 from torch._int_mm: rounded once, as the pass does
    if fix is not None:  # exact integers: the sum is float32(C_i32) where C is (below 2**24)
        if inexact is not None and bool((C.abs() >= _F32_EXACT_INT).any()):
            inexact.fill_(1)
        C_fix = torch.sparse.mm(fix, codes[:M].T.to(fix.dtype)).T
        C = torch.add(C, C_fix) if C_fix.dtype == torch.float32 else (C.double() + C_fix).float()
    denormalize(C, s_x, s_w, zp_x, row_sums)
    for A, B in products:
        C.addmm_(A, B.T)
    if bias is not None:
        C.add_(bias)
    return C.to(out_dtype)
