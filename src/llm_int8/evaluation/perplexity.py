"""Perplexity of a causal LM over a text file, in non-overlapping windows."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

__all__ = ["PerplexityResult", "perplexity", "read_text", "tokenize_text"]


@dataclass(frozen=True)
class PerplexityResult:
    perplexity: float
    nll: float  # mean negative log-likelihood per predicted token (nats)
    tokens: int  # predicted tokens
    windows: int
    window: int


def read_text(path: str | os.PathLike) -> str:
    """Read a UTF-8 text file; an empty file is an error."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"text file not found: {p}")
    text = p.read_text(encoding="utf-8")
    if not text.strip():
        raise ValueError(f"text file is empty: {p}")
    return text


def tokenize_text(tokenizer, text: str, max_tokens: int | None = None) -> torch.Tensor:
    """Token ids (1-D) of ``text``, cut to ``max_tokens``."""
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"][0]
    return ids[:max_tokens] if max_tokens else ids


@torch.no_grad()
def perplexity(
    model,
    input_ids: torch.Tensor,
    window: int = 512,
    batch_size: int = 1,
    progress: bool = False,
    desc: str = "perplexity",
) -> PerplexityResult:
    """``exp(mean NLL)`` of ``input_ids`` (1-D) cut into non-overlapping windows of ``window`` tokens.

    Each window is scored independently (the first token of a window is context only), so every
    method compared on the same ids sees exactly the same predictions. A trailing partial window
    is dropped; fewer tokens than one window is an error.
    """
    if input_ids.dim() != 1:
        raise ValueError(f"input_ids must be 1-D, got shape {tuple(input_ids.shape)}")
    n_windows = input_ids.numel() // window
    if n_windows == 0:
        raise ValueError(f"text has {input_ids.numel()} tokens, fewer than one window of {window}")
    device = next(model.parameters()).device
    windows = input_ids[: n_windows * window].view(n_windows, window)  # (windows, window)
    total_nll, total = 0.0, 0
    for start in tqdm(range(0, n_windows, batch_size), desc=desc, unit="batch", disable=not progress):
        batch = windows[start : start + batch_size].to(device)  # (b, window)
        logits = model(batch).logits.float()  # (b, window, vocab)
        nll = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum"
        )
        total_nll += nll.item()
        total += batch[:, 1:].numel()
    mean = total_nll / total
    return PerplexityResult(math.exp(mean), mean, total, n_windows, window)
