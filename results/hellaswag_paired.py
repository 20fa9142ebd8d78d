"""Paired comparison of HellaSwag acc_norm choices, task by task, from ``llm-int8 eval`` JSON files.

Usage: python results/hellaswag_paired.py HELLASWAG_FILE LIMIT JSON [JSON ...]
  e.g. python results/hellaswag_paired.py ../shared/data/hellaswag/hellaswag_val_full.txt.bz2 1000 \\
           results/hellaswag_1000_fp32_paper.json results/full_default.json

For every method against ``fp32``: acc_norm, the difference in points, the standard error of that
difference from the per-task differences (paired: the same tasks), and how many choices differ."""

import json
import math
import sys

from llm_int8.evaluation import read_hellaswag

tasks = read_hellaswag(sys.argv[1], limit=int(sys.argv[2]))
labels = [t.label for t in tasks]
choices = {}
for path in sys.argv[3:]:
    for row in json.load(open(path))["results"]:
        if "hellaswag_predictions" in row:
            choices[row["method"]] = row["hellaswag_predictions"]
base = [int(p == y) for p, y in zip(choices["fp32"], labels, strict=True)]
n = len(base)
print("| method | acc_norm | Δ vs fp32 (points) | paired standard error (points) | choices differing from fp32 |")
print("| --- | --- | --- | --- | --- |")
for method, preds in choices.items():
    right = [int(p == y) for p, y in zip(preds, labels, strict=True)]
    diff = [r - b for r, b in zip(right, base, strict=True)]
    mean = sum(diff) / n
    se = math.sqrt(sum((d - mean) ** 2 for d in diff) / (n - 1) / n)
    differ = sum(p != q for p, q in zip(preds, choices["fp32"], strict=True))
    print(f"| `{method}` | {100 * sum(right) / n:.2f} | {100 * mean:+.2f} | {100 * se:.2f} | {differ} of {n} |")
