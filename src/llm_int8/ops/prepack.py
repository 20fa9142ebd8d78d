"""Packed weight layouts: derived from ``weight_int8`` once, never saved, rebuilt when it changes.

The int8 weight buffer stays the single source of truth (it is what ``state_dict`` holds); a
backend that wants the weight reordered (fbgemm's or oneDNN's blocked layout on CPU) gets it from
``prepack_int8_weight``, and a module keeps the result in a ``PackedWeightCache``.
"""

from __future__ import annotations

import weakref

import torch

from . import _capability, cpu

__all__ = ["PackedWeight", "PackedWeightCache", "prepack_int8_weight"]

PackedWeight = cpu.CpuInt8Weight
"""What ``prepack_int8_weight`` returns; only the CPU backends pack today."""


def prepack_int8_weight(weight_int8: torch.Tensor) -> PackedWeight | None:
    """The layout the current backend wants for this (N, K) int8 weight, or ``None`` if it reads it as is."""
    if weight_int8.device.type == "cpu":
        backend = _capability.cpu_int8_backend()
        # the fixed order's kernel; a measured choice of another one is packed on first use (for_kernel)
        if backend in cpu.KERNELS:
            return cpu.prepack(weight_int8, backend)
    return None


def _version(t: torch.Tensor) -> int:
    try:
        return t._version  # bumped by every in-place write (copy_, load_state_dict)
    except RuntimeError:  # inference tensors have no version counter and cannot be written outside inference mode
        return -1


class PackedWeightCache:
    """Lazily derives something from one module's int8 weight; stale once that tensor is replaced or written to.

    ``build(weight_int8)`` makes the derived value: by default the backend's packed layout
    (``prepack_int8_weight``); ``Int8Linear`` also caches the weight's row sums this way.
    Holds no strong reference to the weight, and is dropped (not copied) by ``deepcopy`` and
    pickling: oneDNN's layout is an opaque tensor that can be neither, and it is cheap to rebuild.
    """

    __slots__ = ("_build", "_key", "_packed")

    def __init__(self, build=None) -> None:
        self._build = prepack_int8_weight if build is None else build
        self.clear()

    def clear(self) -> None:
        self._key = None
        self._packed = None

    def get(self, weight_int8: torch.Tensor) -> PackedWeight | None:
        key = (_capability.cpu_int8_backend(), weight_int8.device, _version(weight_int8))
        if self._key is None or self._key[0]() is not weight_int8 or self._key[1:] != key:
            self._packed = self._build(weight_int8)
            self._key = (weakref.ref(weight_int8), *key)
        return self._packed

    def __deepcopy__(self, memo) -> PackedWeightCache:
        return PackedWeightCache(self._build)

    def __reduce__(self):
        return (PackedWeightCache, (self._build,))
