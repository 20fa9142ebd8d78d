"""What the kernel choice costs and what it gives (issue 18), on the CPU at hand.

1. **First use** of a 4096 x 4096 ``Int8Linear`` at 512 tokens (``--first-use-shape``) with an empty decision
   cache, timing on:
   each run in a fresh process (``--first-use-runs`` of them), the first call (the admission probe,
   the GEMM race of the 128-token bucket, packing) and the second, in wall time and in the process's
   CPU time (``--threads``, default 1: CPU time is then the work done, whatever else the machine runs).
2. **Timing off** (``LLM_INT8_AUTOTUNE=0``): the layer on the fixed choice (the fastest admitted kernel
   on the admission probe) against the fastest exact raw int8 GEMM of this CPU, at 576 x 1536 with
   M = 512 and 4096 x 4096 with M = 128 (fp32 activations, one thread, thread CPU time, medians).

Weights are drawn N(0, 0.02), as transformers initialises them and as trained weights are shaped
(bell-shaped; ``nn.Linear``'s uniform initialisation is not what a model holds, and the pair-bounded
kernel hands such a weight to another kernel).

    python benchmarks/bench_kernel_choice.py --out benchmarks/results/issue18

Writes ``kernel_choice.md`` and ``kernel_choice.json`` there; prints the same.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, markdown_table, median, sizes, smoke_arguments, time_interleaved, write_text  # noqa: E402

_FIRST_USE = r"""
import json, os, sys, time
t0 = time.perf_counter()
import torch
from llm_int8 import Int8Linear
imported = time.perf_counter() - t0
threads, K, N, M = (int(v) for v in sys.argv[1:5])
torch.set_num_threads(threads)
torch.manual_seed(0)
linear = torch.nn.Linear(K, N)
torch.nn.init.normal_(linear.weight, std=0.02)
layer = Int8Linear.from_linear(linear)
x = torch.randn(M, K)
out = {"import_s": imported}
with torch.no_grad():
    for call in ("first", "second"):
        wall, cpu = time.perf_counter(), time.process_time()
        layer(x)
        out[call + "_s"], out[call + "_cpu_s"] = time.perf_counter() - wall, time.process_time() - cpu
from llm_int8.ops.choice import cpu as cpu_choice
out["decisions"] = sorted(cpu_choice.decisions())
print(json.dumps(out))
"""


def first_use(runs: int, threads: int, shape: tuple[int, int, int]) -> list[dict]:
    """Each run in a fresh process with an empty decision cache: seconds of the import and the first two calls
    of a ``shape`` = (K, N, M) layer."""
    results = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as cache:
            env = {**os.environ, "LLM_INT8_CACHE_DIR": cache, "LLM_INT8_AUTOTUNE": "1"}
            env.pop("LLM_INT8_CPU_BACKEND", None)
            cmd = [sys.executable, "-c", _FIRST_USE, str(threads), *(str(v) for v in shape)]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return results


def timing_off(shapes: list[tuple[int, int, int]], rounds: int) -> list[dict]:
    os.environ["LLM_INT8_AUTOTUNE"] = "0"
    from llm_int8 import Int8Linear
    from llm_int8.ops.choice import admission
    from llm_int8.ops.kernels import cpu_gemm, probes
    from llm_int8.ops.kernels.quantize import quantize_activations_zeropoint

    torch.set_num_threads(1)
    rows = []
    for K, N, M in shapes:
        torch.manual_seed(0)
        linear = torch.nn.Linear(K, N)
        torch.nn.init.normal_(linear.weight, std=0.02)
        layer = Int8Linear.from_linear(linear, weight_only_max_tokens=0)
        X = torch.randn(M, K)
        codes = quantize_activations_zeropoint(X, 6.0)[0]  # (M, K) float codes, as the op feeds the GEMM
        W_i8 = layer.weight_int8
        fns = {"layer (timing off)": lambda layer=layer, X=X: layer(X)}
        for kernel in probes.exact_cpu_kernels():  # raw GEMMs: every exact kernel, admitted or not
            if kernel == probes.INT_MM:
                A_i8 = codes.to(torch.int8)
                fns[f"raw {kernel}"] = lambda A_i8=A_i8, W_i8=W_i8: cpu_gemm.int_mm(A_i8, W_i8)
            else:
                packed = cpu_gemm.prepack(W_i8, kernel)
                fns[f"raw {kernel}"] = lambda p=packed, A=codes, W=W_i8: cpu_gemm.int8_mm_float(A, W, p)
        with torch.no_grad():
            times = {k: median(v) for k, v in time_interleaved(fns, rounds, budget_s=20.0, clock="cpu").items()}
        raw = {k: v for k, v in times.items() if k.startswith("raw ")}
        fastest = min(raw, key=raw.get)
        rows.append(
            {
                "shape": f"{K} x {N}",
                "M": M,
                "fixed kernel": admission.fixed_kernel(),
                "layer ms": round(times["layer (timing off)"] * 1e3, 3),
                "fastest raw GEMM": fastest.removeprefix("raw "),
                "fastest raw ms": round(raw[fastest] * 1e3, 3),
                "layer / fastest raw": round(times["layer (timing off)"] / raw[fastest], 2),
                "raw ms": {k.removeprefix("raw "): round(v * 1e3, 3) for k, v in raw.items()},
            }
        )
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/issue18"))
    parser.add_argument("--first-use-runs", type=int, default=3)
    parser.add_argument("--first-use-shape", type=sizes(3), default=(4096, 4096, 512), help="KxNxM of the first use")
    parser.add_argument("--timing-off-shapes", nargs="+", type=sizes(3), default=[(576, 1536, 512), (4096, 4096, 128)])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the first-use runs")
    small = (576, 576, 16)
    args = smoke_arguments(parser, argv, first_use_runs=1, first_use_shape=small, timing_off_shapes=[small], rounds=1)
    args.out.mkdir(parents=True, exist_ok=True)
    info = machine_info()
    first = first_use(args.first_use_runs, args.threads, args.first_use_shape)
    off = timing_off(args.timing_off_shapes, args.rounds)
    from llm_int8.ops.choice import admission

    md = ["# Kernel choice: first-use cost and the fixed choice with timing off", ""]
    md += [f"- {k}: {v}" for k, v in info.items()]
    state = admission.admission()
    md += [f"- admitted: {', '.join(state['admitted'])}; not admitted: {state['dropped']}", ""]
    K, N, M = args.first_use_shape
    md += [f"## First use: {K} x {N}, {M} tokens, empty cache, timing on, {args.threads} thread(s)", ""]
    md += ["A fresh process each run; seconds of wall time and of the process's CPU time.", ""]
    header = ["run", "import (wall)", "first call (wall)", "first call (CPU)", "second call (wall)", "second (CPU)"]
    rows = [
        [str(i + 1), f"{r['import_s']:.2f}", f"{r['first_s']:.2f}", f"{r['first_cpu_s']:.2f}",
         f"{r['second_s']:.3f}", f"{r['second_cpu_s']:.3f}"]
        for i, r in enumerate(first)
    ]  # fmt: skip
    md += [markdown_table(header, rows), "", f"decisions made: {', '.join(first[0]['decisions'])}"]
    md += ["", "## Timing off: the layer against the fastest exact raw int8 GEMM (one thread, CPU time, medians)", ""]
    header = ["in x out", "M", "fixed kernel", "layer ms", "fastest raw", "raw ms", "layer / raw", "raw GEMMs (ms)"]
    rows = [
        [r["shape"], str(r["M"]), r["fixed kernel"], f"{r['layer ms']:.2f}", r["fastest raw GEMM"],
         f"{r['fastest raw ms']:.2f}", f"{r['layer / fastest raw']:.2f}x",
         ", ".join(f"{k} {v:.1f}" for k, v in r["raw ms"].items())]
        for r in off
    ]  # fmt: skip
    md.append(markdown_table(header, rows))
    text = "\n".join(md) + "\n"
    write_text(args.out / "kernel_choice.md", text)
    write_text(
        args.out / "kernel_choice.json", json.dumps({"machine": info, "first_use": first, "timing_off": off}, indent=1)
    )
    print(text)


if __name__ == "__main__":
    main()
