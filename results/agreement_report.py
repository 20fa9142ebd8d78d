"""The agreement table (Markdown) and plot (PNG) of one results file: RESULTS.md section 5.

Usage: python results/agreement_report.py RESULT.json[,RESULT.json ...] OUT_STEM [METHOD ...]
  e.g. python results/agreement_report.py results/remedies_agreement.json results/agreement
RESULT.json: ``llm-int8 eval --agreement --json`` or ``results/remedies.py`` output (rows with
``agreement`` and ``agreement_prompts``); several, comma-separated, are shards over disjoint prompts
(``remedies.py ... agreement:A-B``): each method's per-prompt rows are joined and its summary made
again from them (a method missing from a shard is left out). METHOD: the rows to keep, in that
order (default: all). Writes OUT_STEM.md, OUT_STEM.png and, for shards, OUT_STEM.json (the joined rows).
"""

from __future__ import annotations

import json
import sys

from _setup import atomic_write

from llm_int8.evaluation import summarize_agreement
from llm_int8.evaluation.report import agreement_table, plot_comparison, write_json


def _joined(paths: list[str]) -> list[dict]:
    """Each method's rows of every shard, its per-prompt rows concatenated and summarized again."""
    shards = [[r for r in json.load(open(p))["results"] if r.get("agreement")] for p in paths]
    if len(shards) == 1:
        return shards[0]
    names = [r["method"] for r in shards[0] if all(any(x["method"] == r["method"] for x in s) for s in shards)]
    rows = []
    for name in names:
        parts = [next(x for x in s if x["method"] == name) for s in shards]
        per_prompt = [p for part in parts for p in part["agreement_prompts"]]
        ids = [p["id"] for p in per_prompt]
        if len(set(ids)) != len(ids):
            raise SystemExit(f"{name}: a prompt is in two shards ({sorted(i for i in ids if ids.count(i) > 1)})")
        rows.append({**parts[0], "agreement": summarize_agreement(per_prompt), "agreement_prompts": per_prompt})
    return rows


def main() -> None:
    if len(sys.argv) < 3:
        sys.exit(__doc__.strip())
    path, stem, *methods = sys.argv[1:]
    paths = path.split(",")
    rows = _joined(paths)
    if len(paths) > 1:
        write_json(f"{stem}.json", {"shards": paths, "results": rows})
    if methods:
        by_name = {r["method"]: r for r in rows}
        missing = [m for m in methods if m not in by_name]
        if missing:
            raise SystemExit(f"{path} has no agreement rows for {missing}; it has {sorted(by_name)}")
        rows = [by_name[m] for m in methods]
    n = rows[0]["agreement"]["prompts"]
    atomic_write(f"{stem}.md", agreement_table(rows))
    plot_comparison(rows, f"{stem}.png", title=f"Agreement with fp32 on {n} chat prompts (SmolLM2-135M-Instruct)")
    print(f"wrote {stem}.md and {stem}.png ({len(rows)} methods, {n} prompts)")


if __name__ == "__main__":
    main()
