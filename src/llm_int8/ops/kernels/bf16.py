"""Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX-BF16), for the bf16 routes of the op.

On such a CPU a bf16 model's int8 layers take ``epilogue.finish(..., inline_products=True)``: the
outlier product is formed inside the epilogue pass from ``X[:, O]`` and ``W_i8[:, O] s_w`` (float32
products in registers, multiply-adds in column order) instead of a float32 BLAS product written to
an (M, N) tensor and read back. That is its own rounding (as accurate as the BLAS', within the same
bound of the float64 product; tests/test_native_kernels.py), so it is kept off CPUs without bf16
hardware, where the library's numerics stay the same bits as before. The weight-only decode path's
scale, bias and cast are one pass on every CPU (``weight_only.py``; the same bits).

Measured where: nothing on a bf16 CPU. The development machine (AMD EPYC, AVX2, no AVX512-BF16, no
AMX) runs the route only with this probe patched (the tests do), which checks its numerics, not its
speed. Callers go through the module (``bf16.has_native_bf16()``) so that tests can patch it.
"""

from __future__ import annotations

import functools

__all__ = ["BF16_FLAGS", "has_native_bf16"]

BF16_FLAGS = ("avx512_bf16", "amx_bf16")
"""``/proc/cpuinfo`` flags of x86 CPUs with bf16 dot products in hardware."""


@functools.cache
def has_native_bf16() -> bool:
    """The CPU lists one of ``BF16_FLAGS`` (Linux ``/proc/cpuinfo``; ``False`` where it cannot be read)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return any(flag in line.split() for flag in BF16_FLAGS)
    except OSError:
        pass
    return False
