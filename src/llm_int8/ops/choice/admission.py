"""Which CPU integer GEMMs may run here at all: exact on their self-test, and not far slower than the best.

Exactness is not enough. On an AMD Zen 4 CPU (AVX-512 VNNI, no AMX; torch 2.13, 2 cores), oneDNN's
s8 x s8 kernel passes its exactness self-test but runs as a reference loop: 26.7 s for 128 x 4096 x
4096 against 9.7 ms for ``torch._int_mm``, 100-1000x slower at every shape timed. A kernel like that,
chosen by the fixed order with timing off, makes a model seem to hang. So every exact kernel
(``kernels/probes.py``) is also timed once on a small GEMM, ``ADMISSION_PROBE`` (M x K x N), and
admitted only within ``SLOW_FACTOR`` of the fastest. The probe is large enough to tell a blocked
kernel from a loop (on the 2-core AVX2 development machine ``torch._int_mm``, a generic loop there, is
18-31x slower than fbgemm from 32 x 512 x 512 up, but only 7x at 16 x 256 x 256) and small enough
that a reference loop costs at most a few tenths of a second (Zen 4's ran at about 80 M MAC/s). A
kernel is timed once, then every kernel not far past the fastest first time is timed a few times
more and its best kept: a loop costs one probe call, and one preemption cannot drop a good kernel.

Admission runs whatever ``LLM_INT8_AUTOTUNE`` says (it decides which kernels are usable, not which one
is fastest for a shape), once per machine key: the result is kept by ``choice/cache.py`` under
``admission``, with every kernel's time. ``fixed_kernel`` (the choice with timing off) is the fastest
admitted kernel on the probe, so it is never a reference loop.
"""

from __future__ import annotations

import logging

import torch

from ..kernels import cpu_gemm, probes
from . import probe

__all__ = ["ADMISSION_PROBE", "SLOW_FACTOR", "admission", "admitted_kernels", "fixed_kernel", "forget", "measure"]

logger = logging.getLogger(__name__)

ADMISSION_PROBE = (64, 512, 512)
"""(M, K, N) of the admission timing: 16.7 M multiply-adds, 0.5-0.7 ms for fbgemm or oneDNN on one
AVX2 core, 17 ms for ``torch._int_mm`` there, about 0.2 s for a reference loop."""
SLOW_FACTOR = 10.0
"""A kernel slower than this many times the fastest exact kernel on the probe is not admitted."""
_REPEATS = 3
_CONFIRM = 3  # a first timing up to this many times the floor is repeated: one preemption must not drop a kernel
_memo: dict[int, list[str]] = {}  # torch threads -> admitted kernels: the per-call fast path


def measure() -> dict:
    """Time every exact kernel on the probe now (``llm-int8 env --check``); ``admission`` keeps the first result.

    On one thread, by the thread's CPU time: whether a kernel is a blocked GEMM or a loop shows as
    well there, and neither other processes nor a busy second core can inflate it (on the shared
    2-core machine, two-thread wall times of the same probe varied 30-fold under load)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _measure_one_thread()
    finally:
        torch.set_num_threads(previous)


def _measure_one_thread() -> dict:
    M, K, N = ADMISSION_PROBE
    W_i8 = probe.probe_weight(N, K)
    A = probe.probe_codes(M, K, seed=M)
    exact = probes.exact_cpu_kernels()
    runs = {}
    for kernel in exact:
        packed = probe.probe_layout(N, K, kernel) if kernel in cpu_gemm.KERNELS else None
        runs[kernel] = probe.run_probe(kernel, A, W_i8, packed)
        runs[kernel](1)  # a first call's lazy set-up is not the kernel's speed
    first = {kernel: probe.seconds(lambda run=run: run(M)) for kernel, run in runs.items()}
    floor = min(first.values(), default=0.0)
    seconds = {}
    for kernel, run in runs.items():  # a loop far past the floor is not timed again; any other kernel is
        seconds[kernel] = first[kernel]
        if first[kernel] <= _CONFIRM * SLOW_FACTOR * floor:
            seconds[kernel] = min(first[kernel], probe.best_of(lambda run=run: run(M), _REPEATS))
    best = min(seconds.values(), default=0.0)
    ms = {kernel: round(t * 1e3, 4) for kernel, t in seconds.items()}
    admitted = sorted((k for k in exact if seconds[k] <= SLOW_FACTOR * best), key=ms.get)
    dropped = {k: f"{ms[k] / (best * 1e3):.0f}x slower than {admitted[0]}" for k in exact if k not in admitted}
    for kernel in probes.ALL_CPU_KERNELS:
        if kernel not in exact:
            dropped[kernel] = "not available or not exact on this CPU (self-test)"
    if dropped:
        logger.info("CPU int8 kernels not admitted: %s", dropped)
    return {"admitted": admitted, "dropped": dropped, "ms": ms, "probe": list(ADMISSION_PROBE)}


def admission() -> dict:
    """``{"admitted": [fastest first], "dropped": {kernel: why}, "ms": {kernel: probe time}, "probe": [M, K, N]}``."""
    return probe.STORE.decide("admission", measure)


def admitted_kernels() -> list[str]:
    """The CPU integer GEMMs that may run here, fastest on the admission probe first."""
    return list(_admitted())


def _admitted() -> list[str]:
    threads = torch.get_num_threads()
    kernels = _memo.get(threads)
    if kernels is None:
        exact = probes.exact_cpu_kernels()
        kernels = _memo[threads] = [
            k for k in admission()["admitted"] if k in exact
        ]  # a stale file admits no inexact kernel
    return list(kernels)


def forget() -> None:
    """Drop the admission held in memory (it is read again from the cache file, or measured)."""
    _memo.clear()


def fixed_kernel() -> str:
    """The GEMM when nothing is measured per shape: the fastest admitted kernel, else the float64 reference."""
    kernels = _admitted()  # asked on every call (the packed-weight cache's key): no copy
    return kernels[0] if kernels else probes.REFERENCE
