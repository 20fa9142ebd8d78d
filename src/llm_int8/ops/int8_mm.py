"""``int8_mm``: the integer GEMM ``C_i32 = A_i8 @ B_i8^T``, dispatched per device.

Backends, in the order they are tried:

* ``torch._int_mm`` (cuBLASLt on CUDA; oneDNN / a native loop on CPU), a real int8 x int8 GEMM
  with int32 accumulation. Its CUDA shape rules (M > 16, K and N multiples of 8) are met by
  zero-padding, which does not change an integer product.
* ``int8_matmul_reference``: float64-exact, for devices where ``_int_mm`` is missing.

Every backend equals ``llm_int8.primitives.int8_matmul_reference`` bit for bit.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..primitives import int8_matmul_reference

__all__ = ["int8_mm"]

# cuBLASLt's int8 GEMM behind torch._int_mm on CUDA requires M > 16 and K, N multiples of 8.
_CUDA_MIN_M = 17
_CUDA_ALIGN = 8


def _has_int_mm(device: torch.device) -> bool:
    # _int_mm exists for CPU and CUDA since torch 2.2; other devices (mps, xpu builds) vary.
    return device.type in ("cpu", "cuda") and hasattr(torch, "_int_mm")


def _needs_cuda_padding(device: torch.device) -> bool:
    return device.type == "cuda"


def _pad_to(n: int, multiple: int) -> int:
    return (-n) % multiple


def _int_mm_padded(A_i8: torch.Tensor, B_i8: torch.Tensor) -> torch.Tensor:
    """``_int_mm`` under cuBLASLt's shape rules: zero rows/columns add nothing to an integer GEMM."""
    M, K = A_i8.shape
    N = B_i8.shape[0]
    pad_m = max(_CUDA_MIN_M - M, 0)
    pad_k = _pad_to(K, _CUDA_ALIGN)
    pad_n = _pad_to(N, _CUDA_ALIGN)
    if pad_m or pad_k:
        A_i8 = F.pad(A_i8, (0, pad_k, 0, pad_m))  # (M + pad_m, K + pad_k)
    if pad_k or pad_n:
        B_i8 = F.pad(B_i8, (0, pad_k, 0, pad_n))  # (N + pad_n, K + pad_k)
    C = torch._int_mm(A_i8, B_i8.T)  # (M + pad_m, N + pad_n)
    return C[:M, :N]


def int8_mm(A_i8: torch.Tensor, B_i8: torch.Tensor) -> torch.Tensor:
    """``C_i32 = A_i8 @ B_i8^T`` with int32 accumulation.

    ``A_i8``: (M, K) int8 activations; ``B_i8``: (N, K) int8 weight in ``nn.Linear`` layout.
    Returns (M, N) int32. Exact: equals ``int8_matmul_reference``.
    """
    if A_i8.dtype != torch.int8 or B_i8.dtype != torch.int8:
        raise TypeError(f"int8_mm needs int8 operands, got {A_i8.dtype} and {B_i8.dtype}")
    if A_i8.dim() != 2 or B_i8.dim() != 2 or A_i8.shape[1] != B_i8.shape[1]:
        raise ValueError(f"int8_mm needs A (M, K) and B (N, K), got {tuple(A_i8.shape)} and {tuple(B_i8.shape)}")
    M, N = A_i8.shape[0], B_i8.shape[0]
    if M == 0 or N == 0 or A_i8.shape[1] == 0:
        return torch.zeros(M, N, dtype=torch.int32, device=A_i8.device)
    device = A_i8.device
    if not _has_int_mm(device):
        return int8_matmul_reference(A_i8, B_i8)
    if _needs_cuda_padding(device):
        return _int_mm_padded(A_i8, B_i8)
    # CPU: any shape. B^T as a view of the (N, K) weight: measured 5x faster than a contiguous
    # (K, N) copy with torch 2.13 on AVX2.
    return torch._int_mm(A_i8.contiguous(), B_i8.T)
