"""lm-evaluation-harness against the library's HellaSwag scorer, task by task, on the same tasks.

Usage: python results/harness_crosscheck.py OUT_STEM A-B METHOD[=LOG.jsonl] [METHOD[=LOG.jsonl] ...]
  A-B: HellaSwag validation tasks A..B (0-based, inclusive) of ../shared/data/hellaswag.
  METHOD: an ``llm-int8 eval`` method (fp32, default, bf16, ...); with ``=LOG.jsonl`` the library's
          log-likelihoods are read from that ``--per-task`` log (tasks it lacks are scored now),
          else the library's scorer runs here.
  e.g. python results/harness_crosscheck.py results/harness_crosscheck 0-199 fp32=results/hellaswag_full_fp32.jsonl

For each method: the harness's acc / acc_norm (``lm_eval.simple_evaluate`` on the converted model,
the local task of ``llm_int8.evaluation.harness``), the library's acc / acc_norm (its normaliser,
``len(" " + ending)``) and the harness's rule applied to the library's log-likelihoods, the largest
per-ending log-likelihood difference, and the tasks whose choices differ. Writes OUT_STEM.json
(every task's log-likelihoods from both) and OUT_STEM.md. The harness's progress goes to stderr.
"""

from __future__ import annotations

import json
import os

from _setup import HELLASWAG, arguments, atomic_write, hellaswag_tasks, load, write_json

from llm_int8.evaluation import METHODS, apply_method, score_hellaswag
from llm_int8.evaluation.harness import harness_choices, harness_hellaswag
from llm_int8.evaluation.hellaswag_score import choices


def _range(text: str) -> tuple[int, int]:
    first, _, last = text.partition("-")
    return int(first), int(last)


def _method(text: str) -> tuple[str, str | None]:
    name, _, log = text.partition("=")
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(METHODS)}")
    return name, log or None


def _logged(path: str | None, method: str) -> dict[int, tuple[float, ...]]:
    if path is None:
        return {}
    out = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            if rec.get("method") == method and "task" in rec:
                out[rec["task"]] = tuple(rec["log_likelihoods"])
    return out


def _library(model, tok, tasks, logged: dict) -> list[tuple[float, ...]]:
    todo = [t for t in tasks if t.index not in logged]
    if todo:
        scored = score_hellaswag(model, tok, todo, progress=True, desc="library")
        logged = {**logged, **{t.index: ll for t, ll in zip(todo, scored.log_likelihoods, strict=True)}}
    return [logged[t.index] for t in tasks]


def _row(name: str, tasks, harness: dict, lib: list, source: str) -> dict:
    n = len(tasks)
    lib_own = [choices(t, ll) for t, ll in zip(tasks, lib, strict=True)]
    lib_harness_rule = [harness_choices(t, ll) for t, ll in zip(tasks, lib, strict=True)]
    pairs = zip(harness["log_likelihoods"], lib, strict=True)
    diffs = [abs(a - b) for h, ll in pairs for a, b in zip(h, ll, strict=True)]
    labels = [t.label for t in tasks]

    def acc(picks, k):
        return sum(p[k] == y for p, y in zip(picks, labels, strict=True)) / n

    return {
        "method": name,
        "tasks": n,
        "library_source": source,
        "harness_acc": harness["acc"],
        "harness_acc_norm": harness["acc_norm"],
        "harness_acc_stderr": harness["acc_stderr"],
        "harness_acc_norm_stderr": harness["acc_norm_stderr"],
        "library_acc": acc(lib_own, 0),
        "library_acc_norm": acc(lib_own, 1),
        "library_ll_harness_rule_acc": acc(lib_harness_rule, 0),
        "library_ll_harness_rule_acc_norm": acc(lib_harness_rule, 1),
        "max_abs_ll_difference": max(diffs),
        "median_abs_ll_difference": sorted(diffs)[len(diffs) // 2],
        "acc_choices_differing": sum(a != b[0] for a, b in zip(harness["acc_choices"], lib_harness_rule, strict=True)),
        "acc_norm_choices_differing": sum(
            a != b[1] for a, b in zip(harness["acc_norm_choices"], lib_harness_rule, strict=True)
        ),
        "acc_norm_normaliser_changes": sum(a[1] != b[1] for a, b in zip(lib_own, lib_harness_rule, strict=True)),
        "harness_log_likelihoods": [list(x) for x in harness["log_likelihoods"]],
        "library_log_likelihoods": [list(x) for x in lib],
        "lm_eval_version": harness["lm_eval_version"],
    }


def _table(rows: list[dict]) -> str:
    head = (
        "| method | tasks | harness acc | library acc | harness acc_norm | library's scores, harness's rule: acc_norm"
        " | library acc_norm (len(' ' + ending)) | max / median abs. log-likelihood difference (nats)"
        " | choices differing (acc / acc_norm) | acc_norm choices the normaliser changes |"
    )
    lines = [head, "|" + " --- |" * 10]
    for r in rows:
        lines.append(
            f"| `{r['method']}` | {r['tasks']} | {100 * r['harness_acc']:.2f} | {100 * r['library_acc']:.2f}"
            f" | {100 * r['harness_acc_norm']:.2f} | {100 * r['library_ll_harness_rule_acc_norm']:.2f}"
            f" | {100 * r['library_acc_norm']:.2f}"
            f" | {r['max_abs_ll_difference']:.2e} / {r['median_abs_ll_difference']:.2e}"
            f" | {r['acc_choices_differing']} / {r['acc_norm_choices_differing']}"
            f" | {r['acc_norm_normaliser_changes']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    stem, (first, last), *methods = arguments(__doc__, str, _range, _method, ...)
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # the local task needs no hub
    model, tok = load()
    tasks = hellaswag_tasks(skip=first, limit=last - first + 1)
    rows = []
    for name, log in methods:
        converted = apply_method(model, name)
        harness = harness_hellaswag(converted, tok, tasks)
        lib = _library(converted, tok, tasks, _logged(log, name))
        rows.append(_row(name, tasks, harness, lib, log or "scored in this run"))
        settings = {"tasks": [first, last], "hellaswag": str(HELLASWAG), "methods": [m for m, _ in methods]}
        write_json(f"{stem}.json", {"settings": settings, "results": rows})
        print({k: v for k, v in rows[-1].items() if not isinstance(v, list)}, flush=True)
    atomic_write(f"{stem}.md", f"Tasks {first}-{last} of {HELLASWAG.name}\n\n" + _table(rows))
    print(_table(rows))


if __name__ == "__main__":
    main()
