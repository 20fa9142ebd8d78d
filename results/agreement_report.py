"""The agreement table (Markdown) and plot (PNG) of one results file: RESULTS.md section 5.

Usage: python results/agreement_report.py RESULT.json OUT_STEM [METHOD ...]
  e.g. python results/agreement_report.py results/remedies_agreement.json results/agreement
RESULT.json: ``llm-int8 eval --agreement --json`` or ``results/remedies.py`` output (rows with
``agreement`` and ``agreement_prompts``). METHOD: the rows to keep, in that order (default: all).
Writes OUT_STEM.md and OUT_STEM.png.
"""

from __future__ import annotations

import json
import sys

from _setup import atomic_write

from llm_int8.evaluation.report import agreement_table, plot_comparison


def main() -> None:
    if len(sys.argv) < 3:
        sys.exit(__doc__.strip())
    path, stem, *methods = sys.argv[1:]
    rows = [r for r in json.load(open(path))["results"] if r.get("agreement")]
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
