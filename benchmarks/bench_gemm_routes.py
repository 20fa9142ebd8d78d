"""What ``ops/choice`` would decide if it timed ``FBGEMM_PAIRS`` as the op now runs it (issue 20).

    python benchmarks/bench_gemm_routes.py --out benchmarks/results/issue20 --threads 1 --clock cpu

``ops/choice/cpu.py`` ranks the admitted CPU GEMMs by timing ``cpu_gemm.int8_mm_float`` on a probe
weight (row-wise codes of a Gaussian weight) and random codes, per token bucket. For
``FBGEMM_PAIRS`` that call adds the sparse fix with torch's CSR product; the op (``_forward_cpu``)
adds it inside the C++ epilogue instead. This script times, on the same probe weight and codes,
interleaved, medians: every admitted kernel through ``cpu_gemm.int8_mm_float`` (what the choice
times today) and ``FBGEMM_PAIRS`` through ``codes_gemm.pairs_product_float`` (the same product, the
same bits, the fix in the C++ pass: what the choice would time with the one-line change described in
BENCHMARKS.md section (h)). Writes ``gemm_routes.{md,csv}``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_flags, machine_info, markdown_table, median, time_interleaved, write_csv, write_text  # noqa: E402

from llm_int8.ops.choice import cpu as cpu_choice  # noqa: E402
from llm_int8.ops.kernels import codes_gemm, cpu_gemm, native  # noqa: E402
from llm_int8.primitives import rowwise_quantize  # noqa: E402

SHAPES = ((576, 576), (576, 1536), (1536, 576), (576, 192), (4096, 4096))  # (K, N)
BUCKETS = (1, 16, 128)


def _cell(K: int, N: int, M: int, rounds: int, clock: str) -> dict[str, float]:
    gen = torch.Generator().manual_seed(N * 131 + K)
    W_i8 = rowwise_quantize(torch.randn(N, K, generator=gen))[0]  # as the choice's probe weight
    A = torch.randint(-127, 128, (M, K), generator=gen).float()  # (M, K) codes, as the choice times them
    fns = {}
    for kernel in cpu_choice.admitted_kernels():
        if kernel in cpu_gemm.KERNELS:
            layout = cpu_gemm.prepack(W_i8, kernel)
            fns[kernel] = lambda layout=layout: cpu_gemm.int8_mm_float(A, W_i8, layout)
            if kernel == cpu_gemm.FBGEMM_PAIRS:
                assert torch.equal(codes_gemm.pairs_product_float(A, W_i8, layout), fns[kernel]())
                fns["fbgemm_pairs (fix in C++)"] = lambda layout=layout: codes_gemm.pairs_product_float(A, W_i8, layout)
    times = time_interleaved(fns, rounds=rounds, clock=clock)
    return {k: median(v) * 1e3 for k, v in times.items()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="cpu")
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    info = {**machine_info(), "cpu_flags": cpu_flags(), "C++ kernels": "built" if native.ops() else native.reason()}
    rows, table = [], []
    for K, N in SHAPES:
        for M in BUCKETS:
            ms = _cell(K, N, M, args.rounds, args.clock)
            today = min((k for k in ms if "C++" not in k), key=ms.get)
            with_fix = min(ms, key=ms.get)
            rows += [{"K": K, "N": N, "M": M, "route": k, "median_ms": f"{v:.4f}"} for k, v in ms.items()]
            cells = " ".join(f"{k}={v:.3f}" for k, v in ms.items())
            print(f"{K}x{N} M={M}: {cells}", flush=True)
            table.append([f"{K} x {N}", str(M), *(f"{ms[k]:.3f}" for k in ms), today, with_fix])
    header = ["K x N", "M", *(f"{k} ms" for k in ms), "choice today", "choice timing the C++ fix"]
    info["loadavg_1min_end"] = f"{os.getloadavg()[0]:.2f}"
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(args.out / "gemm_routes.csv", rows)
    command = "python benchmarks/bench_gemm_routes.py " + " ".join(argv if argv is not None else sys.argv[1:])
    machine = "\n".join(f"- {k}: {v}" for k, v in info.items())
    write_text(
        args.out / "gemm_routes.md",
        f"# CPU GEMM routes as ops/choice times them\n\nCommand: `{command.strip()}`\n\n{machine}\n\n"
        "Median ms per call on the choice's probe weight and random codes; `choice today`: the fastest of the "
        "routes the choice times now; `choice timing the C++ fix`: the fastest with `fbgemm_pairs` timed as the "
        "op runs it.\n\n" + markdown_table(header, table) + "\n",
    )


if __name__ == "__main__":
    main()
