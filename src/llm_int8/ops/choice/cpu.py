"""Which CPU kernel runs: the integer GEMM per (layer shape, token bucket), and the weight-only crossover.

No fixed order is right on every x86 CPU: fbgemm's sign split is the fastest exact kernel on AVX2
without VNNI, oneDNN's s8 x s8 kernel with no split does half its work on VNNI / AMX CPUs, and the
crossover of the weight-only kernel moves with the cache sizes and the bf16 support. So the choice
is timed on the machine that runs, once per (layer shape, token bucket), at first use:

* ``gemm_kernel(N, K, M)``: among the admitted kernels (``admission.py``: exact on their self-test in
  ``kernels/probes.py`` and within 10x of the fastest; every one returns the same integers, so the
  choice never changes a result), the fastest on random codes of the bucket's size. Buckets are powers of
  two up to ``LARGEST_BUCKET`` tokens; every larger M shares that one, where all candidates are bound
  by arithmetic and rank as they do at any larger M. A candidate is timed at doubling sizes and
  dropped as soon as it is slower than the best at full size, so a slow generic loop
  (``torch._int_mm`` without AVX-512) costs about as much as one call of the winner.
* ``weight_only_max_tokens(K, N, int8_layer)``: the largest bucket up to ``AUTO_MAX_TOKENS`` such
  that the weight-only kernel beats the whole int8 x int8 layer (``int8_layer``, the op's forward,
  passed in by the op: this module never imports it) at it and at every smaller bucket. This path
  does change the numerics (bf16 activations instead of int8 codes), which is why it is a per-shape
  limit, decided once.

Decisions are kept by ``choice/cache.py`` (``probe.STORE``), keyed by CPU model and flags, torch version, library
version and thread count; a later process reads them instead of timing. Environment:

* ``LLM_INT8_CPU_BACKEND=<kernel>`` forces one GEMM (``onednn_s8``, ``fbgemm_pairs``, ``fbgemm``,
  ``onednn``, ``int_mm`` or ``reference``): any kernel that passed its exactness self-test here, also
  one not admitted for its speed; an inexact or missing one is refused with an error.
* ``LLM_INT8_AUTOTUNE=0`` turns the per-shape timing off: the fastest admitted kernel
  (``admission.fixed_kernel``) and the fixed rule ``fixed_max_tokens``. Admission itself still runs
  (once per machine, cached): it decides which kernels are usable at all. The integers, hence the
  results, never depend on which admitted kernel runs.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import torch

from ..kernels import cpu_gemm, probes, weight_only
from . import admission, probe
from .cache import AUTOTUNE_ENV, timing_enabled

__all__ = [
    "AUTOTUNE_ENV",
    "AUTO_MAX_MACS",
    "AUTO_MAX_TOKENS",
    "BACKEND_ENV",
    "LARGEST_BUCKET",
    "cache_path",
    "gemm_kernel",
    "decisions",
    "timing_enabled",
    "fixed_max_tokens",
    "forget",
    "token_bucket",
    "weight_only_max_tokens",
]

logger = logging.getLogger(__name__)

BACKEND_ENV = "LLM_INT8_CPU_BACKEND"
LARGEST_BUCKET = 128
"""Token buckets are 1, 2, 4, ..., 128; larger inputs use the 128 bucket's choice. At 128 rows every
candidate is bound by arithmetic (BENCHMARKS.md), and timing there costs at most a few tenths of a
second on a 4096 x 4096 layer with one thread."""
_CALL_BUDGET_S = 0.025
"""Longest single call timed: a bucket whose favourite call takes longer is timed at fewer rows."""
_PROBE_MAX_N = 2048
_REPEATS = 3  # timed runs per candidate at full size, best taken: the minimum is what load cannot inflate
_FORCEABLE = (*cpu_gemm.KERNELS, probes.INT_MM, probes.REFERENCE)

AUTO_MAX_TOKENS = 16
"""The weight-only kernel is considered for at most this many tokens (a measured crossover never exceeds it)."""
AUTO_MAX_MACS = 2**24
"""Without timing (``LLM_INT8_AUTOTUNE=0``), a CPU layer takes the weight-only path while
``tokens <= AUTO_MAX_TOKENS`` and ``tokens * in_features * out_features <= AUTO_MAX_MACS``: the
crossover once measured against the int8 x int8 path on an AVX2 CPU (``benchmarks/bench_layers.py``,
BENCHMARKS.md section (c)). The weight-only kernel's time grows linearly with the tokens, the int8
path's is mostly a fixed per-call overhead at small M: on the 576 x 1536 layers of SmolLM2 it wins up
to 16 tokens (not at 128), on 4096 x 4096 only at 1 token, and on 4096 x 11008 not at all."""

_memo: dict[tuple, object] = {}  # (kind, shape, bucket, threads) -> result: the per-call fast path


def token_bucket(M: int) -> int:
    """The power of two >= ``M`` (M >= 1), at most ``LARGEST_BUCKET``."""
    return min(1 << max(M - 1, 0).bit_length(), LARGEST_BUCKET)


def _forced() -> str | None:
    name = os.environ.get(BACKEND_ENV, "").strip().lower()
    if not name:
        return None
    if name not in _FORCEABLE:
        raise ValueError(f"{BACKEND_ENV}={name!r} is not a CPU int8 kernel; expected one of {_FORCEABLE}")
    # any exact kernel may be forced, also one not admitted for its speed: the user asked for it
    if name != probes.REFERENCE and name not in probes.exact_cpu_kernels():
        raise ValueError(
            f"{BACKEND_ENV}={name!r}: that kernel is not available or failed its exactness self-test on this CPU "
            f"(exact here: {probes.exact_cpu_kernels()})"
        )
    return name


def cache_path() -> Path:
    """The JSON file holding this machine key's decisions."""
    return probe.STORE.path()


def decisions() -> dict[str, dict]:
    """A copy of every decision known for this machine key (measured here or read from the cache file).

    Keys: ``admission`` (``admission.py``), ``gemm:{in}x{out}:m{bucket}`` (the GEMM kernel) and
    ``weight_only:{in}x{out}`` (the crossover)."""
    return probe.STORE.snapshot()


def forget() -> None:
    """Drop every decision held in memory, admission included (the cache file is read again at the next choice)."""
    _memo.clear()
    admission.forget()
    probe.STORE.forget()


# --- timing ------------------------------------------------------------------------------------------


def _race(run: dict[str, Callable[[int], object]], M: int) -> tuple[int, dict[str, float | None]]:
    """Rows timed and seconds per call there for each candidate (``None``: dropped, slower than the best).

    The rows: ``M``, or fewer where one call of the first candidate (the fixed order's favourite)
    would exceed ``_CALL_BUDGET_S`` (then the GEMM is bound by arithmetic already, and the ranking
    holds at ``M``). Each candidate is timed at 1, 2, 4, ... rows and dropped as soon as one call
    is slower than the best so far at full size, so a slow generic loop costs about one good call.
    """
    names = list(run)
    favourite = run[names[0]]
    favourite(1)  # first call: lazy set-up of the kernel, not its speed
    rows = 1
    while rows < M and probe.seconds(lambda r=rows: favourite(r)) < _CALL_BUDGET_S:
        rows *= 2
    times: dict[str, float | None] = {}
    best = float("inf")
    for name in names:
        fn = run[name]
        fn(1)
        m, t = 1, 0.0
        while m < rows and t <= best:
            t = probe.seconds(lambda m=m, fn=fn: fn(m))
            m *= 2
        if t > best:
            times[name] = None
            continue
        times[name] = probe.best_of(lambda fn=fn: fn(rows), _REPEATS)
        best = min(best, times[name])
    return rows, times


def _probe_rows(N: int) -> int:
    # timing ranks kernels; a GEMM's time per output row is flat beyond a few thousand rows, so a wide
    # layer is timed on its first _PROBE_MAX_N rows (packing 28672 x 8192 for three kernels would take seconds)
    return min(N, _PROBE_MAX_N)


def _measure_gemm(N: int, K: int, bucket: int, kernels: list[str]) -> dict:
    N = _probe_rows(N)
    W_i8 = probe.probe_weight(N, K)
    A = probe.probe_codes(bucket, K, seed=bucket)  # (M, K)
    run: dict[str, Callable[[int], object]] = {}
    for kernel in kernels:
        packed = probe.probe_layout(N, K, kernel) if kernel in cpu_gemm.KERNELS else None
        run[kernel] = probe.run_probe(kernel, A, W_i8, packed)
    rows, times = _race(run, bucket)
    timed = {k: t for k, t in times.items() if t is not None}
    choice = min(timed, key=timed.get)
    logger.info("int8 GEMM %dx%d (in x out), %d tokens (timed at %d): %s (%s)", K, N, bucket, rows, choice, _fmt(times))
    ms = {k: None if t is None else round(t * 1e3, 4) for k, t in times.items()}
    return {"choice": choice, "timed_rows": rows, "timed_out_features": N, "ms": ms}


def _fmt(times: dict[str, float | None]) -> str:
    return ", ".join(f"{k} {'dropped' if t is None else f'{t * 1e3:.3f} ms'}" for k, t in times.items())


def gemm_kernel(N: int, K: int, M: int) -> str:
    """The CPU integer GEMM for (M, K) x (N, K) codes: forced, fixed order, or measured (see module doc)."""
    forced = _forced()
    if forced is not None:
        return forced
    if not timing_enabled():
        return admission.fixed_kernel()
    kernels = admission.admitted_kernels()
    if len(kernels) < 2:
        return kernels[0] if kernels else probes.REFERENCE
    bucket = token_bucket(M)
    memo_key = ("gemm", N, K, bucket, torch.get_num_threads())
    choice = _memo.get(memo_key)
    if choice is None:
        choice = probe.STORE.decide(f"gemm:{K}x{N}:m{bucket}", lambda: _measure_gemm(N, K, bucket, kernels))["choice"]
        _memo[memo_key] = choice
    return choice


def fixed_max_tokens(in_features: int, out_features: int) -> int:
    """The weight-only crossover used without timing (0 for layers above 2**24 weights)."""
    return min(AUTO_MAX_TOKENS, AUTO_MAX_MACS // (in_features * out_features))


Int8Layer = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, object, torch.Tensor], torch.Tensor]
"""``int8_layer(X, W_i8, s_w, packed, row_sums)``: the op's whole int8 x int8 forward, zero-point codes."""


def _measure_weight_only(N: int, K: int, limit: int, int8_layer: Int8Layer) -> dict:
    N = _probe_rows(N)
    W_i8 = probe.probe_weight(N, K)
    s_w = torch.full((N,), 0.01)
    row_sums = W_i8.sum(dim=1, dtype=torch.float32)
    # the op picks the measured kernel per bucket (for the probe's shape) and packs it from this one
    kernels = [k for k in admission.admitted_kernels() if k in cpu_gemm.KERNELS]
    packed = probe.probe_layout(N, K, kernels[0]) if kernels else None
    X_all = torch.randn(limit, K, generator=torch.Generator().manual_seed(K))  # (tokens, K)
    ms: dict[str, dict[str, float | None]] = {}
    max_tokens = 0
    m = 1
    while m <= limit:
        X = X_all[:m]
        run = {
            "int8": lambda X=X: int8_layer(X, W_i8, s_w, packed, row_sums),
            "weight_only": lambda X=X: weight_only.int8_weight_only_linear(X, W_i8, s_w),
        }
        for fn in run.values():
            fn()  # warm: packing, first-call set-up
        times = {name: probe.best_of(fn, _REPEATS) for name, fn in run.items()}
        ms[str(m)] = {name: round(t * 1e3, 4) for name, t in times.items()}
        if times["weight_only"] >= times["int8"]:
            break
        max_tokens = m
        m *= 2
    logger.info("weight-only crossover %dx%d (in x out): up to %d tokens (%s)", K, N, max_tokens, ms)
    return {"max_tokens": max_tokens, "ms": ms}


def weight_only_max_tokens(in_features: int, out_features: int, int8_layer: Int8Layer) -> int:
    """Up to how many tokens an (in, out) CPU layer takes the weight-only kernel: measured against
    ``int8_layer`` once per shape, or ``fixed_max_tokens`` where timing is off."""
    if not timing_enabled() or _forced() is not None:
        return fixed_max_tokens(in_features, out_features)
    memo_key = ("weight_only", out_features, in_features, torch.get_num_threads())
    limit = _memo.get(memo_key)  # every forward asks: the common case ends here
    if limit is None:
        if not weight_only.available(torch.device("cpu"), in_features):
            return fixed_max_tokens(in_features, out_features)
        key = f"weight_only:{in_features}x{out_features}"
        measure = lambda: _measure_weight_only(out_features, in_features, AUTO_MAX_TOKENS, int8_layer)  # noqa: E731
        limit = _memo[memo_key] = probe.STORE.decide(key, measure)["max_tokens"]
    return limit
