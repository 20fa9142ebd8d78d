"""Speed of the exact integer emulation used by the Table 1 methods (``llm-int8 eval``), per GEMM.

Compares the plain float64 product of integer codes with ``llm_int8.primitives.integer_matmul``
(float32 GEMMs over K slices that cannot round, summed in float64), on SmolLM2's layer shapes at
512 tokens, one thread, CPU time; checks both give the same integers.

    python benchmarks/bench_emulation.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from llm_int8.primitives import integer_matmul  # noqa: E402

SHAPES = {"q/o_proj (576x576)": (576, 576), "gate/up (576->1536)": (576, 1536), "down (1536->576)": (1536, 576)}


def ms(fn, repeats: int = 5) -> float:
    fn()
    start = time.thread_time()
    for _ in range(repeats):
        fn()
    return (time.thread_time() - start) / repeats * 1e3


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    print("| layer | codes | float64 (ms) | integer_matmul (ms) | speed-up |\n|---|---|---|---|---|")
    for name, (k, n) in SHAPES.items():
        for codes, hi in (("absmax, |c| <= 127", 127), ("zeropoint, |c| <= 254", 254)):
            A = torch.randint(-hi, hi + 1, (512, k)).float()
            B = torch.randint(-127, 128, (n, k)).float()
            Ad, Bd = A.double(), B.double()
            assert torch.equal(integer_matmul(A, B), Ad @ Bd.T)
            t64, t32 = ms(lambda: Ad @ Bd.T), ms(lambda: integer_matmul(A, B))  # noqa: B023
            print(f"| {name} | {codes} | {t64:.1f} | {t32:.1f} | {t64 / t32:.2f}x |")


if __name__ == "__main__":
    main()
