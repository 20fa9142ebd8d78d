"""LLM.int8() as operations on tensors, in three layers that import only downwards:

* ``kernels/``: pure functions of tensors, each beside its reference in ``llm_int8.primitives``:
  the activation quantizer (``quantize.py``), the CPU integer GEMMs and their packing
  (``cpu_gemm.py``), the epilogue (``epilogue.py``), the weight-only kernel, cuBLASLt's GEMM
  (``cuda_gemm.py``), the Triton kernels (``triton/``), and the probes that say which run exactly here.
* ``choice/``: which kernel runs where, by measurement: the CPU GEMM per shape and token bucket and the
  weight-only crossover (``cpu.py``), Triton or cuBLASLt on a GPU (``cuda.py``), kept on disk
  (``cache.py``). It times kernels, or a callable it is given; it never imports the op.
* the op: ``linear.py`` (``int8_linear``, the public entry), ``forward.py`` (the method's steps and
  its autograd), ``forward_invariant.py`` (the batch-invariant mode),
  ``forward_cuda.py`` (the GPU route), ``mm.py`` (``int8_mm``, the integer GEMM as an
  op), ``custom_op.py`` (``llm_int8::int8_linear`` for ``torch.compile``), ``prepack.py`` (derived
  weight layouts, cached per module).
"""

from . import choice, custom_op, kernels
from .forward import dequantized_weight
from .kernels.epilogue import compute_weight_row_sums
from .linear import int8_linear
from .mm import int8_mm
from .prepack import PackedWeight, PackedWeightCache, prepack_int8_weight

__all__ = [
    "PackedWeight",
    "PackedWeightCache",
    "choice",
    "compute_weight_row_sums",
    "custom_op",
    "dequantized_weight",
    "int8_linear",
    "int8_mm",
    "kernels",
    "prepack_int8_weight",
]
