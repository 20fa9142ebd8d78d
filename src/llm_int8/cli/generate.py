"""``llm-int8 generate``: greedy generation with an int8 model."""

from __future__ import annotations

import torch

from ._args import positive_int, threshold
from .demo import greedy

__all__ = ["register"]


def _cmd_generate(args) -> int:
    from .integrations import load_model, quantize_model

    model, tokenizer = load_model(args.model, dtype=torch.float32)
    if not args.no_int8:
        quantize_model(model, threshold=args.threshold, progress=True)
    print(greedy(model, tokenizer, args.prompt, args.max_new_tokens))
    return 0


def register(sub) -> None:
    gen = sub.add_parser("generate", help="greedy generation with an int8 model")
    gen.add_argument(
        "--model", help="local HF directory, .gguf file or hub id (default: bundled SmolLM2-135M-Instruct)"
    )
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--threshold", type=threshold, default=6.0)
    gen.add_argument("--max-new-tokens", type=positive_int, default=64)
    gen.add_argument("--no-int8", action="store_true", help="run the float model, for comparison")
    gen.set_defaults(func=_cmd_generate)
