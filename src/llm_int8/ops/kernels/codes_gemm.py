"""The CPU integer GEMM fed by a codes buffer the quantizer wrote in place (``quantize.quantize_into``).

Each kernel of ``cpu_gemm.py`` reads the activation codes in its own form, so the buffer is made in
that form and the codes are written once:

* ``FBGEMM_PAIRS`` (fbgemm's u8 x s8 kernel behind ``quantized::linear_dynamic``) reads float32: the
  buffer is (M + 2, K), the codes in the first M rows and below them the two sentinel rows of
  ``cpu_gemm.py`` (-128 and 127 in column 0) that make fbgemm's dynamic quantization take scale 1
  and zero point 128, so it multiplies the codes as they are. ``pairs_main_product`` runs the
  kernel on it and returns its (M + 2, N) output; the sparse fix ``X_i8 W_fix^T`` is left to the
  epilogue (``epilogue.finish`` adds it in the same pass). Only for weights whose products stay
  below 2**24 (``always_exact``); others take ``cpu_gemm.int8_mm_float``, which checks rows.
* ``FBGEMM`` (sign split) reads float32 codes (it stacks the two halves itself).
* ``ONEDNN`` (sign split), ``ONEDNN_S8``, ``torch._int_mm`` and the reference read int8.

``pairs_product_float`` is the whole ``FBGEMM_PAIRS`` product this way (main product, then the fix
in the C++ pass with unit scales): ``cpu_gemm.int8_mm_float``'s signature and bits, which is how
``ops/choice`` times the kernel, as the op runs it (``cpu_gemm.int8_mm_float``'s fix is torch's sparse
product, 3-6x slower on the AVX2 machine: timed that way, ``FBGEMM_PAIRS`` ranked below the split
kernels on shapes where the op's own route beats them; BENCHMARKS.md section (i)).

Reference: ``cpu_gemm.int8_mm_float`` on the same codes (tests/test_native_kernels.py).
"""

from __future__ import annotations

import torch

from ...primitives import INT8_MAX
from . import cpu_gemm, native

__all__ = [
    "SENTINEL_ROWS",
    "codes_buffer",
    "fused_pairs",
    "pairs_main_product",
    "pairs_product_float",
    "write_sentinels",
]

SENTINEL_ROWS = 2


_FIX_MAX = 126  # |W_fix| <= 127 + 127 - 128: the larger entry of a pair shrunk to meet the bound


def fused_pairs(layout: object) -> bool:
    """Whether this layout runs as ``pairs_main_product`` plus the fix in the epilogue: an ``FBGEMM_PAIRS``
    layout of one block of columns whose fix sums are exact in float32 (at most ``2**24 / (126 * 127)``
    nonzeros per row of ``W_fix``). Where the weight is not ``always_exact`` the epilogue also reports
    any main product of 2**24 or more (``finish(..., inexact=)``), and the caller recomputes the call."""
    if not (isinstance(layout, cpu_gemm.CpuInt8Weight) and layout.kernel == cpu_gemm.FBGEMM_PAIRS):
        return False
    if layout.packed is None:  # a weight packed in column blocks has one layout per block
        return False
    if layout.always_exact:
        return True
    return layout.fix_row_max * _FIX_MAX * INT8_MAX < 2**24  # counted once, at packing


def codes_buffer(kernel: str, M: int, K: int, pairs: bool) -> torch.Tensor:
    """An uninitialised buffer for the codes of M rows in the form ``kernel`` reads (see the module doc);
    with ``pairs``, (M + 2, K) float32 whose last rows ``write_sentinels`` fills (or ``quantize_into``)."""
    if pairs:
        # float32 whatever the default dtype (vLLM loads models under a bf16 default)
        return torch.empty(M + SENTINEL_ROWS, K, dtype=torch.float32)
    dtype = torch.float32 if kernel in (cpu_gemm.FBGEMM, cpu_gemm.FBGEMM_PAIRS) else torch.int8
    return torch.empty(M, K, dtype=dtype)


def write_sentinels(A: torch.Tensor) -> torch.Tensor:
    """The two rows below the codes: -128 and 127 in column 0 (fbgemm then takes scale 1, zero point 128)."""
    M = A.shape[0] - SENTINEL_ROWS
    A[M:].zero_()
    A[M, 0], A[M + 1, 0] = -128, INT8_MAX
    return A


def pairs_main_product(A: torch.Tensor, layout: cpu_gemm.CpuInt8Weight) -> torch.Tensor:
    """``float32(A W_safe^T)`` (M + 2, N) for a ``codes_buffer(..., pairs=True)`` filled with M rows of codes."""
    return torch.ops.quantized.linear_dynamic(A, layout.packed, False)


def pairs_product_float(A_codes: torch.Tensor, W_i8: torch.Tensor, layout: cpu_gemm.CpuInt8Weight) -> torch.Tensor:
    """``float32(A W_i8^T)`` (M, N) for float32 codes (M, K), as ``cpu_gemm.int8_mm_float`` returns it,
    with the fix added by the C++ pass; ``cpu_gemm.int8_mm_float`` itself where that route does not apply."""
    ops = native.ops()
    if ops is None or not fused_pairs(layout) or A_codes.dtype != torch.float32:
        return cpu_gemm.int8_mm_float(A_codes, W_i8, layout)
    M, N = A_codes.shape[0], W_i8.shape[0]
    A = write_sentinels(codes_buffer(cpu_gemm.FBGEMM_PAIRS, M, A_codes.shape[1], pairs=True))
    A[:M] = A_codes
    csr = (layout.fix.crow_indices(), layout.fix.col_indices(), layout.fix.values().float())
    ones = torch.ones(max(M, N))  # unit scales: x 1 is exact, so the pass returns the integer sum
    inexact = torch.zeros(1, dtype=torch.int32)
    C = pairs_main_product(A, layout)
    C = ops.epilogue(C, ones[:N], ones[:M], None, None, A, *csr, [], False, None, torch.float32, inexact)
    return cpu_gemm.int8_mm_float(A_codes, W_i8, layout) if inexact.item() else C
