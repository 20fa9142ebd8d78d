"""Layer-level speed of LLM.int8() on CPU against fp32, bf16 and bitsandbytes, on real model shapes.

    python benchmarks/bench_layers.py --out benchmarks/results --threads 1 --clock cpu  # full grid, 16 min
    python benchmarks/bench_layers.py --shapes llama7b-qkv --tokens 1 512              # one shape
    python benchmarks/bench_layers.py --breakdown --out benchmarks/results/issue20/before --threads 1 --clock cpu

``--breakdown`` times each step of one layer instead (quantizer, GEMM, epilogue, outlier product,
bias and cast) at SmolLM2's shapes and 4096 x 4096, M = 1, 16, 128, 512, fp32 and bf16 activations,
beside fp32 and bf16 ``nn.Linear``; it writes ``breakdown.{md,csv,png}`` (``_breakdown.py``).

The full grid took 16 minutes on 2 loaded cores; the 8192 x 28672 shape is most of it (use
``--shapes`` to leave it out, or lower ``--max-call-seconds``).

For each (in, out) shape and token count M, every candidate computes ``Y = X W^T + b`` for the
same weights and the same activations (~N(0, 1) with 6 emergent-outlier feature dims of magnitude
8-20, as in the paper's Figure 3 models); times are medians of interleaved runs after a warm-up.

Candidates:
* ``fp32``, ``bf16``: ``nn.Linear`` in that dtype.
* ``bnb``: bitsandbytes ``Linear8bitLt(has_fp16_weights=False, threshold=6.0)`` quantized by ``.to("cpu")``.
* ``llm_int8``: ``llm_int8.Int8Linear`` with the library's defaults (zeropoint activations, α = 6),
  fp32 in and out: the exact int8 GEMM the machine measured fastest for the shape and token bucket
  (``ops/choice/cpu.py``; decided in an untimed call before the timing), or for M up to the measured
  crossover ``ops.forward.weight_only_limit(K, N)`` the int8-weight bf16-activation path
  (``ops/kernels/weight_only.py``). What a user gets.
* ``llm_int8_bf16``: the same layer on bf16 activations (bf16 in and out), as a bf16 model
  converted by ``quantize_model`` runs it; its ratio is taken against ``bf16``.
* ``llm_int8_int8path``: the same layer with the weight-only path off (``weight_only_max_tokens=0``):
  LLM.int8()'s int8 x int8 product at every M (its crossover with the weight-only path sets
  ``AUTO_MAX_TOKENS``).
* ``llm_int8_absmax``: the paper's LLM.int8() exactly (absmax activations, int8 path at every M).
* ``gemm_<kernel>``: each exact int8 GEMM admitted on this CPU (``probes.admitted_cpu_kernels``:
  fbgemm / oneDNN sign split, oneDNN s8 without split where VNNI/AMX make it exact, ``torch._int_mm``)
  alone on the codes; ``gemm_exact`` in the table is the fastest of them in this run (the ceiling
  for ``llm_int8``'s int8 path).
* ``gemm_saturating``: the same kernel on M rows of 8-bit codes, which saturates on AVX2 and is NOT
  exact: the hardware's int8 speed if exactness were free (shown for reference only).
* ``w8_bf16``: ``aten._weight_int8pack_mm``, int8 weight with bf16 activations (weight-only; not
  LLM.int8() numerics; M <= 128 only).

A candidate whose single call exceeds ``--max-call-seconds`` is not run for larger M on that
shape; the table says "skipped".
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _breakdown  # noqa: E402
from _common import (  # noqa: E402
    cpu_flags,
    machine_info,
    markdown_table,
    median,
    smoke_arguments,
    time_interleaved,
    write_csv,
    write_text,
)

from llm_int8 import Int8Linear  # noqa: E402
from llm_int8.ops.choice import admission  # noqa: E402
from llm_int8.ops.choice import cpu as cpu_choice  # noqa: E402
from llm_int8.ops.kernels import cpu_gemm, probes  # noqa: E402
from llm_int8.ops.kernels.quantize import quantize_activations  # noqa: E402

SHAPES = {  # name: (in_features K, out_features N)
    "smollm2-qo": (576, 576),
    "smollm2-up": (576, 1536),
    "smollm2-down": (1536, 576),
    "llama7b-qkv": (4096, 4096),
    "llama7b-up": (4096, 11008),
    "llama70b-up": (8192, 28672),
}
DEFAULT_SHAPES = ("smollm2-up", "smollm2-down", "llama7b-qkv", "llama7b-up", "llama70b-up")
TOKENS = (1, 16, 128, 512, 2048)
OUTLIER_DIMS = 6
GEMMS = tuple(f"gemm_{kernel}" for kernel in admission.admitted_kernels())
CANDIDATES = (
    "fp32",
    "bf16",
    "bnb",
    "llm_int8",
    "llm_int8_bf16",
    *GEMMS,
    "gemm_saturating",
    "w8_bf16",
    "llm_int8_int8path",
    "llm_int8_absmax",
)
W8_MAX_TOKENS = 128


def _activations(M: int, K: int, generator: torch.Generator) -> torch.Tensor:
    X = torch.randn(M, K, generator=generator)  # (tokens, in_features)
    dims = torch.randperm(K, generator=generator)[:OUTLIER_DIMS]
    magnitude = 8 + 12 * torch.rand(OUTLIER_DIMS, generator=generator)  # 8..20
    sign = torch.where(torch.rand(M, OUTLIER_DIMS, generator=generator) < 0.5, -1.0, 1.0)
    X[:, dims] = sign * magnitude
    return X


def _bnb_layer(linear: nn.Linear):
    import bitsandbytes as bnb

    layer = bnb.nn.Linear8bitLt(
        linear.in_features, linear.out_features, bias=True, has_fp16_weights=False, threshold=6.0
    )
    layer.load_state_dict(linear.state_dict())
    return layer.to("cpu")  # Int8Params quantize row-wise on this move (CB int8, SCB float32)


def _saturating_gemm(packed: cpu_gemm.CpuInt8Weight, codes: torch.Tensor):
    """The fbgemm u8 x s8 kernel on the M rows of 8-bit codes ``X_i8 + 128`` (saturates; timing only)."""
    stacked = torch.cat([codes, codes.new_tensor([[-128.0, 127.0] + [0.0] * (codes.shape[1] - 2)])])  # (M + 1, K)
    return lambda: torch.ops.quantized.linear_dynamic(stacked, packed.packed, False)


def _bf16(linear: nn.Linear) -> nn.Linear:
    layer = nn.Linear(linear.in_features, linear.out_features, dtype=torch.bfloat16)
    with torch.no_grad():
        layer.weight.copy_(linear.weight)
        layer.bias.copy_(linear.bias)
    return layer


def _gemm(kernel: str, packed: cpu_gemm.CpuInt8Weight, W_i8: torch.Tensor, codes: torch.Tensor):
    if kernel == probes.INT_MM:
        A_i8 = codes.to(torch.int8)
        return lambda: torch._int_mm(A_i8, W_i8.T)
    layout = packed.for_kernel(kernel, W_i8)
    return lambda: cpu_gemm.int8_mm_float(codes, W_i8, layout)


def _candidates(modules: dict, packed: cpu_gemm.CpuInt8Weight, X: torch.Tensor, codes: torch.Tensor) -> dict:
    X_bf16 = X.to(torch.bfloat16)
    int8_layer = modules["llm_int8"]
    fns = {
        "fp32": lambda: modules["fp32"](X),
        "bf16": lambda: modules["bf16"](X_bf16),
        "llm_int8": lambda: int8_layer(X),
        "llm_int8_bf16": lambda: modules["llm_int8_bf16"](X_bf16),
        **{f"gemm_{k}": _gemm(k, packed, int8_layer.weight_int8, codes) for k in admission.admitted_kernels()},
        "llm_int8_int8path": lambda: modules["llm_int8_int8path"](X),
        "llm_int8_absmax": lambda: modules["llm_int8_absmax"](X),
    }
    if "bnb" in modules:
        fns["bnb"] = lambda: modules["bnb"](X)
    if probes.FBGEMM in admission.admitted_kernels():  # the raw weight in fbgemm's layout
        fns["gemm_saturating"] = _saturating_gemm(packed.for_kernel(cpu_gemm.FBGEMM, int8_layer.weight_int8), codes)
    if X.shape[0] <= W8_MAX_TOKENS and hasattr(torch.ops.aten, "_weight_int8pack_mm"):
        scales = int8_layer.weight_scale.to(torch.bfloat16)
        fns["w8_bf16"] = lambda: torch.ops.aten._weight_int8pack_mm(X_bf16, int8_layer.weight_int8, scales)
    return fns


def run_shape(name: str, K: int, N: int, tokens, args, rows: list[dict]) -> None:
    generator = torch.Generator().manual_seed(0)
    linear = nn.Linear(K, N)
    with torch.no_grad():
        linear.weight.normal_(0, K**-0.5, generator=generator)
    int8_layer = Int8Linear.from_linear(linear, threshold=6.0)  # library defaults otherwise
    # one packed layout; each kernel's own is packed from it once (``for_kernel``). ``torch._int_mm`` has none
    layout_kernel = next((k for k in admission.admitted_kernels() if k in cpu_gemm.KERNELS), cpu_gemm.FBGEMM)
    packed = cpu_gemm.prepack(int8_layer.weight_int8, layout_kernel)
    modules = {
        "fp32": linear,
        "bf16": _bf16(linear),
        "llm_int8": int8_layer,
        "llm_int8_bf16": Int8Linear.from_linear(_bf16(linear), threshold=6.0),
        "llm_int8_int8path": Int8Linear.from_linear(linear, threshold=6.0, weight_only_max_tokens=0),
        "llm_int8_absmax": Int8Linear.from_linear(linear, threshold=6.0, activation="absmax", weight_only_max_tokens=0),
    }
    try:
        modules["bnb"] = _bnb_layer(linear)
    except ImportError:
        print("  bitsandbytes not installed: no bnb column", flush=True)
    skipped: set[str] = set()
    for M in tokens:
        X = _activations(M, K, generator)
        codes = quantize_activations(X, 6.0)[0]  # (M, K) float codes, as llm_int8 feeds the GEMM
        fns = _candidates(modules, packed, X, codes)
        fns = {k: f for k, f in fns.items() if k not in skipped}
        with torch.no_grad():  # kernel choices (timed once per shape and bucket, then cached) before the timing
            for key in ("llm_int8", "llm_int8_bf16"):
                fns[key]()
        rounds = args.rounds if K * N * M < 2**31 else max(2, args.rounds // 2)
        with torch.no_grad():
            times = time_interleaved(fns, rounds=rounds, budget_s=args.cell_budget, clock=args.clock)
        cell = {k: median(v) for k, v in times.items()}
        for cand in CANDIDATES:
            ran = cand in cell
            rows.append(
                {
                    "shape": name,
                    "in_features": K,
                    "out_features": N,
                    "tokens": M,
                    "candidate": cand,
                    "median_ms": f"{cell[cand] * 1e3:.3f}" if ran else "",
                    "min_ms": f"{min(times[cand]) * 1e3:.3f}" if ran else "",
                    "runs": len(times[cand]) if ran else 0,
                    "clock": args.clock,
                    "threads": torch.get_num_threads(),
                    "note": ""
                    if ran
                    else ("skipped: slower than --max-call-seconds at a smaller M" if cand in skipped else "n/a"),
                }
            )
            if ran and cell[cand] > args.max_call_seconds:
                skipped.add(cand)
        summary = "  ".join(f"{k}={v * 1e3:.2f}ms" for k, v in cell.items())
        print(f"  {name} M={M}: {summary}", flush=True)
    del modules, int8_layer, packed, linear
    gc.collect()


def _ratio(num: str, den: str) -> str:
    return f"{float(num) / float(den):.2f}x" if num and den else "-"


def _fastest_gemm(cell: dict) -> tuple[str, str]:
    """(kernel, median ms) of the fastest exact int8 GEMM that ran in this cell."""
    timed = [(float(cell[g]["median_ms"]), g) for g in GEMMS if cell.get(g, {}).get("median_ms")]
    if not timed:
        return "-", ""
    ms, name = min(timed)
    return name.removeprefix("gemm_"), f"{ms:.3f}"


def markdown(rows: list[dict], info: dict, command: str) -> str:
    by_cell: dict[tuple, dict] = {}
    for r in rows:
        by_cell.setdefault((r["shape"], r["tokens"]), {})[r["candidate"]] = r
    header = [
        "shape (K x N)",
        "M",
        "fp32 ms",
        "bf16 ms",
        "bnb ms",
        "llm-int8 ms",
        "llm-int8 bf16-in ms",
        "fastest exact int8 GEMM ms",
        "u8s8 saturating ms",
        "w8 bf16 ms",
        "int8 path ms",
        "paper absmax ms",
        "vs fp32",
        "bf16-in vs bf16",
        "vs bnb",
        "llm-int8 / fastest GEMM",
        "GEMM ceiling vs fp32",
    ]
    table = []
    for (shape, M), cell in by_cell.items():

        def ms(c, cell=cell):
            return cell.get(c, {}).get("median_ms", "")

        def fmt(c, missing="skipped"):
            return f"{float(ms(c)):.2f}" if ms(c) else missing

        K, N = cell["fp32"]["in_features"], cell["fp32"]["out_features"]
        kernel, gemm_ms = _fastest_gemm(cell)
        table.append(
            [
                f"{shape} ({K}x{N})",
                str(M),
                *[fmt(c) for c in ("fp32", "bf16", "bnb", "llm_int8", "llm_int8_bf16")],
                f"{float(gemm_ms):.2f} ({kernel})" if gemm_ms else "-",
                fmt("gemm_saturating", "-"),
                fmt("w8_bf16", "-"),
                fmt("llm_int8_int8path"),
                fmt("llm_int8_absmax"),
                _ratio(ms("fp32"), ms("llm_int8")),
                _ratio(ms("bf16"), ms("llm_int8_bf16")),
                _ratio(ms("bnb"), ms("llm_int8")),
                _ratio(ms("llm_int8"), gemm_ms),
                _ratio(ms("fp32"), gemm_ms),
            ]
        )
    machine = "\n".join(f"- {k}: {v}" for k, v in info.items())
    decisions = "\n".join(f"- `{k}`: {v}" for k, v in sorted(cpu_choice.decisions().items()))
    return (
        "# Layer benchmark (CPU)\n\n"
        f"Command: `{command}`\n\n{machine}\n\n"
        "Median time per call (see clock above); ratios are speedups of llm-int8 with its defaults "
        "(time of the peer / time of llm-int8), except `llm-int8 / fastest GEMM` (how far the whole layer "
        "is from the fastest exact raw int8 GEMM on the same codes; 1.00x = no overhead). `llm-int8` takes "
        "the weight-only path up to the crossover measured for the shape; `int8 path` is the "
        "same layer on LLM.int8()'s int8 x int8 "
        "product at every M; `paper absmax` is the paper's LLM.int8() (absmax activations).\n\n"
        + markdown_table(header, table)
        + "\n\nKernel choices measured by `ops/choice/cpu.py` in this run (ms per call at the timed rows):\n\n"
        + (decisions or "- none (timing off)")
        + "\n"
    )


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = list(dict.fromkeys(r["shape"] for r in rows))
    fig, axes = plt.subplots(1, len(shapes), figsize=(4 * len(shapes), 3.6), sharey=True, squeeze=False)
    for ax, shape in zip(axes[0], shapes, strict=True):
        cells: dict[int, dict[str, float]] = {}
        for r in rows:
            if r["shape"] == shape and r["median_ms"]:
                cells.setdefault(int(r["tokens"]), {})[r["candidate"]] = float(r["median_ms"])
        for cand, style in (
            ("bf16", "s--"),
            ("bnb", "^--"),
            ("llm_int8", "o-"),
            ("llm_int8_int8path", "d-."),
            *((g, "x:") for g in GEMMS[:1]),
        ):
            pts = [(M, c["fp32"] / c[cand]) for M, c in sorted(cells.items()) if cand in c and "fp32" in c]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=cand)
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log", base=2)
        ax.set_title(shape, fontsize=9)
        ax.set_xlabel("tokens M")
    axes[0][0].set_ylabel("speedup over fp32 nn.Linear")
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    tmp.replace(path)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(DEFAULT_SHAPES))
    parser.add_argument("--tokens", nargs="+", type=int, default=list(TOKENS))
    parser.add_argument("--rounds", type=int, default=7, help="timed runs per candidate (fewer on big cells)")
    parser.add_argument("--cell-budget", type=float, default=4.0, help="seconds of timed runs per candidate and cell")
    parser.add_argument("--max-call-seconds", type=float, default=3.0, help="skip larger M once a call takes this long")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall time, or the calling thread's CPU time (only with --threads 1; robust on a loaded machine)",
    )
    parser.add_argument("--breakdown", action="store_true", help="time each step of one layer (see the docstring)")
    parser.add_argument("--dtypes", nargs="+", choices=list(_breakdown.DTYPES), default=list(_breakdown.DTYPES))
    parser.add_argument("--outlier-dims", type=int, default=OUTLIER_DIMS, help="--breakdown: emergent outlier dims")
    parser.add_argument(
        "--kernels", nargs="+", default=["choice"],
        help="--breakdown: the GEMMs to run, each forced (LLM_INT8_CPU_BACKEND); 'choice': as the machine measured",
    )  # fmt: skip
    args = smoke_arguments(parser, argv, shapes=["smollm2-qo"], tokens=[1], rounds=1, cell_budget=0.5, threads=1)
    if args.breakdown and not args.smoke:  # its own grid, where --shapes and --tokens are not given
        parser.set_defaults(shapes=list(_breakdown.SHAPES), tokens=list(_breakdown.TOKENS))
        args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.clock == "cpu" and torch.get_num_threads() != 1:
        parser.error("--clock cpu measures one thread: use it with --threads 1")
    warnings.filterwarnings("ignore", module="bitsandbytes")
    args.out.mkdir(parents=True, exist_ok=True)
    info = machine_info()
    info["llm_int8 admitted int8 GEMMs"] = ", ".join(admission.admitted_kernels())
    info["kernel choice"] = "measured" if cpu_choice.timing_enabled() else f"fixed ({admission.fixed_kernel()})"
    info["autotune cache"] = str(cpu_choice.cache_path())
    info["loadavg_1min_start"] = f"{__import__('os').getloadavg()[0]:.2f}"
    info["clock"] = f"{args.clock} ({'thread CPU time' if args.clock == 'cpu' else 'wall time'})"
    info["cpu_flags"] = cpu_flags()
    print("machine:", info, flush=True)
    command = "python benchmarks/bench_layers.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.breakdown:
        _breakdown.run(args, info, args.out, command.strip())
        return
    start = time.perf_counter()
    rows: list[dict] = []
    for name in args.shapes:
        K, N = SHAPES[name]
        print(f"{name}: {K} x {N}", flush=True)
        run_shape(name, K, N, args.tokens, args, rows)
    info["loadavg_1min_end"] = f"{__import__('os').getloadavg()[0]:.2f}"
    info["total_seconds"] = f"{time.perf_counter() - start:.0f}"
    write_csv(args.out / "layers.csv", rows)
    write_text(args.out / "layers.md", markdown(rows, info, command.strip()))
    plot(rows, args.out / "layers.png")
    print(f"wrote {args.out}/layers.csv, layers.md, layers.png in {info['total_seconds']} s", flush=True)


if __name__ == "__main__":
    main()
