"""``llm-int8 demo``: the main job. Convert the bundled SmolLM2-135M and compare it with fp32."""

from __future__ import annotations

import copy
import time

import torch

from ._args import add_int8_options, nonempty_text, positive_int

__all__ = ["register"]

DEFAULT_PROMPTS = (
    "What is the capital of France?",
    "Write one sentence about the ocean.",
    "List three primary colors.",
)


def greedy(model, tokenizer, prompt: str, max_new_tokens: int) -> str:
    messages = [{"role": "user", "content": prompt}]
    if getattr(tokenizer, "chat_template", None):
        enc = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    else:
        enc = tokenizer(prompt, return_tensors="pt")
    enc = {k: v.to(next(model.parameters()).device) for k, v in enc.items()}
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True).strip()


def _cmd_demo(args) -> int:
    from tqdm.auto import tqdm

    from ..evaluation import perplexity, read_text, tokenize_text
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

    prompts = args.prompt or list(DEFAULT_PROMPTS)
    print(f"\ngreedy answers, {args.max_new_tokens} new tokens at most")
    rows = []
    for prompt in tqdm(prompts, desc="generating", unit="prompt"):
        rows.append(
            (
                prompt,
                greedy(model, tokenizer, prompt, args.max_new_tokens),
                greedy(int8_model, tokenizer, prompt, args.max_new_tokens),
            )
        )
    for prompt, a, b in rows:
        print(f"\n> {prompt}\n  fp32: {a}\n  int8: {b}\n  same: {'yes' if a == b else 'no'}")

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
    demo.add_argument("--max-new-tokens", type=positive_int, default=32)
    demo.add_argument("--text", help="text file for a perplexity comparison (e.g. ../shared/data/wikitext-2/test.txt)")
    demo.add_argument("--max-tokens", type=positive_int, default=8192, help="tokens of --text to score")
    demo.add_argument("--window", type=positive_int, default=512, help="perplexity window in tokens")
    demo.set_defaults(func=_cmd_demo)
