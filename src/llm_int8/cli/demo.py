"""``llm-int8 demo``: the main job. Convert the bundled SmolLM2-135M and compare it with fp32: memory,
agreement on a quick set of chat prompts, answers side by side (with fp32's own margin where they part),
and optionally perplexity."""

from __future__ import annotations

import copy
import time

import torch

from ._args import add_int8_options, nonempty_text, nonnegative_int, positive_int

__all__ = ["register"]

DEFAULT_PROMPTS = (
    "What is the capital of France?",
    "Write one sentence about the ocean.",
    "List three primary colors.",
)


def _quick_subset(n: int):
    """``n`` built-in prompts, taken round-robin over their categories (facts, arithmetic, code, ...)."""
    from ..evaluation import read_prompts

    by_category: dict[str, list] = {}
    for p in read_prompts():
        by_category.setdefault(p.category, []).append(p)
    picked, depth = [], 0
    while len(picked) < n and any(depth < len(v) for v in by_category.values()):
        picked += [v[depth] for v in by_category.values() if depth < len(v)][: n - len(picked)]
        depth += 1
    return picked


def _agreement_summary(model, int8_model, tokenizer, n: int, new_tokens: int) -> None:
    from ..evaluation import measure_agreement, reference_generations, summarize_agreement

    t0 = time.perf_counter()
    prompts = _quick_subset(n)
    categories = ", ".join(dict.fromkeys(p.category for p in prompts))
    print(f"\nagreement with fp32 on {len(prompts)} built-in chat prompts ({categories}), {new_tokens} greedy tokens")
    refs = reference_generations(model, tokenizer, prompts, new_tokens, progress=True, desc="fp32")
    rows = measure_agreement(int8_model, tokenizer, prompts, refs, new_tokens, progress=True, desc="int8")
    a = summarize_agreement(rows)
    print(f"| measure (int8 vs fp32, {a['prompts']} prompts, {time.perf_counter() - t0:.0f} s) | value |")
    print("| --- | --- |")
    print(f"| same first token | {a['first_token_same']}/{a['prompts']} |")
    print(f"| identical {new_tokens}-token answers | {a['identical']}/{a['prompts']} |")
    print(f"| share of fp32's tokens before the first difference | {a['matched_share_mean']:.2f} |")
    print(
        f"| last-position logits rel. error, median / max | {a['logits_rel_error_median']:.3f} / "
        f"{a['logits_rel_error_max']:.3f} |"
    )
    print(
        f"| the same with the logits centred (a shift of all logits changes nothing) | "
        f"{a['logits_rel_error_centred_median']:.3f} / {a['logits_rel_error_centred_max']:.3f} |"
    )
    print(f"| KL(fp32 ‖ int8) of the next token, mean | {a['kl_mean']:.4f} nats |")
    edges = [r for r in rows if not r["identical"] and r["ref_margin_prob"] is not None]
    if edges:
        close = sum(r["ref_margin_prob"] < 0.1 for r in edges)
        print(
            f"(of the {len(edges)} answers that differ, {close} part where fp32's own top two tokens are within"
            " 0.1 in probability: knife edges, not errors; `llm-int8 eval --agreement` runs all 66 prompts)"
        )


def _show_answer(tokenizer, prompt: str, ref, other) -> None:
    from ..evaluation import compare_generations

    def text(tokens) -> str:
        return tokenizer.decode(list(tokens), skip_special_tokens=True).strip()

    row = compare_generations(ref, other)
    print(f"\n> {prompt}\n  fp32: {text(ref.tokens)}\n  int8: {text(other.tokens)}")
    if row["identical"]:
        print("  same: yes")
        return
    k, top = row["first_difference"], ref.margins[row["first_difference"]]
    first, second = (repr(tokenizer.decode([t])) for t in top.tokens)
    kind = "a knife edge" if top.probs[0] - top.probs[1] < 0.1 else "a clear choice"
    print(
        f"  same: no, from token {k + 1}: there fp32 itself gives {first} p = {top.probs[0]:.2f} and {second}"
        f" p = {top.probs[1]:.2f} (logit gap {top.logit_gap:.2f}): {kind}"
    )


def _cmd_demo(args) -> int:
    from tqdm.auto import tqdm

    from ..evaluation import generate, perplexity, read_text, tokenize_text
    from ..integrations import linear_memory, load_model, quantize_model

    text = read_text(args.text) if args.text else None  # fail on a bad path before the slow load
    t0 = time.perf_counter()
    print(f"loading {args.model or 'the bundled SmolLM2-135M-Instruct'} in float32 ...", flush=True)
    model, tokenizer = load_model(args.model, dtype=torch.float32)
    print(f"loaded in {time.perf_counter() - t0:.1f} s", flush=True)

    int8_model = copy.deepcopy(model)
    int8_model, report = quantize_model(
        int8_model, threshold=args.threshold, activation=args.activation, progress=True, return_report=True
    )
    print(report.summary())

    mem_fp32 = linear_memory(model)
    mem_int8 = linear_memory(int8_model)
    print("\nmemory of the converted linear layers")
    print("| storage | MiB | vs fp16 |")
    print("| --- | --- | --- |")
    fp16_bytes = report.bytes_before // 2  # the same layers held in 16 bits
    for name, nbytes in (
        ("fp32", report.bytes_before),
        ("fp16 (equivalent)", fp16_bytes),
        ("int8 (+ scales)", report.bytes_after),
    ):
        print(f"| {name} | {nbytes / 2**20:.1f} | {nbytes / fp16_bytes:.2f}x |")
    print(
        f"(all linear layers incl. those kept in float: fp32 model {mem_fp32['float'] / 2**20:.1f} MiB, "
        f"int8 model {(mem_int8['float'] + mem_int8['int8']) / 2**20:.1f} MiB)"
    )
    if next(model.parameters()).device.type == "cpu":
        print(
            "(stored size; on CPU a layer that runs the int8 x int8 kernel also keeps a packed copy of\n"
            " the weight, about 1 more byte per weight for each kernel it has run (up to two: the one\n"
            " measured fastest for prompts and the one for a few tokens): BENCHMARKS.md, (d) and (f))"
        )

    if args.agreement_prompts:
        _agreement_summary(model, int8_model, tokenizer, args.agreement_prompts, args.agreement_tokens)

    prompts = args.prompt or list(DEFAULT_PROMPTS)
    print(f"\ngreedy answers side by side, {args.max_new_tokens} new tokens at most")
    rows = []
    for prompt in tqdm(prompts, desc="generating", unit="prompt"):
        ref = generate(model, tokenizer, prompt, args.max_new_tokens, margins=True)
        rows.append((prompt, ref, generate(int8_model, tokenizer, prompt, args.max_new_tokens)))
    for prompt, ref, other in rows:
        _show_answer(tokenizer, prompt, ref, other)

    if text is not None:
        ids = tokenize_text(tokenizer, text, args.max_tokens)
        print(f"\nperplexity on {args.text} ({ids.numel()} tokens, windows of {args.window})")
        ppl_fp32 = perplexity(model, ids, window=args.window, progress=True, desc="fp32")
        ppl_int8 = perplexity(int8_model, ids, window=args.window, progress=True, desc="int8")
        delta = (ppl_int8.perplexity / ppl_fp32.perplexity - 1) * 100
        print("| model | perplexity |")
        print("| --- | --- |")
        print(f"| fp32 | {ppl_fp32.perplexity:.3f} |")
        print(
            f"| LLM.int8() ({args.activation} activations, α = {args.threshold:g}) "
            f"| {ppl_int8.perplexity:.3f} ({delta:+.2f}%) |"
        )
    return 0


def register(sub) -> None:
    demo = sub.add_parser("demo", help="convert the bundled SmolLM2-135M to int8 and compare it with fp32")
    demo.add_argument(
        "--model", help="local HF directory, .gguf file or hub id (default: bundled SmolLM2-135M-Instruct)"
    )
    add_int8_options(demo)
    demo.add_argument(
        "--prompt", action="append", type=nonempty_text, help="a prompt (repeatable; default: three built-in prompts)"
    )
    demo.add_argument("--max-new-tokens", type=positive_int, default=32, help="tokens of each side-by-side answer")
    demo.add_argument(
        "--agreement-prompts",
        type=nonnegative_int,
        default=14,
        help="built-in chat prompts for the agreement summary (default 14, two per category; 0: none)",
    )
    demo.add_argument(
        "--agreement-tokens", type=positive_int, default=16, help="greedy tokens per agreement prompt (default 16)"
    )
    demo.add_argument("--text", help="text file for a perplexity comparison (e.g. ../shared/data/wikitext-2/test.txt)")
    demo.add_argument("--max-tokens", type=positive_int, default=8192, help="tokens of --text to score")
    demo.add_argument("--window", type=positive_int, default=512, help="perplexity window in tokens")
    demo.set_defaults(func=_cmd_demo)
