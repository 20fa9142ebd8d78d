"""SmolLM2-135M prefill and decode, issue 20's routes against each other in one process, interleaved.

    python benchmarks/bench_e2e_ab.py --out benchmarks/results/issue20 --threads 1

``bench_e2e.py`` runs each variant in its own process, one after the other: on the shared 2-core
machine the load moves between them by more than the differences measured here. This script loads
the bundled model once, converts copies, and times the variants in alternation, round after round
(thread CPU time, one thread), on 512 WikiText-2 test tokens (prefill, no cache, ``--prefill``) and 16 greedy
decode steps (``--decode``) after a 32-token prompt. Variants:

* ``fp32``, ``bf16``: the float model;
* ``int8``: the library's default (C++ kernels, GEMM as ``ops/choice`` measured it);
* ``int8_torch``: the same model with ``native.ops`` returning ``None``: the PyTorch sequence, the op
  as it was before issue 20;
* ``int8_pairs`` / ``int8_pairs_torch``: both with ``LLM_INT8_CPU_BACKEND=fbgemm_pairs``, the kernel the
  choice ranks first when it times the fused route (``bench_gemm_routes.py``);
* ``int8_bf16`` / ``int8_bf16_torch``: the bf16 model converted (prefill only with ``--bf16``).

Writes ``e2e_ab.{md,csv}``.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import markdown_table, median, run_info, smoke_arguments, write_csv, write_text  # noqa: E402

import llm_int8  # noqa: E402
from llm_int8.evaluation import read_text, tokenize_text  # noqa: E402
from llm_int8.integrations import load_model  # noqa: E402
from llm_int8.ops.kernels import native  # noqa: E402

ROUTES = {  # variant: (model, C++ kernels on, forced GEMM)
    "fp32": ("fp32", True, None),
    "int8": ("int8", True, None),
    "int8_torch": ("int8", False, None),
    "int8_pairs": ("int8", True, "fbgemm_pairs"),
    "int8_pairs_torch": ("int8", False, "fbgemm_pairs"),
}
PROMPT_TOKENS = 32
BF16_ROUTES = {"bf16": ("bf16", True, None), "int8_bf16": ("int8_bf16", True, None),
               "int8_bf16_torch": ("int8_bf16", False, None)}  # fmt: skip


def _route(native_on: bool, kernel: str | None, real) -> None:
    native.ops = real if native_on else (lambda: None)
    if kernel:
        os.environ["LLM_INT8_CPU_BACKEND"] = kernel
    else:
        os.environ.pop("LLM_INT8_CPU_BACKEND", None)


def _prefill(model, ids) -> float:
    start = time.thread_time()
    model(ids, use_cache=False)
    return time.thread_time() - start


def _decode(model, prompt, steps: int) -> float:
    out = model(prompt, use_cache=True)
    past, token = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
    start = time.thread_time()
    for _ in range(steps):
        out = model(token, past_key_values=past, use_cache=True)
        past, token = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
    return (time.thread_time() - start) / steps


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--prefill", type=int, default=512, help="tokens of the prefill forward")
    parser.add_argument("--decode", type=int, default=16, help="greedy decode steps after the 32-token prompt")
    parser.add_argument("--bf16", action="store_true", help="also the bf16 model and its conversion (prefill)")
    parser.add_argument(
        "--text", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/wikitext-2/test.txt"
    )
    args = smoke_arguments(parser, argv, rounds=1, prefill=16, decode=2, bf16=True)
    torch.set_num_threads(args.threads)
    info = run_info()
    base, tokenizer = load_model(None, dtype=torch.float32)
    base.eval()
    ids = tokenize_text(tokenizer, read_text(args.text), max_tokens=args.prefill + PROMPT_TOKENS)
    prefill_ids, prompt = ids[: args.prefill][None], ids[args.prefill :][None]  # (1, prefill), (1, 32)
    models = {"fp32": base, "int8": llm_int8.quantize_model(copy.deepcopy(base))}
    routes = dict(ROUTES)
    if args.bf16:
        models["bf16"] = copy.deepcopy(base).to(torch.bfloat16)
        models["int8_bf16"] = llm_int8.quantize_model(copy.deepcopy(base).to(torch.bfloat16))
        routes.update(BF16_ROUTES)
    real = native.ops
    prefill: dict[str, list[float]] = {k: [] for k in routes}
    decode: dict[str, list[float]] = {k: [] for k in routes if "bf16" not in k}
    with torch.inference_mode():
        for r in range(args.rounds + 1):  # round 0: warm-up (kernel choices, packing), not kept
            for name, (model, native_on, kernel) in routes.items():
                _route(native_on, kernel, real)
                t = _prefill(models[model], prefill_ids)
                d = _decode(models[model], prompt, args.decode) if name in decode else None
                if r:
                    prefill[name].append(t)
                    if d is not None:
                        decode[name].append(d)
            print(f"round {r}: " + " ".join(f"{k}={v[-1] * 1e3:.0f}" for k, v in prefill.items() if v), flush=True)
    _route(True, None, real)
    info["loadavg_1min_end"] = f"{os.getloadavg()[0]:.2f}"
    _write(args, info, prefill, decode, argv if argv is not None else sys.argv[1:])


def _write(args, info: dict, prefill: dict, decode: dict, argv: list[str]) -> None:
    rows, table = [], []
    fp32_tok = args.prefill / median(prefill["fp32"])
    fp32_dec = 1 / median(decode["fp32"])
    for name, times in prefill.items():
        tok = args.prefill / median(times)
        dec = 1 / median(decode[name]) if name in decode else None
        runs = [round(t * 1e3) for t in times]
        rows.append({"variant": name, "prefill_tok_per_s": f"{tok:.1f}", "prefill_runs_ms": runs,
                     "decode_tok_per_s": f"{dec:.2f}" if dec else ""})  # fmt: skip
        table.append([name, f"{tok:.0f}", f"{tok / fp32_tok:.2f}x", f"{dec:.1f}" if dec else "-",
                      f"{dec / fp32_dec:.2f}x" if dec else "-"])  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(args.out / "e2e_ab.csv", rows)
    command = "python benchmarks/bench_e2e_ab.py " + " ".join(argv)
    machine = "\n".join(f"- {k}: {v}" for k, v in info.items())
    header = ["variant", f"prefill tok/s ({args.prefill})", "vs fp32", "decode tok/s", "vs fp32"]
    write_text(
        args.out / "e2e_ab.md",
        f"# SmolLM2-135M, routes interleaved in one process\n\nCommand: `{command.strip()}`\n\n{machine}\n\n"
        f"Medians of {args.rounds} rounds after a warm-up round; thread CPU time, {args.threads} thread(s); "
        f"{args.decode} decode steps after a {PROMPT_TOKENS}-token prompt.\n\n" + markdown_table(header, table) + "\n",
    )
    print(markdown_table(header, table), flush=True)


if __name__ == "__main__":
    main()
