"""Which kernel runs where, decided by measurement on the machine that runs, and remembered.

* ``cpu.py``: the CPU integer GEMM per (layer shape, token bucket), the kernels admitted, the fixed
  order used with timing off, and the weight-only crossover.
* ``cuda.py``: Triton or cuBLASLt for ``int8_linear`` on a GPU, per shape bucket.
* ``cache.py``: the decisions on disk, one JSON file per machine key; ``LLM_INT8_AUTOTUNE=0`` turns
  all timing off.

Choice imports kernels (it times them) and never the op: what it must time of the op, it is given as
a callable.
"""

from . import cache, cpu, cuda

__all__ = ["cache", "cpu", "cuda"]
