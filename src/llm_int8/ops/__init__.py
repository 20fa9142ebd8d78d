"""One public entry per operation; each dispatches to the fastest exact backend for the device.

Backends live in ``cpu.py`` (oneDNN) and ``cuda.py`` (cuBLASLt); ``_capability.py`` decides which
one runs, and ``prepack.py`` holds weight layouts prepared once.
"""

from . import autotune, custom_op, weight_only
from .int8_linear import compute_weight_row_sums, int8_linear
from .int8_mm import int8_mm
from .prepack import PackedWeight, PackedWeightCache, prepack_int8_weight

__all__ = [
    "PackedWeight",
    "PackedWeightCache",
    "autotune",
    "custom_op",
    "compute_weight_row_sums",
    "int8_linear",
    "int8_mm",
    "prepack_int8_weight",
    "weight_only",
]
