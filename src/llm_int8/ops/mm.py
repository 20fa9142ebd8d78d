"""``int8_mm``: the integer GEMM ``C_i32 = A_i8 @ B_i8^T``, dispatched per device.

Backends, each equal to ``llm_int8.primitives.int8_matmul_reference`` bit for bit:

* CUDA: cuBLASLt through ``torch._int_mm``, padded to its shape rules (``kernels/cuda_gemm.py``).
* CPU: the kernel ``choice/cpu.py`` chose for the shape and token bucket among those admitted
  (exact on their self-test): oneDNN's s8 x s8 GEMM without split (VNNI / AMX only), fbgemm on a
  pair-bounded weight, fbgemm's or oneDNN's u8 x s8 GEMM on sign-split 7-bit codes
  (``kernels/cpu_gemm.py``), ``torch._int_mm``
  (a generic loop on CPUs without AVX-512: about 3.5 s for 512x4096x4096 on the AVX2 machine of
  BENCHMARKS.md, against 0.25 s for the split). The weight is reordered per call unless its packed
  layout is passed (``prepack_int8_weight``).
* Anything else: ``int8_matmul_reference`` (float64, exact).
"""

from __future__ import annotations

import torch

from ..primitives import int8_matmul_reference
from .choice import admission
from .choice import cpu as cpu_choice
from .kernels import codes_gemm, cpu_gemm, probes
from .kernels.cuda_gemm import int_mm_padded
from .prepack import PackedWeight

__all__ = ["gemm_plan", "int8_mm"]


def _check_operands(A_i8: torch.Tensor, B_i8: torch.Tensor) -> None:
    if A_i8.dtype != torch.int8 or B_i8.dtype != torch.int8:
        raise TypeError(f"int8_mm needs int8 operands, got {A_i8.dtype} and {B_i8.dtype}")
    if A_i8.dim() != 2 or B_i8.dim() != 2 or A_i8.shape[1] != B_i8.shape[1]:
        raise ValueError(f"int8_mm needs A (M, K) and B (N, K), got {tuple(A_i8.shape)} and {tuple(B_i8.shape)}")
    if A_i8.device != B_i8.device:
        raise ValueError(f"int8_mm operands are on different devices: {A_i8.device} and {B_i8.device}")


def _cpu_weight(B_i8: torch.Tensor, packed: PackedWeight | None, backend: str) -> cpu_gemm.CpuInt8Weight:
    """The layout of ``B_i8`` for ``backend`` (or for another kernel, where ``FBGEMM_PAIRS`` would be slow on it).

    A layout passed in was built by ``prepack_int8_weight`` and keeps any other kernel's layout it is
    asked for; without one, pack now (per call).
    """
    if isinstance(packed, cpu_gemm.CpuInt8Weight):
        weight = packed.for_kernel(backend, B_i8)
    else:
        weight = cpu_gemm.prepack(B_i8, backend)
    if backend == probes.FBGEMM_PAIRS and weight.fix_density > cpu_gemm.PAIRS_MAX_FIX_DENSITY:
        # most of this weight's pairs break the bound (a uniform, untrained weight): its sparse part
        # would cost more than the split saves, whatever was measured on bell-shaped probe weights
        other = next((k for k in admission.admitted_kernels() if k in cpu_gemm.KERNELS and k != backend), None)
        if other is not None:
            return _cpu_weight(B_i8, packed, other)
    return weight


def gemm_plan(W_i8: torch.Tensor, packed: PackedWeight | None, M: int):
    """``(kernel, layout, pairs, A)`` for an (M, K) CPU forward: the GEMM chosen here, the layout it reads
    (``_cpu_weight`` may answer with another kernel's; ``None`` for ``torch._int_mm`` and the reference),
    whether it is ``FBGEMM_PAIRS``' fused route, and an empty codes buffer in the form it reads."""
    N, K = W_i8.shape
    kernel = cpu_choice.gemm_kernel(N, K, M)
    layout = _cpu_weight(W_i8, packed, kernel) if kernel in cpu_gemm.KERNELS else None
    pairs = codes_gemm.fused_pairs(layout)
    A = codes_gemm.codes_buffer(layout.kernel if layout else kernel, M, K, pairs)  # (M, K) or (M + 2, K)
    return kernel, layout, pairs, A


def int8_mm(A_i8: torch.Tensor, B_i8: torch.Tensor, *, packed: PackedWeight | None = None) -> torch.Tensor:
    """``C = A_i8 @ B_i8^T``, exact on every route.

    ``A_i8``: (M, K) int8 activations; ``B_i8``: (N, K) int8 weight in ``nn.Linear`` layout;
    ``packed``: optionally ``prepack_int8_weight(B_i8)``, reused across calls. Returns (M, N) int32
    where every sum fits in int32 (always for ``K <= 131,071``), else int64, as
    ``int8_matmul_reference`` does: never a wrapped value (the kernels sum at most ``K_CHUNK`` inputs
    per call and add the chunks in int64).
    """
    _check_operands(A_i8, B_i8)
    M, N = A_i8.shape[0], B_i8.shape[0]
    if M == 0 or N == 0 or A_i8.shape[1] == 0:
        return torch.zeros(M, N, dtype=torch.int32, device=A_i8.device)
    device = A_i8.device
    if device.type == "cuda" and probes.has_int_mm():
        return int_mm_padded(A_i8, B_i8)
    if device.type == "cpu":
        backend = cpu_choice.gemm_kernel(N, A_i8.shape[1], M)
        if backend == probes.INT_MM:
            return cpu_gemm.int_mm(A_i8, B_i8)
        if backend in cpu_gemm.KERNELS:
            weight = _cpu_weight(B_i8, packed, backend)
            # the sign split needs codes in [-127, 127]; LLM.int8()'s quantizers never produce -128
            if weight.kernel in (probes.ONEDNN_S8, probes.FBGEMM_PAIRS) or not (A_i8 == -128).any():
                return cpu_gemm.int8_mm_integer(A_i8, B_i8, weight)
    return int8_matmul_reference(A_i8, B_i8)


def int8_mm_float(A_codes: torch.Tensor, B_i8: torch.Tensor, *, packed: PackedWeight | None = None) -> torch.Tensor:
    """``int8_mm(A_codes.to(int8), B_i8).float()``, (M, N) float32, for ``int8_linear``.

    ``A_codes``: (M, K) float32 holding integers in [-127, 127] (as quantization produces them);
    the CPU kernels read them as they are, skipping an int8 and an int32 round trip.
    """
    if A_codes.device.type == "cpu" and A_codes.shape[0] and B_i8.shape[0] and B_i8.shape[1]:
        backend = cpu_choice.gemm_kernel(B_i8.shape[0], B_i8.shape[1], A_codes.shape[0])
        if backend in cpu_gemm.KERNELS:
            return cpu_gemm.int8_mm_float(A_codes, B_i8, _cpu_weight(B_i8, packed, backend))
    return int8_mm(A_codes.to(torch.int8), B_i8, packed=packed).float()
