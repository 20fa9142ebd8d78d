"""The batch-invariant mode against the default, on SmolLM2-135M's layers and end to end (issue 27).

    flock /tmp/llm-int8-timing.lock python benchmarks/bench_batch_invariant.py --out benchmarks/results/issue27

Layers: each of SmolLM2-135M's linear shapes (q/o 576 -> 576, k/v 576 -> 192, gate/up 576 -> 1536,
down 1536 -> 576) of one mid layer (``--layer``), fed the real inputs that layer sees on WikiText-2
test tokens (captured from the fp32 model: real outlier patterns), at M = 1, 16 and 512 tokens:
``nn.Linear`` fp32, the int8 default (at M <= 16 the weight-only kernel where the measured crossover
says so) and the same layer with ``batch_invariant=True``, interleaved, thread CPU time, one thread.
End to end: a 512-token prefill (no cache) and 16 greedy decode steps (M = 1) of the whole model,
default against batch-invariant, interleaved. Writes ``batch_invariant.{md,csv,png}`` with the
ratios (batch-invariant time / default time) and the CPU flags.
"""

from __future__ import annotations

import copy
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    markdown_table,
    median,
    run_info,
    time_interleaved,
    timing_arguments,
    write_csv,
    write_text,
)

import llm_int8  # noqa: E402
from llm_int8 import Int8Linear  # noqa: E402
from llm_int8.evaluation import read_text, tokenize_text  # noqa: E402
from llm_int8.integrations import load_model  # noqa: E402

PROJECTIONS = ("q_proj", "k_proj", "o_proj", "gate_proj", "down_proj")  # v_proj has k_proj's shape, up gate's
SIZES = (1, 16, 512)
FLAGS = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_int8", "amx_tile")


def _captured_inputs(model, ids, layer: int) -> dict[str, torch.Tensor]:
    """The (tokens, K) input of each projection of decoder layer ``layer`` on ``ids``."""
    inputs, hooks = {}, []
    block = model.model.layers[layer]
    for name in PROJECTIONS:
        module = block.self_attn if name.endswith(("q_proj", "k_proj", "o_proj")) else block.mlp
        hooks.append(getattr(module, name).register_forward_hook(
            lambda m, args, out, name=name: inputs.__setitem__(name, args[0].detach().reshape(-1, args[0].shape[-1]))
        ))  # fmt: skip
    try:
        with torch.no_grad():
            model(ids)
    finally:
        for h in hooks:
            h.remove()
    return inputs


def _layer_rows(model, inputs: dict, layer: int, rounds: int) -> list[dict]:
    block = model.model.layers[layer]
    rows = []
    for name in PROJECTIONS:
        lin = getattr(block.self_attn if name.endswith(("q_proj", "k_proj", "o_proj")) else block.mlp, name)
        default = Int8Linear.from_linear(lin)
        invariant = Int8Linear.from_linear(lin, batch_invariant=True)
        for M in SIZES:
            X = inputs[name][:M].contiguous()
            per_row = (X.abs() >= default.threshold).sum(dim=1).float()
            columns = int((X.abs() >= default.threshold).any(dim=0).sum())
            with torch.inference_mode():
                times = time_interleaved(
                    {k: (lambda f=f, X=X: f(X)) for k, f in (("fp32", lin), ("default", default), ("invariant", invariant))},  # noqa: E501
                    rounds,
                    clock="cpu",
                )
            t = {k: median(v) for k, v in times.items()}
            rows.append({
                "layer": f"{name} {lin.in_features}x{lin.out_features}", "M": M,
                "outlier_columns": columns, "outliers_per_token": f"{per_row.mean():.2f}",
                "fp32_us": f"{t['fp32'] * 1e6:.0f}", "default_us": f"{t['default'] * 1e6:.0f}",
                "invariant_us": f"{t['invariant'] * 1e6:.0f}",
                "invariant_vs_default": f"{t['invariant'] / t['default']:.3f}",
            })  # fmt: skip
            print(rows[-1], flush=True)
    return rows


def _end_to_end(base, ids, rounds: int) -> list[dict]:
    models = {
        "default": llm_int8.quantize_model(copy.deepcopy(base)),
        "invariant": llm_int8.quantize_model(copy.deepcopy(base), batch_invariant=True),
    }
    prefill_ids, prompt = ids[:512][None], ids[512:544][None]

    def decode(model) -> None:
        out = model(prompt, use_cache=True)
        past, token = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
        for _ in range(16):
            out = model(token, past_key_values=past, use_cache=True)
            past, token = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)

    with torch.inference_mode():
        pre = time_interleaved({k: (lambda m=m: m(prefill_ids, use_cache=False)) for k, m in models.items()},
                               rounds, clock="cpu")  # fmt: skip
        dec = time_interleaved({k: (lambda m=m: decode(m)) for k, m in models.items()}, rounds, clock="cpu")
    rows = []
    for what, times, tokens in (("prefill 512 tokens", pre, 512), ("32-token prompt + 16 decode steps", dec, 16)):
        t = {k: median(v) for k, v in times.items()}
        rows.append({"layer": f"whole model: {what}", "M": "512" if tokens == 512 else "32, then 1",
                     "outlier_columns": "", "outliers_per_token": "", "fp32_us": "",
                     "default_us": f"{t['default'] * 1e6:.0f}", "invariant_us": f"{t['invariant'] * 1e6:.0f}",
                     "invariant_vs_default": f"{t['invariant'] / t['default']:.3f}"})  # fmt: skip
        print(rows[-1], flush=True)
    return rows


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4))
    labels = [f"{r['layer'].split(' ')[0]}\nM={r['M']}" if "whole" not in r["layer"] else
              r["layer"].replace("whole model: ", "model\n")[:24] for r in rows]  # fmt: skip
    ratios = [float(r["invariant_vs_default"]) for r in rows]
    ax.bar(range(len(rows)), ratios, color=["tab:red" if x > 1.15 else "tab:blue" for x in ratios])
    ax.axhline(1.0, color="black", lw=0.8)
    ax.axhline(1.15, color="tab:red", lw=0.8, ls="--", label="target: +15% at M = 512")
    ax.set_xticks(range(len(rows)), labels, fontsize=6, rotation=90)
    ax.set_ylabel("batch-invariant time / default time")
    ax.set_title("SmolLM2-135M: the batch-invariant mode against the default (thread CPU time)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    text = Path(__file__).resolve().parents[2] / "shared/data/wikitext-2/test.txt"
    extra = {"--layer": dict(type=int, default=15), "--text": dict(type=Path, default=text)}
    args = timing_arguments(__doc__.split("\n")[0], rounds=7, argv=argv, **extra)
    info = run_info()
    base, tokenizer = load_model(None, dtype=torch.float32)
    base.eval()
    ids = tokenize_text(tokenizer, read_text(args.text), max_tokens=512 + 32)
    inputs = _captured_inputs(base, ids[:512][None], args.layer)
    start = time.perf_counter()
    rows = _layer_rows(base, inputs, args.layer, args.rounds) + _end_to_end(base, ids, max(3, args.rounds // 2))
    info["seconds"] = f"{time.perf_counter() - start:.0f}"
    info["loadavg_1min_end"] = f"{os.getloadavg()[0]:.2f}"
    flags = set(info["cpu_flags"].split())
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(args.out / "batch_invariant.csv", rows)
    _plot(rows, args.out / "batch_invariant.png")
    header = list(rows[0])
    machine = "\n".join(f"- {k}: {v}" for k, v in info.items() if k != "cpu_flags")
    present = ", ".join(f"{f} {'yes' if f in flags else 'no'}" for f in FLAGS)
    command = "python benchmarks/bench_batch_invariant.py " + " ".join(sys.argv[1:])
    write_text(
        args.out / "batch_invariant.md",
        f"# The batch-invariant mode against the default (issue 27)\n\nCommand: `{command.strip()}`\n\n{machine}\n"
        f"- CPU flags: {present}\n\nMedians of {args.rounds} interleaved rounds (end to end: "
        f"{max(3, args.rounds // 2)}), thread CPU time, one thread; inputs of decoder layer {args.layer} on "
        "WikiText-2 test tokens.\n\n" + markdown_table(header, [[str(r[h]) for h in header] for r in rows]) + "\n",
    )
    print(markdown_table(header, [[str(r[h]) for h in header] for r in rows]), flush=True)


if __name__ == "__main__":
    main()
