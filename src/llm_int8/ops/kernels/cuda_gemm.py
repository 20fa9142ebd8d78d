"""The integer GEMM on NVIDIA GPUs: cuBLASLt through ``torch._int_mm``, padded to its shape rules.

cuBLASLt's int8 GEMM (int32 accumulation, exact) requires M > 16 and K, N multiples of 8. Zero rows
and columns add nothing to an integer product, so any shape is padded up to those rules and the
result cut back. Its accumulator is int32: more than ``K_CHUNK`` input features are summed in
blocks (``accumulate.py``), so no sum wraps. Oracle: ``llm_int8.primitives.int8_matmul_reference``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .accumulate import sum_over_k_chunks

__all__ = ["int_mm_padded"]

_MIN_M = 17
_ALIGN = 8


def _pad_to(n: int, multiple: int) -> int:
    return (-n) % multiple


def int_mm_padded(A_i8: torch.Tensor, B_i8: torch.Tensor) -> torch.Tensor:
    """``A_i8 B_i8^T``: (M, K) x (N, K) int8 -> (M, N), exact, under cuBLASLt's shape rules."""
    return sum_over_k_chunks(_int_mm_padded, A_i8, B_i8)


def _int_mm_padded(A_i8: torch.Tensor, B_i8: torch.Tensor) -> torch.Tensor:
    M, K = A_i8.shape
    N = B_i8.shape[0]
    pad_m = max(_MIN_M - M, 0)
    pad_k = _pad_to(K, _ALIGN)
    pad_n = _pad_to(N, _ALIGN)
    if pad_m or pad_k:
        A_i8 = F.pad(A_i8, (0, pad_k, 0, pad_m))  # (M + pad_m, K + pad_k)
    if pad_k or pad_n:
        B_i8 = F.pad(B_i8, (0, pad_k, 0, pad_n))  # (N + pad_n, K + pad_k)
    C = torch._int_mm(A_i8.contiguous(), B_i8.contiguous().T)  # (M + pad_m, N + pad_n)
    return C[:M, :N]
