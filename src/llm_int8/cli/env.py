"""``llm-int8 env``: what to paste into a bug report — CPU, admitted kernels, measured choices, versions."""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import re

__all__ = ["register"]

# the flags that decide which int8 and bf16 kernels can run (the full list follows them)
_ISA_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx512_bf16",
    "avx_vnni",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
    "asimd",
    "sve",
    "i8mm",
    "bf16",
)


def _shape(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)x(\d+)", text.strip())
    if not match or not all(int(v) > 0 for v in match.groups()):
        raise argparse.ArgumentTypeError(f"expected IN_FEATURESxOUT_FEATURES such as 4096x4096, got {text!r}")
    return int(match.group(1)), int(match.group(2))


def _natural(key: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", key)]  # m2 before m16


def _version(module: str) -> str:
    try:
        return getattr(importlib.import_module(module), "__version__", "installed")
    except Exception as err:  # noqa: BLE001 - any import failure is what the report should show
        return f"not importable ({type(err).__name__})"


def _family() -> str:
    """``" (cpu family F, model M, stepping S)"`` from ``/proc/cpuinfo``: what tells CPU generations of
    one vendor apart where a VM names the model only "AMD EPYC"; empty elsewhere."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("cpu family", "model", "stepping"):
                    fields.setdefault(key.strip(), value.strip())
                if not line.strip():  # the first processor's block is enough
                    break
    except OSError:
        return ""
    return " (" + ", ".join(f"{k} {v}" for k, v in fields.items()) + ")" if fields else ""


def _print_cpu_and_versions(cpu_choice) -> None:
    import torch

    model, flags = cpu_choice.probe.cpu_description()
    present = set(flags.split())
    print("## CPU")
    print(f"model: {model}" + _family())
    print(f"machine: {platform.machine()}, {os.cpu_count()} logical CPUs, torch threads {torch.get_num_threads()}")
    print(f"torch CPU capability: {torch.backends.cpu.get_cpu_capability()}")
    print("int8/bf16 ISA flags: " + (", ".join(f for f in _ISA_FLAGS if f in present) or "none of " + str(_ISA_FLAGS)))
    print(f"all flags: {flags or 'unknown'}")
    print("\n## Versions")
    print(f"python: {platform.python_version()}")
    for name in ("llm_int8", "torch", "transformers", "bitsandbytes", "triton", "accelerate"):
        print(f"{name}: {_version(name)}")


def _print_decisions(cpu_choice) -> None:
    decisions = cpu_choice.decisions()
    if not [k for k in decisions if k != "admission"]:
        print("no per-shape decisions yet (a layer's first call makes them; --tune INxOUT makes them now)")
    for key, value in sorted(decisions.items(), key=lambda item: _natural(item[0])):
        if key.startswith("gemm:"):
            times = ", ".join(f"{k} {'dropped' if t is None else f'{t} ms'}" for k, t in value["ms"].items())
            print(f"{key}: {value['choice']} ({times}; timed at {value.get('timed_rows', '?')} rows)")
        elif key.startswith("weight_only:"):
            print(f"{key}: weight-only up to {value['max_tokens']} tokens ({value['ms']})")


def _check(admission, probes) -> int:
    """``--check``: the self-tests and the admission timing run now, one line per kernel, beside fp32."""
    import time

    import torch

    M, K, N = admission.ADMISSION_PROBE
    X, W = torch.randn(M, K), torch.randn(N, K)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # as admission times the kernels: one thread, its CPU time
    try:
        times = []
        for _ in range(6):
            start = time.thread_time()
            X @ W.T
            times.append(time.thread_time() - start)
        fp32_ms = min(times[1:]) * 1e3  # the first call sets up
    finally:
        torch.set_num_threads(previous)
    result = admission.measure()  # fresh: not the cached decision
    exact = probes.exact_cpu_kernels()
    print(f"## Check: each CPU int8 GEMM on {M} x {K} x {N} (M x K x N), one thread; fp32 GEMM {fp32_ms:.3f} ms")
    for kernel in probes.ALL_CPU_KERNELS:
        status = "admitted" if kernel in result["admitted"] else f"dropped: {result['dropped'][kernel]}"
        if kernel not in exact:
            print(f"{kernel:13s} not exact or unavailable   {status}")
            continue
        ms = result["ms"][kernel]
        print(f"{kernel:13s} exact   {ms:9.3f} ms   {fp32_ms / ms:6.2f}x the speed of fp32   {status}")
    if not result["admitted"]:
        print("no exact int8 GEMM is usable on this CPU: int8 layers run the float64 reference (correct, slow)")
        return 1
    print(f"used with timing off: {result['admitted'][0]}")
    return 0


def _cmd_env(args) -> int:
    import torch

    from ..ops import custom_op
    from ..ops.choice import admission
    from ..ops.choice import cpu as cpu_choice
    from ..ops.forward import weight_only_limit
    from ..ops.kernels import native, probes

    if args.threads:
        torch.set_num_threads(args.threads)
    _print_cpu_and_versions(cpu_choice)
    print("\n## Kernels")
    print(f"quantized engine: {torch.backends.quantized.engine}; oneDNN: {torch.backends.mkldnn.is_available()}")
    print(f"int8 x int8 GEMMs exact here (self-test): {', '.join(probes.exact_cpu_kernels()) or 'none'}")
    state = admission.admission()
    admitted = ", ".join(state["admitted"]) or "none"
    print(f"admitted (exact, within {admission.SLOW_FACTOR:g}x of the fastest): {admitted}")
    for kernel, why in state["dropped"].items():
        print(f"  not admitted: {kernel}: {why}")
    print(f"used with timing off: {admission.fixed_kernel()}")
    print(f"weight-only int8 x bf16 kernel: {'yes' if probes.has_weight_int8pack_mm() else 'no'}")
    print(f"torch.compile custom op {custom_op.OP_NAME}: {'registered' if custom_op.available() else 'unavailable'}")
    # built or loaded by now where admission timed fbgemm_pairs; else this call builds it (once per machine)
    state = "loaded" if native.ops() is not None else f"not used ({native.reason()}): the PyTorch fallback runs"
    print(f"C++ CPU kernels (one-pass quantizer and epilogue): {state}")

    print("\n## Choice by measurement")
    forced = os.environ.get(cpu_choice.BACKEND_ENV) or "no"
    timing = "on" if cpu_choice.timing_enabled() else "off"
    print(f"timing: {timing} ({cpu_choice.AUTOTUNE_ENV}); forced: {forced}")
    print(f"cache file: {cpu_choice.cache_path()}")
    for in_features, out_features in args.tune or ():
        for tokens in args.tokens:
            cpu_choice.gemm_kernel(out_features, in_features, tokens)
        weight_only_limit(in_features, out_features)
    _print_decisions(cpu_choice)
    if args.check:
        print()
        return _check(admission, probes)
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "env",
        help="print CPU flags, admitted kernels, measured kernel choices and versions (for bug reports)",
        description="Print what a bug report needs: CPU and ISA flags, versions, the int8 kernels that passed their "
        "self-tests here, and the kernel chosen per layer shape and token bucket with its measured times.",
    )
    p.add_argument(
        "--tune",
        nargs="+",
        type=_shape,
        metavar="INxOUT",
        help="measure these layer shapes now (e.g. 4096x4096 576x1536) for the --tokens buckets",
    )
    p.add_argument(
        "--tokens",
        nargs="+",
        type=int,
        default=[1, 16, 128],
        help="token counts whose buckets --tune measures (default 1 16 128)",
    )
    p.add_argument("--threads", type=int, default=0, help="torch threads while measuring (default: torch's)")
    p.add_argument(
        "--check",
        action="store_true",
        help="run the kernels' self-tests and admission timing now and print one line per kernel "
        "(exit 1 if no exact int8 GEMM is usable)",
    )
    p.set_defaults(func=_cmd_env)
