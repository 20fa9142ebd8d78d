"""Kernels (b) and (c): ``C_i32 = X_i8 W_i8^T`` with LLM.int8()'s epilogue fused into the same launch.

Per output tile, after the int8 x int8 -> int32 ``tl.dot`` loop over K:

* zeropoint: ``C_i32 - zp_x ⊗ r_w`` in int32 (exact: ``|zp_x r_w| <= 127 * 127 K`` fits for K < 133k);
* ``(s_x ⊗ s_w) · C`` plus (c) the outlier product ``X[:, O] W_i8[:, O]^T ⊙ s_w``, as
  ``(s_x C + X[:, O] W_i8[:, O]^T) ⊙ s_w``: a second ``tl.dot`` over the gathered ``X[:, O]`` (in X's
  dtype, fp16/bf16; ``float32`` with IEEE products) and the int8 weight columns of ``O`` read where
  they lie and converted to that dtype (which holds every int8 code exactly), accumulated in float32
  into the scaled tile itself;
* an optional float32 addend (the ``float_columns`` product), the bias, the cast to the output dtype.

``EPILOGUE=False`` stores the raw int32 accumulator: the tests compare it with the integer reference.
The accumulator reaches ``K_CHUNK`` inputs (``accumulate.py``): ``int8_gemm`` launches a longer ``K``
in blocks, adds their integer products in int64 and applies the epilogue in float64 on the host
(exact; only layers wider than 65,536 inputs take this path). The reference for the whole launch
is ``int8_gemm_reference`` (float64).

Under the interpreter (triton 3.9) numpy has no bf16: an int8 -> bf16 cast returns the integer's bits
and a bf16 ``tl.dot`` multiplies those bits, so there the outlier product is taken in float32 (exact
products of bf16 values, float32 sums: what the GPU's bf16 dot computes, up to summation order), and
the final float32 -> bf16 cast may round toward zero (one bf16 ulp; the tests allow for it).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ....primitives import int8_matmul_reference
from ..accumulate import K_CHUNK, sum_over_k_chunks
from . import _bind, interpreting

_bind()  # records the mode the kernels below are bound to

__all__ = ["M_BUCKETS", "gemm_configs", "int8_gemm", "int8_gemm_reference", "m_bucket"]

M_BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
"""Token counts are rounded up to one of these for the autotuning key (and the dispatch cache)."""


def m_bucket(M: int) -> int:
    """The smallest bucket >= M (the largest for anything above it)."""
    return next((b for b in M_BUCKETS if M <= b), M_BUCKETS[-1])


def _config(bm, bn, bk, stages, warps, group=8):
    return triton.Config(
        {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": group}, num_stages=stages, num_warps=warps
    )


def gemm_configs() -> list[triton.Config]:
    """Candidate tiles. Under the interpreter one small tile (tests stay fast; ``tl.dot`` needs >= 16).

    Hopper (H100/H200, 228 KB shared memory per SM): 128 x 256 x 128 int8 tiles in 3 stages keep the
    tensor cores fed; Ampere (A100, 164 KB): 128 x 128 x 128 in 4 stages. Small-M tiles serve decode
    and short prompts. A tile that does not fit a GPU's shared memory fails to compile and the
    autotuner drops it, so one list serves both generations. ``python -m llm_int8.ops.kernels.triton.aot``
    compiled each for sm_80 and sm_90a without a GPU: all fit, none spills on sm_90a (wgmma for
    BLOCK_M >= 64); 128 x 256 x 128 spills 624 B/thread on sm_80 (the autotuner will see it slow there),
    and 128 x 128 x 64 with 4 warps, which spilled on sm_80 too, was dropped.
    """
    if interpreting():
        return [_config(32, 32, 64, 1, 1)]
    return [
        _config(128, 256, 128, 3, 8),  # Hopper, large M
        _config(128, 128, 128, 4, 8),  # Hopper / Ampere
        _config(64, 128, 128, 4, 4),  # medium M
        _config(32, 128, 128, 4, 4),  # short prompts
        _config(16, 64, 256, 4, 4),  # M <= 16: more programs along N
    ]


@triton.autotune(configs=gemm_configs(), key=["M_BUCKET", "N", "K", "EPILOGUE"])
@triton.jit
def _int8_gemm_kernel(
    A_ptr,
    B_ptr,
    C_ptr,
    sx_ptr,
    sw_ptr,
    zp_ptr,
    rw_ptr,
    bias_ptr,
    add_ptr,
    xo_ptr,
    idx_ptr,
    M,
    N,
    K,
    n_O,
    M_BUCKET,
    stride_am,
    stride_bn,
    stride_cm,
    stride_om,
    EPILOGUE: tl.constexpr,
    ZEROPOINT: tl.constexpr,
    HAS_OUTLIERS: tl.constexpr,
    OUTLIER_FP32: tl.constexpr,
    HAS_ADDEND: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_O: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    # grouped order: GROUP_M row tiles share each column tile of W while it is in L2
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    group = pid // (GROUP_M * num_n)
    first_m = group * GROUP_M
    size_m = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % (GROUP_M * num_n)) % size_m
    pid_n = (pid % (GROUP_M * num_n)) // size_m

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    m_ok = offs_m < M
    n_ok = offs_n < N
    # rows past M / N read row M-1 / N-1 again (wrapped, never stored): the loop needs no 2-D masks
    a_ptrs = A_ptr + (offs_m % M)[:, None] * stride_am + offs_k[None, :]  # (BLOCK_M, BLOCK_K) of X_i8
    b_ptrs = B_ptr + (offs_n % N)[None, :] * stride_bn + offs_k[:, None]  # (BLOCK_K, BLOCK_N) of W_i8^T
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.int32)
    for k0 in range(0, K, BLOCK_K):
        k_ok = (k0 + offs_k) < K
        a = tl.load(a_ptrs, mask=k_ok[None, :], other=0)
        b = tl.load(b_ptrs, mask=k_ok[:, None], other=0)
        acc = tl.dot(a, b, acc, out_dtype=tl.int32)  # exact: |C| <= 127^2 K < 2^31 for K < 133k
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K
    c_ptrs = C_ptr + offs_m[:, None] * stride_cm + offs_n[None, :]
    c_ok = m_ok[:, None] & n_ok[None, :]
    if not EPILOGUE:
        tl.store(c_ptrs, acc, mask=c_ok)
    else:
        if ZEROPOINT:
            zp = tl.load(zp_ptr + offs_m, mask=m_ok, other=0.0).to(tl.int32)
            r_w = tl.load(rw_ptr + offs_n, mask=n_ok, other=0.0).to(tl.int32)  # float32, exact integers
            acc = acc - zp[:, None] * r_w[None, :]
        s_x = tl.load(sx_ptr + offs_m, mask=m_ok, other=0.0)
        s_w = tl.load(sw_ptr + offs_n, mask=n_ok, other=0.0)
        c = acc.to(tl.float32) * s_x[:, None]  # the int32 tile is dead from here: one float tile stays live
        if HAS_OUTLIERS:
            # (c) accumulated into the same tile, before s_w: (s_x C + X_O W_i8[:, O]^T) ⊙ s_w. A second
            # (BLOCK_M, BLOCK_N) accumulator would double the live registers and spill (ptxas, sm_80/90)
            offs_o = tl.arange(0, BLOCK_O)
            for j0 in range(0, n_O, BLOCK_O):
                j = j0 + offs_o
                j_ok = j < n_O
                idx = tl.load(idx_ptr + j, mask=j_ok, other=0)
                x_o = tl.load(
                    xo_ptr + offs_m[:, None] * stride_om + j[None, :], mask=m_ok[:, None] & j_ok[None, :], other=0.0
                )
                w_o = tl.load(
                    B_ptr + offs_n[None, :] * stride_bn + idx[:, None], mask=j_ok[:, None] & n_ok[None, :], other=0
                )
                if OUTLIER_FP32:  # float32 X (IEEE products, no tf32), or bf16 under the interpreter
                    c = tl.dot(x_o.to(tl.float32), w_o.to(tl.float32), c, input_precision="ieee")
                else:
                    c = tl.dot(x_o, w_o.to(x_o.dtype), c)  # int8 codes are exact in fp16 / bf16
        c = c * s_w[None, :]
        if HAS_ADDEND:
            c += tl.load(add_ptr + offs_m[:, None] * N + offs_n[None, :], mask=c_ok, other=0.0)
        if HAS_BIAS:
            c += tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
        tl.store(c_ptrs, c.to(C_ptr.dtype.element_ty), mask=c_ok)


def _check(X_i8, W_i8, s_x, s_w):
    if X_i8.dtype != torch.int8 or W_i8.dtype != torch.int8 or X_i8.dim() != 2 or W_i8.dim() != 2:
        raise TypeError(f"int8_gemm: X_i8 and W_i8 must be 2-D int8, got {X_i8.dtype} {W_i8.dtype}")
    if X_i8.shape[1] != W_i8.shape[1]:
        raise ValueError(f"int8_gemm: X_i8 {tuple(X_i8.shape)} and W_i8 {tuple(W_i8.shape)} differ in K")
    if s_x is not None and (s_x.shape != (X_i8.shape[0],) or s_w.shape != (W_i8.shape[0],)):
        raise ValueError(f"int8_gemm: s_x must be ({X_i8.shape[0]},) and s_w ({W_i8.shape[0]},)")


def int8_gemm(
    X_i8: torch.Tensor,
    W_i8: torch.Tensor,
    s_x: torch.Tensor | None = None,
    s_w: torch.Tensor | None = None,
    *,
    zp_x: torch.Tensor | None = None,
    row_sums: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    X_O: torch.Tensor | None = None,
    outlier_idx: torch.Tensor | None = None,
    addend: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``X_i8`` (M, K) int8 x ``W_i8`` (N, K) int8 in one launch (each operand < 2**31 elements: int32 offsets).

    Without ``s_x`` / ``s_w``: the integer product ``C_i32`` (M, N), int32 (int64 where a sum leaves
    int32, for ``K > K_CHUNK``). With them: ``out_dtype``
    ``(s_x ⊗ s_w) · (C_i32 - zp_x ⊗ r_w) + X_O W_i8[:, O]^T ⊙ s_w + addend + bias``, where ``zp_x`` (M,)
    and ``row_sums`` ``r_w`` (N,) (float32 holding integers) are given together for zeropoint codes,
    ``X_O`` (M, |O|) fp16 / bf16 / fp32 with ``outlier_idx`` (|O|,) int64 give the outlier product,
    ``addend`` is (M, N) float32.
    """
    _check(X_i8, W_i8, s_x, s_w)
    M, K = X_i8.shape
    N = W_i8.shape[0]
    if K > K_CHUNK:  # past the int32 accumulator's reach: integer blocks added in int64, then the epilogue
        C = sum_over_k_chunks(int8_gemm, X_i8, W_i8)
        if s_x is None:
            return C
        return _epilogue_float64(C, W_i8, s_x, s_w, zp_x, row_sums, bias, X_O, outlier_idx, addend, out_dtype)
    X_i8 = X_i8.contiguous()
    W_i8 = W_i8.contiguous()
    epilogue = s_x is not None
    if epilogue and (zp_x is None) != (row_sums is None):
        raise ValueError("int8_gemm: zp_x and row_sums go together (zeropoint codes)")
    C = torch.empty(M, N, dtype=out_dtype if epilogue else torch.int32, device=X_i8.device)
    has_outliers = X_O is not None and outlier_idx is not None and outlier_idx.numel() > 0
    if has_outliers:
        X_O = X_O.contiguous()
    if addend is not None:
        addend = addend.float().contiguous()
    if C.numel() == 0:
        return C  # no program to launch (Triton rejects an empty grid on some versions)
    dummy = C  # never read: its flag is off
    _int8_gemm_kernel[lambda meta: (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),)](
        X_i8, W_i8, C,
        s_x if epilogue else dummy, s_w.float().contiguous() if epilogue else dummy,
        dummy if zp_x is None else zp_x, dummy if row_sums is None else row_sums.float().contiguous(),
        dummy if bias is None else bias.contiguous(), dummy if addend is None else addend,
        X_O if has_outliers else dummy, outlier_idx if has_outliers else dummy,
        M, N, K, outlier_idx.numel() if has_outliers else 0, m_bucket(M),
        X_i8.stride(0), W_i8.stride(0), C.stride(0), X_O.stride(0) if has_outliers else 0,
        EPILOGUE=epilogue, ZEROPOINT=epilogue and zp_x is not None, HAS_OUTLIERS=epilogue and has_outliers,
        OUTLIER_FP32=has_outliers and (X_O.dtype == torch.float32 or interpreting()),
        HAS_ADDEND=epilogue and addend is not None, HAS_BIAS=epilogue and bias is not None, BLOCK_O=16,
    )  # fmt: skip
    return C


def int8_gemm_reference(
    X_i8: torch.Tensor,
    W_i8: torch.Tensor,
    s_x: torch.Tensor | None = None,
    s_w: torch.Tensor | None = None,
    *,
    zp_x: torch.Tensor | None = None,
    row_sums: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    X_O: torch.Tensor | None = None,
    outlier_idx: torch.Tensor | None = None,
    addend: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``int8_gemm`` in float64 (every integer sum exact), rounded once to ``out_dtype``."""
    _check(X_i8, W_i8, s_x, s_w)
    C = int8_matmul_reference(X_i8, W_i8)  # (M, N) int32 (int64 past int32)
    if s_x is None:
        return C
    return _epilogue_float64(C, W_i8, s_x, s_w, zp_x, row_sums, bias, X_O, outlier_idx, addend, out_dtype)


def _epilogue_float64(C, W_i8, s_x, s_w, zp_x, row_sums, bias, X_O, outlier_idx, addend, out_dtype):
    """``int8_gemm``'s epilogue on the exact integer product ``C``, in float64, rounded once."""
    C = C.double()
    if zp_x is not None:
        C = C - zp_x.double()[:, None] * row_sums.double()[None, :]
    C = C * s_x.double()[:, None] * s_w.double()[None, :]
    if X_O is not None and outlier_idx is not None and outlier_idx.numel():
        C = C + (X_O.double() @ W_i8[:, outlier_idx].double().T) * s_w.double()[None, :]
    if addend is not None:
        C = C + addend.double()
    if bias is not None:
        C = C + bias.double()
    return C.to(out_dtype)
