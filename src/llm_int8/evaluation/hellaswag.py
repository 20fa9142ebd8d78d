"""HellaSwag zero-shot accuracy (Zellers et al. 2019), one of the paper's four zero-shot tasks.

File format (plain text, or ``.bz2``), 6 lines per task::

    activity_label: context
    gold label (0-3)
    ending 0
    ending 1
    ending 2
    ending 3

Scoring, the usual way: each ending is the continuation ``" " + ending`` of the context; its score
is the summed log-likelihood of its tokens given the context. ``acc`` picks the highest sum,
``acc_norm`` the highest sum divided by the continuation's length in characters.
"""

from __future__ import annotations

import bz2
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

__all__ = [
    "HellaSwagResult",
    "HellaSwagTask",
    "PairedDifference",
    "paired_difference",
    "read_hellaswag",
    "score_hellaswag",
]

_LINES_PER_TASK = 6
_N_ENDINGS = 4


@dataclass(frozen=True)
class HellaSwagTask:
    context: str
    label: int
    endings: tuple[str, str, str, str]


@dataclass(frozen=True)
class HellaSwagResult:
    acc: float
    acc_norm: float
    tasks: int
    predictions: tuple[int, ...]  # acc_norm choice per task
    log_likelihoods: tuple[tuple[float, ...], ...]  # per task, per ending (summed, nats)


@dataclass(frozen=True)
class PairedDifference:
    """Accuracy of ``other`` minus accuracy of ``base`` on the same tasks, in fractions.

    ``stderr`` is the standard error of that difference from the per-task differences (paired, so
    the tasks both get right or both get wrong add no noise); ``differing``: tasks where the two
    chose differently; ``tasks``: how many were compared.
    """

    difference: float
    stderr: float
    differing: int
    tasks: int


def paired_difference(labels: list[int], base: list[int], other: list[int]) -> PairedDifference:
    """Paired comparison of two methods' choices (e.g. ``HellaSwagResult.predictions``) on one task list."""
    if not (len(labels) == len(base) == len(other)):
        raise ValueError(f"labels, base and other must be as long, got {len(labels)}, {len(base)}, {len(other)}")
    n = len(labels)
    if n < 2:
        raise ValueError(f"a paired difference needs at least 2 tasks, got {n}")
    diffs = [int(o == y) - int(b == y) for y, b, o in zip(labels, base, other, strict=True)]
    mean = sum(diffs) / n
    var = sum((d - mean) ** 2 for d in diffs) / (n - 1)
    differing = sum(b != o for b, o in zip(base, other, strict=True))
    return PairedDifference(mean, (var / n) ** 0.5, differing, n)


def read_hellaswag(path: str | os.PathLike, limit: int | None = None, skip: int = 0) -> list[HellaSwagTask]:
    """Parse ``limit`` tasks (all if ``None``) of a HellaSwag file, after skipping the first ``skip``.

    ``skip`` lets a long evaluation be split into runs over disjoint task ranges (every task is
    still parsed and checked).

    A malformed file is a ``ValueError`` naming the file and the 1-based line.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"HellaSwag file not found: {p}")
    if limit is not None and limit <= 0:
        raise ValueError(f"limit must be positive, got {limit}")
    if skip < 0:
        raise ValueError(f"skip must be >= 0, got {skip}")
    opener = bz2.open if p.suffix == ".bz2" else open
    tasks: list[HellaSwagTask] = []
    block: list[str] = []
    try:
        with opener(p, "rt", encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                line = line.rstrip("\n").rstrip("\r")
                block.append(line)
                if len(block) == _LINES_PER_TASK:
                    tasks.append(_parse_task(block, p, lineno - _LINES_PER_TASK + 1))
                    block = []
                    if limit is not None and len(tasks) >= skip + limit:
                        break
    except (OSError, EOFError, UnicodeDecodeError) as err:
        raise ValueError(f"{p}: cannot read as a HellaSwag file: {err}") from err
    leftover = [b for b in block if b.strip()]
    if leftover:
        first = (len(tasks) * _LINES_PER_TASK) + 1
        raise ValueError(f"{p}: line {first}: incomplete task at end of file ({len(block)} of {_LINES_PER_TASK} lines)")
    if not tasks:
        raise ValueError(f"{p}: no HellaSwag task found (empty file?)")
    if skip >= len(tasks):
        raise ValueError(f"{p}: holds {len(tasks)} tasks, cannot skip {skip}")
    return tasks[skip:]


def _parse_task(block: list[str], path: Path, first_line: int) -> HellaSwagTask:
    context, label_text, *endings = block
    if not context.strip():
        raise ValueError(f"{path}: line {first_line}: empty context (expected 'activity_label: context')")
    try:
        label = int(label_text.strip())
    except ValueError:
        raise ValueError(
            f"{path}: line {first_line + 1}: gold label must be an integer 0-3, got {label_text!r}"
        ) from None
    if not 0 <= label < _N_ENDINGS:
        raise ValueError(f"{path}: line {first_line + 1}: gold label must be 0-3, got {label}")
    for i, ending in enumerate(endings):
        if not ending.strip():
            raise ValueError(f"{path}: line {first_line + 2 + i}: ending {i} is empty")
    return HellaSwagTask(context.strip(), label, tuple(e.strip() for e in endings))


def _encode(tokenizer, task: HellaSwagTask) -> list[tuple[list[int], int, int]]:
    """Per ending: (ids of context + continuation, number of context tokens, continuation length in chars).

    The continuation's tokens are those of ``tokenize(context + continuation)`` after the tokens of
    ``tokenize(context)``, so a merge across the boundary cannot shift tokens between the two.
    """
    ctx_ids = tokenizer(task.context, add_special_tokens=False)["input_ids"]
    out = []
    for ending in task.endings:
        cont = " " + ending
        ids = tokenizer(task.context + cont, add_special_tokens=False)["input_ids"]
        n_ctx = len(ctx_ids)
        if ids[:n_ctx] != ctx_ids:  # the boundary merged: fall back to separate encodings
            ids = ctx_ids + tokenizer(cont, add_special_tokens=False)["input_ids"]
        out.append((ids, n_ctx, len(cont)))
    return out


@torch.no_grad()
def score_hellaswag(
    model,
    tokenizer,
    tasks: list[HellaSwagTask],
    tasks_per_batch: int = 4,
    progress: bool = False,
    desc: str = "hellaswag",
) -> HellaSwagResult:
    """acc and acc_norm of ``model`` on ``tasks``; the 4 endings of each task share one batch.

    Sequences are right-padded; padding comes after every scored token, so a causal model's
    log-likelihoods do not depend on it (padded positions are masked out).
    """
    if not tasks:
        raise ValueError("no HellaSwag task to score")
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    correct = correct_norm = 0
    preds: list[int] = []
    all_ll: list[tuple[float, ...]] = []
    for start in tqdm(range(0, len(tasks), tasks_per_batch), desc=desc, unit="batch", disable=not progress):
        chunk = tasks[start : start + tasks_per_batch]
        encoded = [e for t in chunk for e in _encode(tokenizer, t)]  # 4 per task
        width = max(len(ids) for ids, _, _ in encoded)
        input_ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)  # (4 * tasks, width)
        attention = torch.zeros_like(input_ids)
        target = torch.zeros(len(encoded), width, dtype=torch.bool)  # which positions are scored
        for i, (ids, n_ctx, _) in enumerate(encoded):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            attention[i, : len(ids)] = 1
            target[i, n_ctx : len(ids)] = True
        logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits.float()
        logprobs = torch.log_softmax(logits[:, :-1], dim=-1)  # (4 * tasks, width - 1, vocab): predicts t+1
        token_ll = logprobs.gather(-1, input_ids[:, 1:, None].to(device)).squeeze(-1)  # (4 * tasks, width - 1)
        ll = (token_ll * target[:, 1:].to(device)).sum(-1).double().cpu().view(len(chunk), _N_ENDINGS)
        n_chars = torch.tensor([c for _, _, c in encoded], dtype=torch.float64).view(len(chunk), _N_ENDINGS)
        for task, row, row_norm in zip(chunk, ll, ll / n_chars, strict=True):
            correct += int(row.argmax()) == task.label
            pred = int(row_norm.argmax())
            correct_norm += pred == task.label
            preds.append(pred)
            all_ll.append(tuple(row.tolist()))
    n = len(tasks)
    return HellaSwagResult(correct / n, correct_norm / n, n, tuple(preds), tuple(all_ll))
