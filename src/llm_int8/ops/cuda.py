"""LLM.int8() on NVIDIA GPUs: cuBLASLt through ``torch._int_mm``, and the choice between it and Triton.

cuBLASLt's int8 GEMM (int32 accumulation, exact) requires M > 16 and K, N multiples of 8. Zero rows
and columns add nothing to an integer product, so any shape is padded up to those rules and the
result cut back (``int_mm_padded``; ``int8_mm`` calls it for CUDA tensors).

``int8_linear_cuda`` is ``int8_linear``'s forward for CUDA tensors: the decode kernel of
``ops/triton/decode.py`` for at most ``weight_only_max_tokens`` fp16 / bf16 tokens, else the faster
of the Triton forward (``ops/triton/linear.py``) and the PyTorch forward on cuBLASLt, as
``ops/cuda_choice.py`` measured it. Not measured in this repository's benchmarks yet: no GPU was
available (see BENCHMARKS.md; ``benchmarks/gpu_check.sh`` is the measurement to run).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from . import cuda_choice
from . import triton as triton_kernels

__all__ = ["int8_linear_cuda", "int_mm_padded"]

_MIN_M = 17
_ALIGN = 8


def _pad_to(n: int, multiple: int) -> int:
    return (-n) % multiple


def int_mm_padded(A_i8: torch.Tensor, B_i8: torch.Tensor) -> torch.Tensor:
    """``A_i8 B_i8^T``: (M, K) x (N, K) int8 -> (M, N) int32, under cuBLASLt's shape rules."""
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


def int8_linear_cuda(
    X: torch.Tensor,
    W_i8: torch.Tensor,
    s_w: torch.Tensor,
    bias: torch.Tensor | None,
    threshold: float,
    activation: str,
    row_sums: torch.Tensor | None,
    float_columns: tuple[torch.Tensor, torch.Tensor] | None,
    weight_only_max_tokens: int,
    cublaslt_forward: Callable[[], torch.Tensor],
) -> torch.Tensor:
    """``X`` (M, K) -> (M, N) in X's dtype; ``int8_linear`` has checked the arguments.

    ``cublaslt_forward()``: the PyTorch forward of ``int8_linear`` (float32 (M, N), no bias), whose
    integer GEMM is ``int_mm_padded`` on CUDA tensors. Triton runs where ``ops.triton.available``
    says so (CUDA sm_80+, or CPU tensors under ``TRITON_INTERPRET=1``, which the tests use).
    """
    M, K = X.shape
    N = W_i8.shape[0]
    # the kernels index with int32 offsets: every operand must have fewer than 2**31 elements
    has_triton = triton_kernels.available(X.device) and max(M * K, N * K, M * N) < 2**31
    if has_triton and X.dtype in (torch.float16, torch.bfloat16) and M <= weight_only_max_tokens:
        from .triton.decode import MAX_TOKENS, decode_linear

        if M <= MAX_TOKENS:
            out = decode_linear(X, W_i8, s_w, bias)
            if float_columns is not None:  # the codes of S are 0: add X_S W_S^T in float, as on CPU
                S, W_S = float_columns
                out = (out.float() + X.index_select(1, S).float() @ W_S.float().T).to(X.dtype)
            return out

    def run_cublaslt() -> torch.Tensor:
        C = cublaslt_forward()  # (M, N) float32
        return (C if bias is None else C.add_(bias.float())).to(X.dtype)

    candidates = {cuda_choice.CUBLASLT: run_cublaslt}
    if has_triton:
        from .triton.linear import int8_linear_triton

        candidates[cuda_choice.TRITON] = lambda: int8_linear_triton(
            X, W_i8, s_w, bias, threshold, activation, row_sums, float_columns
        )
    bucket = cuda_choice.bucket_key(M, N, K, activation, X.dtype)
    return candidates[cuda_choice.choose(bucket, candidates, X.device)]()
