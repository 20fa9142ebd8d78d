"""The batch-invariant LLM.int8() forward: one token's output row is a function of that row alone.

``int8_linear(..., batch_invariant=True)`` (or ``LLM_INT8_BATCH_INVARIANT=1`` for the whole process)
runs this instead of ``forward.py``'s routes. Three things make a row depend on its batch there,
and each is replaced:

* the outlier set is a set of columns, found over the whole batch: here each token's own entries
  with ``|x| >= α`` go to the float part (``kernels/quantize_tokenwise.py``);
* the float outlier product is a BLAS matmul ``X[:, O] W_O^T``, whose blocking (and so its
  summation order) depends on M and on ``|O|``: here it is summed row by row in a fixed order
  (``tokenwise_float_sum``), and so are the static float columns;
* a few tokens take the weight-only kernel (bf16 activations, other numerics) below a crossover
  that depends on M: here every M takes the int8 x int8 path.

The integer GEMM still changes kernel with M (``choice/cpu.py``): every admitted kernel is exact.
Every float step after it (zero point, ``s_w`` then ``s_x``, ``+ F``, ``+ bias``, the cast) is
elementwise, so the same at any M. On CPU it runs as the C++ passes (quantizer, GEMM on the
buffer it reads, ``epilogue.finish``' pass with ``F`` as its product); elsewhere (CUDA, float64,
autograd) as the same steps in PyTorch, device-agnostic, with the exact ``int8_mm``.

``statistics=(row_max, row_min)``: per-token ranges given by the caller instead of each row's own
(a row-parallel layer all-reduces them across ranks first; docs/batch_invariance.md).
"""

from __future__ import annotations

import os

import torch

from . import mm
from .kernels import codes_gemm, cpu_gemm, epilogue, native
from .kernels import quantize_tokenwise as tokenwise
from .prepack import PackedWeight

__all__ = ["ENV", "enabled", "forward_invariant"]

ENV = "LLM_INT8_BATCH_INVARIANT"
_CPU_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def enabled(batch_invariant: bool) -> bool:
    """Whether a call runs in the batch-invariant mode: asked for, or ``LLM_INT8_BATCH_INVARIANT=1``."""
    return bool(batch_invariant) or os.environ.get(ENV, "").strip().lower() in ("1", "true", "on", "yes")


def _weight_columns(W_i8: torch.Tensor, packed: object | None):
    return lambda U: epilogue.outlier_weight_columns(W_i8, U, packed)


def _float_part(X, entries, W_i8, s_w, float_columns, packed) -> torch.Tensor | None:
    """``F`` (M, N), or ``None`` where no row has a float entry (then ``F`` is all ``-0``: nothing to add)."""
    if not entries[1].numel() and float_columns is None:
        return None
    return tokenwise.tokenwise_float_sum(X, entries, W_i8, s_w, float_columns, _weight_columns(W_i8, packed))


def _finish(C, s_w, s_x, zp_x, row_sums, F, bias, out_dtype, pairs_args) -> torch.Tensor:
    """``cast(((C [+ fix] - zp_x r_w) s_w s_x + F) + bias)``: ``epilogue.finish`` with ``F`` its one product
    (``None``: no row has a float entry, and adding its ``-0`` would change no bit)."""
    ops = native.ops() if C.device.type == "cpu" else None
    if ops is not None and C.is_contiguous():
        fix, codes, inexact = pairs_args
        csr = (None, None, None) if fix is None else (fix.crow_indices(), fix.col_indices(), fix.values().float())
        s_w = s_w.float().contiguous()
        b = None if bias is None else bias.float().contiguous()
        sums = [] if F is None else [F]
        return ops.epilogue(C, s_w, s_x, zp_x, row_sums, codes, *csr, sums, False, b, out_dtype, inexact)
    fix, codes, inexact = pairs_args
    out = epilogue.finish(C, s_w, s_x, zp_x, row_sums, fix=fix, codes=codes, inexact=inexact)  # float32
    if F is not None:
        out.add_(F)
    if bias is not None:
        out.add_(bias.float())
    return out.to(out_dtype)


def _forward_cpu_invariant(X, W_i8, s_w, bias, threshold, packed, activation, row_sums, float_columns, statistics):
    """The mode on (M, K) CPU ``X`` in float32 / bf16 / fp16, no autograd: (M, N) in ``X``'s dtype."""
    M, K = X.shape
    kernel, layout, pairs, A = mm.gemm_plan(W_i8, packed, M)  # A: (M, K) or (M + 2, K)
    static_idx = None if float_columns is None else float_columns[0]
    s_x, zp_x, entries = tokenwise.quantize_into_tokenwise(X, threshold, static_idx, activation, A, statistics)
    if zp_x is not None and row_sums is None:
        row_sums = epilogue.compute_weight_row_sums(W_i8)  # (N,)
    if pairs:
        C = codes_gemm.pairs_main_product(codes_gemm.write_sentinels(A), layout)  # (M + 2, N); fix in _finish
    elif layout is not None:
        C = cpu_gemm.int8_mm_float(A, W_i8, layout)
    else:
        C = mm.int8_mm_float(A, W_i8, packed=packed)  # torch._int_mm or the reference
    ops = native.ops()
    if not pairs and ops is not None and (entries[1].numel() or float_columns is not None):
        # the float part formed row by row inside the epilogue pass: no (M, N) F in memory; same bits
        U, WUT, S, WST = tokenwise.float_operands(entries, W_i8, s_w, float_columns, _weight_columns(W_i8, packed))
        b = None if bias is None else bias.float().contiguous()
        return ops.epilogue_tokenwise(C, s_w.float().contiguous(), s_x, zp_x, row_sums, X.contiguous(), *entries,
                                      U, WUT, S, WST, b, X.dtype)  # fmt: skip
    F = _float_part(X, entries, W_i8, s_w, float_columns, packed)
    inexact = torch.zeros(1, dtype=torch.int32) if pairs and not layout.always_exact else None
    pairs_args = (layout.fix, A, inexact) if pairs else (None, None, None)
    out = _finish(C, s_w, s_x, zp_x, row_sums, F, bias, X.dtype, pairs_args)
    if inexact is not None and inexact.item():  # a main product reached 2**24: the exact route
        C = cpu_gemm.int8_mm_float(A[:M], W_i8, layout)
        out = _finish(C, s_w, s_x, zp_x, row_sums, F, bias, X.dtype, (None, None, None))
    return out


def _forward_2d_invariant(X, W_i8, s_w, threshold, packed, activation, row_sums, float_columns, statistics):
    """The same steps one PyTorch op at a time, on any device: (M, N) float32, no bias."""
    static_idx = None if float_columns is None else float_columns[0]
    codes, s_x, zp_x, entries = tokenwise.quantize_with_statistics(X, threshold, static_idx, activation, statistics)
    if zp_x is not None and row_sums is None:
        row_sums = epilogue.compute_weight_row_sums(W_i8)  # (N,)
    C = mm.int8_mm(codes.to(torch.int8), W_i8, packed=packed).float()  # exact on every route
    epilogue.denormalize(C, s_x, s_w, zp_x, row_sums)
    F = _float_part(X, entries, W_i8, s_w, float_columns, packed)
    return C if F is None else C.add_(F)


class _InvariantFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, X, W_i8, s_w, threshold, packed, activation, row_sums, float_columns, statistics):
        ctx.save_for_backward(W_i8, s_w)
        ctx.x_dtype, ctx.float_columns = X.dtype, float_columns
        return _forward_2d_invariant(X, W_i8, s_w, threshold, packed, activation, row_sums, float_columns, statistics)

    @staticmethod
    def backward(ctx, grad_C):
        W_i8, s_w = ctx.saved_tensors
        grad_X = None
        if ctx.needs_input_grad[0]:  # dY · W, W dequantized with its float columns as stored (as forward.py)
            W = W_i8.float() * s_w.float()[:, None]  # (N, K)
            if ctx.float_columns is not None:
                W[:, ctx.float_columns[0]] = ctx.float_columns[1].float()
            grad_X = (grad_C.float() @ W).to(ctx.x_dtype)
        return grad_X, None, None, None, None, None, None, None, None


def _check_statistics(statistics, M: int):
    if statistics is None:
        return None
    hi, lo = statistics
    if hi.shape != (M,) or lo.shape != (M,) or not (hi.is_floating_point() and lo.is_floating_point()):
        raise ValueError(
            f"int8_linear: statistics must be two float ({M},) tensors (row_max, row_min), one per token, "
            f"got {tuple(hi.shape)} and {tuple(lo.shape)}"
        )
    return hi.detach().float(), lo.detach().float()


def forward_invariant(
    X: torch.Tensor,
    W_i8: torch.Tensor,
    s_w: torch.Tensor,
    bias: torch.Tensor | None,
    threshold: float,
    activation: str,
    packed: PackedWeight | None,
    row_sums: torch.Tensor | None,
    float_columns: tuple[torch.Tensor, torch.Tensor] | None,
    statistics: tuple[torch.Tensor, torch.Tensor] | None,
    grad: bool,
) -> torch.Tensor:
    """The mode on (M >= 1, K) ``X`` (checked by ``forward.py``): (M, N) in ``X``'s dtype, bias added.

    ``grad``: a gradient is needed (to ``X`` or the bias): autograd, with the same forward bits.
    """
    statistics = _check_statistics(statistics, X.shape[0])
    if X.device.type == "cpu" and X.dtype in _CPU_DTYPES and not grad:
        return _forward_cpu_invariant(X, W_i8, s_w, bias, threshold, packed, activation, row_sums, float_columns,
                                      statistics)  # fmt: skip
    args = (X, W_i8, s_w, threshold, packed, activation, row_sums, float_columns, statistics)
    C = _InvariantFunction.apply(*args) if torch.is_grad_enabled() and X.requires_grad else _forward_2d_invariant(*args)
    if bias is not None:  # float32, then one cast: the bits of the C++ pass
        C = C + bias.float() if bias.requires_grad else C.add_(bias.float())
    return C.to(X.dtype)
