"""Speed of the exact integer emulation used by the Table 1 methods (``llm-int8 eval``), per GEMM.

Compares the plain float64 product of integer codes with ``llm_int8.primitives.integer_matmul``
(float32 GEMMs over K slices that cannot round, summed in float64), on SmolLM2's layer shapes at
512 tokens, one thread, CPU time (medians of interleaved runs after a warm-up); checks both give
the same integers.

    python benchmarks/bench_emulation.py --out benchmarks/results

Writes ``emulation.{md,csv}`` there; prints the table.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from _common import markdown_table, median, run_info, time_interleaved, timing_arguments, write_csv, write_text  # noqa: E402

from llm_int8.primitives import integer_matmul  # noqa: E402

SHAPES = {"q/o_proj": (576, 576), "gate/up": (576, 1536), "down": (1536, 576)}  # name: (K, N)
CODES = {"absmax, |c| <= 127": 127, "zeropoint, |c| <= 254": 254}  # activation codes: largest magnitude


def _cell(M: int, K: int, N: int, hi: int, rounds: int, clock: str) -> dict[str, float]:
    """Median ms of both products of (M, K) codes in [-hi, hi] with (N, K) weight codes."""
    A = torch.randint(-hi, hi + 1, (M, K)).float()
    B = torch.randint(-127, 128, (N, K)).float()
    Ad, Bd = A.double(), B.double()
    if not torch.equal(integer_matmul(A, B), Ad @ Bd.T):
        raise AssertionError(f"integer_matmul differs from the float64 product at M={M}, K={K}, N={N}, |c| <= {hi}")
    times = time_interleaved({"float64": lambda: Ad @ Bd.T, "integer_matmul": lambda: integer_matmul(A, B)},
                             rounds=rounds, clock=clock)  # fmt: skip
    return {name: median(t) * 1e3 for name, t in times.items()}


def main(argv=None) -> None:
    args = timing_arguments(
        __doc__.split("\n")[0],
        rounds=5,
        argv=argv,
        smoke={"tokens": 16, "shapes": ["q/o_proj"]},
        **{
            "--tokens": {"type": int, "default": 512, "help": "rows M of the activation codes"},
            "--shapes": {"nargs": "+", "choices": list(SHAPES), "default": list(SHAPES)},
        },
    )
    torch.manual_seed(0)
    rows, table = [], []
    for name in args.shapes:
        K, N = SHAPES[name]
        for codes, hi in CODES.items():
            ms = _cell(args.tokens, K, N, hi, args.rounds, args.clock)
            speedup = ms["float64"] / ms["integer_matmul"]
            rows.append({"layer": name, "K": K, "N": N, "M": args.tokens, "codes": codes,
                         **{f"{k}_ms": f"{v:.3f}" for k, v in ms.items()}})  # fmt: skip
            table.append([f"{name} ({K}x{N})", codes, f"{ms['float64']:.1f}", f"{ms['integer_matmul']:.1f}",
                          f"{speedup:.2f}x"])  # fmt: skip
            print(" | ".join(table[-1]), flush=True)
    header = ["layer", "codes", "float64 (ms)", "integer_matmul (ms)", "speed-up"]
    command = "python benchmarks/bench_emulation.py " + " ".join(argv if argv is not None else sys.argv[1:])
    machine = "\n".join(f"- {k}: {v}" for k, v in run_info().items())
    text = (
        f"# Exact integer emulation: float64 against integer_matmul\n\nCommand: `{command.strip()}`\n\n{machine}\n\n"
        f"M = {args.tokens} rows; medians of {args.rounds} interleaved runs, clock {args.clock}.\n\n"
        + markdown_table(header, table)
        + "\n"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(args.out / "emulation.csv", rows)
    write_text(args.out / "emulation.md", text)
    print(text)


if __name__ == "__main__":
    main()
