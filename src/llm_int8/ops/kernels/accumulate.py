"""How far an int32 accumulator reaches, and integer GEMMs over more input features than that.

Every integer GEMM this library calls (fbgemm, oneDNN, ``torch._int_mm`` on CPU and cuBLASLt, the
Triton kernels) sums its int8 products in int32. The largest product any of them forms is
``|u w| <= 255 * 128`` (u8 activations ``X_i8 + 128`` times s8 weights; s8 x s8 stays below
``128 * 128``), so a call over ``K_CHUNK = 65,536`` inputs stays below ``32640 * 65536 < 2**31``
and cannot wrap. A longer ``K`` is cut into blocks of at most ``K_CHUNK``; the blocks' exact int32
products are added in int64 (``sum_over_k_chunks``), and the result is int32 where every entry fits,
int64 where one does not: the types ``llm_int8.primitives.int8_matmul_reference`` returns, never a
wrapped value.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["K_CHUNK", "narrow_to_int32", "sum_over_k_chunks"]

K_CHUNK = 65_536
"""Most input features one kernel call sums over: ``255 * 128 * K_CHUNK < 2**31``."""

_INT32 = torch.iinfo(torch.int32)


def narrow_to_int32(C: torch.Tensor) -> torch.Tensor:
    """An int64 product as int32 where every entry fits (the type of an integer GEMM), else as it is."""
    if C.numel() == 0:
        return C.to(torch.int32)
    lo, hi = torch.aminmax(C)
    return C.to(torch.int32) if _INT32.min <= int(lo) and int(hi) <= _INT32.max else C


def sum_over_k_chunks(
    product: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], A_i8: torch.Tensor, W_i8: torch.Tensor
) -> torch.Tensor:
    """``A_i8 W_i8^T`` as ``product`` of each block of at most ``K_CHUNK`` columns, added in int64.

    ``product(A_block, W_block)``: (M, k) x (N, k) int8 -> (M, N) exact int32 for ``k <= K_CHUNK``.
    """
    if A_i8.shape[1] <= K_CHUNK:  # one call: its int32 as it is (no int64 round trip, no range pass)
        return product(A_i8, W_i8)
    C = None
    for k0 in range(0, A_i8.shape[1], K_CHUNK):
        part = product(A_i8[:, k0 : k0 + K_CHUNK], W_i8[:, k0 : k0 + K_CHUNK])  # (M, N) int32, cannot wrap
        C = part.to(torch.int64) if C is None else C.add_(part)
    return narrow_to_int32(C)
