"""What the CPU running the suite has, for tests whose expectation differs by CPU class.

A test never assumes the machine lacks a feature: where it needs the feature absent it patches the
library's probe; where the hardware itself decides the outcome (whether an int16 pair sum saturates),
it checks the behaviour of the class it runs on and says which.
"""

from __future__ import annotations

from llm_int8.ops.choice import probe

INT8_DOT_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
"""``/proc/cpuinfo`` flags of x86 CPUs that add u8 x s8 products straight into int32 (``vpdpbusd``, AMX)."""


def int8_dot_products() -> bool | None:
    """Whether the CPU adds int8 products into int32 without an int16 step; ``None`` where its flags are unknown."""
    flags = set(probe.cpu_description()[1].split())
    return bool(INT8_DOT_FLAGS & flags) if flags else None
