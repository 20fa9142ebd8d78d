"""``llm-int8 outliers``: the paper's Section 4 on any model — outlier features and their ablation."""

from __future__ import annotations

import time

import torch

from ._args import nonnegative_int, output_file, positive_int, regex

__all__ = ["register"]

_DEFAULT_WINDOW = 2048


def _fraction(text: str) -> float:
    import argparse

    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be a fraction in [0, 1], got {text}")
    return value


def _positive_float(text: str) -> float:
    import argparse

    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _read_tokens(args, tokenizer, text: str):
    """The text's token ids, and the window: the default one shortened to what the text holds."""
    from ..evaluation import tokenize_text

    ids = tokenize_text(tokenizer, text, args.max_tokens)
    if args.window is None:
        args.window = min(_DEFAULT_WINDOW, ids.numel())
        if args.window < _DEFAULT_WINDOW:
            print(
                f"window shortened from {_DEFAULT_WINDOW} to {args.window} tokens: the text (--max-tokens) has no more"
            )
    if ids.numel() < args.window:
        raise ValueError(f"{args.text}: {ids.numel()} tokens, fewer than one window of {args.window}")
    return ids


def _print_outliers(summary: dict, criteria, window: int) -> None:
    tot = summary["totals"]
    print(
        f"\n{tot['outlier_dims']} outlier dims over {summary['sequences']} sequences of {window} tokens "
        f"(|x| >= {criteria.magnitude}, >= {criteria.min_layers:.0%} of layers, >= {criteria.min_seq:.0%} of positions)"
    )
    print("| dim | layers | positions | count/seq | |x| quartiles | one-sided |")
    print("| --- | --- | --- | --- | --- | --- |")
    for o in summary["outliers"]:
        q = ", ".join(f"{v:.1f}" for v in o["magnitude_quartiles"])
        print(
            f"| {o['dim']} | {o['fraction_of_layers']:.0%} | {o['fraction_of_positions']:.1%} | "
            f"{o['count_per_sequence']:.0f} | {q} | {o['one_sided']} |"
        )
    print(
        f"outliers per sequence: {tot['outliers_per_sequence']:.0f}; layers affected "
        f"{tot['fraction_of_layers_affected']:.0%}; positions affected {tot['fraction_of_positions_affected']:.1%}"
    )


def _ablation(args, model, ids, sites, stats, dims: list[int]) -> dict | None:
    """Zero the outlier dims (and random ones) and measure perplexity and attention; ``None`` if skipped."""
    from ..analysis import ablate_outliers

    if args.ablation_tokens == 0:
        print("ablation skipped (--ablation-tokens 0)")
        return None
    if not dims:
        print("ablation skipped: no outlier dim met the criteria")
        return None
    abl_ids = ids[: args.ablation_tokens]
    window = min(args.ablation_window, abl_ids.numel())
    ablation = ablate_outliers(
        model, abl_ids, sites, dims, hidden=stats.hidden, window=window, random_draws=args.random_draws,
        seed=args.seed, progress=True,
    )  # fmt: skip
    b, o = ablation["baseline"], ablation["outlier_dims_zeroed"]
    print(f"\nablation ({ablation['windows']} windows of {ablation['window']} tokens)")
    print("| zeroed | perplexity | Δ | mean top-1 attention | Δ (points) |")
    print("| --- | --- | --- | --- | --- |")
    print(f"| nothing | {b['perplexity']:.3f} | | {b['mean_top1_attention']:.4f} | |")
    rows = [(f"outlier dims {dims}", o)] + [(f"random {r['dims']}", r) for r in ablation["random_dims_zeroed"]]
    for label, r in rows:
        print(
            f"| {label} | {r['perplexity']:.3f} | {r['perplexity_change_pct']:+.2f}% | "
            f"{r['mean_top1_attention']:.4f} | {r['top1_attention_change_points']:+.2f} |"
        )
    return ablation


@torch.no_grad()  # inference only; a decorator, not set_grad_enabled: main() may run in a caller's process
def _cmd_outliers(args) -> int:
    from ..analysis import OutlierCriteria, find_outlier_features, find_sites, plot_outliers
    from ..evaluation import read_text
    from ..evaluation.report import write_json
    from ..integrations import load_model

    criteria = OutlierCriteria(args.magnitude, args.min_layers, args.min_seq)
    text = read_text(args.text)  # fail on a bad path before the slow load
    t0 = time.perf_counter()
    print(f"loading {args.model or 'the bundled SmolLM2-135M-Instruct'} in float32 ...", flush=True)
    model, tokenizer = load_model(args.model, dtype=torch.float32)
    ids = _read_tokens(args, tokenizer, text)
    sites = find_sites(model, args.modules)
    kinds = {}
    for s in sites:
        kinds.setdefault(s.kind, [n.split(".", 1)[-1] for n, _ in s.modules])
    print(f"measuring {len(sites)} inputs: " + "; ".join(f"{k}: {', '.join(v)}" for k, v in kinds.items()))

    stats = find_outlier_features(model, ids, sites, window=args.window, criteria=criteria, progress=True)
    summary = stats.summary()
    _print_outliers(summary, criteria, args.window)
    ablation = _ablation(args, model, ids, sites, stats, [o["dim"] for o in summary["outliers"]])
    result = {
        "model": args.model or "SmolLM2-135M-Instruct (bundled GGUF)",
        "text": str(args.text),
        "window": args.window,
        "tokens": summary["tokens"],
        **summary,
        "ablation": ablation,
        "seconds": time.perf_counter() - t0,
    }
    if args.plot:
        plot_outliers(stats, summary, args.plot, title=result["model"])
        print(f"wrote {args.plot}")
    write_json(args.json, result)
    print(f"wrote {args.json}")
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "outliers",
        help="find outlier features (the paper's Section 4) and ablate them",
        description="Find emergent outlier features in a model's hidden states and measure what zeroing them does.",
    )
    p.add_argument("--model", help="local HF directory, .gguf file or hub id (default: bundled SmolLM2-135M-Instruct)")
    p.add_argument("--text", required=True, help="text file (e.g. ../shared/data/wikitext-2/test.txt)")
    p.add_argument("--max-tokens", type=positive_int, default=None, help="use only the first N tokens of --text")
    p.add_argument(
        "--window",
        type=positive_int,
        default=None,
        help=f"sequence length in tokens (default {_DEFAULT_WINDOW}, or the whole text if shorter)",
    )
    p.add_argument("--magnitude", type=_positive_float, default=6.0, help="outlier magnitude α (default 6.0)")
    p.add_argument("--min-layers", type=_fraction, default=0.25, help="fraction of layers (default 0.25)")
    p.add_argument("--min-seq", type=_fraction, default=0.06, help="fraction of sequence positions (default 0.06)")
    p.add_argument(
        "--modules",
        nargs="+",
        metavar="REGEX",
        type=regex,
        help="module-name regexes whose inputs to measure (default: per-architecture attention/FFN inputs)",
    )
    p.add_argument(
        "--ablation-tokens",
        type=nonnegative_int,
        default=4096,
        help="tokens (from the start of --text) for the ablation; 0 skips it (default 4096)",
    )
    p.add_argument("--ablation-window", type=positive_int, default=512, help="ablation window (default 512)")
    p.add_argument(
        "--random-draws", type=nonnegative_int, default=3, help="random-dim draws for the ablation (default 3)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random-dim draws")
    p.add_argument(
        "--json", required=True, type=output_file, help="where to write the results (JSON; written only on success)"
    )
    p.add_argument("--plot", type=output_file, help="also write the magnitude plots (PNG)")
    p.set_defaults(func=_cmd_outliers)
