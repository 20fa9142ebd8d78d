"""End-to-end CPU speed and memory of SmolLM2-135M: fp32, bf16, bitsandbytes int8 and llm-int8.

    python benchmarks/bench_e2e.py --out benchmarks/results --threads 1 --clock cpu

Each variant runs in a fresh subprocess (so memory figures do not mix): load the bundled
SmolLM2-135M-Instruct with ``llm_int8.integrations.load_model``, convert, then

* prefill: one forward pass over ``--prefill`` tokens of WikiText-2 test text (no cache); median of
  ``--repeats`` after a warm-up; tokens/s = tokens / time;
* decode: a 32-token prompt, then ``--decode`` greedy steps with the KV cache, one token each;
  tokens/s = steps / time of the steps (median of ``--repeats``);
* memory: bytes of all parameters and buffers; resident set (``VmRSS``) after conversion; peak
  resident set (``VmHWM``, reset via ``/proc/self/clear_refs`` after conversion) during inference.

Variants: ``fp32``, ``bf16`` (``model.to(bfloat16)``), ``bnb`` (every ``nn.Linear`` but ``lm_head``
swapped by hand for ``bnb.nn.Linear8bitLt(has_fp16_weights=False, threshold=6.0)``: transformers'
``BitsAndBytesConfig`` path needs a Hub/safetensors checkpoint, and the bundled model is GGUF),
``llm_int8`` (``llm_int8.quantize_model(model)``: the library's defaults, zeropoint activations,
α = 6, the weight-only path for decode steps; ``lm_head`` kept in float, as bnb), ``llm_int8_paper``
(the paper's LLM.int8(): absmax activations, α = 6, the int8 x int8 product for every step),
``llm_int8_calibrated`` and ``llm_int8_precise`` (the ``eval`` methods of those names: the default
plus the outlier dims calibrated on ``CALIBRATION_TEXT`` kept in float, and that at α = 3 with the
value projections in float; the calibration pass is not timed), ``llm_int8_bf16`` (the bf16 model,
``model.to(bfloat16)``, then ``quantize_model``: bf16 activations in and out of every layer; compare
it with ``bf16``), ``llm_int8_compiled`` (``llm_int8`` under ``torch.compile`` with Inductor: each
``Int8Linear`` is one ``llm_int8::int8_linear`` node; compilation happens in the untimed warm-up;
prefill only, since every decode step has a new KV length to compile for).

Issue 20 variants, the same conversion as their base with an environment set in the child process:
``llm_int8_torch`` / ``llm_int8_bf16_torch`` (``LLM_INT8_NATIVE=0``: the C++ kernels off, the PyTorch
sequence the op ran before issue 20, step for step) and ``llm_int8_pairs`` (``LLM_INT8_CPU_BACKEND=
fbgemm_pairs``: the GEMM that ``ops/choice`` would rank first if it timed ``FBGEMM_PAIRS`` as the op
now runs it, with its sparse fix in the C++ epilogue; today it times torch's sparse product).
``native_load_s``: seconds to load the C++ kernels (built beforehand) in the child.

Kernel choices are measured at first use (``ops/choice/cpu.py``) inside the untimed warm-up, and
cached on disk for the later variants.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, markdown_table, median, smoke_arguments, write_csv, write_text  # noqa: E402

VARIANTS = (
    "fp32",
    "bf16",
    "bnb",
    "llm_int8",
    "llm_int8_bf16",
    "llm_int8_compiled",
    "llm_int8_paper",
    "llm_int8_calibrated",
    "llm_int8_precise",
    "llm_int8_torch",
    "llm_int8_bf16_torch",
    "llm_int8_pairs",
)
VARIANT_ENV = {  # (base variant, environment of the child process)
    "llm_int8_torch": ("llm_int8", {"LLM_INT8_NATIVE": "0"}),
    "llm_int8_bf16_torch": ("llm_int8_bf16", {"LLM_INT8_NATIVE": "0"}),
    "llm_int8_pairs": ("llm_int8", {"LLM_INT8_CPU_BACKEND": "fbgemm_pairs"}),
}
REPO = Path(__file__).resolve().parents[1]
PROMPT_TOKENS = 32


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def _swap_bnb(model) -> None:
    import bitsandbytes as bnb
    from torch import nn

    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if isinstance(child, nn.Linear) and not full.endswith("lm_head"):
                layer = bnb.nn.Linear8bitLt(
                    child.in_features,
                    child.out_features,
                    bias=child.bias is not None,
                    has_fp16_weights=False,
                    threshold=6.0,
                )
                layer.load_state_dict(child.state_dict())
                setattr(module, child_name, layer.to("cpu"))  # quantized on this move


def run_variant(variant: str, args) -> dict:
    """Runs in the subprocess: build one variant, time it, return the measurements."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    now = time.thread_time if args.clock == "cpu" else time.perf_counter

    import llm_int8
    from llm_int8.evaluation import read_text, tokenize_text
    from llm_int8.integrations import load_model
    from llm_int8.ops.kernels import native

    start = time.perf_counter()
    native_built = native.ops() is not None
    native_load_s = time.perf_counter() - start
    label, variant = variant, VARIANT_ENV.get(variant, (variant, {}))[0]
    model, tokenizer = load_model(None, dtype=torch.float32)
    if variant == "bf16":
        model.to(torch.bfloat16)
    elif variant == "bnb":
        _swap_bnb(model)
    elif variant in ("llm_int8", "llm_int8_compiled"):
        llm_int8.quantize_model(model)
    elif variant == "llm_int8_bf16":
        llm_int8.quantize_model(model.to(torch.bfloat16))
    elif variant in ("llm_int8_calibrated", "llm_int8_precise"):
        from llm_int8.analysis import calibrate_outlier_dims, calibration_ids
        from llm_int8.evaluation import METHODS

        spec = METHODS[variant.removeprefix("llm_int8_")]  # converted in place, as the other variants
        skip = ("lm_head", *spec.keep_float)
        dims = calibrate_outlier_dims(model, calibration_ids(tokenizer), spec.threshold, skip_modules=skip)
        llm_int8.quantize_model(model, spec.threshold, skip, float_dims=dims)
    elif variant == "llm_int8_paper":
        llm_int8.quantize_model(model, threshold=6.0, activation="absmax")
        for module in model.modules():
            if isinstance(module, llm_int8.Int8Linear):
                module.weight_only_max_tokens = 0
    model.eval()
    if variant.endswith("_compiled"):
        model = torch.compile(model)
    state_bytes = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    ids = tokenize_text(tokenizer, read_text(args.text), max_tokens=args.prefill + PROMPT_TOKENS)
    prefill_ids = ids[: args.prefill][None]  # (1, prefill)
    prompt_ids = ids[args.prefill : args.prefill + PROMPT_TOKENS][None]  # (1, 32)
    rss_kib = _status_kib("VmRSS")
    peak_reset = _reset_peak_rss()

    with torch.inference_mode():
        prefill_times = []
        for _ in range(args.repeats + 1):
            start = now()
            model(prefill_ids, use_cache=False)
            prefill_times.append(now() - start)
        decode_times, generated = [], []
        for _ in range(0 if label.endswith("_compiled") else args.repeats + 1):
            out = model(prompt_ids, use_cache=True)
            past, token = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)  # (1, 1)
            generated = [token.item()]
            start = now()
            for _ in range(args.decode - 1):
                out = model(token, past_key_values=past, use_cache=True)
                past, token = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
                generated.append(token.item())
            decode_times.append(now() - start)
    peak_kib = _status_kib("VmHWM")
    prefill_s = median(prefill_times[1:])
    decode_s = median(decode_times[1:]) if decode_times else None
    return {
        "variant": label,
        "native": "built" if native_built else f"off ({native.reason()})",
        "native_load_s": round(native_load_s, 3),
        "prefill_tokens": args.prefill,
        "prefill_ms": round(prefill_s * 1e3, 2),
        "prefill_tok_per_s": round(args.prefill / prefill_s, 1),
        "decode_steps": args.decode - 1,
        "decode_ms_per_token": round(decode_s / (args.decode - 1) * 1e3, 3) if decode_s else "",
        "decode_tok_per_s": round((args.decode - 1) / decode_s, 2) if decode_s else "",
        "prefill_runs_ms": [round(t * 1e3, 1) for t in prefill_times],
        "state_MiB": round(state_bytes / 2**20, 1),
        "rss_after_load_MiB": round(rss_kib / 1024, 1),
        "peak_rss_inference_MiB": round(peak_kib / 1024, 1) if peak_reset else "",
        "generated": generated,
        "clock": args.clock,
        "threads": torch.get_num_threads(),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--prefill", type=int, default=512)
    parser.add_argument(
        "--decode", type=int, default=33, help="greedy tokens generated (the first comes from the prompt)"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--clock", choices=("wall", "cpu"), default="wall", help="cpu: thread CPU time, needs --threads 1"
    )
    parser.add_argument(
        "--text", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/wikitext-2/test.txt"
    )
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    smoke = {"variants": ["llm_int8"], "prefill": 16, "decode": 3, "repeats": 1, "threads": 1}
    args = smoke_arguments(parser, argv, **smoke)  # the children get --smoke too
    if args.clock == "cpu" and args.threads != 1:
        parser.error("--clock cpu measures one thread: use it with --threads 1")
    if args.child:
        print(json.dumps(run_variant(args.child, args)))
        return

    args.out.mkdir(parents=True, exist_ok=True)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)  # only so that machine_info reports what the variants use
    info = machine_info()
    own = list(argv if argv is not None else sys.argv[1:])
    results = []
    for variant in args.variants:
        print(f"{variant} ...", flush=True)
        child_args = [*own, "--child", variant]
        env = {**os.environ, **VARIANT_ENV.get(variant, ("", {}))[1]}
        command = [sys.executable, __file__, *child_args]
        proc = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        if proc.returncode != 0:
            print(proc.stderr[-3000:], flush=True)
            raise SystemExit(f"variant {variant} failed")
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"  {result}", flush=True)
        results.append(result)
    info["loadavg_1min_end"] = f"{os.getloadavg()[0]:.2f}"
    from llm_int8.ops.choice import cpu as cpu_choice

    info["kernel choice"] = f"{'measured' if cpu_choice.timing_enabled() else 'fixed'}; cache {cpu_choice.cache_path()}"
    reference = next((r["generated"] for r in results if r["variant"] == "fp32"), None)
    for r in results:
        generated = r.pop("generated")
        same = sum(a == b for a, b in zip(generated, reference or [], strict=False))
        # position by position: one early different token shifts the rest
        r["greedy_tokens_equal_fp32"] = f"{same}/{args.decode}" if reference and generated else "-"
    base = next((r for r in results if r["variant"] == "fp32"), None)
    bf16 = next((r for r in results if r["variant"] == "bf16"), None)

    def ratio(r, ref, key):
        return f"{float(r[key]) / float(ref[key]):.2f}x" if ref and r[key] != "" and ref[key] != "" else "-"

    write_csv(args.out / "e2e.csv", results)
    header = [
        "variant",
        "prefill tok/s",
        "vs fp32",
        "vs bf16",
        "decode tok/s",
        "vs fp32",
        "vs bf16",
        "weights+buffers MiB",
        "RSS after load MiB",
        "peak RSS in inference MiB",
        "greedy tokens = fp32",
    ]
    table = [
        [
            r["variant"],
            f"{r['prefill_tok_per_s']:.0f}",
            ratio(r, base, "prefill_tok_per_s"),
            ratio(r, bf16, "prefill_tok_per_s"),
            f"{r['decode_tok_per_s']:.1f}" if r["decode_tok_per_s"] != "" else "-",
            ratio(r, base, "decode_tok_per_s"),
            ratio(r, bf16, "decode_tok_per_s"),
            f"{r['state_MiB']:.0f}",
            f"{r['rss_after_load_MiB']:.0f}",
            f"{r['peak_rss_inference_MiB']:.0f}" if r["peak_rss_inference_MiB"] != "" else "n/a",
            r["greedy_tokens_equal_fp32"],
        ]
        for r in results
    ]
    machine = "\n".join(f"- {k}: {v}" for k, v in info.items())
    command = "python benchmarks/bench_e2e.py " + " ".join(own)
    write_text(
        args.out / "e2e.md",
        f"# End to end: SmolLM2-135M on CPU\n\nCommand: `{command.strip()}`\n\n{machine}\n\n"
        f"Prefill: {args.prefill} tokens in one forward; decode: {args.decode - 1} greedy steps with KV cache "
        f"after a {PROMPT_TOKENS}-token prompt; medians of {args.repeats}; clock: {args.clock}.\n\n"
        + markdown_table(header, table)
        + "\n",
    )
    _plot(results, args.out / "e2e.png")
    print(f"wrote {args.out}/e2e.csv, e2e.md, e2e.png", flush=True)


def _plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["variant"] for r in results]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    for ax, key, title in (
        (axes[0], "prefill_tok_per_s", "prefill tokens/s (512)"),
        (axes[1], "decode_tok_per_s", "decode tokens/s"),
        (axes[2], "state_MiB", "weights + buffers (MiB)"),
    ):
        ax.bar(names, [float(r[key] or 0) for r in results])
        ax.set_title(title, fontsize=9)
        ax.tick_params(axis="x", labelsize=8)
    fig.suptitle("SmolLM2-135M, CPU", fontsize=10)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    tmp.replace(path)


if __name__ == "__main__":
    main()
