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


def _cmd_env(args) -> int:
    import torch

    from ..ops import custom_op
    from ..ops.choice import cpu as cpu_choice
    from ..ops.forward import weight_only_limit
    from ..ops.kernels import probes

    if args.threads:
        torch.set_num_threads(args.threads)
    model, flags = cpu_choice.cpu_description()
    present = set(flags.split())
    print("## CPU")
    print(f"model: {model}")
    print(f"machine: {platform.machine()}, {os.cpu_count()} logical CPUs, torch threads {torch.get_num_threads()}")
    print(f"torch CPU capability: {torch.backends.cpu.get_cpu_capability()}")
    print("int8/bf16 ISA flags: " + (", ".join(f for f in _ISA_FLAGS if f in present) or "none of " + str(_ISA_FLAGS)))
    print(f"all flags: {flags or 'unknown'}")

    print("\n## Versions")
    print(f"python: {platform.python_version()}")
    for name in ("llm_int8", "torch", "transformers", "bitsandbytes", "triton", "accelerate"):
        print(f"{name}: {_version(name)}")

    print("\n## Kernels")
    print(f"quantized engine: {torch.backends.quantized.engine}; oneDNN: {torch.backends.mkldnn.is_available()}")
    kernels = cpu_choice.admitted_kernels()
    print(f"int8 x int8 GEMMs admitted (passed their exactness self-test): {', '.join(kernels) or 'none'}")
    print(f"fixed-order choice (timing off): {cpu_choice.fixed_kernel()}")
    print(f"weight-only int8 x bf16 kernel: {'yes' if probes.has_weight_int8pack_mm() else 'no'}")
    print(f"torch.compile custom op {custom_op.OP_NAME}: {'registered' if custom_op.available() else 'unavailable'}")

    print("\n## Choice by measurement")
    forced = os.environ.get(cpu_choice.BACKEND_ENV) or "no"
    timing = "on" if cpu_choice.timing_enabled() else "off"
    print(f"timing: {timing} ({cpu_choice.AUTOTUNE_ENV}); forced: {forced}")
    print(f"cache file: {cpu_choice.cache_path()}")
    for in_features, out_features in args.tune or ():
        for tokens in args.tokens:
            cpu_choice.gemm_kernel(out_features, in_features, tokens)
        weight_only_limit(in_features, out_features)
    decisions = cpu_choice.decisions()
    if not decisions:
        print("no decisions yet (a layer's first call makes them; --tune INxOUT makes them now)")
    for key, value in sorted(decisions.items(), key=lambda item: _natural(item[0])):
        if key.startswith("gemm:"):
            times = ", ".join(f"{k} {'dropped' if t is None else f'{t} ms'}" for k, t in value["ms"].items())
            print(f"{key}: {value['choice']} ({times}; timed at {value.get('timed_rows', '?')} rows)")
        else:
            print(f"{key}: weight-only up to {value['max_tokens']} tokens ({value['ms']})")
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
    p.set_defaults(func=_cmd_env)
