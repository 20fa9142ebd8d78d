"""Paired comparison of HellaSwag acc_norm choices, task by task, from ``llm-int8 eval`` JSON files.

Usage: python results/hellaswag_paired.py [--base METHOD] HELLASWAG_FILE JSON [JSON ...]
  e.g. python results/hellaswag_paired.py ../shared/data/hellaswag/hellaswag_val_full.txt.bz2 \\
           results/hellaswag_1000_fp32_paper.json results/full_default.json \\
           results/hellaswag_1000-1999_fp32_default.json

Each JSON says which tasks it scored (``settings.hellaswag_skip``, ``settings.hellaswag_limit``).
Runs of one method over disjoint task ranges are joined, so a long evaluation can be split. Every
method is compared with ``fp32`` (or ``--base METHOD``) on the tasks both scored: acc_norm, the
difference in points, its paired standard error (``llm_int8.evaluation.paired_difference``), and
how many choices differ."""

import json
import sys

from llm_int8.evaluation import paired_difference, read_hellaswag

args = sys.argv[1:]
base_method = "fp32"
if args[:1] == ["--base"]:
    base_method, args = args[1], args[2:]
path, files = args[0], args[1:]
choices: dict[str, dict[int, int]] = {}  # method -> task index -> acc_norm choice
labels: dict[int, int] = {}
for name in files:
    data = json.load(open(name))
    skip = data["settings"].get("hellaswag_skip") or 0
    tasks = read_hellaswag(path, limit=data["settings"]["hellaswag_limit"], skip=skip)
    labels.update({skip + i: t.label for i, t in enumerate(tasks)})
    for row in data["results"]:
        if "hellaswag_predictions" in row:
            seen = choices.setdefault(row["method"], {})
            for i, p in enumerate(row["hellaswag_predictions"]):
                if skip + i in seen:
                    raise SystemExit(f"{name}: {row['method']} scored task {skip + i} twice")
                seen[skip + i] = p
base = choices[base_method]
print(
    f"| method | tasks | acc_norm | Δ vs {base_method} (points) | paired standard error (points) "
    f"| choices differing from {base_method} |"
)
print("| --- | --- | --- | --- | --- | --- |")
for method, preds in choices.items():
    idx = sorted(set(preds) & set(base))
    y = [labels[i] for i in idx]
    d = paired_difference(y, [base[i] for i in idx], [preds[i] for i in idx])
    acc = sum(preds[i] == labels[i] for i in idx) / len(idx)
    span = f"{idx[0]}–{idx[-1]}" if idx[-1] - idx[0] + 1 == len(idx) else f"{len(idx)} (not contiguous)"
    print(
        f"| `{method}` | {span} | {100 * acc:.2f} | {100 * d.difference:+.2f} | {100 * d.stderr:.2f}"
        f" | {d.differing} of {d.tasks} |"
    )
