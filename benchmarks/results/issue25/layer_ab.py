"""Issue 25's table, one tree at a time: Int8Linear (int8 path) against nn.Linear and raw torch._int_mm.

    PYTHONPATH=<tree>/src python benchmarks/results/issue25/layer_ab.py LABEL [THREADS]

SmolLM2 shapes, M = 512, outlier columns (6 dims at 8-20), fp32 and bf16 activations; the three
candidates interleaved per round (thread CPU time with one thread, wall time with more), medians.
Run once per tree (before and after the change) on the same machine: it prints one Markdown row a cell.
"""

import statistics
import sys
import time

import torch

import llm_int8
from llm_int8 import Int8Linear

label = sys.argv[1]
torch.set_num_threads(int(sys.argv[2]) if len(sys.argv) > 2 else 1)
clock = time.thread_time if torch.get_num_threads() == 1 else time.perf_counter
flags = next((l.split(":", 1)[1].split() for l in open("/proc/cpuinfo") if l.startswith("flags")), [])
simd = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8") if f in flags]
print(f"# {label}: llm_int8 from {llm_int8.__file__}, torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
      f"flags {' '.join(simd)}")


def medians(fns: dict, rounds: int = 15) -> dict:
    for fn in fns.values():
        fn()
    times = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            start = clock()
            fn()
            times[k].append(clock() - start)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


print("| tree | layer (K x N) | X | Int8Linear ms | nn.Linear ms | raw _int_mm ms | Int8Linear vs nn.Linear |"
      " Int8Linear / raw |")
print("|---|---|---|---|---|---|---|---|")
for K, N in [(576, 576), (576, 1536), (1536, 576), (576, 192)]:
    gen = torch.Generator().manual_seed(K * N)
    linear = torch.nn.Linear(K, N)
    with torch.no_grad():
        linear.weight.normal_(0, K**-0.5, generator=gen)
    q = Int8Linear.from_linear(linear, weight_only_max_tokens=0)
    X = torch.randn(512, K, generator=gen)
    dims = torch.randperm(K, generator=gen)[:6]
    X[:, dims] = 8 + 12 * torch.rand(512, 6, generator=gen)
    A = torch.randint(-127, 128, (512, K), dtype=torch.int8, generator=gen)
    W_i8 = q._buffers["weight_int8"]  # not q.weight_int8: reading that from outside drops the layer's packed copies
    for dtype in (torch.bfloat16, torch.float32):
        Xd, lin, layer = X.to(dtype), torch.nn.Linear(K, N).to(dtype), q.to(dtype)
        with torch.no_grad():
            ms = medians({"int8": lambda f=layer, x=Xd: f(x), "linear": lambda f=lin, x=Xd: f(x),
                          "raw": lambda a=A, w=W_i8: torch._int_mm(a, w.T)})  # fmt: skip
        name = str(dtype).removeprefix("torch.")
        print(f"| {label} | {K} x {N} | {name} | {ms['int8']:.3f} | {ms['linear']:.3f} | {ms['raw']:.3f} | "
              f"{ms['linear'] / ms['int8']:.2f}x | {ms['int8'] / ms['raw']:.1f}x |", flush=True)
