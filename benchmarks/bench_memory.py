"""Resident memory of the linear layers while they run: int8 against fp32, bf16 and bitsandbytes.

The stored size of an int8 layer (``Int8Linear.memory_bytes``, ``linear_memory``: 1 byte per
weight plus scales) is not all it holds at run time: on CPU the int8 x int8 kernel (fbgemm) keeps
a reordered copy of the weight once a call with more than a few tokens has run. This script shows
what each kind of layer holds, as the growth of the resident set (``VmRSS``, after ``malloc_trim``)
of a fresh subprocess per kind, at three points: after building the layers (their float source
freed), after decode-sized calls (1 token), and after prefill-sized calls (64 tokens).

    python benchmarks/bench_memory.py                      # 8 layers of 4096 x 4096
    python benchmarks/bench_memory.py --layers 4 --in-features 2048 --out-features 5632

Writes ``memory.{csv,md}`` into ``--out`` (default benchmarks/results). Kinds: ``fp32`` and ``bf16``
``nn.Linear``, ``int8`` (``Int8Linear``, this library's default settings), ``bnb`` (bitsandbytes
``Linear8bitLt``, if installed). The children get the caller's ``LLM_INT8_*`` settings, ``HOME``,
``XDG_CACHE_HOME`` and ``CXX``, nothing else.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from _common import machine_info, markdown_table, smoke_arguments, write_csv, write_text

RESULTS = Path(__file__).resolve().parent / "results"
KINDS = ("fp32", "bf16", "int8", "bnb")
_BUILD_ENV = ("HOME", "XDG_CACHE_HOME", "CXX")

_CHILD = r"""
import ctypes, gc, json, sys
import torch
from torch import nn

kind, layers, k, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
libc = ctypes.CDLL("libc.so.6")

def rss_mib():
    gc.collect()
    libc.malloc_trim(0)
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024

torch.set_grad_enabled(False)
torch.manual_seed(0)
dtype = torch.bfloat16 if kind == "bf16" else torch.float32
x1, x64 = torch.randn(1, 1, k, dtype=dtype), torch.randn(1, 64, k, dtype=dtype)
if kind == "int8":
    from llm_int8 import Int8Linear
elif kind == "bnb":
    import bitsandbytes as bnb
base = rss_mib()
mods = []
for _ in range(layers):
    lin = nn.Linear(k, n, bias=False)
    if kind == "int8":
        mods.append(Int8Linear.from_linear(lin))
    elif kind == "bnb":
        q = bnb.nn.Linear8bitLt(k, n, bias=False, has_fp16_weights=False, threshold=6.0)
        q.load_state_dict(lin.state_dict())
        mods.append(q.to("cpu"))
    else:
        mods.append(lin.to(dtype))
    del lin
built = rss_mib() - base
for m in mods:
    m(x1)
decode = rss_mib() - base
for m in mods:
    m(x64)
prefill = rss_mib() - base
print(json.dumps({"built": built, "decode": decode, "prefill": prefill}))
"""


def kernel_costs(k: int, n: int, m: int = 512) -> dict[str, float]:
    """Why the packed copy is kept (ms, one thread's CPU time): building it for one (n, k) weight,
    the packed int8 GEMM at ``m`` tokens, and ``torch._int_mm`` on the plain weight (no copy)."""
    import time

    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from llm_int8.ops import int8_mm, prepack_int8_weight
    from llm_int8.ops.choice import admission

    torch.set_num_threads(1)
    W = torch.randint(-127, 128, (n, k), dtype=torch.int8)
    A = torch.randint(-127, 128, (m, k), dtype=torch.int8)

    def ms(fn, repeats: int) -> float:
        fn()
        start = time.thread_time()
        for _ in range(repeats):
            fn()
        return (time.thread_time() - start) / repeats * 1e3

    out = {"prepack_ms": ms(lambda: prepack_int8_weight(W), 3)}
    packed = prepack_int8_weight(W)
    out[f"packed_gemm_m{m}_ms"] = ms(lambda: int8_mm(A, W, packed=packed), 3)
    out[f"int_mm_plain_m{m}_ms"] = ms(lambda: torch._int_mm(A, W.T), 1)
    out["backend"] = admission.fixed_kernel()
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--in-features", type=int, default=4096)
    p.add_argument("--out-features", type=int, default=4096)
    p.add_argument("--out", type=Path, default=RESULTS, help="folder of memory.{csv,md}")
    args = smoke_arguments(p, argv, layers=1, in_features=512, out_features=512)
    weights_mib = args.layers * args.in_features * args.out_features / 2**20
    src = str(Path(__file__).resolve().parents[1] / "src")
    rows = []
    for kind in KINDS:
        cmd = [sys.executable, "-c", _CHILD, kind, str(args.layers), str(args.in_features), str(args.out_features)]
        env = {"PYTHONPATH": src, "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
        # the library's settings, and where its C++ kernels are built (else the child may build its own copy)
        env.update({k: v for k, v in os.environ.items() if k.startswith("LLM_INT8_") or k in _BUILD_ENV})
        done = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            print(f"{kind}: skipped ({done.stderr.strip().splitlines()[-1] if done.stderr.strip() else 'failed'})")
            continue
        r = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append({"kind": kind, **{key: round(v, 1) for key, v in r.items()}})
        print(f"{kind}: {rows[-1]}", flush=True)
    header = ["layers", "built (MiB)", "after 1-token calls", "after 64-token calls", "bytes per weight (after 64)"]
    table = markdown_table(
        header,
        [
            [
                r["kind"],
                f"{r['built']:.1f}",
                f"{r['decode']:.1f}",
                f"{r['prefill']:.1f}",
                f"{r['prefill'] / weights_mib:.2f}",
            ]
            for r in rows
        ],
    )
    costs = kernel_costs(args.in_features, args.out_features)
    print(f"kernel costs: {costs}", flush=True)
    shape = f"{args.layers} layers of {args.in_features} x {args.out_features} ({weights_mib:.0f} Mi weights)"
    info = machine_info()
    cost_line = ", ".join(f"{key} {v:.1f}" if isinstance(v, float) else f"{key} {v}" for key, v in costs.items())
    text = (
        f"# Resident memory of linear layers: {shape}\n\nRSS growth of a fresh process (MiB).\n\n{table}\n\n"
        f"Kernel costs for one {args.out_features} x {args.in_features} weight (one thread): {cost_line}\n\n"
        f"```\n{json.dumps(info, indent=1)}\n```\n"
    )
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(args.out / "memory.csv", rows)
    write_text(args.out / "memory.md", text)


if __name__ == "__main__":
    main()
