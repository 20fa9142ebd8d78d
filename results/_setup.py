"""The set-up the experiment scripts in ``results/`` share: arguments, data, the model, library
variants as ``eval`` methods, and writing results.

Each script starts with ``from _setup import ...`` (run as ``python results/<script>.py``, so this
folder is on ``sys.path``). Data paths default to ``../shared/data`` beside the repository
(``LLM_INT8_DATA`` points elsewhere). Threads: ``LLM_INT8_THREADS`` (default: torch's choice) — set
it to 1 to run beside other jobs on a small machine.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

import torch

from llm_int8.evaluation import METHODS, MethodSpec, read_hellaswag, read_text, tokenize_text
from llm_int8.evaluation.report import atomic_write, write_json

__all__ = [
    "DATA",
    "HELLASWAG",
    "HERE",
    "WIKITEXT",
    "arguments",
    "atomic_write",
    "hellaswag_tasks",
    "library_variant",
    "load",
    "wikitext_ids",
    "write_json",
]

HERE = Path(__file__).resolve().parent
DATA = Path(os.environ.get("LLM_INT8_DATA", HERE.parent.parent / "shared" / "data"))
WIKITEXT = DATA / "wikitext-2" / "test.txt"
HELLASWAG = DATA / "hellaswag" / "hellaswag_val_full.txt.bz2"


def arguments(usage: str, *types) -> list:
    """``sys.argv[1:]`` converted by ``types`` (one per argument; a trailing ``...`` takes the rest as
    the last type); a wrong count or value prints ``usage`` (the script's docstring) and exits 2."""
    args = sys.argv[1:]
    rest = types[-1] is Ellipsis
    fixed = types[:-2] if rest else types
    if len(args) < len(fixed) or (not rest and len(args) > len(fixed)) or (rest and len(args) == len(fixed)):
        sys.exit(f"{usage.strip()}\n\nerror: expected {len(fixed)}{'+' if rest else ''} arguments, got {len(args)}")
    kinds = list(fixed) + [types[-2]] * (len(args) - len(fixed)) if rest else list(fixed)
    try:
        return [kind(a) for kind, a in zip(kinds, args, strict=True)]
    except ValueError as err:
        sys.exit(f"{usage.strip()}\n\nerror: {err}")


def load(model: str | None = None):
    """``(model, tokenizer)`` in float32 (the bundled SmolLM2-135M-Instruct by default), gradients off."""
    from llm_int8.integrations import load_model

    threads = os.environ.get("LLM_INT8_THREADS")
    if threads:
        torch.set_num_threads(int(threads))
    torch.set_grad_enabled(False)
    return load_model(model, dtype=torch.float32)


def wikitext_ids(tokenizer, tokens: int | None = None, path: str | os.PathLike = WIKITEXT) -> torch.Tensor:
    """The first ``tokens`` token ids (all if ``None``) of the WikiText-2 test text."""
    return tokenize_text(tokenizer, read_text(path), tokens)


def hellaswag_tasks(skip: int = 0, limit: int | None = None, path: str | os.PathLike = HELLASWAG):
    return read_hellaswag(path, limit=limit, skip=skip)


def library_variant(name: str, description: str = "", base: str = "default", **changes) -> MethodSpec:
    """An ``eval`` method like ``base`` with some fields changed (``threshold``, ``zeropoint``,
    ``keep_float``, ``calibrated``, ``convert`` ...), e.g. ``library_variant("zeropoint@4", threshold=4.0)``."""
    return dataclasses.replace(METHODS[base], name=name, description=description or name, **changes)
