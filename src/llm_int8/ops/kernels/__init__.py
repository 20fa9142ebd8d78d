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
=====================  ===============================================  ====================================

Nothing here chooses between kernels (``ops/choice``) or knows the op (``ops/forward.py``).
"""

from . import cpu_gemm, cuda_gemm, epilogue, probes, quantize, weight_only

__all__ = ["cpu_gemm", "cuda_gemm", "epilogue", "probes", "quantize", "weight_only"]
