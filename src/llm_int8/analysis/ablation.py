"""The outlier ablation of Section 4: zero the outlier dims, or as many random dims, and compare.

Measured per condition, over the same non-overlapping windows: perplexity and the mean top-1
attention probability — for every layer, head and query position, the largest attention weight,
averaged (the first query position of a window, which can only attend to itself, is included).
Zeroing happens at the inputs of every module of every measured site (``hooks.zero_input_dims``).
Attention probabilities need the eager attention implementation; it is switched on for the
measurement and restored afterwards.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext

import torch
from tqdm.auto import tqdm

from .hooks import Site, zero_input_dims

__all__ = ["ablate_outliers", "perplexity_and_attention"]


@contextmanager
def _eager_attention(model) -> Iterator[None]:
    config = getattr(model, "config", None)
    before = getattr(config, "_attn_implementation", None)
    if before in (None, "eager"):
        yield
        return
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(before)


@torch.no_grad()
def perplexity_and_attention(
    model, input_ids: torch.Tensor, window: int, progress: bool = False, desc: str = "ablation"
) -> dict:
    """Perplexity and mean top-1 attention probability of ``input_ids`` (1-D) in windows of ``window``."""
    n_windows = input_ids.numel() // window
    if n_windows == 0:
        raise ValueError(f"text has {input_ids.numel()} tokens, fewer than one window of {window}")
    device = next(model.parameters()).device
    windows = input_ids[: n_windows * window].view(n_windows, window)  # (windows, window)
    nll = top1 = 0.0
    with _eager_attention(model):
        for w in tqdm(windows, desc=desc, unit="window", disable=not progress):
            batch = w[None].to(device)  # (1, window)
            out = model(batch, output_attentions=True)
            logits = out.logits.float()  # (1, window, vocab)
            nll += torch.nn.functional.cross_entropy(logits[0, :-1], batch[0, 1:], reduction="sum").item()
            if not out.attentions:
                raise ValueError("the model returned no attention probabilities (output_attentions unsupported?)")
            # each: (1, heads, window, window) -> max over keys, mean over heads and queries; mean over layers
            top1 += torch.stack([a.float().amax(-1).mean() for a in out.attentions]).mean().item()
    mean_nll = nll / (n_windows * (window - 1))
    return {"perplexity": math.exp(mean_nll), "nll": mean_nll, "mean_top1_attention": top1 / n_windows}


def ablate_outliers(
    model,
    input_ids: torch.Tensor,
    sites: Sequence[Site],
    dims: Sequence[int],
    hidden: int,
    window: int = 512,
    random_draws: int = 3,
    seed: int = 0,
    progress: bool = False,
) -> dict:
    """Baseline vs outlier dims zeroed vs ``random_draws`` sets of as many random non-outlier dims.

    Random dims are drawn without replacement from the dims not in ``dims`` with a
    ``torch.Generator`` seeded by ``seed``. Returns a JSON-ready dict; changes are relative to the
    baseline (perplexity in %, top-1 attention probability in percentage points).
    """
    dims = sorted(int(d) for d in dims)
    if not dims:
        raise ValueError("no dims to ablate")
    if any(not 0 <= d < hidden for d in dims):
        raise ValueError(f"dims must lie in [0, {hidden}), got {dims}")
    if random_draws < 0:
        raise ValueError(f"random_draws must be >= 0, got {random_draws}")
    pool = torch.tensor([d for d in range(hidden) if d not in set(dims)])
    if pool.numel() < len(dims):
        raise ValueError(f"only {pool.numel()} non-outlier dims, cannot draw {len(dims)} random ones")
    gen = torch.Generator().manual_seed(seed)
    draws = [
        sorted(pool[torch.randperm(pool.numel(), generator=gen)[: len(dims)]].tolist()) for _ in range(random_draws)
    ]

    def run(zeroed: list[int] | None, label: str) -> dict:
        ctx = zero_input_dims(sites, zeroed) if zeroed else nullcontext()
        with ctx:
            res = perplexity_and_attention(model, input_ids, window, progress=progress, desc=label)
        return {"dims": zeroed or [], **res}

    base = run(None, "ablation: baseline")
    outlier = run(dims, "ablation: outlier dims zeroed")
    randoms = [run(d, f"ablation: random dims {i + 1}/{random_draws}") for i, d in enumerate(draws)]

    def change(r: dict) -> dict:
        return {
            **r,
            "perplexity_change_pct": (r["perplexity"] / base["perplexity"] - 1) * 100,
            "top1_attention_change_points": (r["mean_top1_attention"] - base["mean_top1_attention"]) * 100,
        }

    result = {
        "window": window,
        "windows": input_ids.numel() // window,
        "seed": seed,
        "baseline": base,
        "outlier_dims_zeroed": change(outlier),
        "random_dims_zeroed": [change(r) for r in randoms],
    }
    if randoms:
        result["random_mean"] = {
            "perplexity": sum(r["perplexity"] for r in randoms) / len(randoms),
            "mean_top1_attention": sum(r["mean_top1_attention"] for r in randoms) / len(randoms),
        }
    return result
