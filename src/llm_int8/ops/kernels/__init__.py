"""Kernels: pure functions of tensors, each beside the plain-PyTorch reference it must equal.

=====================  ===============================================  ====================================
file                   what                                             reference (``llm_int8.primitives``)
=====================  ===============================================  ====================================
``quantize.py``        outlier dims ``O`` and per-token int8 codes      ``outlier_columns``, ``*_quantize``
``cpu_gemm.py``        exact int8 GEMMs on x86 (fbgemm, oneDNN), packing ``int8_matmul_reference``
``epilogue.py``        scales, zero-point correction, outlier product  ``int8_linear_reference``
``weight_only.py``     int8 weight x bf16 activations, for a few tokens ``int8_weight_only_reference``
``cuda_gemm.py``       cuBLASLt's int8 GEMM under its shape rules      ``int8_matmul_reference``
``triton/``            the GPU kernels (quantize, fused GEMM, decode)   each file's ``*_reference``
``probes.py``          which CPU kernels run here, exactly              the float64 product
``native/``            C++: one-pass quantizer, one-pass epilogue       the PyTorch sequence of the above
``codes_gemm.py``      the CPU GEMM fed by the quantizer's buffer       ``cpu_gemm.int8_mm_float``
``bf16.py``            bf16 hardware probe, for the bf16 route          the float64 product (a bound)
=====================  ===============================================  ====================================

``quantize_tokenwise.py``: the batch-invariant mode's steps (per-token outliers and codes, the
row-ordered float part), the reference of its C++ passes in ``native/``.

Nothing here chooses between kernels (``ops/choice``) or knows the op (``ops/forward.py``).
"""

from . import bf16, codes_gemm, cpu_gemm, cuda_gemm, epilogue, native, probes, quantize, quantize_tokenwise, weight_only

__all__ = [
    "bf16",
    "codes_gemm",
    "cpu_gemm",
    "cuda_gemm",
    "epilogue",
    "native",
    "probes",
    "quantize",
    "quantize_tokenwise",
    "weight_only",
]
