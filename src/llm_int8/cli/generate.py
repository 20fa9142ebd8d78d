"""``llm-int8 generate``: greedy generation with an int8 model (a float checkpoint is converted while it
loads; a saved int8 folder loads as is)."""

from __future__ import annotations

import torch

from ._args import add_int8_options, nonempty_text, positive_int

__all__ = ["register"]


def _cmd_generate(args) -> int:
    from ..evaluation import generate
    from ..integrations import from_pretrained, load_model, load_tokenizer

    # the tokenizer first: a missing one fails in a second, not after the model has loaded
    try:
        tokenizer = load_tokenizer(args.tokenizer if args.tokenizer is not None else args.model)
    except FileNotFoundError as err:
        if args.tokenizer is not None:
            raise
        raise FileNotFoundError(f"{err}; pass --tokenizer (the float model's folder, .gguf or hub id)") from None
    if args.no_int8:
        model, _ = load_model(args.model, dtype=torch.float32)
    else:
        model = from_pretrained(args.model, threshold=args.threshold, activation=args.activation)
    answer = generate(model, tokenizer, args.prompt, args.max_new_tokens)
    print(tokenizer.decode(list(answer.tokens), skip_special_tokens=True).strip())
    return 0


def register(sub) -> None:
    gen = sub.add_parser("generate", help="greedy generation with an int8 model")
    gen.add_argument(
        "--model",
        help="local HF directory (float or saved int8), .gguf file or hub id (default: bundled SmolLM2-135M-Instruct)",
    )
    gen.add_argument("--prompt", required=True, type=nonempty_text)
    gen.add_argument(
        "--tokenizer", help="where to take the tokenizer from, if not --model's (an int8 folder saved without one)"
    )
    add_int8_options(gen, from_checkpoint=True)
    gen.add_argument("--max-new-tokens", type=positive_int, default=64)
    gen.add_argument("--no-int8", action="store_true", help="run the float model, for comparison")
    gen.set_defaults(func=_cmd_generate)
