"""``llm-int8 eval``: the paper's Table 1 on any model — perplexity and HellaSwag per int8 method."""

from __future__ import annotations

import platform
import time

import torch

from ..config import DEFAULT_ACTIVATION, DEFAULT_THRESHOLD, PAPER_THRESHOLD
from ._args import nonnegative_int, output_file, positive_int

__all__ = ["register"]

# The paper's Table 1 rows, in its order, then the library's default and its calibrated steps
# (kept in step with llm_int8.evaluation.METHODS by a test).
_DEFAULT_METHODS = ",".join(
    (
        "fp32",
        "absmax",
        "zeropoint",
        "rowwise",
        "vectorwise",
        "vectorwise-zeropoint",
        "rowwise+decomp",
        "llm.int8",
        "zeropoint-llm.int8",
        "default",
        "calibrated",
        "precise",
    )
)


@torch.no_grad()  # inference only; a decorator, not set_grad_enabled: main() may run in a caller's process
def _cmd_eval(args) -> int:
    from ..evaluation import compare_methods, parse_methods, read_hellaswag, read_text, tokenize_text
    from ..evaluation.report import markdown_table, plot_comparison, write_json
    from ..integrations import load_model

    # Validate every input before the slow model load.
    specs = parse_methods(args.methods)
    if args.text is None and args.hellaswag is None:
        raise ValueError("give --text (perplexity) and/or --hellaswag (zero-shot accuracy)")
    text = read_text(args.text) if args.text else None
    tasks = read_hellaswag(args.hellaswag, limit=args.limit, skip=args.skip_tasks) if args.hellaswag else None

    t0 = time.perf_counter()
    print(f"loading {args.model or 'the bundled SmolLM2-135M-Instruct'} in float32 ...", flush=True)
    model, tokenizer = load_model(args.model, dtype=torch.float32)
    ids = None
    if text is not None:
        ids = tokenize_text(tokenizer, text, args.max_tokens)
        if ids.numel() < args.window:
            raise ValueError(f"{args.text}: {ids.numel()} tokens, fewer than one window of {args.window}")
        print(f"{args.text}: scoring {ids.numel() // args.window} windows of {args.window} tokens", flush=True)
    if tasks:
        print(f"{args.hellaswag}: {len(tasks)} tasks", flush=True)

    def show(row: dict) -> None:
        parts = [f"{row['method']}:"]
        if "perplexity" in row:
            parts.append(f"perplexity {row['perplexity']:.3f}")
        if "hellaswag_acc" in row:
            parts.append(f"hellaswag acc {row['hellaswag_acc']:.4f} acc_norm {row['hellaswag_acc_norm']:.4f}")
        parts.append(f"({row['seconds']:.0f} s)")
        print(" ".join(parts), flush=True)

    rows = compare_methods(
        model, tokenizer, specs, input_ids=ids, window=args.window, tasks=tasks, progress=True, on_result=show
    )
    settings = {
        "text": str(args.text) if args.text else None,
        "max_tokens": args.max_tokens,
        "tokens_scored": None if ids is None else (ids.numel() // args.window) * args.window,
        "window": args.window,
        "hellaswag": str(args.hellaswag) if args.hellaswag else None,
        "hellaswag_limit": args.limit,
        "hellaswag_skip": args.skip_tasks,
        "paper_threshold": PAPER_THRESHOLD,
        "default_config": {"threshold": DEFAULT_THRESHOLD, "activation": DEFAULT_ACTIVATION},
        "dtype": "float32",
        "torch": torch.__version__,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "threads": torch.get_num_threads(),
        "seconds": time.perf_counter() - t0,
    }
    model_name = args.model or "SmolLM2-135M-Instruct (bundled GGUF)"
    table = markdown_table(rows, labels=None if tasks is None else [t.label for t in tasks])
    print("\n" + table)
    write_json(args.json, {"results": rows, "model": model_name, "settings": settings})
    print(f"wrote {args.json}")
    if args.markdown:
        from ..evaluation.report import atomic_write

        atomic_write(args.markdown, f"Model: {model_name}\n\n{table}")
        print(f"wrote {args.markdown}")
    if args.plot:
        plot_comparison(rows, args.plot, title=model_name)
        print(f"wrote {args.plot}")
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="compare int8 methods (the paper's Table 1): perplexity and HellaSwag",
        description="Compare the int8 quantization methods of the LLM.int8() paper on one model.",
    )
    p.add_argument("--model", help="local HF directory, .gguf file or hub id (default: bundled SmolLM2-135M-Instruct)")
    p.add_argument("--text", help="text file for perplexity (e.g. ../shared/data/wikitext-2/test.txt)")
    p.add_argument(
        "--methods",
        default=_DEFAULT_METHODS,
        help=f"comma-separated methods (default: all): {_DEFAULT_METHODS}",
    )
    p.add_argument("--max-tokens", type=positive_int, default=None, help="score only the first N tokens of --text")
    p.add_argument("--window", type=positive_int, default=512, help="perplexity window in tokens (default 512)")
    p.add_argument("--hellaswag", help="HellaSwag file (6 lines per task, .txt or .bz2)")
    p.add_argument("--limit", type=positive_int, default=None, help="score only the first K HellaSwag tasks")
    p.add_argument(
        "--skip-tasks",
        type=nonnegative_int,
        default=0,
        help="start after the first S HellaSwag tasks (to split a long run into disjoint ranges)",
    )
    p.add_argument(
        "--json", required=True, type=output_file, help="where to write the results (JSON; written only on success)"
    )
    p.add_argument("--markdown", type=output_file, help="also write the table as Markdown")
    p.add_argument("--plot", type=output_file, help="also write a bar chart (PNG)")
    p.set_defaults(func=_cmd_eval)
