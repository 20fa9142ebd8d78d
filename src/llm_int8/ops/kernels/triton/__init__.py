"""Triton kernels for LLM.int8() on NVIDIA GPUs, one kernel per file, each beside its reference.

* ``quantize.py`` (a): outlier set ``O``, per-row int8 codes (absmax or zeropoint) without ``O``, and the
  gather of ``X[:, O]``, in two launches.
* ``gemm.py`` (b, c): ``C_i32 = X_i8 W_i8^T`` with the epilogue fused: ``s_x ⊗ s_w``, the zero-point
  correction, the outlier product ``X[:, O] W_i8[:, O]^T`` in fp16/bf16, the bias, the output cast.
* ``decode.py`` (d): ``X W_i8^T ⊙ s_w`` for M <= 16 rows, reading each weight byte once.
* ``linear.py``: the LLM.int8() forward from (a) and (b).

Nothing here is imported with ``llm_int8``: the kernel modules import ``triton``, which the library does
not require, and a ``@triton.jit`` function is bound to the interpreter or to the compiler when its
module is imported (``TRITON_INTERPRET=1`` must be set before that). Under the interpreter the kernels
run on CPU tensors through numpy (the tests do this); otherwise they need CUDA tensors.
"""

from __future__ import annotations

import functools
import importlib.util
import os

import torch

__all__ = ["MIN_CAPABILITY", "available", "has_triton", "interpreting"]

MIN_CAPABILITY = (8, 0)
"""Ampere or newer: the int8 ``tl.dot`` (mma with int32 accumulation) and bf16 need sm_80."""


@functools.cache
def has_triton() -> bool:
    """``triton`` can be imported (it is an optional dependency: Linux x86-64 wheels only)."""
    return importlib.util.find_spec("triton") is not None


_bound_to_interpreter: bool | None = None  # fixed when the first kernel module is imported


def interpreting() -> bool:
    """Whether the kernels run under the interpreter (on CPU tensors through numpy).

    ``TRITON_INTERPRET=1`` decides when the kernel modules are imported (``@triton.jit`` binds each
    function then); from that moment on their mode is what counts, whatever the variable says later.
    """
    if _bound_to_interpreter is not None:
        return _bound_to_interpreter
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _bind() -> bool:
    """Called by each kernel module on import: records (once) the mode its kernels are bound to."""
    global _bound_to_interpreter
    if _bound_to_interpreter is None:
        _bound_to_interpreter = interpreting()
    return _bound_to_interpreter


def available(device: torch.device) -> bool:
    """Whether the kernels run on tensors of ``device``: CUDA of sm_80 or newer, or CPU under the interpreter."""
    if not has_triton():
        return False
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.get_device_capability(device) >= MIN_CAPABILITY
    return device.type == "cpu" and interpreting()
