"""``FBGEMM_PAIRS`` timed two ways beside the other admitted CPU GEMMs: how ``ops/choice`` ranks them (issue 20).

    python benchmarks/bench_gemm_routes.py --out benchmarks/results/issue20 --threads 1 --clock cpu

``ops/choice`` ranks the admitted CPU GEMMs by timing them on a probe weight (row-wise codes of a
Gaussian weight) and random codes, per token bucket. For ``FBGEMM_PAIRS``, ``cpu_gemm.int8_mm_float``
adds the sparse fix with torch's CSR product; the op (``_forward_cpu``) adds it inside the C++
epilogue instead, and since the merge of issues 18 and 20 the choice times it that way too
(``choice/probe.py``: ``codes_gemm.pairs_product_float``, the same product and bits). This script
times, on the same probe weight and codes, interleaved, medians: every admitted kernel through
``cpu_gemm.int8_mm_float`` and ``FBGEMM_PAIRS`` through ``codes_gemm.pairs_product_float``
(BENCHMARKS.md section (i)). Writes ``gemm_routes.{md,csv}``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    markdown_table,
    median,
    run_info,
    sizes,
    time_interleaved,
    timing_arguments,
    write_csv,
    write_text,
)

from llm_int8.ops.choice import admission  # noqa: E402
from llm_int8.ops.kernels import codes_gemm, cpu_gemm  # noqa: E402
from llm_int8.primitives import rowwise_quantize  # noqa: E402

SHAPES = ((576, 576), (576, 1536), (1536, 576), (576, 192), (4096, 4096))  # (K, N)
BUCKETS = (1, 16, 128)


def _cell(K: int, N: int, M: int, rounds: int, clock: str) -> dict[str, float]:
    gen = torch.Generator().manual_seed(N * 131 + K)
    W_i8 = rowwise_quantize(torch.randn(N, K, generator=gen))[0]  # as the choice's probe weight
    A = torch.randint(-127, 128, (M, K), generator=gen).float()  # (M, K) codes, as the choice times them
    fns = {}
    for kernel in admission.admitted_kernels():
        if kernel in cpu_gemm.KERNELS:
            layout = cpu_gemm.prepack(W_i8, kernel)
            fns[kernel] = lambda layout=layout: cpu_gemm.int8_mm_float(A, W_i8, layout)
            if kernel == cpu_gemm.FBGEMM_PAIRS:
                assert torch.equal(codes_gemm.pairs_product_float(A, W_i8, layout), fns[kernel]())
                fns["fbgemm_pairs (fix in C++)"] = lambda layout=layout: codes_gemm.pairs_product_float(A, W_i8, layout)
    times = time_interleaved(fns, rounds=rounds, clock=clock)
    return {k: median(v) * 1e3 for k, v in times.items()}


def main(argv=None) -> None:
    args = timing_arguments(
        __doc__.split("\n")[0],
        rounds=9,
        argv=argv,
        smoke={"shapes": [min(SHAPES, key=lambda s: s[0] * s[1])], "tokens": [BUCKETS[0]]},
        **{
            "--shapes": {"nargs": "+", "type": sizes(2), "default": list(SHAPES), "help": "weights KxN: 576x1536"},
            "--tokens": {"nargs": "+", "type": int, "default": list(BUCKETS), "help": "token buckets M"},
        },
    )
    info = run_info()
    rows, table = [], []
    for K, N in args.shapes:
        for M in args.tokens:
            ms = _cell(K, N, M, args.rounds, args.clock)
            today = min((k for k in ms if "C++" not in k), key=ms.get)
            with_fix = min(ms, key=ms.get)
            rows += [{"K": K, "N": N, "M": M, "route": k, "median_ms": f"{v:.4f}"} for k, v in ms.items()]
            cells = " ".join(f"{k}={v:.3f}" for k, v in ms.items())
            print(f"{K}x{N} M={M}: {cells}", flush=True)
            table.append([f"{K} x {N}", str(M), *(f"{ms[k]:.3f}" for k in ms), today, with_fix])
    header = ["K x N", "M", *(f"{k} ms" for k in ms), "fastest, fix in torch", "fastest, fix in C++"]
    info["loadavg_1min_end"] = f"{os.getloadavg()[0]:.2f}"
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(args.out / "gemm_routes.csv", rows)
    command = "python benchmarks/bench_gemm_routes.py " + " ".join(argv if argv is not None else sys.argv[1:])
    machine = "\n".join(f"- {k}: {v}" for k, v in info.items())
    write_text(
        args.out / "gemm_routes.md",
        f"# CPU GEMM routes as ops/choice times them\n\nCommand: `{command.strip()}`\n\n{machine}\n\n"
        "Median ms per call on the choice's probe weight and random codes; `fastest, fix in torch`: the fastest "
        "with `fbgemm_pairs`' fix as torch's CSR product (what the choice timed before issues 18 and 20 met); "
        "`fastest, fix in C++`: with `fbgemm_pairs` timed as the op runs it (what the choice times now).\n\n"
        + markdown_table(header, table)
        + "\n",
    )


if __name__ == "__main__":
    main()
