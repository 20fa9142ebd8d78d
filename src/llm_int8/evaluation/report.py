"""Writing results: JSON, a Markdown table, a bar chart. Every file appears whole or not at all."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .._files import atomic_output, atomic_write
from .hellaswag import paired_difference

__all__ = ["agreement_table", "atomic_write", "markdown_table", "plot_comparison", "write_json"]


def write_json(path: str | os.PathLike, obj) -> Path:
    return atomic_write(path, json.dumps(obj, indent=2) + "\n")


def _fmt(value, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def _ppl_change(ppl, base: dict | None) -> str:
    if base is None or ppl is None or not base.get("perplexity"):
        return "—"
    return f"{(ppl / base['perplexity'] - 1) * 100:+.2f}%"


def markdown_table(
    rows: list[dict], baseline: str = "fp32", labels: list[int] | None = None, reference: str = "bf16"
) -> str:
    """Perplexity and HellaSwag per method, with the change against ``baseline`` where it was run.

    With the HellaSwag gold ``labels``, the acc_norm change also gets its paired standard error and
    the number of tasks whose choice differs from ``baseline`` (from ``hellaswag_predictions``).
    Where a ``reference`` row (the 16-bit model, ``bf16`` by default) is there too, each method
    also gets its change against it: the paper's "no degradation" is a claim against 16 bits.
    """
    base = next((r for r in rows if r["method"] == baseline), None)
    ref = next((r for r in rows if r["method"] == reference and reference != baseline), None)
    has_ppl = any("perplexity" in r for r in rows)
    has_hs = any("hellaswag_acc" in r for r in rows)
    head = ["method", "description"]
    if has_ppl:
        head += ["perplexity", f"Δ vs {baseline}"] + ([f"Δ vs {reference}"] if ref is not None else [])
    if has_hs:
        unit = "(points" + (" ± paired SE)" if labels else ")")
        head += ["HellaSwag acc", "acc_norm", f"Δ acc_norm {unit}"]
        if ref is not None and ref.get("hellaswag_acc_norm") is not None:
            head.append(f"Δ acc_norm vs {reference} {unit}")
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        cells = [f"`{r['method']}`", r.get("description", "")]
        if has_ppl:
            cells += [_fmt(r.get("perplexity"), ".3f"), _ppl_change(r.get("perplexity"), base)]
            if ref is not None:
                cells.append(_ppl_change(r.get("perplexity"), ref))
        if has_hs:
            acc, accn = r.get("hellaswag_acc"), r.get("hellaswag_acc_norm")
            cells += [_fmt(acc and acc * 100, ".2f"), _fmt(accn and accn * 100, ".2f")]
            cells.append(_acc_norm_change(r, base, labels))
            if ref is not None and ref.get("hellaswag_acc_norm") is not None:
                cells.append(_acc_norm_change(r, ref, labels))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _acc_norm_change(row: dict, base: dict | None, labels: list[int] | None) -> str:
    accn = row.get("hellaswag_acc_norm")
    if base is None or accn is None or base.get("hellaswag_acc_norm") is None:
        return "—"
    text = f"{(accn - base['hellaswag_acc_norm']) * 100:+.2f}"
    preds, base_preds = row.get("hellaswag_predictions"), base.get("hellaswag_predictions")
    if labels is not None and preds is not None and base_preds is not None and row is not base and len(labels) > 1:
        d = paired_difference(labels, base_preds, preds)
        text += f" ± {d.stderr * 100:.2f} ({d.differing} choices differ)"
    return text


def agreement_table(rows: list[dict], new_tokens: int = 16) -> str:
    """Agreement with the float model per method (rows of ``compare_methods`` with ``prompts``).

    Every row is measured against fp32; the 16-bit references (``bf16``, ``fp16`` and their
    ``-weights`` roundings) are rows like the others, so an int8 row reads against them directly.
    """
    head = [
        "method",
        "first token = fp32's",
        "last-position logits rel. error, median / max",
        "the same, logits centred",
        "KL(fp32 ‖ method), mean / max (nats)",
        "share of fp32's tokens before the first difference",
        f"identical {new_tokens}-token continuations",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        a = r.get("agreement")
        if a is None:
            continue
        n = a["prompts"]
        cells = [
            f"`{r['method']}`",
            f"{a['first_token_same']}/{n}",
            f"{a['logits_rel_error_median']:.3f} / {a['logits_rel_error_max']:.3f}",
            f"{a['logits_rel_error_centred_median']:.3f} / {a['logits_rel_error_centred_max']:.3f}",
            f"{a['kl_mean']:.4f} / {a['kl_max']:.4f}",
            f"{a['matched_share_mean']:.2f}",
            f"{a['identical']}/{n} ({100 * a['identical'] / n:.0f}%)",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


_PANELS = (
    ("perplexity", "perplexity (log scale)"),
    ("hellaswag_acc_norm", "HellaSwag acc_norm (%)"),
    ("agreement_identical", "identical greedy continuations (% of prompts)"),
    ("agreement_error", "last-position logits rel. error per prompt"),
)


def _value(row: dict, key: str):
    if key == "agreement_identical":
        a = row.get("agreement")
        return None if a is None else 100 * a["identical"] / a["prompts"]
    value = row.get(key)
    return None if value is None else value * (100 if key.startswith("hellaswag") else 1)


_REFERENCES = ("bf16", "fp16", "bf16-weights", "fp16-weights")


def _color(method: str) -> str:
    """fp32 grey, the 16-bit references orange, the paper's LLM.int8() green, other int8 methods blue."""
    if method == "fp32":
        return "tab:gray"
    if method in _REFERENCES:
        return "tab:orange"
    return "tab:green" if "llm.int8" in method else "tab:blue"


def _error_panel(ax, rows: list[dict], label: str) -> None:
    """Each prompt's logits error as a dot, the median as a bar, per method (log scale)."""
    sub = [r for r in rows if r.get("agreement_prompts") and r["method"] != "fp32"]
    for i, r in enumerate(sub):
        errors = [p["logits_rel_error"] for p in r["agreement_prompts"]]
        x = [i + 0.12 * ((j % 5) - 2) / 2 for j in range(len(errors))]
        ax.scatter(x, errors, s=6, alpha=0.5, color=_color(r["method"]))
        ax.hlines(r["agreement"]["logits_rel_error_median"], i - 0.3, i + 0.3, color="black")
    ax.set_xticks(range(len(sub)), [r["method"] for r in sub], rotation=35, ha="right")
    ax.set_yscale("log")
    ax.set_ylabel(label)


def plot_comparison(rows: list[dict], path: str | os.PathLike, title: str = "") -> Path:
    """Bar charts per method: perplexity (log scale), HellaSwag acc_norm and identical continuations,
    and each prompt's logits error against fp32, for the measures the rows hold; written as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key_of = {"agreement_error": "agreement_prompts", "agreement_identical": "agreement"}
    panels = [(key, label) for key, label in _PANELS if any(key_of.get(key, key) in r for r in rows)]
    if not panels:
        raise ValueError("no perplexity, HellaSwag or agreement result to plot")
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    for ax, (key, label) in zip(axes[0], panels, strict=True):
        if key == "agreement_error":
            _error_panel(ax, rows, label)
            continue
        sub = [r for r in rows if _value(r, key) is not None]
        names = [r["method"] for r in sub]
        values = [_value(r, key) for r in sub]
        colors = [_color(n) for n in names]
        bars = ax.bar(range(len(sub)), values, color=colors)
        ax.set_xticks(range(len(sub)), names, rotation=35, ha="right")
        ax.set_ylabel(label)
        if key == "perplexity":
            ax.set_yscale("log")
        elif key == "agreement_identical":
            ax.set_ylim(0, 105)
        else:
            ax.set_ylim(min(values) - 2, max(values) + 2)
        for b, v in zip(bars, values, strict=True):
            ax.annotate(f"{v:.2f}", (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    try:
        return atomic_output(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"), suffix=".png")
    finally:
        plt.close(fig)
