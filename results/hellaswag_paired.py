"""Paired comparison of HellaSwag acc_norm choices, task by task, from ``llm-int8 eval`` outputs.

Usage: python results/hellaswag_paired.py [--base METHOD] HELLASWAG_FILE RESULT [RESULT ...]
  e.g. python results/hellaswag_paired.py ../shared/data/hellaswag/hellaswag_val_full.txt.bz2 \\
           results/hellaswag_full_fp32.jsonl results/hellaswag_full_default.jsonl

A RESULT is an ``llm-int8 eval --json`` file (which says which tasks it scored:
``settings.hellaswag_skip`` / ``hellaswag_limit`` / ``hellaswag_tasks``) or a per-task log
(``--per-task``, ``.jsonl``: each record names its task). Runs of one method over disjoint task
ranges, shards and resumed runs are joined; a task scored twice must have the same choice.
Every method is compared with ``fp32`` (or ``--base METHOD``) on the tasks both scored: acc_norm,
the difference in points, its paired standard error and 95% interval
(``llm_int8.evaluation.paired_difference``), and how many choices differ; where both come from
per-task logs, also the score noise: the standard deviation, over every ending, of the change in
its acc_norm score (log-likelihood per character, nats) — a finer measure than the accuracy, which
moves only where the noise changes a choice."""

import json
import statistics

from _setup import arguments

from llm_int8.evaluation import read_hellaswag, read_task_log
from llm_int8.evaluation.hellaswag import paired_difference
from llm_int8.evaluation.hellaswag_score import choices as task_choices

args = arguments(__doc__, str, str, ...)
base_method = "fp32"
if args[0] == "--base":
    base_method, args = args[1], args[2:]
path, files = args[0], args[1:]
tasks = {t.index: t for t in read_hellaswag(path)}
choices: dict[str, dict[int, int]] = {}  # method -> task index -> acc_norm choice
scores: dict[str, dict[int, list[float]]] = {}  # method -> task index -> per-ending log-likelihood per char


def record(name: str, method: str, index: int, choice: int) -> None:
    seen = choices.setdefault(method, {})
    if seen.get(index, choice) != choice:
        raise SystemExit(f"{name}: {method} chose {choice} on task {index}, another file {seen[index]}")
    seen[index] = choice


for name in files:
    if name.endswith(".jsonl"):
        for r in read_task_log(name)[1]:
            task = tasks[r["task"]]
            record(name, r["method"], r["task"], task_choices(task, tuple(r["log_likelihoods"]))[1])
            chars = [len(" " + e) for e in task.endings]
            scores.setdefault(r["method"], {})[r["task"]] = [
                ll / n for ll, n in zip(r["log_likelihoods"], chars, strict=True)
            ]
        continue
    data = json.load(open(name))
    skip = data["settings"].get("hellaswag_skip") or 0
    first = (data["settings"].get("hellaswag_tasks") or [skip])[0]
    for row in data["results"]:
        for i, p in enumerate(row.get("hellaswag_predictions", [])):
            record(name, row["method"], first + i, p)
base = choices[base_method]
print(
    f"| method | tasks | acc_norm | Δ vs {base_method} (points) | paired standard error (points) "
    f"| 95% interval (points) | choices differing from {base_method} | score noise (nats/char) |"
)
print("| --- | --- | --- | --- | --- | --- | --- | --- |")
for method, preds in choices.items():
    idx = sorted(set(preds) & set(base))
    y = [tasks[i].label for i in idx]
    d = paired_difference(y, [base[i] for i in idx], [preds[i] for i in idx])
    low, high = d.interval()
    acc = sum(preds[i] == tasks[i].label for i in idx) / len(idx)
    span = f"{idx[0]}–{idx[-1]}" if idx[-1] - idx[0] + 1 == len(idx) else f"{len(idx)} (not contiguous)"
    mine, theirs = scores.get(method, {}), scores.get(base_method, {})
    both = [i for i in idx if i in mine and i in theirs]
    changes = [a - b for i in both for a, b in zip(mine[i], theirs[i], strict=True)]
    noise = f"{statistics.pstdev(changes):.4f}" if len(changes) > 1 else "—"
    print(
        f"| `{method}` | {span} | {100 * acc:.2f} | {100 * d.difference:+.2f} | {100 * d.stderr:.2f}"
        f" | {100 * low:+.2f} to {100 * high:+.2f} | {d.differing} of {d.tasks} | {noise} |"
    )
