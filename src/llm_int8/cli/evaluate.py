"""``llm-int8 eval``: the paper's Table 1 on any model — perplexity, HellaSwag and agreement with the
float model on chat prompts, per int8 method."""

from __future__ import annotations

import platform
import time

import torch

from ..config import DEFAULT_ACTIVATION, DEFAULT_THRESHOLD, PAPER_THRESHOLD
from ._args import nonnegative_int, output_file, positive_int, shard

__all__ = ["register"]

# The paper's Table 1 rows, in its order, then the library's default and its calibrated steps,
# bitsandbytes, and the 16-bit references (kept in step with llm_int8.evaluation.METHODS by a test).
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
        "batch_invariant",
        "bitsandbytes",
        "bf16",
        "bf16-weights",
        "fp16",
        "fp16-weights",
    )
)


def _shard(tasks: list, shard: tuple[int, int] | None) -> list:
    """The i-th of n contiguous parts of ``tasks`` (sizes differ by at most one)."""
    if shard is None:
        return tasks
    i, n = shard
    part = tasks[i * len(tasks) // n : (i + 1) * len(tasks) // n]
    if not part:
        raise ValueError(f"shard {i}/{n} of {len(tasks)} tasks is empty")
    return part


def _methods(text: str):
    """The method specs; bitsandbytes is left out of the default list where it is not installed."""
    import importlib.util

    from ..evaluation import parse_methods

    specs = parse_methods(text)
    if text == _DEFAULT_METHODS and importlib.util.find_spec("bitsandbytes") is None:
        print("(bitsandbytes is not installed: its method is left out)", flush=True)
        specs = [s for s in specs if not s.bitsandbytes]
    return specs


def _read_inputs(args):
    """(text, tasks, prompts): every input read and checked before the slow model load."""
    from ..evaluation import read_hellaswag, read_prompts, read_text

    if args.text is None and args.hellaswag is None and args.agreement is None:
        raise ValueError("give --text (perplexity), --hellaswag (zero-shot accuracy) and/or --agreement")
    if (args.resume or args.shard) and not args.hellaswag:
        raise ValueError("--resume and --shard apply to --hellaswag runs")
    if args.resume and not args.per_task:
        raise ValueError("--resume continues a --per-task file: give it")
    text = read_text(args.text) if args.text else None
    tasks = read_hellaswag(args.hellaswag, limit=args.limit, skip=args.skip_tasks) if args.hellaswag else None
    prompts = None
    if args.agreement is not None:
        prompts = read_prompts(args.agreement or None, limit=args.prompt_limit)
    return text, (_shard(tasks, args.shard) if tasks else None), prompts


def _show(row: dict) -> None:
    parts = [f"{row['method']}:"]
    if "perplexity" in row:
        parts.append(f"perplexity {row['perplexity']:.3f}")
    if "hellaswag_acc" in row:
        parts.append(f"hellaswag acc {row['hellaswag_acc']:.4f} acc_norm {row['hellaswag_acc_norm']:.4f}")
        if row.get("hellaswag_resumed"):
            parts.append(f"({row['hellaswag_resumed']} tasks read back from the per-task file)")
    if "agreement" in row:
        a = row["agreement"]
        parts.append(
            f"agreement: identical {a['identical']}/{a['prompts']}, first token {a['first_token_same']}/{a['prompts']},"
            f" logits error median {a['logits_rel_error_median']:.3f} max {a['logits_rel_error_max']:.3f}"
        )
    parts.append(f"({row['seconds']:.0f} s)")
    print(" ".join(parts), flush=True)


def _settings(args, ids, tasks, t0: float) -> dict:
    return {
        "text": str(args.text) if args.text else None,
        "max_tokens": args.max_tokens,
        "tokens_scored": None if ids is None else (ids.numel() // args.window) * args.window,
        "window": args.window,
        "hellaswag": str(args.hellaswag) if args.hellaswag else None,
        "hellaswag_limit": args.limit,
        "hellaswag_skip": args.skip_tasks,
        "hellaswag_shard": None if args.shard is None else "{}/{}".format(*args.shard),
        "hellaswag_tasks": None if not tasks else [tasks[0].index, tasks[-1].index],
        "per_task": str(args.per_task) if args.per_task else None,
        "agreement_prompts": None if args.agreement is None else (args.agreement or "built-in"),
        "agreement_prompt_limit": args.prompt_limit,
        "new_tokens": args.new_tokens,
        "paper_threshold": PAPER_THRESHOLD,
        "default_config": {"threshold": DEFAULT_THRESHOLD, "activation": DEFAULT_ACTIVATION},
        "dtype": "float32",
        "torch": torch.__version__,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "threads": torch.get_num_threads(),
        "seconds": time.perf_counter() - t0,
    }


def _write_outputs(args, rows: list[dict], tasks, settings: dict, model_name: str) -> None:
    from ..evaluation.report import agreement_table, atomic_write, markdown_table, plot_comparison, write_json

    table = ""
    if any("perplexity" in r or "hellaswag_acc" in r for r in rows):
        table = markdown_table(rows, labels=None if tasks is None else [t.label for t in tasks])
    if any("agreement" in r for r in rows):
        table += ("\n" if table else "") + agreement_table(rows, settings["new_tokens"])
    print("\n" + table)
    write_json(args.json, {"results": rows, "model": model_name, "settings": settings})
    print(f"wrote {args.json}")
    if args.markdown:
        atomic_write(args.markdown, f"Model: {model_name}\n\n{table}")
        print(f"wrote {args.markdown}")
    if args.plot:
        plot_comparison(rows, args.plot, title=model_name)
        print(f"wrote {args.plot}")


@torch.no_grad()  # inference only; a decorator, not set_grad_enabled: main() may run in a caller's process
def _cmd_eval(args) -> int:
    from ..evaluation import TaskLog, compare_methods, tokenize_text
    from ..integrations import load_model

    specs = _methods(args.methods)
    text, tasks, prompts = _read_inputs(args)
    model_name = args.model or "SmolLM2-135M-Instruct (bundled GGUF)"
    task_log = None
    if args.per_task:  # opened (and a resumed one checked) before the slow load
        header = {"model": model_name, "hellaswag": str(args.hellaswag)}
        task_log = TaskLog(args.per_task, header, resume=args.resume)
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
        print(f"{args.hellaswag}: tasks {tasks[0].index}-{tasks[-1].index} ({len(tasks)})", flush=True)
    if prompts:
        print(f"agreement: {len(prompts)} chat prompts, {args.new_tokens} greedy tokens each", flush=True)
    try:
        rows = compare_methods(
            model,
            tokenizer,
            specs,
            input_ids=ids,
            window=args.window,
            tasks=tasks,
            progress=True,
            on_result=_show,
            task_log=task_log,
            prompts=prompts,
            new_tokens=args.new_tokens,
        )
    finally:
        if task_log is not None:
            task_log.close()
    _write_outputs(args, rows, tasks, _settings(args, ids, tasks, t0), model_name)
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="compare int8 methods (the paper's Table 1): perplexity, HellaSwag, agreement with fp32",
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
        "--agreement",
        nargs="?",
        const="",
        metavar="PROMPTS",
        help='agreement with fp32 on chat prompts: the built-in 66, or a file (.jsonl: one {"prompt": ...} '
        "per line; other: one prompt per line)",
    )
    p.add_argument("--prompt-limit", type=positive_int, default=None, help="use only the first K prompts")
    p.add_argument(
        "--new-tokens", type=positive_int, default=16, help="greedy tokens per prompt for --agreement (default 16)"
    )
    p.add_argument(
        "--per-task",
        type=output_file,
        help="append each HellaSwag task's scores to this JSON Lines file as it is scored (see --resume)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the --per-task file of an interrupted run: its tasks are read back, not scored again",
    )
    p.add_argument(
        "--shard",
        type=shard,
        metavar="I/N",
        help="score only the I-th of N contiguous parts of the selected tasks (0-based; e.g. 0/4)",
    )
    p.add_argument(
        "--json", required=True, type=output_file, help="where to write the results (JSON; written only on success)"
    )
    p.add_argument("--markdown", type=output_file, help="also write the table as Markdown")
    p.add_argument("--plot", type=output_file, help="also write a bar chart (PNG)")
    p.set_defaults(func=_cmd_eval)
