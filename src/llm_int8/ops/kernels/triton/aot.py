"""Compile the Triton kernels for NVIDIA GPUs on a machine without one, and report what the compiler made.

    TRITON_INTERPRET=0 python -m llm_int8.ops.kernels.triton.aot --arch 80 90 [--quick] [--json PATH]

Triton compiles to PTX and, with the ``ptxas`` its wheel ships, to a cubin for any target without a GPU
present. That checks every kernel variant the library launches for compile errors on Ampere (sm_80) and
Hopper (sm_90a), and reads what would otherwise cost device time: registers, stack and local memory
per thread (spills; ``cuobjdump -res-usage``), shared memory per block against the chip's limit,
whether the GEMMs use int8 tensor-core instructions (``mma ... s8`` on sm_80, ``wgmma ... s8`` on
sm_90a), and that the quantization kernel, launched with
``enable_fp_fusion=False``, contains no ``fma`` (which would round ``x * nd + zp`` once, not twice as the
CPU quantizer does) and divides with ``div.rn`` (correctly rounded). Needs the kernels bound to the
compiler, so ``TRITON_INTERPRET`` must be unset or 0.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

__all__ = ["SHARED_LIMIT", "compile_report"]

SHARED_LIMIT = {80: 166912, 90: 232448}
"""Bytes of shared memory one block may opt in to: A100 (163 KB) and H100/H200 (227 KB)."""


def _variants(quick: bool):
    """(name, jit function, signature, constexprs, options) for what ``ops/kernels/triton`` launches."""
    from . import decode, gemm, quantize

    col_sig = {"X_ptr": "*fp16", "static_ptr": "*i8", "outlier_ptr": "*i8", "float_ptr": "*i8", "M": "i32",
               "K": "i32", "stride_xm": "i32", "threshold": "fp32"}  # fmt: skip
    col_c = {"USE_THRESHOLD": True, "HAS_STATIC": False, "BLOCK_M": quantize._COL_BLOCK[0],
             "BLOCK_K": quantize._COL_BLOCK[1]}  # fmt: skip
    yield "column_outliers fp16", quantize._column_outliers_kernel, col_sig, col_c, {}
    row_sig = {"X_ptr": "*fp16", "float_ptr": "*i8", "idx_ptr": "*i64", "codes_ptr": "*i8", "sx_ptr": "*fp32",
               "zp_ptr": "*fp32", "xo_ptr": "*fp16", "K": "i32", "n_O": "i32", "stride_xm": "i32",
               "stride_cm": "i32", "stride_om": "i32"}  # fmt: skip
    for zeropoint in (False, True):
        row_c = {"ZEROPOINT": zeropoint, "BLOCK_K": quantize._ROW_BLOCK_K, "BLOCK_O": quantize._BLOCK_O}
        name = f"row_quantize {'zeropoint' if zeropoint else 'absmax'} fp16"
        yield name, quantize._row_quantize_kernel, row_sig, row_c, {"enable_fp_fusion": False}
    gemm_sig = {"A_ptr": "*i8", "B_ptr": "*i8", "C_ptr": "*fp16", "sx_ptr": "*fp32", "sw_ptr": "*fp32",
                "zp_ptr": "*fp32", "rw_ptr": "*fp32", "bias_ptr": "*fp16", "add_ptr": "*fp32", "xo_ptr": "*fp16",
                "idx_ptr": "*i64", "M": "i32", "N": "i32", "K": "i32", "n_O": "i32", "M_BUCKET": "i32",
                "stride_am": "i32", "stride_bn": "i32", "stride_cm": "i32", "stride_om": "i32"}  # fmt: skip
    configs = gemm.gemm_configs()[:1] if quick else gemm.gemm_configs()
    for cfg in configs:
        flags = {"EPILOGUE": True, "ZEROPOINT": True, "HAS_OUTLIERS": True, "OUTLIER_FP32": False,
                 "HAS_ADDEND": False, "HAS_BIAS": True, "BLOCK_O": 16}  # fmt: skip
        tile = "x".join(str(cfg.kwargs[k]) for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K"))
        options = {"num_warps": cfg.num_warps, "num_stages": cfg.num_stages}
        name = f"int8_gemm {tile} s{cfg.num_stages} w{cfg.num_warps}"
        yield name, gemm._int8_gemm_kernel.fn, gemm_sig, {**flags, **cfg.kwargs}, options
    dec_sig = {"X_ptr": "*bf16", "W_ptr": "*i8", "sw_ptr": "*fp32", "bias_ptr": "*bf16", "Y_ptr": "*bf16",
               "M": "i32", "N": "i32", "K": "i32", "stride_xm": "i32", "stride_wn": "i32",
               "stride_ym": "i32"}  # fmt: skip
    for cfg in decode.decode_configs()[: 1 if quick else None]:
        c = {"HAS_BIAS": False, "DOT_FP32": False, "BLOCK_M": decode.MAX_TOKENS, **cfg.kwargs}
        name = f"decode {cfg.kwargs['BLOCK_N']}x{cfg.kwargs['BLOCK_K']} s{cfg.num_stages} bf16"
        yield name, decode._decode_kernel.fn, dec_sig, c, {"num_warps": cfg.num_warps, "num_stages": cfg.num_stages}


def _resource_usage(cubin: bytes) -> dict:
    """Registers, stack and local memory (spills) per thread, from the bundled ``cuobjdump -res-usage``."""
    import triton

    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "k.cubin"
        path.write_bytes(cubin)
        text = subprocess.run([str(tool), "-res-usage", str(path)], capture_output=True, text=True, check=False).stdout
    usage = dict(re.findall(r"\b(REG|STACK|LOCAL):(\d+)", text))
    return {"registers": int(usage.get("REG", -1)), "stack_bytes": int(usage.get("STACK", -1)),
            "local_bytes": int(usage.get("LOCAL", -1))}  # fmt: skip


def _aligned_attrs(fn, sig: dict) -> dict:
    """What the JIT specializes on at run time for LLM shapes: every pointer 16-byte aligned (fresh
    allocations are), and the sizes and strides that are multiples of 16 (K, N, hidden sizes) marked so.
    Without these hints the compiler cannot vectorize or pipeline the int8 loads."""
    names = [n for n in sig if sig[n].startswith("*") or n in ("K", "N") or n.startswith("stride_")]
    return {(fn.arg_names.index(n),): [["tt.divisibility", 16]] for n in names}


def compile_report(archs=(80, 90), quick: bool = False) -> list[dict]:
    """One row per (kernel variant, arch): compiled or the error, and the compiler's resource report."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from . import interpreting

    if interpreting():
        raise RuntimeError("the kernels are bound to the interpreter: run with TRITON_INTERPRET unset or 0")
    rows = []
    for name, fn, sig, constexprs, options in _variants(quick):
        for arch in archs:
            row = {"kernel": name, "arch": f"sm_{arch}"}
            try:
                signature = {**sig, **{k: "constexpr" for k in constexprs}}
                src = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=_aligned_attrs(fn, sig))
                compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)
            except Exception as err:  # noqa: BLE001 -- reported per variant, the check goes on
                row["error"] = f"{type(err).__name__}: {str(err)[:300]}"
                rows.append(row)
                continue
            ptx = compiled.asm["ptx"]
            row["shared_bytes"] = compiled.metadata.shared
            row["fits_shared"] = compiled.metadata.shared <= SHARED_LIMIT[arch]
            row.update(_resource_usage(compiled.asm["cubin"]))
            mma = re.search(r"\b(wgmma|mma)\S*\.s8", ptx)
            row["int8_mma"] = mma.group(1) if mma else "none"
            row["fma_f32"] = len(re.findall(r"\bfma\.rn\.f32", ptx))
            row["div_rn_f32"] = len(re.findall(r"\bdiv\.rn\.f32", ptx))
            row["div_approx_f32"] = len(re.findall(r"\bdiv\.(full|approx)\.f32", ptx))
            rows.append(row)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", type=int, nargs="+", default=[80, 90], choices=sorted(SHARED_LIMIT))
    p.add_argument("--quick", action="store_true", help="one GEMM and one decode tile instead of all")
    p.add_argument("--json", type=Path, help="also write the rows here")
    args = p.parse_args(argv)
    rows = compile_report(tuple(args.arch), args.quick)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    keys = ["kernel", "arch", "shared_bytes", "fits_shared", "registers", "stack_bytes", "local_bytes", "int8_mma",
            "fma_f32", "div_rn_f32", "div_approx_f32", "error"]  # fmt: skip
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for row in rows:
        print("| " + " | ".join(str(row.get(k, "")) for k in keys) + " |")
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
