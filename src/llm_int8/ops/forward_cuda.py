"""LLM.int8()'s forward on NVIDIA GPUs: the Triton kernels or the PyTorch forward on cuBLASLt, as measured.

``int8_linear_cuda`` is ``int8_linear``'s forward for CUDA tensors: the decode kernel of
``kernels/triton/decode.py`` for at most ``weight_only_max_tokens`` fp16 / bf16 tokens, else the faster
of the Triton forward (``kernels/triton/linear.py``) and the PyTorch forward (``forward.py``) whose
integer GEMM is ``kernels/cuda_gemm.py``, as ``choice/cuda.py`` measured it. Not measured in this
repository's benchmarks yet: no GPU was available (see BENCHMARKS.md; ``benchmarks/gpu_check.sh`` is
the measurement to run).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .choice import cuda as cuda_choice
from .kernels import triton as triton_kernels

__all__ = ["int8_linear_cuda"]


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
    integer GEMM is ``kernels.cuda_gemm.int_mm_padded`` on CUDA tensors. Triton runs where ``ops.triton.available``
    says so (CUDA sm_80+, or CPU tensors under ``TRITON_INTERPRET=1``, which the tests use).
    """
    M, K = X.shape
    N = W_i8.shape[0]
    # the kernels index with int32 offsets: every operand must have fewer than 2**31 elements
    has_triton = triton_kernels.available(X.device) and max(M * K, N * K, M * N) < 2**31
    if has_triton and X.dtype in (torch.float16, torch.bfloat16) and M <= weight_only_max_tokens:
        from .kernels.triton.decode import MAX_TOKENS, decode_linear

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
        from .kernels.triton.linear import int8_linear_triton

        candidates[cuda_choice.TRITON] = lambda: int8_linear_triton(
            X, W_i8, s_w, bias, threshold, activation, row_sums, float_columns
        )
    bucket = cuda_choice.bucket_key(M, N, K, activation, X.dtype)
    return candidates[cuda_choice.choose(bucket, candidates, X.device)]()
