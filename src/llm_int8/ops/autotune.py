"""Kernel choice by measurement: which CPU integer GEMM, and up to how many tokens the weight-only path.

No fixed order is right on every x86 CPU: fbgemm's sign split is the fastest exact kernel on AVX2
without VNNI, oneDNN's s8 x s8 kernel with no split does half its work on VNNI / AMX CPUs, and the
crossover of the weight-only kernel moves with the cache sizes and the bf16 support. So the choice
is timed on the machine that runs, once per (layer shape, token bucket), at first use:

* ``cpu_gemm(N, K, M)``: among the kernels admitted by their exactness self-tests
  (``_capability.admitted_cpu_kernels``; every one returns the same integers, so the choice never
  changes a result), the fastest on random codes of the bucket's size. Buckets are powers of two up
  to ``LARGEST_BUCKET`` tokens; every larger M shares that one, where all candidates are bound by
  arithmetic and rank as they do at any larger M. A candidate is timed at doubling sizes and
  dropped as soon as it is slower than the best at full size, so a slow generic loop
  (``torch._int_mm`` without AVX-512) costs about as much as one call of the winner.
* ``weight_only_max_tokens(K, N)``: the largest bucket up to ``weight_only.AUTO_MAX_TOKENS`` such
  that the weight-only kernel beats the whole int8 x int8 layer (quantization and epilogue
  included) at it and at every smaller bucket. This path does change the numerics (bf16
  activations instead of int8 codes), which is why it is a per-shape limit, decided once.

Decisions are kept in memory and in a JSON file in the user's cache directory
(``$LLM_INT8_CACHE_DIR``, else ``$XDG_CACHE_HOME/llm-int8``, else ``~/.cache/llm-int8``), keyed by
CPU model and flags, torch version, library version and thread count, written atomically; a later
process reads them instead of timing. Environment:

* ``LLM_INT8_CPU_BACKEND=<kernel>`` forces one GEMM (``onednn_s8``, ``fbgemm``, ``onednn``,
  ``int_mm`` or ``reference``); a kernel that failed its self-test here is refused with an error.
* ``LLM_INT8_AUTOTUNE=0`` turns timing off: the fixed order of ``_capability.cpu_int8_backend``
  and the fixed rule ``weight_only.fixed_max_tokens``; results then depend on nothing measured
  (the test suite sets it).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import platform
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ..primitives import rowwise_quantize
from . import _capability, cpu, weight_only

__all__ = [
    "AUTOTUNE_ENV",
    "BACKEND_ENV",
    "LARGEST_BUCKET",
    "cache_path",
    "cpu_gemm",
    "decisions",
    "enabled",
    "machine_key",
    "token_bucket",
    "weight_only_max_tokens",
]

logger = logging.getLogger(__name__)

BACKEND_ENV = "LLM_INT8_CPU_BACKEND"
AUTOTUNE_ENV = "LLM_INT8_AUTOTUNE"
LARGEST_BUCKET = 128
"""Token buckets are 1, 2, 4, ..., 128; larger inputs use the 128 bucket's choice. At 128 rows every
candidate is bound by arithmetic (BENCHMARKS.md), and timing there costs at most a few tenths of a
second on a 4096 x 4096 layer with one thread."""
_CALL_BUDGET_S = 0.025
"""Longest single call timed: a bucket whose favourite call takes longer is timed at fewer rows."""
_PROBE_MAX_N = 2048
_REPEATS = 3  # timed runs per candidate at full size, best taken: the minimum is what load cannot inflate
_FORCEABLE = (*cpu.KERNELS, _capability.INT_MM, _capability.REFERENCE)

_lock = threading.Lock()
_memory: dict[str, dict] = {}  # the decisions of this process, by key; loaded from disk once
_loaded_from: Path | None = None
_memo: dict[tuple, object] = {}  # (kind, shape, bucket, threads) -> result: the per-call fast path


def enabled() -> bool:
    """Whether kernels are chosen by timing (``LLM_INT8_AUTOTUNE`` is not 0/false/off)."""
    return os.environ.get(AUTOTUNE_ENV, "1").strip().lower() not in ("0", "false", "off", "no")


def token_bucket(M: int) -> int:
    """The power of two >= ``M`` (M >= 1), at most ``LARGEST_BUCKET``."""
    return min(1 << max(M - 1, 0).bit_length(), LARGEST_BUCKET)


def _forced() -> str | None:
    name = os.environ.get(BACKEND_ENV, "").strip().lower()
    if not name:
        return None
    if name not in _FORCEABLE:
        raise ValueError(f"{BACKEND_ENV}={name!r} is not a CPU int8 kernel; expected one of {_FORCEABLE}")
    if name != _capability.REFERENCE and name not in _capability.admitted_cpu_kernels():
        raise ValueError(
            f"{BACKEND_ENV}={name!r}: that kernel is not available or failed its exactness self-test on this CPU "
            f"(admitted: {_capability.admitted_cpu_kernels()})"
        )
    return name


# --- the on-disk cache ------------------------------------------------------------------------------


@functools.cache
def _cpu_description() -> tuple[str, str]:
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


@functools.cache
def _library_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("llm-int8")
    except metadata.PackageNotFoundError:
        return "unknown"


def machine_key() -> dict[str, str]:
    """What a decision depends on besides the shape: a change in any of these invalidates the cache."""
    model, flags = _cpu_description()
    return {
        "cpu": model,
        "flags_sha1": hashlib.sha1(flags.encode()).hexdigest()[:12],
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "llm_int8": _library_version(),
        "threads": str(torch.get_num_threads()),
    }


def cache_path() -> Path:
    """The JSON file holding this machine key's decisions."""
    root = os.environ.get("LLM_INT8_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "llm-int8"
    )
    digest = hashlib.sha1(json.dumps(machine_key(), sort_keys=True).encode()).hexdigest()[:16]
    return Path(root) / f"autotune-{digest}.json"


def _table() -> dict[str, dict]:
    """The decisions for the current machine key, read from disk the first time (or after it changed)."""
    global _loaded_from
    path = cache_path()
    if _loaded_from != path:
        _memory.clear()
        _memo.clear()
        _memory.update(_read(path))
        _loaded_from = path
    return _memory


def _read(path: Path) -> dict[str, dict]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        return dict(data.get("decisions", {}))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, AttributeError) as err:
        logger.warning("ignoring the unreadable autotune cache %s: %s", path, err)
        return {}


def _write(path: Path, table: dict[str, dict]) -> None:
    """Merge ``table`` into the file (another process may have added decisions) and replace it atomically."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        merged = {**_read(path), **table}
        fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"machine": machine_key(), "decisions": merged}, f, indent=1, sort_keys=True)
        os.replace(tmp, path)  # readers see the old file or the new one, never half of one
    except OSError as err:
        logger.info("autotune decisions not saved to %s: %s", path, err)


def decisions() -> dict[str, dict]:
    """A copy of every decision known for this machine key (measured here or read from the cache file).

    Keys: ``gemm:{in}x{out}:m{bucket}`` (the GEMM kernel) and ``weight_only:{in}x{out}`` (the crossover)."""
    with _lock:
        return {key: dict(value) for key, value in _table().items()}


def _decide(key: str, measure: Callable[[], dict]) -> dict:
    with _lock:
        table = _table()
        if key in table:
            return table[key]
    decision = measure()  # outside the lock: timing a large layer takes a while
    with _lock:
        table = _table()
        table.setdefault(key, decision)
        _write(cache_path(), table)
        return table[key]


# --- timing ------------------------------------------------------------------------------------------


def _seconds(fn: Callable[[], object]) -> float:
    # with one torch thread, the calling thread's CPU time: what the kernel costs, not how long other
    # processes kept it waiting for a core; with more, wall time (the workers' time is not the caller's)
    clock = time.thread_time if torch.get_num_threads() == 1 else time.perf_counter
    start = clock()
    fn()
    return clock() - start


def _best_of(fn: Callable[[], object], repeats: int) -> float:
    return min(_seconds(fn) for _ in range(repeats))


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
    while rows < M and _seconds(lambda r=rows: favourite(r)) < _CALL_BUDGET_S:
        rows *= 2
    times: dict[str, float | None] = {}
    best = float("inf")
    for name in names:
        fn = run[name]
        fn(1)
        m, t = 1, 0.0
        while m < rows and t <= best:
            t = _seconds(lambda m=m, fn=fn: fn(m))
            m *= 2
        if t > best:
            times[name] = None
            continue
        times[name] = _best_of(lambda fn=fn: fn(rows), _REPEATS)
        best = min(best, times[name])
    return rows, times


@functools.lru_cache(maxsize=1)  # the shape being measured: its buckets and crossover reuse the packed layouts
def _probe_weight(N: int, K: int) -> torch.Tensor:
    # codes as a model's weights give them (row-wise absmax of a bell-shaped weight), not uniform
    # ones: FBGEMM_PAIRS' sparse part is the pairs with |w| + |w'| > 128, 2-3% of real weights' pairs
    # but half of uniform codes'
    gen = torch.Generator().manual_seed(N * 131 + K)
    return rowwise_quantize(torch.randn(N, K, generator=gen))[0]


@functools.lru_cache(maxsize=4)
def _probe_layout(N: int, K: int, kernel: str) -> cpu.CpuInt8Weight:
    return cpu.prepack(_probe_weight(N, K), kernel)  # packing is once per layer: never part of the timed call


def _probe_rows(N: int) -> int:
    # timing ranks kernels; a GEMM's time per output row is flat beyond a few thousand rows, so a wide
    # layer is timed on its first _PROBE_MAX_N rows (packing 28672 x 8192 for three kernels would take seconds)
    return min(N, _PROBE_MAX_N)


def _measure_gemm(N: int, K: int, bucket: int, kernels: list[str]) -> dict:
    N = _probe_rows(N)
    W_i8 = _probe_weight(N, K)
    gen = torch.Generator().manual_seed(bucket)
    A = torch.randint(-127, 128, (bucket, K), generator=gen).float()  # (M, K) codes as int8_linear holds them
    run: dict[str, Callable[[int], object]] = {}
    for kernel in kernels:
        if kernel == _capability.INT_MM:
            A_i8 = A.to(torch.int8)
            run[kernel] = lambda m, A_i8=A_i8: torch._int_mm(A_i8[:m], W_i8.T)
        else:
            packed = _probe_layout(N, K, kernel)
            run[kernel] = lambda m, packed=packed: cpu.int8_mm_float(A[:m], W_i8, packed)
    rows, times = _race(run, bucket)
    timed = {k: t for k, t in times.items() if t is not None}
    choice = min(timed, key=timed.get)
    logger.info("int8 GEMM %dx%d (in x out), %d tokens (timed at %d): %s (%s)", K, N, bucket, rows, choice, _fmt(times))
    ms = {k: None if t is None else round(t * 1e3, 4) for k, t in times.items()}
    return {"choice": choice, "timed_rows": rows, "timed_out_features": N, "ms": ms}


def _fmt(times: dict[str, float | None]) -> str:
    return ", ".join(f"{k} {'dropped' if t is None else f'{t * 1e3:.3f} ms'}" for k, t in times.items())


def cpu_gemm(N: int, K: int, M: int) -> str:
    """The CPU integer GEMM for (M, K) x (N, K) codes: forced, fixed order, or measured (see module doc)."""
    forced = _forced()
    if forced is not None:
        return forced
    if not enabled():
        return _capability.cpu_int8_backend()
    kernels = _capability.admitted_cpu_kernels()
    if len(kernels) < 2:
        return kernels[0] if kernels else _capability.REFERENCE
    bucket = token_bucket(M)
    memo_key = ("gemm", N, K, bucket, torch.get_num_threads())
    choice = _memo.get(memo_key)
    if choice is None:
        choice = _decide(f"gemm:{K}x{N}:m{bucket}", lambda: _measure_gemm(N, K, bucket, kernels))["choice"]
        _memo[memo_key] = choice
    return choice


def _measure_weight_only(N: int, K: int, limit: int) -> dict:
    from .int8_linear import _forward_2d  # the int8 x int8 layer, as int8_linear runs it (imports ops modules)

    N = _probe_rows(N)
    W_i8 = _probe_weight(N, K)
    s_w = torch.full((N,), 0.01)
    row_sums = W_i8.sum(dim=1, dtype=torch.float32)
    # int8_mm_float picks the measured kernel per bucket (for the probe's shape) and packs it from this one
    kernels = [k for k in _capability.admitted_cpu_kernels() if k in cpu.KERNELS]
    packed = _probe_layout(N, K, kernels[0]) if kernels else None
    X_all = torch.randn(limit, K, generator=torch.Generator().manual_seed(K))  # (tokens, K)
    ms: dict[str, dict[str, float | None]] = {}
    max_tokens = 0
    m = 1
    while m <= limit:
        X = X_all[:m]
        run = {
            "int8": lambda X=X: _forward_2d(X, W_i8, s_w, 6.0, packed, "zeropoint", row_sums),
            "weight_only": lambda X=X: weight_only.int8_weight_only_linear(X, W_i8, s_w),
        }
        for fn in run.values():
            fn()  # warm: packing, first-call set-up
        times = {name: _best_of(fn, _REPEATS) for name, fn in run.items()}
        ms[str(m)] = {name: round(t * 1e3, 4) for name, t in times.items()}
        if times["weight_only"] >= times["int8"]:
            break
        max_tokens = m
        m *= 2
    logger.info("weight-only crossover %dx%d (in x out): up to %d tokens (%s)", K, N, max_tokens, ms)
    return {"max_tokens": max_tokens, "ms": ms}


def weight_only_max_tokens(in_features: int, out_features: int) -> int:
    """Up to how many tokens an (in, out) CPU layer takes the weight-only kernel: measured, or the fixed rule."""
    if not enabled() or _forced() is not None:
        return weight_only.fixed_max_tokens(in_features, out_features)
    memo_key = ("weight_only", out_features, in_features, torch.get_num_threads())
    limit = _memo.get(memo_key)  # every forward asks: the common case ends here
    if limit is None:
        if not weight_only.available(torch.device("cpu"), in_features):
            return weight_only.fixed_max_tokens(in_features, out_features)
        key = f"weight_only:{in_features}x{out_features}"
        measure = lambda: _measure_weight_only(out_features, in_features, weight_only.AUTO_MAX_TOKENS)  # noqa: E731
        limit = _memo[memo_key] = _decide(key, measure)["max_tokens"]
    return limit
