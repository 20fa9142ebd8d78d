"""``bench_layers.py --breakdown``: where one Int8Linear call spends its time, step by step.

For each (in, out) shape, token count M and activation dtype (fp32, bf16), the same layer (library
defaults: zeropoint activations, α = 6, the GEMM the machine measured fastest for the shape and
token bucket) is timed whole and split into the steps ``ops/forward.py`` runs:

* ``quantize``: outlier dims ``O``, each row's range over the other columns, the codes;
* ``gemm``: the integer GEMM on those codes (the kernel ``ops/choice`` chose), with, for
  ``fbgemm_pairs``, its two parts: ``gemm_main`` (fbgemm's u8 x s8 kernel on the pair-bounded
  weight, ``quantized::linear_dynamic``) and ``gemm_fix`` (the sparse product that restores the
  pairs above the bound);
* ``epilogue``: zero-point correction and ``s_x ⊗ s_w``;
* ``outlier``: the float product over ``O``;
* ``bias_cast``: the bias and the cast to the activation dtype.

With the C++ kernels (``ops/kernels/native``, the default where they build) the steps are those of
``ops/forward._forward_cpu``: ``quantize`` writes the codes into the GEMM's buffer; ``gemm`` is
the GEMM alone (for ``fbgemm_pairs`` the main product: its sparse fix runs inside the epilogue);
``outlier`` forms ``X[:, O] (W_i8[:, O] s_w)^T`` (gather and BLAS call); ``epilogue`` is the one
pass that adds the fix, corrects the zero point, scales, adds the outlier product and the bias and
casts (so ``bias_cast`` is 0 there). Without them (``LLM_INT8_NATIVE=0``) the steps are the
PyTorch sequence (``epilogue`` then timed on a fresh copy of ``C``: the copy is timed alone and
subtracted; ``outlier`` accumulated into ``C`` with ``addmm_``).

Peers in the same run: ``nn.Linear`` in fp32 and in bf16, and the whole layer on its int8 path
(``layer``), the same with the C++ kernels forced off (``layer_fallback``: the PyTorch sequence, the
code before issue 20 step for step), and with its defaults (``layer_default``: the weight-only
kernel up to the measured crossover). Every candidate is timed in interleaved rounds after a
warm-up; medians. The steps are
called as the op calls them, on the same tensors, so ``layer`` minus their sum is what the op
adds around them (argument checks, Python, allocation).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
from _common import markdown_table, median, time_interleaved, write_csv, write_text
from torch import nn

from llm_int8 import Int8Linear
from llm_int8.ops import mm
from llm_int8.ops.choice import cpu as cpu_choice
from llm_int8.ops.kernels import bf16, codes_gemm, cpu_gemm, epilogue, native
from llm_int8.ops.kernels.quantize import quantize_activations_zeropoint, quantize_into

SHAPES = {  # name: (in_features K, out_features N)
    "smollm2-qo": (576, 576),
    "smollm2-up": (576, 1536),
    "smollm2-down": (1536, 576),
    "llama7b-qkv": (4096, 4096),
}
TOKENS = (1, 16, 128, 512)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
STEPS = ("quantize", "gemm", "epilogue", "outlier", "bias_cast")
PARTS = ("gemm_main", "gemm_fix")
PEERS = ("fp32_linear", "bf16_linear", "layer", "layer_fallback", "layer_default")


def _layer_state(layer: Int8Linear, M: int) -> tuple[str, object]:
    """The GEMM the op runs for M tokens and its packed layout (built as the op builds it)."""
    W_i8 = layer._buffers["weight_int8"]  # not layer.weight_int8: reading that marks the weight as exposed
    kernel = cpu_choice.gemm_kernel(W_i8.shape[0], W_i8.shape[1], M)
    packed = layer._packed_weight.get(W_i8)
    return kernel, packed


def _step_fns(layer: Int8Linear, X: torch.Tensor) -> dict:
    """The op's steps on ``X``, each a callable; what the next step reads is computed once here."""
    ops = native.ops()
    return _sequence_steps(layer, X) if ops is None else _fused_steps(layer, X, ops)


def _fused_steps(layer: Int8Linear, X: torch.Tensor, ops) -> dict:
    """``_forward_cpu``'s steps: codes into the GEMM's buffer, the GEMM, the outlier product, one epilogue pass."""
    W_i8, s_w, bias = layer._buffers["weight_int8"], layer.weight_scale, layer.bias
    M, K = X.shape
    kernel, packed = _layer_state(layer, M)
    row_sums = layer._row_sums.get(W_i8)
    layout = mm._cpu_weight(W_i8, packed, kernel) if kernel in cpu_gemm.KERNELS else None
    pairs = codes_gemm.fused_pairs(layout)
    A = codes_gemm.codes_buffer(layout.kernel if layout else kernel, M, K, pairs)
    s_x, zp, idx = quantize_into(X, layer.threshold, None, "zeropoint", A)

    def gemm():
        if pairs:
            return codes_gemm.pairs_main_product(A, layout)
        if kernel == cpu_gemm.INT_MM:  # its int32 goes to the epilogue as it is, as the op hands it
            return cpu_gemm.int_mm(A, W_i8)
        return cpu_gemm.int8_mm_float(A, W_i8, layout) if layout else mm.int8_mm_float(A, W_i8, packed=packed)

    def outlier():
        X_O, W_O = epilogue.outlier_operands(X, idx, W_i8, s_w, packed)
        return torch.mm(X_O, W_O.T)

    C, sums = gemm(), [outlier()] if idx.numel() else []
    csr = (layout.fix.crow_indices(), layout.fix.col_indices(), layout.fix.values().float()) if pairs else (None,) * 3
    codes = A if pairs else None
    inline = X.dtype == torch.bfloat16 and bf16.has_native_bf16()  # the op's bf16 route: products formed in the pass
    if inline and idx.numel():
        X_O, W_O = epilogue.outlier_operands(X, idx, W_i8, s_w, packed)
        products, factors = [X_O.contiguous(), W_O.T.contiguous()], True
    else:
        products, factors = sums, False
    out = ops.epilogue(C, s_w, s_x, zp, row_sums, codes, *csr, products, factors, bias, X.dtype)
    fns = {
        "quantize": lambda: quantize_into(X, layer.threshold, None, "zeropoint", A),
        "gemm": gemm,
        "epilogue": lambda: ops.epilogue(C, s_w, s_x, zp, row_sums, codes, *csr, products, factors, bias, X.dtype),
        "bias_cast": lambda: None,  # inside the epilogue pass
    }
    if idx.numel() and not inline:
        fns["outlier"] = outlier
    # the bytes each pass reads and writes, and a plain copy of as many bytes (half read, half written)
    moved = {
        "quantize": _nbytes(X) + _nbytes(A),
        "epilogue": _nbytes(C) + _nbytes(out) + sum(_nbytes(t) for t in products) + (_nbytes(A) if pairs else 0),
    }
    for step, nbytes in moved.items():
        buffer = torch.empty(max(nbytes // 2, 1), dtype=torch.uint8)
        fns[f"clone_{step}"] = buffer.clone
        BYTES[step] = nbytes
    return fns, kernel


BYTES: dict[str, int] = {}
"""Bytes read plus written by each C++ pass of the last cell timed (``_fused_steps``)."""


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _sequence_steps(layer: Int8Linear, X: torch.Tensor) -> dict:
    """The PyTorch sequence's steps (the code before issue 20, and the fallback without the C++ kernels)."""
    W_i8, s_w, bias = layer._buffers["weight_int8"], layer.weight_scale, layer.bias
    M = X.shape[0]
    kernel, packed = _layer_state(layer, M)
    row_sums = layer._row_sums.get(W_i8)
    codes, s_x, zp, idx = quantize_activations_zeropoint(X, layer.threshold)
    C = mm.int8_mm_float(codes, W_i8, packed=packed)
    buf = torch.empty_like(C)
    fns = {
        "quantize": lambda: quantize_activations_zeropoint(X, layer.threshold),
        "gemm": lambda: mm.int8_mm_float(codes, W_i8, packed=packed),
        "epilogue": lambda: epilogue.denormalize(buf.copy_(C), s_x, s_w, zp, row_sums),
        "epilogue_copy": lambda: buf.copy_(C),
        "outlier": lambda: epilogue.add_outlier_product(buf, X, idx, W_i8, s_w, packed),
        "bias_cast": lambda: buf.add_(bias.float()).to(X.dtype),
    }
    if kernel == cpu_gemm.FBGEMM_PAIRS and isinstance(packed, cpu_gemm.CpuInt8Weight):
        layout = packed.for_kernel(kernel, W_i8)
        stacked = torch.zeros(M + 2, X.shape[1])  # (M + 2, K): codes and the two sentinel rows, as cpu_gemm builds it
        stacked[:M] = codes
        stacked[M, 0], stacked[M + 1, 0] = -128, 127
        fns["gemm_main"] = lambda: torch.ops.quantized.linear_dynamic(stacked, layout.packed, False)
        fns["gemm_fix"] = lambda: torch.sparse.mm(layout.fix, codes.T.to(layout.fix.dtype))
    return fns, kernel


def _modules(K: int, N: int) -> dict:
    generator = torch.Generator().manual_seed(0)
    linear = nn.Linear(K, N)
    with torch.no_grad():
        linear.weight.normal_(0, K**-0.5, generator=generator)
    bf16 = nn.Linear(K, N, dtype=torch.bfloat16)
    with torch.no_grad():
        bf16.weight.copy_(linear.weight)
        bf16.bias.copy_(linear.bias)
    return {
        "fp32_linear": linear,
        "bf16_linear": bf16,
        "layer": Int8Linear.from_linear(linear, threshold=6.0, weight_only_max_tokens=0),
        "layer_default": Int8Linear.from_linear(linear, threshold=6.0),
    }


def _activations(M: int, K: int, generator: torch.Generator, dims: torch.Tensor) -> torch.Tensor:
    """~N(0, 1) with emergent-outlier feature dims ``dims`` at magnitude 8-20 (random sign per token)."""
    X = torch.randn(M, K, generator=generator)  # (tokens, in_features)
    magnitude = 8 + 12 * torch.rand(dims.numel(), generator=generator)
    sign = torch.where(torch.rand(M, dims.numel(), generator=generator) < 0.5, -1.0, 1.0)
    X[:, dims] = sign * magnitude
    return X


def _cell(modules: dict, X: torch.Tensor, args) -> tuple[dict, str]:
    X_16 = X.to(torch.bfloat16)
    fns = {
        "fp32_linear": lambda: modules["fp32_linear"](X.float()),
        "bf16_linear": lambda: modules["bf16_linear"](X_16),
        "layer": lambda: modules["layer"](X),
        "layer_fallback": lambda: _without_native(modules["layer"], X),
        "layer_default": lambda: modules["layer_default"](X),
    }
    with torch.no_grad():
        for fn in fns.values():
            fn()  # kernel choices (timed once per shape and bucket, cached) and packing, before timing
        steps, kernel = _step_fns(modules["layer"], X)
        fns.update(steps)
        times = time_interleaved(fns, rounds=args.rounds, budget_s=args.cell_budget, clock=args.clock)
    ms = {k: median(v) * 1e3 for k, v in times.items()}
    for step in ("quantize", "epilogue"):  # GB/s of the pass and of a clone of the same bytes
        clone = ms.pop(f"clone_{step}", None)
        if clone is not None and BYTES.get(step):
            ms[f"{step}_GBps"] = BYTES[step] / (ms[step] * 1e6)
            ms[f"{step}_clone_GBps"] = BYTES[step] / (clone * 1e6)
    if "epilogue_copy" in ms:
        ms["epilogue"] = max(ms["epilogue"] - ms.pop("epilogue_copy"), 0.0)
    ms.setdefault("outlier", 0.0)
    return ms, kernel


def _forced_cell(modules: dict, X: torch.Tensor, args, kernel: str) -> tuple[dict, str]:
    """``_cell`` with ``kernel`` forced (``LLM_INT8_CPU_BACKEND``), or as the machine chose it (``choice``)."""
    if kernel == "choice":
        return _cell(modules, X, args)
    saved = os.environ.get(cpu_choice.BACKEND_ENV)
    os.environ[cpu_choice.BACKEND_ENV] = kernel
    try:
        return _cell(modules, X, args)
    finally:
        if saved is None:
            os.environ.pop(cpu_choice.BACKEND_ENV)
        else:
            os.environ[cpu_choice.BACKEND_ENV] = saved


def _without_native(layer: Int8Linear, X: torch.Tensor) -> torch.Tensor:
    """The layer with the C++ kernels off: the PyTorch sequence (``native.ops`` is what callers ask)."""
    saved = native.ops
    native.ops = lambda: None
    try:
        return layer(X)
    finally:
        native.ops = saved


def run(args, info: dict, out: Path, command: str) -> None:
    ops = native.ops()
    built = f"built in {native.build_directory()}" if ops else f"off ({native.reason()})"
    info["C++ kernels (ops/kernels/native)"] = built
    rows = []
    start = time.perf_counter()
    for shape in args.shapes:
        K, N = SHAPES[shape]
        modules = _modules(K, N)
        generator = torch.Generator().manual_seed(1)
        dims = torch.randperm(K, generator=generator)[: args.outlier_dims]
        for M in args.tokens:
            X32 = _activations(M, K, generator, dims)
            for dtype_name, forced in ((d, k) for d in args.dtypes for k in args.kernels):
                X = X32.to(DTYPES[dtype_name])
                ms, kernel = _forced_cell(modules, X, args, forced)
                rows += [
                    {"shape": shape, "in_features": K, "out_features": N, "tokens": M, "dtype": dtype_name,
                     "step": step, "median_ms": f"{t:.4f}", "unit": "GB/s" if step.endswith("GBps") else "ms",
                     "gemm_kernel": kernel}
                    for step, t in ms.items()
                ]  # fmt: skip
                print(f"  {shape} M={M} {dtype_name} ({kernel}): "
                      + "  ".join(f"{k}={v:.3f}" for k, v in ms.items()), flush=True)  # fmt: skip
    info["loadavg_1min_end"] = f"{os.getloadavg()[0]:.2f}"
    info["total_seconds"] = f"{time.perf_counter() - start:.0f}"
    write_csv(out / "breakdown.csv", rows)
    write_text(out / "breakdown.md", markdown(rows, info, command))
    plot(rows, out / "breakdown.png")
    print(f"wrote {out}/breakdown.csv, breakdown.md, breakdown.png in {info['total_seconds']} s", flush=True)


def _cells(rows: list[dict]) -> dict:
    cells: dict[tuple, dict] = {}
    for r in rows:
        key = (r["shape"], r["in_features"], r["out_features"], r["tokens"], r["dtype"], r["gemm_kernel"])
        cell = cells.setdefault(key, {"kernel": r["gemm_kernel"]})
        cell[r["step"]] = float(r["median_ms"])
    return cells


def _speed(c: dict, step: str) -> str:
    if f"{step}_GBps" not in c:
        return "-"
    pass_, clone = c[f"{step}_GBps"], c[f"{step}_clone_GBps"]
    return f"{pass_:.1f} ({clone:.1f}, {clone / pass_:.1f}x)"


def markdown(rows: list[dict], info: dict, command: str) -> str:
    header = ["shape (K x N)", "M", "X", "fp32 Linear", "bf16 Linear", "layer (int8 path)",
              "layer, PyTorch fallback", "layer (default)",
              "quantize", "GEMM (kernel)", "of which main / fix", "epilogue", "outlier", "bias + cast",
              "steps sum", "layer - steps", "GEMM / layer", "layer vs fp32", "layer vs bf16",
              "GEMM vs fp32", "quantize GB/s (clone GB/s, ratio)", "epilogue GB/s (clone GB/s, ratio)"]  # fmt: skip
    table = []
    for (shape, K, N, M, dtype, _), c in _cells(rows).items():
        total = sum(c.get(s, 0.0) for s in STEPS)
        parts = f"{c['gemm_main']:.3f} / {c['gemm_fix']:.3f}" if "gemm_main" in c else "-"
        table.append(
            [f"{shape} ({K}x{N})", str(M), dtype, *(f"{c[p]:.3f}" if p in c else "-" for p in PEERS),
             f"{c['quantize']:.3f}",
             f"{c['gemm']:.3f} ({c['kernel']})", parts, *(f"{c[s]:.3f}" for s in STEPS[2:]), f"{total:.3f}",
             f"{c['layer'] - total:.3f}", f"{c['gemm'] / c['layer']:.0%}", f"{c['fp32_linear'] / c['layer']:.2f}x",
             f"{c['bf16_linear'] / c['layer']:.2f}x", f"{c['fp32_linear'] / c['gemm']:.2f}x",
             *(_speed(c, step) for step in ("quantize", "epilogue"))]
        )  # fmt: skip
    machine = "\n".join(f"- {k}: {v}" for k, v in info.items())
    return (
        "# Int8Linear step breakdown (CPU)\n\n"
        f"Command: `{command}`\n\n{machine}\n\n"
        "Median ms per call. `layer (int8 path)`: Int8Linear with the weight-only path off; the steps are "
        "its steps on the same input; `layer - steps` is what the op adds around them. With the C++ kernels, "
        "`GEMM` is the GEMM alone (fbgemm_pairs: its main product; its sparse fix is inside `epilogue`), "
        "`outlier` forms the float product, and `epilogue` is the one pass that does the rest (fix, zero "
        "point, scales, outlier sum, bias, cast; `bias + cast` is 0). `layer, PyTorch fallback`: the same "
        "layer with the C++ kernels off (the op-by-op sequence, as before issue 20). `layer (default)`: "
        "the library default (weight-only kernel up to the measured crossover). Ratios `vs` are speedups of "
        "the int8-path layer (peer time / layer time); `GEMM vs fp32` is the GEMM step alone against fp32 "
        "`nn.Linear` (the ceiling of the int8 path). `GB/s`: the bytes a C++ pass reads and writes (quantize: X and "
        "the codes; epilogue: C, the output, the float products it reads, fbgemm_pairs' codes) per second, beside "
        "`clone()` of a buffer of half as many bytes (it reads and writes them: the same traffic); the ratio is "
        "how many times the pass is slower than that copy.\n\n" + markdown_table(header, table) + "\n"
    )


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = _cells(rows)
    shapes = list(dict.fromkeys(k[0] for k in cells))
    fig, axes = plt.subplots(1, len(shapes), figsize=(3.6 * len(shapes), 3.8), sharey=True, squeeze=False)
    colors = {"quantize": "C0", "gemm": "C1", "epilogue": "C2", "outlier": "C3", "bias_cast": "C4", "other": "C7"}
    for ax, shape in zip(axes[0], shapes, strict=True):
        keys = [k for k in cells if k[0] == shape]
        labels = [f"{k[3]}\n{k[4]}\n{k[5]}" for k in keys]
        bottom = [0.0] * len(keys)
        for step in (*STEPS, "other"):
            share = []
            for k in keys:
                c = cells[k]
                t = c["layer"] - sum(c[s] for s in STEPS) if step == "other" else c[step]
                share.append(max(t, 0.0) / c["fp32_linear"])
            ax.bar(labels, share, bottom=bottom, color=colors[step], label=step)
            bottom = [b + s for b, s in zip(bottom, share, strict=True)]
        ax.axhline(1.0, color="black", lw=0.8)
        ax.set_title(shape, fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
    axes[0][0].set_ylabel("time / fp32 nn.Linear time")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle("Int8Linear (int8 path) by step, relative to fp32 nn.Linear (line = 1)", fontsize=9)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    tmp.replace(path)
