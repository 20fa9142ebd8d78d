"""Timing on this CPU: the machine key decisions are stored under, a clock, and probe operands.

Shared by ``admission.py`` (which kernels may run at all) and ``cpu.py`` (which one runs per shape).
"""

from __future__ import annotations

import functools
import hashlib
import platform
import time
from collections.abc import Callable

import torch

from ..._version import __version__
from ...primitives import rowwise_quantize
from ..kernels import codes_gemm, cpu_gemm, probes
from .cache import DecisionStore

__all__ = [
    "STORE",
    "best_of",
    "cpu_description",
    "machine_key",
    "probe_codes",
    "probe_layout",
    "probe_weight",
    "run_probe",
    "seconds",
]


@functools.cache
def cpu_description() -> tuple[str, str]:
    """CPU model name and ISA flags (Linux ``/proc/cpuinfo``; elsewhere what ``platform`` says)."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    model = fields.get("model name") or platform.processor() or platform.machine()
    return model, fields.get("flags") or fields.get("Features", "")


def machine_key() -> dict[str, str]:
    """What a decision depends on besides the shape: a change in any of these invalidates the cache."""
    model, flags = cpu_description()
    return {
        "cpu": model,
        "flags_sha1": hashlib.sha1(flags.encode()).hexdigest()[:12],
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "llm_int8": __version__,
        "threads": str(torch.get_num_threads()),
    }


STORE = DecisionStore("autotune", machine_key)
"""The CPU decisions of this machine key: admission, the GEMM per shape and bucket, the weight-only crossover."""


def seconds(fn: Callable[[], object]) -> float:
    # with one torch thread, the calling thread's CPU time: what the kernel costs, not how long other
    # processes kept it waiting for a core; with more, wall time (the workers' time is not the caller's)
    clock = time.thread_time if torch.get_num_threads() == 1 else time.perf_counter
    start = clock()
    fn()
    return clock() - start


def best_of(fn: Callable[[], object], repeats: int) -> float:
    return min(seconds(fn) for _ in range(repeats))


@functools.lru_cache(maxsize=1)  # the shape being measured: its buckets and crossover reuse the packed layouts
def probe_weight(N: int, K: int) -> torch.Tensor:
    # codes as a model's weights give them (row-wise absmax of a bell-shaped weight), not uniform
    # ones: FBGEMM_PAIRS' sparse part is the pairs with |w| + |w'| > 128, 2-3% of real weights' pairs
    # but half of uniform codes'
    gen = torch.Generator().manual_seed(N * 131 + K)
    return rowwise_quantize(torch.randn(N, K, generator=gen))[0]


@functools.lru_cache(maxsize=4)
def probe_layout(N: int, K: int, kernel: str) -> cpu_gemm.CpuInt8Weight:
    return cpu_gemm.prepack(probe_weight(N, K), kernel)  # packing is once per layer: never part of the timed call


def probe_codes(M: int, K: int, seed: int) -> torch.Tensor:
    """(M, K) activation codes in [-127, 127] as float32, the form ``int8_linear`` hands the CPU GEMMs."""
    return torch.randint(-127, 128, (M, K), generator=torch.Generator().manual_seed(seed)).float()


def run_probe(kernel: str, A_codes: torch.Tensor, W_i8: torch.Tensor, packed) -> Callable[[int], object]:
    """``f(m)``: the GEMM of the first ``m`` rows of ``A_codes`` on ``kernel``, as the op calls it."""
    if kernel == probes.INT_MM:
        A_i8 = A_codes.to(torch.int8)
        return lambda m: cpu_gemm.int_mm(A_i8[:m], W_i8)
    if kernel == probes.FBGEMM_PAIRS:  # the op adds the sparse fix in its C++ epilogue pass where built
        return lambda m: codes_gemm.pairs_product_float(A_codes[:m], W_i8, packed)
    return lambda m: cpu_gemm.int8_mm_float(A_codes[:m], W_i8, packed)
