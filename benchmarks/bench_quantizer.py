"""The activation quantizer (steps 1-2 of LLM.int8(), zeropoint codes), its implementations against each other.

    python benchmarks/bench_quantizer.py --out benchmarks/results/issue20 --threads 1 --clock cpu

Candidates, on the same X (~N(0, 1) with 6 outlier dims at 8-20), one thread, medians of interleaved runs:

* ``eager``: ``kernels/quantize.quantize_activations_zeropoint`` (PyTorch ops; float32 codes), the reference;
* ``cpp_f32`` / ``cpp_i8``: ``kernels/quantize.quantize_into`` with the C++ extension, codes written
  as float32 (what fbgemm reads) or int8 (what oneDNN's s8 kernel reads);
* ``inductor``: the same computation as one ``torch.compile`` function (Inductor's C++ codegen,
  ``dynamic=True``: one compilation for every M), int8 codes; the outlier indices are taken outside
  (a data-dependent size). Its compile cost is measured in fresh processes: cold (empty Inductor
  cache) and warm (the on-disk cache of the first);
* ``onednn_dynamic``: ``torch.quantize_per_tensor_dynamic`` (the dynamic quantizer of PyTorch's
  quantized engines): one scale for the whole tensor, no outlier dims, so not LLM.int8()'s codes;
  shown as the cost of the simplest dynamic quantization.

Each candidate's output is compared bit for bit with ``eager`` (codes, s_x, zp_x, outlier dims).
Writes ``quantizer.{md,csv}``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
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

from llm_int8.ops.kernels import native  # noqa: E402
from llm_int8.ops.kernels.quantize import quantize_activations_zeropoint, quantize_into  # noqa: E402
from llm_int8.primitives import INT8_MAX, zeropoint_params  # noqa: E402

SHAPES = ((1, 576), (16, 4096), (512, 576), (512, 1536), (512, 4096))  # (M, K)


def inductor_quantizer(X: torch.Tensor, threshold: float):
    """Steps 1-2 as one traced function: the same ops as ``quantize_activations_zeropoint``, int8 codes."""
    col_absmax = torch.maximum(X.amax(dim=0), X.amin(dim=0).neg()).float()  # (K,)
    outlier = ~(col_absmax < threshold)
    X_regular = torch.where(outlier, 0, X)  # (M, K)
    nd, zp = zeropoint_params(X_regular.amax(dim=1).float(), X_regular.amin(dim=1).float())
    codes = (X_regular * nd[:, None]).add(zp[:, None]).round().clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
    return codes, 1.0 / nd, zp, outlier


def _activations(M: int, K: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(M + K)
    X = torch.randn(M, K, generator=gen)
    X[:, torch.randperm(K, generator=gen)[:6]] = 8 + 12 * torch.rand(6, generator=gen)
    return X


def _compile_seconds(cache_dir: str) -> float:
    """Seconds (process CPU) of the first call of the compiled quantizer in a fresh process."""
    here = str(Path(__file__).resolve().parent)
    code = (
        f"import time, torch, sys; sys.path.insert(0, {here!r}); torch.set_num_threads(1)\n"
        "from bench_quantizer import inductor_quantizer\n"
        "f = torch.compile(inductor_quantizer, dynamic=True)\n"
        "X = torch.randn(64, 576); start = time.process_time(); f(X, 6.0); print(time.process_time() - start)\n"
    )
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache_dir}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def _candidates(X: torch.Tensor, compiled) -> dict:
    M, K = X.shape
    f32, i8 = torch.empty(M, K), torch.empty(M, K, dtype=torch.int8)
    fns = {
        "eager": lambda: quantize_activations_zeropoint(X, 6.0),
        "inductor": lambda: compiled(X, 6.0),
        "onednn_dynamic": lambda: torch.quantize_per_tensor_dynamic(X.float(), torch.quint8, False),
    }
    if native.ops() is not None:
        fns["cpp_f32"] = lambda: quantize_into(X, 6.0, None, "zeropoint", f32)
        fns["cpp_i8"] = lambda: quantize_into(X, 6.0, None, "zeropoint", i8)
    return fns


def _identical(X: torch.Tensor, compiled) -> dict:
    codes, s_x, zp, idx = quantize_activations_zeropoint(X, 6.0)
    c_i, s_i, z_i, o_i = compiled(X, 6.0)
    same = {"inductor": bool(torch.equal(c_i.float(), codes) and torch.equal(s_i, s_x) and torch.equal(z_i, zp))}
    same["inductor"] &= bool(torch.equal(o_i.nonzero().squeeze(1), idx))
    if native.ops() is not None:
        buf = torch.empty(X.shape, dtype=torch.int8)
        s_c, z_c, i_c = quantize_into(X, 6.0, None, "zeropoint", buf)
        same["cpp_i8"] = same["cpp_f32"] = bool(
            torch.equal(buf.float(), codes) and torch.equal(s_c, s_x) and torch.equal(z_c, zp) and torch.equal(i_c, idx)
        )
    same["onednn_dynamic"] = False  # one scale per tensor: other codes by design
    return same


def main(argv=None) -> None:
    args = timing_arguments(
        __doc__.split("\n")[0],
        rounds=15,
        argv=argv,
        smoke={"shapes": [min(SHAPES, key=lambda s: s[0] * s[1])]},
        **{"--shapes": {"nargs": "+", "type": sizes(2), "default": list(SHAPES), "help": "activations MxK: 512x576"}},
    )
    info = run_info()
    with tempfile.TemporaryDirectory() as cache:
        info["inductor compile, cold cache (s, process CPU)"] = f"{_compile_seconds(cache):.1f}"
        info["inductor compile, warm on-disk cache (s, process CPU)"] = f"{_compile_seconds(cache):.1f}"
    compiled = torch.compile(inductor_quantizer, dynamic=True)
    rows = []
    for M, K in args.shapes:
        for dtype in (torch.float32, torch.bfloat16):
            X = _activations(M, K).to(dtype)
            fns = _candidates(X, compiled)
            same = _identical(X, compiled)
            times = time_interleaved(fns, rounds=args.rounds, clock=args.clock)
            for name, t in times.items():
                rows.append({"M": M, "K": K, "dtype": str(dtype).removeprefix("torch."), "candidate": name,
                             "median_ms": f"{median(t) * 1e3:.4f}", "bit_identical": same.get(name, True)})  # fmt: skip
            print(M, K, dtype, {k: f"{median(t) * 1e3:.3f}" for k, t in times.items()}, same, flush=True)
    info["loadavg_1min_end"] = f"{os.getloadavg()[0]:.2f}"
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(args.out / "quantizer.csv", rows)
    write_text(args.out / "quantizer.md", _markdown(rows, info, argv))
    print(json.dumps(info, indent=1))


def _markdown(rows: list[dict], info: dict, argv) -> str:
    names = list(dict.fromkeys(r["candidate"] for r in rows))
    cells: dict[tuple, dict] = {}
    for r in rows:
        cells.setdefault((r["M"], r["K"], r["dtype"]), {})[r["candidate"]] = r
    header = ["M x K", "X", *(f"{n} ms" for n in names), *(f"eager / {n}" for n in names if n != "eager")]
    table = []
    for (M, K, dtype), c in cells.items():
        eager = float(c["eager"]["median_ms"])
        ms = [f"{float(c[n]['median_ms']):.3f}{'' if c[n]['bit_identical'] else ' (≠)'}" for n in names]
        ratios = [f"{eager / float(c[n]['median_ms']):.1f}x" for n in names if n != "eager"]
        table.append([f"{M} x {K}", dtype, *ms, *ratios])
    command = "python benchmarks/bench_quantizer.py " + " ".join(argv if argv is not None else sys.argv[1:])
    machine = "\n".join(f"- {k}: {v}" for k, v in info.items())
    return (
        f"# Activation quantizer implementations\n\nCommand: `{command.strip()}`\n\n{machine}\n\n"
        "Median ms per call; (≠): output not bit-identical to `eager` (codes, s_x, zp_x, outlier dims).\n\n"
        + markdown_table(header, table)
        + "\n"
    )


if __name__ == "__main__":
    main()
