"""Int8-weight, float-activation linear for a few tokens: ``Y = X (W_i8 ⊙ s_w)^T + b``.

At small M (decoding) every GEMM is bound by reading the weight, and LLM.int8()'s integer product
cannot beat a kernel that reads the same int8 weight once while skipping the activation
quantization, the outlier search and the decomposition. ``torch._weight_int8pack_mm`` is that
kernel on CPU: int8 weight, bf16 activations, float32 accumulation.

It is not a different quantization of the model: the stored ``weight_int8`` and ``weight_scale``
are the same, and ``X`` keeps every feature dim at bf16 precision (no per-token int8 step, so no
outlier can spoil one), which is more accurate than the int8 x int8 path. ``Int8Linear`` takes it
for inputs of at most ``weight_only_max_tokens`` rows, where it is faster: ``ops/choice/cpu.py``
measures the crossover per layer shape (BENCHMARKS.md). Its oracle is
``llm_int8.primitives.int8_weight_only_reference``.
"""

from __future__ import annotations

import torch

from . import native, probes

__all__ = ["K_MULTIPLE", "available", "int8_weight_only_linear"]

K_MULTIPLE = 16
"""The kernel runs only for ``in_features % K_MULTIPLE == 0``. Its x86 inner loop (torch's
``int8mm_kernel.cpp``) steps through K 16 elements at a time on AVX-512 (8 on AVX2) with aligned
vector loads and no remainder loop, so any other K reads past each row: on an AVX-512 CPU with torch
2.13, K = 40 gave inf/NaN outputs or a segmentation fault. Other layers take the int8 x int8 path."""
_ALIGN = 64  # bytes: the kernel's aligned loads need each row, hence the base pointer, aligned


def int8_weight_only_linear(
    x: torch.Tensor, weight_int8: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``x`` (..., K) float -> (..., N) in ``x``'s dtype, through ``_weight_int8pack_mm`` with bf16 ``x``.

    The kernel multiplies by unit scales; ``weight_scale`` (float32) is applied afterwards in float32,
    so the scales are not rounded to bf16: ``cast(float(C) * s_w + bias)``, one C++ pass where the
    extension is built (``native.ops().scale_bias_cast``), else the same three PyTorch steps. The
    caller checks shapes and that the kernel is available (``probes.has_weight_int8pack_mm``); no
    autograd.
    """
    N, K = weight_int8.shape
    if K % K_MULTIPLE:
        raise ValueError(f"the weight-only kernel needs in_features % {K_MULTIPLE} == 0, got {K}")
    lead = x.shape[:-1]
    X = _aligned(x.reshape(-1, K).to(torch.bfloat16))  # (M, K)
    ones = torch.ones(N, dtype=torch.bfloat16, device=x.device)
    C = torch._weight_int8pack_mm(X, _aligned(weight_int8), ones)  # (M, N) bf16: X_bf16 W_i8^T, one bf16 rounding
    ops = native.ops() if x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16, torch.float16) else None
    if ops is not None:  # the same three steps in one pass, no float32 copies (native/cpu_kernels.cpp)
        b = None if bias is None else bias.float().contiguous()
        return ops.scale_bias_cast(C, weight_scale.float().contiguous(), b, x.dtype).reshape(*lead, N)
    C = C.float().mul_(weight_scale.float())
    if bias is not None:
        C.add_(bias.float())
    return C.to(x.dtype).reshape(*lead, N)


def available(device: torch.device, in_features: int) -> bool:
    """Whether the weight-only kernel runs (and is right) for a layer of ``in_features`` on ``device``."""
    return device.type == "cpu" and in_features % K_MULTIPLE == 0 and probes.has_weight_int8pack_mm()


def _aligned(t: torch.Tensor) -> torch.Tensor:
    """``t`` contiguous with a 64-byte-aligned start (a view at an odd offset, or a memory-mapped
    checkpoint tensor, is copied; fresh allocations already are)."""
    t = t.contiguous()
    return t if t.data_ptr() % _ALIGN == 0 else t.clone()
