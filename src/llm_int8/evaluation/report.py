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


def markdown_table(rows: list[dict], baseline: str = "fp32", labels: list[int] | None = None) -> str:
    """Perplexity and HellaSwag per method, with the change against ``baseline`` where it was run.

    With the HellaSwag gold ``labels``, the acc_norm change also gets its paired standard error and
    the number of tasks whose choice differs from ``baseline`` (from ``hellaswag_predictions``).
    """
    base = next((r for r in rows if r["method"] == baseline), None)
    has_ppl = any("perplexity" in r for r in rows)
    has_hs = any("hellaswag_acc" in r for r in rows)
    head = ["method", "description"]
    if has_ppl:
        head += ["perplexity", f"Δ vs {baseline}"]
    if has_hs:
        head += ["HellaSwag acc", "acc_norm", "Δ acc_norm (points" + (" ± paired SE)" if labels else ")")]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        cells = [f"`{r['method']}`", r.get("description", "")]
        if has_ppl:
            ppl = r.get("perplexity")
            cells.append(_fmt(ppl, ".3f"))
            if base is not None and ppl is not None and base.get("perplexity"):
                cells.append(f"{(ppl / base['perplexity'] - 1) * 100:+.2f}%")
            else:
                cells.append("—")
        if has_hs:
            acc, accn = r.get("hellaswag_acc"), r.get("hellaswag_acc_norm")
            cells += [_fmt(acc and acc * 100, ".2f"), _fmt(accn and accn * 100, ".2f")]
            cells.append(_acc_norm_change(r, base, labels))
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
    """Agreement with the float model per method (rows of ``compare_methods`` with ``prompts``)."""
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


def _error_panel(ax, rows: list[dict], label: str) -> None:
    """Each prompt's logits error as a dot, the median as a bar, per method (log scale)."""
    sub = [r for r in rows if r.get("agreement_prompts") and r["method"] != "fp32"]
    for i, r in enumerate(sub):
        errors = [p["logits_rel_error"] for p in r["agreement_prompts"]]
        ax.scatter([i + 0.12 * ((j % 5) - 2) / 2 for j in range(len(errors))], errors, s=6, alpha=0.5, color="tab:blue")
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
        colors = ["tab:gray" if n == "fp32" else "tab:green" if "llm.int8" in n else "tab:blue" for n in names]
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
