"""Which kernel runs where, decided by measurement on the machine that runs, and remembered.

* ``admission.py``: which CPU integer GEMMs may run at all (exact on their self-test, and within 10x
  of the fastest), and the one used with timing off.
* ``cpu.py``: the CPU integer GEMM per (layer shape, token bucket), and the weight-only crossover;
  ``probe.py``: the clock, the machine key and the probe operands both time with.
* ``cuda.py``: Triton or cuBLASLt for ``int8_linear`` on a GPU, per shape bucket.
* ``cache.py``: the decisions on disk, one JSON file per machine key; ``LLM_INT8_AUTOTUNE=0`` turns
  all timing off.

Choice imports kernels (it times them) and never the op: what it must time of the op, it is given as
a callable.
"""

from . import admission, cache, cpu, cuda, probe

__all__ = ["admission", "cache", "cpu", "cuda", "probe"]
