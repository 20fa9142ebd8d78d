"""Which backend runs ``int8_linear`` on a CUDA tensor: chosen by timing once per shape bucket.

Candidates (``ops/forward_cuda.py`` builds them and passes them in as callables): ``"triton"``
(``kernels/triton``: fused quantization and GEMM epilogue) and ``"cublaslt"`` (the library's PyTorch
quantization with ``torch._int_mm``, padded to cuBLASLt's shape rules). Both compute the same
function; which is faster depends on the GPU, the shape and the versions, so as with
``torch.backends.cudnn.benchmark`` the first call of each bucket (token count rounded up to a power
of two, N, K, activation mode, dtype) times both on its own inputs and remembers the winner, in
memory and on disk (``choice/cache.py``, keyed by GPU name, torch, triton and llm_int8 versions), so
later processes skip the timing.

Environment:

* ``LLM_INT8_CUDA_BACKEND``: ``triton`` or ``cublaslt`` forces that backend (an error if it cannot
  run); ``auto`` (default) times.
* ``LLM_INT8_CUDA_NO_TIMING=1``, or ``LLM_INT8_AUTOTUNE=0`` (which also stops the CPU kernels'
  timing, ``choice/cpu.py``): never time; Triton where it runs, else cuBLASLt.
* ``LLM_INT8_CACHE_DIR``: where the decisions live (``choice/cache.py``), beside the CPU ones.
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ..._version import __version__
from .cache import CACHE_DIR_ENV, DecisionStore, timing_enabled

__all__ = [
    "BACKENDS",
    "CUBLASLT",
    "ENV_BACKEND",
    "ENV_CACHE_DIR",
    "ENV_NO_TIMING",
    "TRITON",
    "bucket_key",
    "cache_path",
    "choose",
    "clear_memory_cache",
]

logger = logging.getLogger(__name__)

TRITON = "triton"
CUBLASLT = "cublaslt"
BACKENDS = (TRITON, CUBLASLT)
ENV_BACKEND = "LLM_INT8_CUDA_BACKEND"
ENV_NO_TIMING = "LLM_INT8_CUDA_NO_TIMING"
ENV_CACHE_DIR = CACHE_DIR_ENV
_WARMUP = 2  # the first call compiles / autotunes; the second settles clocks and caches
_REPEATS = 5

_stores: dict[str, DecisionStore] = {}  # device -> its decisions


def _store(device: torch.device) -> DecisionStore:
    """The decisions for ``device``'s GPU model and the versions that run on it."""
    store = _stores.get(str(device))
    if store is None:
        try:
            import triton

            triton_version = triton.__version__
        except ImportError:
            triton_version = "none"
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
        key = {"device": name, "torch": torch.__version__, "triton": triton_version, "llm_int8": __version__}
        store = _stores[str(device)] = DecisionStore("cuda", lambda: key)
    return store


def clear_memory_cache() -> None:
    for store in _stores.values():
        store.forget()


def cache_path(device: torch.device | str = "cpu") -> Path:
    """The JSON file of the decisions for ``device`` (the CPU stands for the interpreter in tests)."""
    return _store(torch.device(device)).path()


def _bucket_tokens(M: int) -> int:
    return 1 << max(M - 1, 0).bit_length()  # next power of two


def bucket_key(M: int, N: int, K: int, activation: str, dtype: torch.dtype) -> str:
    return f"M{_bucket_tokens(M)}-N{N}-K{K}-{activation}-{str(dtype).removeprefix('torch.')}"


def _time_ms(fn: Callable[[], object], device: torch.device) -> float:
    """Median of ``_REPEATS`` timed calls after ``_WARMUP``, with CUDA events (the work is asynchronous)."""
    for _ in range(_WARMUP):
        fn()
    times = []
    for _ in range(_REPEATS):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:  # only reached by tests (the interpreter): a host clock is right for synchronous work
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def choose(bucket: str, candidates: dict[str, Callable[[], object]], device: torch.device) -> str:
    """The backend for ``bucket`` among ``candidates`` (name -> a call that runs it on this call's inputs).

    A candidate that raises while being timed (a Triton compile failure on an unusual GPU, say) is
    dropped with a warning.
    """
    forced = os.environ.get(ENV_BACKEND, "auto").strip().lower()
    if forced != "auto":
        if forced not in BACKENDS:
            raise ValueError(f"{ENV_BACKEND}={forced!r}: expected one of {BACKENDS} or 'auto'")
        if forced not in candidates:
            raise RuntimeError(
                f"{ENV_BACKEND}={forced!r}, but that backend cannot run here (available: {sorted(candidates)})"
            )
        return forced
    if len(candidates) == 1:
        return next(iter(candidates))
    if os.environ.get(ENV_NO_TIMING, "0") not in ("", "0") or not timing_enabled():
        return TRITON if TRITON in candidates else next(iter(candidates))
    store = _store(device)
    known = store.get(bucket)
    if known is not None and known["choice"] not in candidates:  # the cached winner cannot run now
        return _measure(bucket, candidates, device)["choice"]
    return store.decide(bucket, lambda: _measure(bucket, candidates, device))["choice"]


def _measure(bucket: str, candidates: dict[str, Callable[[], object]], device: torch.device) -> dict:
    times = {}
    for name, fn in candidates.items():
        try:
            times[name] = _time_ms(fn, device)
        except Exception as err:  # noqa: BLE001 -- any failure of a candidate means: do not use it
            logger.warning("int8_linear backend %s failed on %s and is not used: %s", name, bucket, err)
    if not times:
        raise RuntimeError(f"no int8_linear backend ran on {bucket}")
    best = min(times, key=times.get)
    logger.info("int8_linear %s: %s (%s)", bucket, best, ", ".join(f"{k} {v:.3f} ms" for k, v in times.items()))
    return {"choice": best, "ms": {k: round(v, 4) for k, v in times.items()}}
