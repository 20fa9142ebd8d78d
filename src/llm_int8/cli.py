"""``llm-int8`` command line: parse arguments, call the library, print. Nothing else."""

from __future__ import annotations

import argparse
import copy
import logging
import sys
import time

import torch

__all__ = ["main"]

DEFAULT_PROMPTS = (
    "What is the capital of France?",
    "Write one sentence about the ocean.",
    "List three primary colors.",
)


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _threshold(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"threshold must be >= 0 (0 disables decomposition), got {text}")
    return value


def _greedy(model, tokenizer, prompt: str, max_new_tokens: int) -> str:
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

    from .evaluation import perplexity, read_text, tokenize_text
    from .integrations import linear_memory, load_model, quantize_model

    text = read_text(args.text) if args.text else None  # fail on a bad path before the slow load
    t0 = time.perf_counter()
    print(f"loading {args.model or 'the bundled SmolLM2-135M-Instruct'} in float32 ...", flush=True)
    model, tokenizer = load_model(args.model, dtype=torch.float32)
    print(f"loaded in {time.perf_counter() - t0:.1f} s", flush=True)

    int8_model = copy.deepcopy(model)
    int8_model, report = quantize_model(int8_model, threshold=args.threshold, progress=True, return_report=True)
    print(report.summary())

    mem_fp32 = linear_memory(model)
    mem_int8 = linear_memory(int8_model)
    print("\nmemory of the converted linear layers")
    print("| storage | MiB | vs fp16 |")
    print("| --- | --- | --- |")
    fp16_bytes = report.bytes_before // 2  # the same layers held in 16 bits
    for name, nbytes in (("fp32", report.bytes_before), ("fp16 (equivalent)", fp16_bytes), ("int8 (+ scales)", report.bytes_after)):
        print(f"| {name} | {nbytes / 2**20:.1f} | {nbytes / fp16_bytes:.2f}x |")
    print(
        f"(all linear layers incl. those kept in float: fp32 model {mem_fp32['float'] / 2**20:.1f} MiB, "
        f"int8 model {(mem_int8['float'] + mem_int8['int8']) / 2**20:.1f} MiB)"
    )

    prompts = args.prompt or list(DEFAULT_PROMPTS)
    print(f"\ngreedy answers, {args.max_new_tokens} new tokens at most")
    rows = []
    for prompt in tqdm(prompts, desc="generating", unit="prompt"):
        rows.append((prompt, _greedy(model, tokenizer, prompt, args.max_new_tokens), _greedy(int8_model, tokenizer, prompt, args.max_new_tokens)))
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
        print(f"| LLM.int8() | {ppl_int8.perplexity:.3f} ({delta:+.2f}%) |")
    return 0


def _cmd_generate(args) -> int:
    from .integrations import load_model, quantize_model

    model, tokenizer = load_model(args.model, dtype=torch.float32)
    if not args.no_int8:
        quantize_model(model, threshold=args.threshold, progress=True)
    print(_greedy(model, tokenizer, args.prompt, args.max_new_tokens))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llm-int8", description="LLM.int8() for PyTorch and Hugging Face models")
    parser.add_argument("-v", "--verbose", action="store_true", help="log library details")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="convert the bundled SmolLM2-135M to int8 and compare it with fp32")
    demo.add_argument("--model", help="local HF directory, .gguf file or hub id (default: bundled SmolLM2-135M-Instruct)")
    demo.add_argument("--threshold", type=_threshold, default=6.0, help="outlier threshold α (default 6.0)")
    demo.add_argument("--prompt", action="append", help="a prompt (repeatable; default: three built-in prompts)")
    demo.add_argument("--max-new-tokens", type=_positive_int, default=32)
    demo.add_argument("--text", help="text file for a perplexity comparison (e.g. ../shared/data/wikitext-2/test.txt)")
    demo.add_argument("--max-tokens", type=_positive_int, default=8192, help="tokens of --text to score")
    demo.add_argument("--window", type=_positive_int, default=512, help="perplexity window in tokens")
    demo.set_defaults(func=_cmd_demo)

    gen = sub.add_parser("generate", help="greedy generation with an int8 model")
    gen.add_argument("--model", help="local HF directory, .gguf file or hub id (default: bundled SmolLM2-135M-Instruct)")
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--threshold", type=_threshold, default=6.0)
    gen.add_argument("--max-new-tokens", type=_positive_int, default=64)
    gen.add_argument("--no-int8", action="store_true", help="run the float model, for comparison")
    gen.set_defaults(func=_cmd_generate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError, TypeError) as err:
        print(f"llm-int8 {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
