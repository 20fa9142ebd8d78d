"""The default against the bf16 model (issue 28): perplexity, agreement and HellaSwag, each against
fp32 and against bf16, and the three goals: RESULTS.md section 6.

Usage: python results/sixteen_bit_report.py OUT_STEM PPL.json[,PPL.json ...] AGREEMENT.json \
           HS_FP32.jsonl HS_BF16.jsonl HS_DEFAULT.jsonl
  PPL.json: ``results/remedies.py ... ppl:N`` outputs (rows with ``perplexity``) and/or
            ``results/window_ppl.py`` outputs (the perplexity of all their windows is used); one
            number of tokens across all of them.
  AGREEMENT.json: rows with ``agreement`` (``agreement_report.py``'s joined shards, or one run).
  HS_*.jsonl: ``llm-int8 eval --per-task`` logs of fp32, bf16 and the default.
Writes OUT_STEM.md (the tables) and OUT_STEM.json (the numbers behind them).
"""

from __future__ import annotations

import json
import math

from _setup import HELLASWAG, arguments, atomic_write, write_json

from llm_int8.evaluation import paired_difference, read_hellaswag, read_task_log
from llm_int8.evaluation.hellaswag_score import choices

ORDER = ("fp32", "bf16", "bf16-weights", "fp16", "fp16-weights", "default", "llm.int8")
PPL_SLACK = 0.3  # percentage points above bf16's gap (issue 28)
HS_SLACK = 0.5  # acc_norm points from bf16


def _perplexities(paths: list[str]) -> tuple[dict[str, float], int]:
    out, tokens = {}, set()
    for path in paths:
        data = json.load(open(path))
        for row in data["results"]:
            if "window_nll_sums" in row:
                n = len(row["window_nll_sums"])
                out[row["method"]] = math.exp(sum(row["window_nll_sums"]) / (n * (data["window"] - 1)))
                tokens.add(data["tokens"])
            elif "perplexity" in row:
                out[row["method"]] = row["perplexity"]
                tokens.add(row["windows"] * (row["tokens"] // row["windows"] + 1))  # predicted + 1 per window
    if len(tokens) != 1:
        raise SystemExit(f"the perplexity files score different numbers of tokens: {sorted(tokens)}")
    return out, tokens.pop()


def _ppl_table(ppl: dict[str, float], tokens: int) -> list[str]:
    lines = [
        f"| method | perplexity, first {tokens:,} tokens | Δ vs fp32 | Δ vs bf16 |",
        "| --- | --- | --- | --- |",
    ]
    for m in [m for m in ORDER if m in ppl]:
        d32 = (ppl[m] / ppl["fp32"] - 1) * 100
        d16 = f"{(ppl[m] / ppl['bf16'] - 1) * 100:+.2f}%" if "bf16" in ppl else "—"
        lines.append(f"| `{m}` | {ppl[m]:.3f} | {d32:+.2f}% | {d16} |")
    return lines


def _hellaswag(paths: dict[str, str]) -> dict:
    tasks = {t.index: t for t in read_hellaswag(HELLASWAG)}
    picks = {}
    for method, path in paths.items():
        picks[method] = {
            r["task"]: choices(tasks[r["task"]], tuple(r["log_likelihoods"]))[1]
            for r in read_task_log(path)[1]
            if r["method"] == method
        }
    common = sorted(set.intersection(*(set(p) for p in picks.values())))
    labels = [tasks[i].label for i in common]
    out = {
        "tasks": [common[0], common[-1]],
        "count": len(common),
        "contiguous": common[-1] - common[0] + 1 == len(common),
    }
    for method in paths:
        out[f"{method}_acc_norm"] = sum(picks[method][i] == tasks[i].label for i in common) / len(common)
    for base, other in (("fp32", "bf16"), ("fp32", "default"), ("bf16", "default")):
        d = paired_difference(labels, [picks[base][i] for i in common], [picks[other][i] for i in common])
        out[f"{other}_vs_{base}"] = {"difference": d.difference, "stderr": d.stderr, "interval": d.interval(),
                                     "differing": d.differing}  # fmt: skip
    return out


def _targets(ppl: dict[str, float], agree: dict[str, dict], hs: dict) -> list[str]:
    a, b = agree["default"], agree["bf16"]
    rows = [("identical 16-token answers", "identical", True), ("same first token", "first_token_same", True),
            ("share of fp32's tokens before the first difference", "matched_share_mean", True),
            ("KL(fp32 ‖ model), mean", "kl_mean", False)]  # fmt: skip
    agree_ok = all((a[k] >= b[k]) if up else (a[k] <= b[k]) for _, k, up in rows)
    detail = "; ".join(f"{label}: {a[k]:.4g} vs {b[k]:.4g}" for label, k, _ in rows)
    d32, b32 = (ppl["default"] / ppl["fp32"] - 1) * 100, (ppl["bf16"] / ppl["fp32"] - 1) * 100
    dv = hs["default_vs_bf16"]
    low, high = (100 * x for x in dv["interval"])
    return [
        "| goal (against the bf16 model: SmolLM2 cast to bfloat16) | default | bf16 | met? |",
        "| --- | --- | --- | --- |",
        f"| agreement with fp32 at least bf16's, {a['prompts']} built-in prompts | {detail} | (same row) |"
        f" {'yes' if agree_ok else 'no'} |",
        f"| perplexity gap to fp32 within bf16's + {PPL_SLACK} points | {d32:+.2f}% | {b32:+.2f}% (limit"
        f" {b32 + PPL_SLACK:+.2f}%) | {'yes' if d32 <= b32 + PPL_SLACK else 'no'} |",
        f"| HellaSwag acc_norm within {HS_SLACK} points of bf16 (paired, tasks {hs['tasks'][0]}–{hs['tasks'][1]},"
        f" {hs['count']}) | {100 * hs['default_acc_norm']:.2f} ({100 * dv['difference']:+.2f}"
        f" ± {100 * dv['stderr']:.2f},"
        f" 95% {low:+.2f} to {high:+.2f}) | {100 * hs['bf16_acc_norm']:.2f} |"
        f" {'yes' if abs(dv['difference']) * 100 <= HS_SLACK else 'no'} on the estimate;"
        f" {'the whole interval inside' if -HS_SLACK <= low and high <= HS_SLACK else 'the interval is wider than'}"
        f" ±{HS_SLACK} |",
    ]


def main() -> None:
    stem, ppl_paths, agreement, hs32, hs16, hsdef = arguments(__doc__, str, str, str, str, str, str)
    ppl, tokens = _perplexities(ppl_paths.split(","))
    agree = {r["method"]: r["agreement"] for r in json.load(open(agreement))["results"] if r.get("agreement")}
    hs = _hellaswag({"fp32": hs32, "bf16": hs16, "default": hsdef})
    lines = _ppl_table(ppl, tokens) + [""] + _targets(ppl, agree, hs)
    atomic_write(f"{stem}.md", "\n".join(lines) + "\n")
    write_json(f"{stem}.json", {"perplexity": ppl, "tokens": tokens, "agreement": agree, "hellaswag": hs})
    print("\n".join(lines))


if __name__ == "__main__":
    main()
