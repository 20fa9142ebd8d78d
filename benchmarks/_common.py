"""Shared by the speed benchmarks: interleaved timing, machine description, result writing."""

from __future__ import annotations

import argparse
import csv
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch


def time_interleaved(
    fns: dict[str, Callable[[], object]], rounds: int, budget_s: float | None = None, clock: str = "wall"
) -> dict[str, list[float]]:
    """Times (seconds) of each callable, run in alternation ``rounds`` times after one warm-up.

    Alternating the candidates spreads the noise of a shared machine over all of them instead of
    letting a burst of load land on one. With ``budget_s``, a candidate whose warm-up call took
    longer than ``budget_s / rounds`` gets fewer repeats (at least one). ``clock="cpu"`` measures
    the calling thread's CPU time: with one torch thread that is the work done, unaffected by the
    time other processes hold the cores.
    """
    now = time.thread_time if clock == "cpu" else time.perf_counter
    warm = {}
    for name, fn in fns.items():
        start = now()
        fn()
        warm[name] = now() - start
    repeats = {
        name: rounds if budget_s is None else max(1, min(rounds, int(budget_s / max(w, 1e-9))))
        for name, w in warm.items()
    }
    times: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(max(repeats.values())):
        for name, fn in fns.items():
            if r < repeats[name]:
                start = now()
                fn()
                times[name].append(now() - start)
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


def cpu_flags() -> str:
    """Every ISA flag of the first CPU in ``/proc/cpuinfo`` (empty where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def machine_info() -> dict[str, str]:
    """CPU model, cores, SIMD flags, load and library versions, for the results header."""
    model, flags = platform.processor() or "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    simd = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8") if f in flags]
    versions = {"torch": torch.__version__}
    for name in ("bitsandbytes", "transformers"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            versions[name] = "not installed"
    return {
        "cpu": model,
        "logical_cpus": str(os.cpu_count()),
        "torch_threads": str(torch.get_num_threads()),
        "simd": " ".join(simd) or "none of avx2/avx512",
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "loadavg_1min": f"{os.getloadavg()[0]:.2f}",
        **versions,
        "python": platform.python_version(),
    }


def run_info() -> dict[str, str]:
    """``machine_info`` plus the CPU flags and whether the C++ kernels (``ops/kernels/native``) are built."""
    from llm_int8.ops.kernels import native

    return {**machine_info(), "cpu_flags": cpu_flags(), "C++ kernels": "built" if native.ops() else native.reason()}


def smoke_arguments(parser: argparse.ArgumentParser, argv=None, **smoke) -> argparse.Namespace:
    """``parser``'s arguments with ``--smoke`` added: it makes ``smoke`` (dest: value) the defaults.

    A smoke run is the benchmark's own code on its smallest shape, one round, in seconds, so that the
    suite (``tests/test_benchmarks.py``) notices when a script stops working. Options given on the
    command line still win over the smoke values. Its numbers measure nothing.
    """
    parser.add_argument(
        "--smoke", action="store_true", help="the same code on the smallest shape, one round (a check that it runs)"
    )
    args = parser.parse_args(argv)
    unknown = sorted(set(smoke) - set(vars(args)))
    if unknown:
        raise ValueError(f"smoke values for options this parser does not have: {unknown}")
    if args.smoke:
        parser.set_defaults(**smoke)
        args = parser.parse_args(argv)
    return args


def timing_arguments(
    description: str, rounds: int, argv=None, smoke: dict | None = None, **extra
) -> argparse.Namespace:
    """``--out --threads --clock --rounds --smoke`` and ``extra`` (name: add_argument kwargs), parsed; sets torch's
    threads. ``smoke``: the defaults of ``--smoke`` besides one round (see ``smoke_arguments``)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="cpu")
    parser.add_argument("--rounds", type=int, default=rounds)
    for name, kwargs in extra.items():
        parser.add_argument(name, **kwargs)
    args = smoke_arguments(parser, argv, rounds=1, **(smoke or {}))
    torch.set_num_threads(args.threads)
    return args


def sizes(count: int) -> Callable[[str], tuple[int, ...]]:
    """An option type: ``"576x1536"`` -> ``(576, 1536)``, ``count`` positive integers joined by ``x``."""

    def parse(text: str) -> tuple[int, ...]:
        parts = text.lower().split("x")
        if len(parts) != count or not all(p.isdigit() and int(p) > 0 for p in parts):
            example = "x".join(("576", "1536", "512")[:count])
            raise argparse.ArgumentTypeError(f"expected {count} integers > 0 joined by x ({example}), got {text!r}")
        return tuple(int(p) for p in parts)

    return parse


def write_csv(path: Path, rows: list[dict]) -> None:
    """Write ``rows`` to ``path`` atomically (temp file, then rename)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)


def write_text(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
