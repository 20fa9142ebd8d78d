"""Packed weight layouts: derived from ``weight_int8`` once, never saved, rebuilt when it changes.

The int8 weight buffer stays the single source of truth (it is what ``state_dict`` holds); a
backend that wants the weight reordered (fbgemm's or oneDNN's blocked layout on CPU) gets it from
``prepack_int8_weight``, and a module keeps the result in a ``PackedWeightCache``.
"""

from __future__ import annotations

import threading
import weakref

import torch

from .choice import admission
from .kernels import cpu_gemm

__all__ = ["PackedWeight", "PackedWeightCache", "prepack_int8_weight"]

PackedWeight = cpu_gemm.CpuInt8Weight
"""What ``prepack_int8_weight`` returns; only the CPU backends pack today."""


def prepack_int8_weight(weight_int8: torch.Tensor) -> PackedWeight | None:
    """The layout the current backend wants for this (N, K) int8 weight, or ``None`` if it reads it as is."""
    if weight_int8.device.type == "cpu":
        backend = admission.fixed_kernel()
        # the fixed order's kernel; a measured choice of another one is packed on first use (for_kernel).
        # INT_MM's layout holds no copy of the weight, but keeps those layouts and the outlier columns
        if backend in (*cpu_gemm.KERNELS, cpu_gemm.INT_MM):
            return cpu_gemm.prepack(weight_int8, backend)
    return None


def _version(t: torch.Tensor) -> int:
    try:
        return t._version  # bumped by every in-place op on the tensor or a view of it (copy_, fill_, load_state_dict)
    except RuntimeError:  # inference tensors have no version counter: see the class docstring
        return -1


def _key(weight_int8: torch.Tensor) -> tuple:
    # the memory and layout read, and the version counter of the writes PyTorch tracks
    return (
        admission.fixed_kernel(),
        weight_int8.device,
        weight_int8.data_ptr(),
        tuple(weight_int8.shape),
        weight_int8.stride(),
        _version(weight_int8),
    )


class PackedWeightCache:
    """Lazily derives something from one module's int8 weight; rebuilt once that tensor is replaced or written to.

    ``build(weight_int8)`` makes the derived value: by default the backend's packed layout
    (``prepack_int8_weight``); ``Int8Linear`` also caches the weight's row sums this way.

    When a cached value is reused: only while the weight is the same tensor object, at the same
    address, shape and stride, and its version counter has not moved. PyTorch bumps that counter on
    every in-place op (``copy_``, ``fill_``, indexing writes, ``load_state_dict``), with or without
    grad and in inference mode. Writes that bypass it -- through ``.data``, a NumPy or DLPack view,
    or into an *inference tensor* (which has no counter) -- cannot be seen here without reading the
    whole weight on every call, which costs as much as the GEMM on small batches (and rebuilding
    the packed layout costs more: 0.45 s for 4096 x 4096 against 8-72 ms for a 1-16 row GEMM,
    measured on this repository's 2-core AVX2 machine). ``Int8Linear`` closes those routes at the
    module: it calls ``clear()`` whenever its ``weight_int8`` attribute is read from outside (the
    only way to reach the tensor for such a write) and on every load and device/dtype move.

    Thread-safe: concurrent first calls build the value once. Holds no strong reference to the
    weight, and is dropped (not copied) by ``deepcopy`` and pickling: oneDNN's layout is an opaque
    tensor that can be neither, and it is cheap to rebuild.
    """

    __slots__ = ("_build", "_entry", "_lock")

    def __init__(self, build=None) -> None:
        self._build = prepack_int8_weight if build is None else build
        self._lock = threading.Lock()
        self._entry = None  # (weakref to the weight, key, value): replaced whole, so a reader never sees half of it

    def clear(self) -> None:
        self._entry = None

    def _cached(self, weight_int8: torch.Tensor, key: tuple):
        entry = self._entry
        if entry is not None and entry[0]() is weight_int8 and entry[1] == key:
            return True, entry[2]
        return False, None

    def get(self, weight_int8: torch.Tensor) -> PackedWeight | None:
        key = _key(weight_int8)
        hit, value = self._cached(weight_int8, key)
        if hit:
            return value
        with self._lock:  # one build when several threads make the first call at once
            hit, value = self._cached(weight_int8, key)
            if not hit:
                value = self._build(weight_int8)
                self._entry = (weakref.ref(weight_int8), key, value)
        return value

    @property
    def is_built(self) -> bool:
        """Whether a value is held (for tests and memory accounting)."""
        return self._entry is not None

    def __deepcopy__(self, memo) -> PackedWeightCache:
        return PackedWeightCache(self._build)

    def __reduce__(self):
        return (PackedWeightCache, (self._build,))
