"""``llm-int8 demo``: the main job. Convert the bundled SmolLM2-135M and compare it, and its bf16 copy,
with fp32: memory, agreement on a quick set of chat prompts, answers side by side (with fp32's own
margin where they part), and optionally perplexity."""

from __future__ import annotations

import copy
import time

import torch

from ._args import add_int8_options, nonempty_text, nonnegative_int, positive_int

__all__ = ["register"]

SIDE_BY_SIDE = 3  # default side-by-side prompts: the first three of the agreement subset
SUBSET_SEED = 0


def _quick_subset(n: int):
    """``n`` built-in prompts: a stratified random sample, by a fixed rule rather than by hand.

    Each category's prompts (facts, arithmetic, instructions, ...; categories in file order) are put
    in a random order fixed by ``random.Random(SUBSET_SEED)``, then taken round-robin: one of each
    category, then a second of each, and so on. Neither the first nor the worst prompt of a category
    is favoured, so what the demo shows first is a draw, not a choice.
    """
    import random

    from ..evaluation import read_prompts

    by_category: dict[str, list] = {}
    for p in read_prompts():
        by_category.setdefault(p.category, []).append(p)
    rng = random.Random(SUBSET_SEED)
    for prompts in by_category.values():
        rng.shuffle(prompts)
    picked, depth = [], 0
    while len(picked) < n and any(depth < len(v) for v in by_category.values()):
        picked += [v[depth] for v in by_category.values() if depth < len(v)][: n - len(picked)]
        depth += 1
    return picked


def _summary_lines(summaries: dict[str, dict], seconds: float, new_tokens: int) -> list[str]:
    """The agreement table: one column per model (``int8``, ``bf16``), each against fp32."""
    names = list(summaries)
    n = summaries[names[0]]["prompts"]

    def row(label: str, fmt) -> str:
        return f"| {label} | " + " | ".join(fmt(summaries[m]) for m in names) + " |"

    return [
        f"| measure (against fp32, {n} prompts, {seconds:.0f} s) | " + " | ".join(names) + " |",
        "|" + " --- |" * (len(names) + 1),
        row("same first token", lambda a: f"{a['first_token_same']}/{n}"),
        row(f"identical {new_tokens}-token answers", lambda a: f"{a['identical']}/{n}"),
        row("share of fp32's tokens before the first difference", lambda a: f"{a['matched_share_mean']:.2f}"),
        row(
            "last-position logits rel. error, median / max",
            lambda a: f"{a['logits_rel_error_median']:.3f} / {a['logits_rel_error_max']:.3f}",
        ),
        row(
            "the same with the logits centred (a shift of all logits changes nothing)",
            lambda a: f"{a['logits_rel_error_centred_median']:.3f} / {a['logits_rel_error_centred_max']:.3f}",
        ),
        row("KL(fp32 ‖ model) of the next token, mean (nats)", lambda a: f"{a['kl_mean']:.4f}"),
    ]


def _agreement_summary(model, others: dict, tokenizer, prompts: list, new_tokens: int) -> None:
    from ..evaluation import measure_agreement, reference_generations, summarize_agreement

    t0 = time.perf_counter()
    categories = ", ".join(dict.fromkeys(p.category for p in prompts))
    print(
        f"\nagreement with fp32 on {len(prompts)} built-in chat prompts ({categories}; a stratified random"
        f" draw, seed {SUBSET_SEED}), {new_tokens} greedy tokens; bf16: the same model cast to bfloat16,"
        " the 16-bit copy int8 is measured against"
    )
    refs = reference_generations(model, tokenizer, prompts, new_tokens, progress=True, desc="fp32")
    rows = {
        name: measure_agreement(m, tokenizer, prompts, refs, new_tokens, progress=True, desc=name)
        for name, m in others.items()
    }
    summaries = {name: summarize_agreement(r) for name, r in rows.items()}
    print("\n".join(_summary_lines(summaries, time.perf_counter() - t0, new_tokens)))
    for name, r in rows.items():
        edges = [x for x in r if not x["identical"] and x["ref_margin_prob"] is not None]
        if edges:
            close = sum(x["ref_margin_prob"] < 0.1 for x in edges)
            print(
                f"({name}: of the {len(edges)} answers that differ from fp32's, {close} part where fp32's own top"
                " two tokens are within 0.1 in probability: knife edges, not errors)"
            )
    print("(`llm-int8 eval --agreement` runs all 66 prompts, for every method and the 16-bit references)")


def _show_answer(tokenizer, prompt: str, ref, others: dict) -> None:
    """fp32's answer, then each other model's, and where one parts from fp32, fp32's own top two there."""
    from ..evaluation import compare_generations

    def text(tokens) -> str:
        return tokenizer.decode(list(tokens), skip_special_tokens=True).strip()

    print(f"\n> {prompt}\n  fp32: {text(ref.tokens)}")
    for name, other in others.items():
        print(f"  {name}: {text(other.tokens)}")
    for name, other in others.items():
        row = compare_generations(ref, other)
        if row["identical"]:
            print(f"  {name} = fp32: yes")
            continue
        k, top = row["first_difference"], ref.margins[row["first_difference"]]
        first, second = (repr(tokenizer.decode([t])) for t in top.tokens)
        kind = "a knife edge" if top.probs[0] - top.probs[1] < 0.1 else "a clear choice"
        print(
            f"  {name} = fp32: no, from token {k + 1}: there fp32 itself gives {first} p = {top.probs[0]:.2f} and"
            f" {second} p = {top.probs[1]:.2f} (logit gap {top.logit_gap:.2f}): {kind}"
        )


def _cmd_demo(args) -> int:
    from tqdm.auto import tqdm

    from ..evaluation import apply_method, generate, read_text
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

    others = {"int8": int8_model, "bf16": apply_method(model, "bf16")}
    subset = _quick_subset(max(args.agreement_prompts, SIDE_BY_SIDE))
    if args.agreement_prompts:
        _agreement_summary(model, others, tokenizer, subset[: args.agreement_prompts], args.agreement_tokens)

    prompts = args.prompt or [p.text for p in subset[:SIDE_BY_SIDE]]
    where = "" if args.prompt else f" (the first {SIDE_BY_SIDE} prompts of the draw above)"
    print(f"\ngreedy answers side by side{where}, {args.max_new_tokens} new tokens at most")
    rows = []
    for prompt in tqdm(prompts, desc="generating", unit="prompt"):
        ref = generate(model, tokenizer, prompt, args.max_new_tokens, margins=True)
        rows.append((prompt, ref, {n: generate(m, tokenizer, prompt, args.max_new_tokens) for n, m in others.items()}))
    for prompt, ref, answers in rows:
        _show_answer(tokenizer, prompt, ref, answers)

    if text is not None:
        _perplexities(args, tokenizer, text, {"fp32": model, **others})
    return 0


def _perplexities(args, tokenizer, text: str, models: dict) -> None:
    from ..evaluation import perplexity, tokenize_text

    ids = tokenize_text(tokenizer, text, args.max_tokens)
    print(f"\nperplexity on {args.text} ({ids.numel()} tokens, windows of {args.window})")
    ppl = {n: perplexity(m, ids, window=args.window, progress=True, desc=n).perplexity for n, m in models.items()}
    labels = {
        "fp32": "fp32",
        "int8": f"LLM.int8() ({args.activation} activations, α = {args.threshold:g})",
        "bf16": "bf16 (the model cast to bfloat16)",
    }
    print("| model | perplexity |")
    print("| --- | --- |")
    for name, value in ppl.items():
        delta = "" if name == "fp32" else f" ({(value / ppl['fp32'] - 1) * 100:+.2f}%)"
        print(f"| {labels[name]} | {value:.3f}{delta} |")


def register(sub) -> None:
    demo = sub.add_parser("demo", help="convert the bundled SmolLM2-135M to int8 and compare it with fp32")
    demo.add_argument(
        "--model", help="local HF directory, .gguf file or hub id (default: bundled SmolLM2-135M-Instruct)"
    )
    add_int8_options(demo)
    demo.add_argument(
        "--prompt",
        action="append",
        type=nonempty_text,
        help="a prompt (repeatable; default: the first three of the agreement draw)",
    )
    demo.add_argument("--max-new-tokens", type=positive_int, default=32, help="tokens of each side-by-side answer")
    demo.add_argument(
        "--agreement-prompts",
        type=nonnegative_int,
        default=14,
        help="built-in chat prompts for the agreement summary (default 14: two per category, drawn at random"
        " with a fixed seed; 0: none)",
    )
    demo.add_argument(
        "--agreement-tokens", type=positive_int, default=16, help="greedy tokens per agreement prompt (default 16)"
    )
    demo.add_argument("--text", help="text file for a perplexity comparison (e.g. ../shared/data/wikitext-2/test.txt)")
    demo.add_argument("--max-tokens", type=positive_int, default=8192, help="tokens of --text to score")
    demo.add_argument("--window", type=positive_int, default=512, help="perplexity window in tokens")
    demo.set_defaults(func=_cmd_demo)
