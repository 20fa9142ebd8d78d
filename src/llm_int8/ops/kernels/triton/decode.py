"""Kernel (d): ``Y = X (W_i8 ⊙ s_w)^T + b`` for decoding, M <= 16 tokens, fp16 / bf16 activations.

At a few tokens a linear layer is bound by reading its weight: this kernel reads each int8 weight
byte once (one program per block of output features covers every token and all of K), converts it
to X's dtype (exact for int8 codes) and accumulates ``X W_i8^T`` in float32 with ``tl.dot``; ``s_w``
and the bias are applied to the float32 sum. It is the int8-weight, float-activation path of
``kernels/weight_only.py`` for GPUs (no activation quantization, no outlier split, more accurate than the
int8 x int8 product); ``int8_linear`` takes it for at most ``weight_only_max_tokens`` tokens.
Its reference is ``decode_linear_reference`` (float64).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _bind, interpreting

_bind()  # records the mode the kernels below are bound to

__all__ = ["MAX_TOKENS", "decode_configs", "decode_linear", "decode_linear_reference"]

MAX_TOKENS = 16
"""Rows handled by one program; ``tl.dot`` needs at least 16, so fewer are masked."""


def decode_configs() -> list[triton.Config]:
    """Tiles over (N, K); small N tiles give enough programs to fill 100+ SMs at N = 4096."""
    if interpreting():
        return [triton.Config({"BLOCK_N": 16, "BLOCK_K": 32}, num_stages=1, num_warps=1)]
    return [
        triton.Config({"BLOCK_N": bn, "BLOCK_K": bk}, num_stages=s, num_warps=4)
        for bn, bk, s in ((16, 512, 4), (32, 256, 4), (32, 512, 3), (64, 256, 3), (64, 128, 4))
    ]


@triton.autotune(configs=decode_configs(), key=["N", "K"])
@triton.jit
def _decode_kernel(
    X_ptr,
    W_ptr,
    sw_ptr,
    bias_ptr,
    Y_ptr,
    M,
    N,
    K,
    stride_xm,
    stride_wn,
    stride_ym,
    HAS_BIAS: tl.constexpr,
    DOT_FP32: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = (tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    offs_k = tl.arange(0, BLOCK_K)
    m_ok = offs_m < M
    n_ok = offs_n < N
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_ok = (k0 + offs_k) < K
        x = tl.load(
            X_ptr + offs_m[:, None] * stride_xm + (k0 + offs_k)[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0
        )
        w = tl.load(
            W_ptr + offs_n[None, :] * stride_wn + (k0 + offs_k)[:, None], mask=k_ok[:, None] & n_ok[None, :], other=0
        )
        if DOT_FP32:  # interpreter: no numpy bf16 (see gemm.py); float32 products of bf16 values are exact
            acc = tl.dot(x.to(tl.float32), w.to(tl.float32), acc, input_precision="ieee")
        else:
            acc = tl.dot(x, w.to(x.dtype), acc)  # (BLOCK_M, BLOCK_N) float32
    y = acc * tl.load(sw_ptr + offs_n, mask=n_ok, other=0.0)[None, :]
    if HAS_BIAS:
        y += tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    y_ptrs = Y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :]
    tl.store(y_ptrs, y.to(Y_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


def _check(X, W_i8, s_w, bias):
    if X.dim() != 2 or X.dtype not in (torch.float16, torch.bfloat16):
        raise TypeError(f"decode_linear: X must be a 2-D fp16 or bf16 tensor, got {X.dtype} {tuple(X.shape)}")
    if X.shape[0] > MAX_TOKENS:
        raise ValueError(f"decode_linear: at most {MAX_TOKENS} tokens, got {X.shape[0]}")
    if W_i8.dtype != torch.int8 or W_i8.dim() != 2 or W_i8.shape[1] != X.shape[1]:
        raise ValueError(f"decode_linear: W_i8 must be int8 (N, {X.shape[1]}), got {W_i8.dtype} {tuple(W_i8.shape)}")
    if s_w.shape != (W_i8.shape[0],) or (bias is not None and bias.shape != (W_i8.shape[0],)):
        raise ValueError(f"decode_linear: s_w and bias must have shape ({W_i8.shape[0]},)")


def decode_linear(
    X: torch.Tensor, W_i8: torch.Tensor, s_w: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``X`` (M <= 16, K) fp16 / bf16 -> (M, N) in X's dtype, in one launch."""
    _check(X, W_i8, s_w, bias)
    M, K = X.shape
    N = W_i8.shape[0]
    X = X.contiguous()
    W_i8 = W_i8.contiguous()
    Y = torch.empty(M, N, dtype=X.dtype, device=X.device)
    if Y.numel() == 0:
        return Y
    _decode_kernel[lambda meta: (triton.cdiv(N, meta["BLOCK_N"]),)](
        X, W_i8, s_w.float().contiguous(), Y if bias is None else bias.contiguous(), Y,
        M, N, K, X.stride(0), W_i8.stride(0), Y.stride(0),
        HAS_BIAS=bias is not None, DOT_FP32=interpreting(), BLOCK_M=MAX_TOKENS,
    )  # fmt: skip
    return Y


def decode_linear_reference(
    X: torch.Tensor, W_i8: torch.Tensor, s_w: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``decode_linear`` in float64, rounded once to X's dtype."""
    _check(X, W_i8, s_w, bias)
    Y = (X.double() @ W_i8.double().T) * s_w.double()[None, :]
    if bias is not None:
        Y = Y + bias.double()
    return Y.to(X.dtype)
