"""The GPU check's measurements: layer benchmark and a random-weight 7B-shaped Llama (see gpu_check.sh).

    python benchmarks/gpu_check.py --out DIR              # on one CUDA GPU (H100/H200: a few minutes)
    python benchmarks/gpu_check.py --out DIR --dry-run    # CPU, Triton interpreter, tiny sizes

Layer benchmark: ``Y = X W^T`` for square layers of hidden size 4096 and 8192, M in {1, 16, 512, 2048}
tokens, fp16 activations ~N(0, 1) with 6 emergent-outlier feature dims of magnitude 8-20 (the paper's
Figure 3 regime). Candidates, all on the same weights and inputs:

* ``fp16``, ``bf16``: ``nn.Linear`` in that dtype (the baseline the targets are stated against);
* ``int_mm``: ``torch._int_mm`` alone on int8 codes (cuBLASLt; M padded to 17): the integer GEMM's ceiling;
* ``triton_gemm``: our Triton int8 GEMM alone (int32 out, no epilogue);
* ``bnb``: bitsandbytes ``Linear8bitLt(threshold=6, has_fp16_weights=False)``, if importable;
* ``int8[auto|triton|cublaslt]``: ``llm_int8.Int8Linear`` (library defaults: zeropoint activations,
  α = 6, int8 x int8 product at every M) with the backend chosen by timing, or forced;
* ``int8[decode]``: the same layer with ``weight_only_max_tokens=16`` (M <= 16 only): the Triton
  int8-weight fp16-activation decode kernel.

Each time is the median of ``triton.testing.do_bench`` (CUDA events) over layers rotated among
several copies, so that the weights are read from HBM rather than the 50-60 MB L2. ``rel_err`` is
``||Y - Y_64|| / ||Y_64||`` against float64 ``X W^T`` of the float weight; ``vs_cpu`` the same
distance between the GPU output and the CPU path of ``int8_linear`` on the same int8 weights (M = 16).

Model benchmark: ``LlamaForCausalLM`` with Llama-2-7B's shape (hidden 4096, MLP 11008, 32 heads,
vocabulary 32000) and random weights, fp16; prefill of 1 x 512 tokens and 32 decode steps with the
KV cache, for fp16, bitsandbytes and llm_int8 (auto, each forced backend, and the decode kernel).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, markdown_table, write_text  # noqa: E402

OUTLIER_DIMS = 6
MIN_ROTATION_BYTES = 512 * 2**20  # weights cycled per candidate: several times the L2 of an H100/H200


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="folder for the Markdown and JSON tables")
    p.add_argument("--dry-run", action="store_true", help="CPU, Triton interpreter, tiny sizes")
    p.add_argument("--hidden", type=int, nargs="+", default=None, help="layer sizes (default 4096 8192)")
    p.add_argument("--tokens", type=int, nargs="+", default=None, help="M values (default 1 16 512 2048)")
    p.add_argument("--layers", type=int, default=None, help="Llama decoder layers (default 32, dry run 2)")
    p.add_argument("--prefill", type=int, default=None, help="prefill tokens (default 512)")
    p.add_argument("--decode", type=int, default=32, help="decode steps")
    p.add_argument("--skip-model", action="store_true", help="layer benchmark only")
    args = p.parse_args(argv)
    tiny = args.dry_run
    args.hidden = args.hidden or ([64, 96] if tiny else [4096, 8192])
    args.tokens = args.tokens or ([1, 16, 40] if tiny else [1, 16, 512, 2048])
    args.layers = args.layers or (2 if tiny else 32)
    args.prefill = args.prefill or (24 if tiny else 512)
    if tiny:
        args.decode = min(args.decode, 4)
    return args


# --- timing -------------------------------------------------------------------------------------------


def time_ms(fn, device: torch.device) -> float:
    """Median milliseconds of ``fn()``: CUDA events through ``do_bench``, or a host clock on the CPU."""
    if device.type == "cuda":
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))
    fn()
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@contextlib.contextmanager
def cuda_backend(name: str | None):
    """Force ``LLM_INT8_CUDA_BACKEND`` for the block (``None``: auto)."""
    from llm_int8.ops.choice import cuda as cuda_choice

    old = os.environ.get(cuda_choice.ENV_BACKEND)
    os.environ[cuda_choice.ENV_BACKEND] = name or "auto"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(cuda_choice.ENV_BACKEND, None)
        else:
            os.environ[cuda_choice.ENV_BACKEND] = old


# --- layer benchmark ----------------------------------------------------------------------------------


def outlier_activations(M: int, K: int, g: torch.Generator) -> torch.Tensor:
    X = torch.randn(M, K, generator=g)
    dims = torch.randperm(K, generator=g)[:OUTLIER_DIMS]
    X[:, dims] *= 8 + 12 * torch.rand(OUTLIER_DIMS, generator=g)  # (M, 6) magnitudes 8-20
    return X


def _int8_forward(layer, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)`` on CUDA; on the CPU (dry run) the same CUDA entry of ``int8_linear``, run on CPU
    tensors under the interpreter, so that the dry run goes through the dispatch and the kernels."""
    if x.is_cuda:
        return layer(x)
    from llm_int8.ops import forward_cuda, int8_linear
    from llm_int8.ops.choice import cpu as cpu_choice

    def cublaslt_forward():
        return int8_linear(x.float(), layer.weight_int8, layer.weight_scale, None, layer.threshold,
                           activation=layer.activation).float()  # fmt: skip

    limit = layer.weight_only_max_tokens
    if limit is None:  # as int8_linear does for a layer that is not on the CPU: the fixed rule
        limit = cpu_choice.fixed_max_tokens(layer.in_features, layer.out_features)
    return forward_cuda.int8_linear_cuda(
        x, layer.weight_int8, layer.weight_scale, layer.bias, layer.threshold, layer.activation,
        None, None, limit, cublaslt_forward,
    )  # fmt: skip


def _rotation(n_bytes: int, dry: bool) -> int:
    return 1 if dry else max(1, min(16, -(-MIN_ROTATION_BYTES // n_bytes)))


class _Cycle:
    """Calls rotate through the copies of a layer, so that successive calls read different weights."""

    def __init__(self, items):
        self.items, self.i = items, 0

    def __call__(self):
        self.i = (self.i + 1) % len(self.items)
        return self.items[self.i]


def _candidates(sets: dict, x: torch.Tensor, X_i8: torch.Tensor, M: int, device, dtype) -> dict:
    """name -> a call, or (backend to force, a call) for the Int8Linear rows."""
    from llm_int8.ops.kernels.cuda_gemm import int_mm_padded
    from llm_int8.ops.kernels.triton.gemm import int8_gemm

    fp16, bf16, w8 = _Cycle(sets["fp16"]), _Cycle(sets["bf16"]), _Cycle(sets["W_i8"])
    int8, decode = _Cycle(sets["int8"]), _Cycle(sets["decode"])
    x16, xb16 = x.half(), x.bfloat16()
    cands = {
        "fp16": lambda: fp16()(x16),
        "bf16": lambda: bf16()(xb16),
        "triton_gemm": lambda: int8_gemm(X_i8, w8()),
    }
    if device.type == "cuda":
        cands["int_mm"] = lambda: int_mm_padded(X_i8, w8())
    if sets["bnb"]:
        bnb = _Cycle(sets["bnb"])
        cands["bnb"] = lambda: bnb()(x16)
    for backend in ("auto", "triton", "cublaslt"):
        cands[f"int8[{backend}]"] = (backend, lambda: _int8_forward(int8(), x))
    if M <= 16 and dtype in (torch.float16, torch.bfloat16):
        cands["int8[decode]"] = (None, lambda: _int8_forward(decode(), x))
    return cands


def layer_benchmark(args, device: torch.device, dtype: torch.dtype) -> list[dict]:
    from llm_int8 import Int8Linear
    from llm_int8.ops import int8_linear as int8_linear_op
    from llm_int8.primitives import rowwise_quantize

    try:
        import bitsandbytes as bnb
    except ImportError:
        bnb = None
    rows = []
    g = torch.Generator().manual_seed(0)
    for hidden in args.hidden:
        K = N = hidden
        W = torch.randn(N, K, generator=g) / K**0.5  # (N, K) float32 on the host
        W64 = W.double().to(device)  # for the float64 reference, computed on the device
        base = nn.Linear(K, N, bias=False)
        base.weight.data.copy_(W)
        copies = _rotation(N * K, args.dry_run)
        layers = {
            "fp16": [nn.Linear(K, N, bias=False, device=device, dtype=torch.float16) for _ in range(copies)],
            "bf16": [nn.Linear(K, N, bias=False, device=device, dtype=torch.bfloat16) for _ in range(copies)],
        }
        for name in ("fp16", "bf16"):
            for lin in layers[name]:
                lin.weight.data.copy_(W)
        int8_layers = [Int8Linear.from_linear(base, weight_only_max_tokens=0).to(device) for _ in range(copies)]
        decode_layers = [Int8Linear.from_linear(base, weight_only_max_tokens=16).to(device) for _ in range(copies)]
        W_i8, _ = rowwise_quantize(W)
        W_i8s = [W_i8.to(device) for _ in range(copies)]
        bnb_layers = []
        if bnb is not None and device.type == "cuda":
            for _ in range(copies):
                lin = bnb.nn.Linear8bitLt(K, N, bias=False, has_fp16_weights=False, threshold=6.0)
                lin.load_state_dict({"weight": W.half()})
                bnb_layers.append(lin.to(device))  # quantized on this move
        sets = {**layers, "int8": int8_layers, "decode": decode_layers, "W_i8": W_i8s, "bnb": bnb_layers}
        for M in args.tokens:
            X32 = outlier_activations(M, K, g)
            exact = X32.double().to(device) @ W64.T  # (M, N)
            x = X32.to(device=device, dtype=dtype)
            X_i8 = torch.randint(-127, 128, (M, K), dtype=torch.int8, generator=g).to(device)
            cands = _candidates(sets, x, X_i8, M, device, dtype)
            times, errs = {}, {}
            for name, fn in cands.items():
                backend = None
                if isinstance(fn, tuple):
                    backend, fn = fn
                    backend = None if backend == "auto" else backend
                with cuda_backend(backend), torch.inference_mode():
                    out = fn()
                    _sync(device)
                    if out.dtype != torch.int32:
                        errs[name] = ((out.double() - exact).norm() / exact.norm()).item()
                    times[name] = time_ms(fn, device)
            vs_cpu = {}
            if M == min(16, max(args.tokens)) or (args.dry_run and M == args.tokens[0]):
                lay = int8_layers[0]
                cpu_out = int8_linear_op(X32.to(dtype), lay.weight_int8.cpu(), lay.weight_scale.cpu(),
                                         activation=lay.activation).double()  # fmt: skip
                for backend in ("triton", "cublaslt"):
                    with cuda_backend(backend), torch.inference_mode():
                        got = _int8_forward(lay, x).double().cpu()
                    vs_cpu[backend] = ((got - cpu_out).norm() / cpu_out.norm()).item()
            row = {"hidden": hidden, "M": M, "rotation": copies}
            for name in cands:
                row[f"{name}_ms"] = round(times[name], 4)
                if name in errs:
                    row[f"{name}_rel_err"] = float(f"{errs[name]:.3g}")
            for backend, err in vs_cpu.items():
                row[f"int8[{backend}]_vs_cpu"] = float(f"{err:.3g}")
            rows.append(row)
            print(f"layer hidden={hidden} M={M}: " + ", ".join(f"{k} {v:.3f} ms" for k, v in times.items()), flush=True)
        del W64, sets, layers, int8_layers, decode_layers, W_i8s, bnb_layers
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


# --- model benchmark ----------------------------------------------------------------------------------


def llama_config(args):
    from transformers import LlamaConfig

    if args.dry_run:
        return LlamaConfig(hidden_size=64, intermediate_size=172, num_hidden_layers=args.layers,
                           num_attention_heads=4, num_key_value_heads=4, vocab_size=256,
                           max_position_embeddings=256)  # fmt: skip
    return LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=args.layers,
                       num_attention_heads=32, num_key_value_heads=32, vocab_size=32000,
                       max_position_embeddings=4096)  # fmt: skip


def build_llama(args, device, dtype):
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)  # the same random weights for every variant
    with torch.device(device):
        model = LlamaForCausalLM(llama_config(args)).to(dtype)
    return model.eval()


def _swap_bnb(model, device):
    import bitsandbytes as bnb

    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.Linear) and not f"{name}.{child_name}".endswith("lm_head"):
                layer = bnb.nn.Linear8bitLt(child.in_features, child.out_features, bias=child.bias is not None,
                                            has_fp16_weights=False, threshold=6.0)  # fmt: skip
                layer.load_state_dict(child.state_dict())
                setattr(module, child_name, layer.to(device))


def time_model(model, args, device) -> dict:
    g = torch.Generator().manual_seed(1)
    vocab = model.config.vocab_size
    prefill_ids = torch.randint(0, vocab, (1, args.prefill), generator=g).to(device)
    prompt = torch.randint(0, vocab, (1, 16), generator=g).to(device)
    with torch.inference_mode():
        prefill_ms = time_ms(lambda: model(prefill_ids, use_cache=False), device)

        def decode():
            out = model(prompt, use_cache=True)
            past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(args.decode):
                out = model(token, past_key_values=past, use_cache=True)
                past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
            _sync(device)
            return (time.perf_counter() - t0) * 1e3 / args.decode

        decode()  # warm-up: compiles, autotunes and times the decode shapes
        decode_ms = statistics.median(decode() for _ in range(3))
    return {"prefill_ms": round(prefill_ms, 3), "prefill_tok_s": round(args.prefill / prefill_ms * 1e3, 1),
            "decode_ms_per_token": round(decode_ms, 3), "decode_tok_s": round(1e3 / decode_ms, 2)}  # fmt: skip


def model_benchmark(args, device, dtype) -> list[dict]:
    import llm_int8

    results = []

    def record(variant, model):
        r = time_model(model, args, device)
        results.append({"variant": variant, **r})
        print(f"llama {variant}: {r}", flush=True)

    model = build_llama(args, device, dtype)
    record("fp16" if dtype == torch.float16 else str(dtype), model)
    del model
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        try:
            import bitsandbytes  # noqa: F401

            model = build_llama(args, device, torch.float16)
            _swap_bnb(model, device)
            record("bnb", model)
            del model
            gc.collect()
            torch.cuda.empty_cache()
        except ImportError:
            print("bitsandbytes not importable: no bnb row", flush=True)
    model = build_llama(args, device, dtype)
    llm_int8.quantize_model(model)
    for backend in ("auto", "triton", "cublaslt"):
        with cuda_backend(None if backend == "auto" else backend):
            record(f"int8[{backend}]", model)
    for module in model.modules():
        if isinstance(module, llm_int8.Int8Linear):
            module.weight_only_max_tokens = 16
    record("int8[auto, decode kernel <= 16 tokens]", model)
    return results


# --- report -------------------------------------------------------------------------------------------


def environment(args, device) -> dict:
    env = {
        "command": " ".join([sys.executable, *sys.argv]),
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
    }
    env["device"] = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (dry run, Triton interpreter)"
    env["cuda"] = str(torch.version.cuda)
    for name in ("triton", "bitsandbytes", "transformers"):
        try:
            env[name] = __import__(name).__version__
        except ImportError:
            env[name] = "not installed"
    import llm_int8

    env["llm_int8"] = llm_int8.__version__
    env.update(machine_info())
    try:
        env["cpu_flags"] = next(
            line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("flags")
        )  # fmt: skip
    except (OSError, StopIteration):
        env["cpu_flags"] = "unknown"
    env["platform"] = platform.platform()
    return env


def _ratio(a, b):
    return f"{a / b:.2f}x" if a and b else "-"


def layer_markdown(rows: list[dict]) -> str:
    names = list(dict.fromkeys(n for r in rows for n in (k.removesuffix("_ms") for k in r if k.endswith("_ms"))))
    header = ["hidden", "M", *[f"{n} ms" for n in names], "fp16 / int8[auto]", "bnb / int8[auto]", "rel err int8[auto]"]
    body = []
    for r in rows:
        auto = r.get("int8[auto]_ms")
        body.append([str(r["hidden"]), str(r["M"]), *[f"{r[f'{n}_ms']:.4f}" if f"{n}_ms" in r else "-" for n in names],
                     _ratio(r.get("fp16_ms"), auto), _ratio(r.get("bnb_ms"), auto),
                     f"{r.get('int8[auto]_rel_err', float('nan')):.3g}"])  # fmt: skip
    errs = [[str(r["hidden"]), str(r["M"]), *[str(r.get(f"{n}_rel_err", "-")) for n in names]] for r in rows]
    cpu = [[str(r["hidden"]), str(r["M"]), str(r.get("int8[triton]_vs_cpu")), str(r.get("int8[cublaslt]_vs_cpu"))]
           for r in rows if "int8[triton]_vs_cpu" in r]  # fmt: skip
    return "\n\n".join([
        "Speed (median ms; ratios > 1 mean llm_int8 is faster):", markdown_table(header, body),
        "Relative error against float64 X W^T:", markdown_table(["hidden", "M", *names], errs),
        "GPU output against the CPU path of int8_linear on the same int8 weights (relative distance):",
        markdown_table(["hidden", "M", "triton", "cublaslt"], cpu),
    ])  # fmt: skip


def model_markdown(rows: list[dict], args) -> str:
    base = rows[0]
    header = [
        "variant",
        "prefill ms",
        "prefill tok/s",
        "decode ms/token",
        "decode tok/s",
        "prefill vs fp16",
        "decode vs fp16",
    ]
    body = [[r["variant"], str(r["prefill_ms"]), str(r["prefill_tok_s"]), str(r["decode_ms_per_token"]),
             str(r["decode_tok_s"]), _ratio(base["prefill_ms"], r["prefill_ms"]),
             _ratio(base["decode_ms_per_token"], r["decode_ms_per_token"])] for r in rows]  # fmt: skip
    return markdown_table(header, body)


def targets_markdown(layer_rows: list[dict], model_rows: list[dict]) -> str:
    """Issue 12's targets, read off this run's ratios (time of the peer / time of llm_int8)."""
    lines = []

    def check(label, ratio, goal):
        verdict = "-" if ratio is None else ("met" if ratio >= goal else "MISSED")
        shown = "-" if ratio is None else f"{ratio:.2f}x"
        lines.append(f"| {label} | {shown} | >= {goal}x | {verdict} |")

    for r in layer_rows:
        auto = r.get("int8[auto]_ms")
        if r["M"] == max(x["M"] for x in layer_rows) and r.get("fp16_ms"):
            check(f"fp16 / int8[auto], hidden {r['hidden']}, M {r['M']}", r["fp16_ms"] / auto,
                  1.0 if r["hidden"] < 8192 else 1.5)  # fmt: skip
        if r.get("bnb_ms"):
            check(f"bnb / int8[auto], hidden {r['hidden']}, M {r['M']}", r["bnb_ms"] / auto, 1.5)
        if r["M"] <= 16:
            best = min(r[k] for k in ("int8[auto]_ms", "int8[decode]_ms") if k in r)
            check(f"fp16 / best int8 (auto, decode), hidden {r['hidden']}, M {r['M']}", r["fp16_ms"] / best, 1.0)
    if model_rows:
        fp16 = model_rows[0]["decode_ms_per_token"]
        best = min(r["decode_ms_per_token"] for r in model_rows if r["variant"].startswith("int8"))
        check("Llama decode: fp16 / best int8 variant", fp16 / best, 1.0)
    return "\n".join(["| target | measured | goal | |", "|---|---|---|---|", *lines])


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.dry_run:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before anything imports triton
    device = torch.device("cpu" if args.dry_run else "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: run with --dry-run to check the script on the CPU", file=sys.stderr)
        return 2
    from llm_int8.ops.kernels import triton as triton_kernels

    if not triton_kernels.available(device):
        print(f"the Triton kernels cannot run on {device} (triton missing, GPU older than sm_80?)", file=sys.stderr)
        return 2
    dtype = torch.float16
    args.out.mkdir(parents=True, exist_ok=True)
    env = environment(args, device)
    print(json.dumps({k: env[k] for k in ("device", "torch", "triton", "bitsandbytes", "llm_int8")}), flush=True)
    t0 = time.perf_counter()
    layer_rows = layer_benchmark(args, device, dtype)
    layer_s = time.perf_counter() - t0
    model_rows = [] if args.skip_model else model_benchmark(args, device, dtype)
    env["seconds"] = {"layers": round(layer_s, 1), "total": round(time.perf_counter() - t0, 1)}
    cfg = llama_config(args)
    env["model"] = (f"LlamaForCausalLM, random weights, hidden {cfg.hidden_size}, MLP {cfg.intermediate_size}, "
                    f"{cfg.num_hidden_layers} layers (Llama-2-7B has 32), vocab {cfg.vocab_size}, fp16, "
                    f"prefill 1 x {args.prefill}, {args.decode} decode steps")  # fmt: skip
    (args.out / "gpu_check.json").write_text(
        json.dumps({"environment": env, "layers": layer_rows, "model": model_rows}, indent=1)
    )
    md = [f"# GPU check: {env['device']}", "", "```", *(f"{k}: {v}" for k, v in env.items() if k != "cpu_flags"), "```",
          f"CPU flags: `{env['cpu_flags']}`", "", "## Layers (fp16 activations with 6 outlier dims)", "",
          layer_markdown(layer_rows)]  # fmt: skip
    if model_rows:
        md += ["", f"## {env['model']}", "", model_markdown(model_rows, args)]
    md += ["", "## Targets of issue 12 (ratios > 1: llm_int8 faster)", "", targets_markdown(layer_rows, model_rows)]
    write_text(args.out / "gpu_check.md", "\n".join(md) + "\n")
    print("\n".join(md[-3:]))
    print(f"wrote {args.out / 'gpu_check.md'} and gpu_check.json in {env['seconds']['total']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
