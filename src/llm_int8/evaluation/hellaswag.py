"""HellaSwag zero-shot accuracy (Zellers et al. 2019), one of the paper's four zero-shot tasks.

File format (plain text, or ``.bz2``), 6 lines per task::

    activity_label: context
    gold label (0-3)
    ending 0
    ending 1
    ending 2
    ending 3

Scoring (``hellaswag_score.py``), the usual way: each ending is the continuation ``" " + ending``
of the context; its score is the summed log-likelihood of its tokens given the context. ``acc``
picks the highest sum, ``acc_norm`` the highest sum divided by the continuation's length in characters.
"""

from __future__ import annotations

import bz2
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "HellaSwagResult",
    "HellaSwagTask",
    "PairedDifference",
    "paired_difference",
    "read_hellaswag",
]

_LINES_PER_TASK = 6
N_ENDINGS = 4


@dataclass(frozen=True)
class HellaSwagTask:
    context: str
    label: int
    endings: tuple[str, str, str, str]
    index: int | None = None  # 0-based position in its file (set by read_hellaswag), for per-task logs


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

    def interval(self, z: float = 1.96) -> tuple[float, float]:
        """The normal-approximation interval ``difference ± z · stderr`` (95% for the default z)."""
        return (self.difference - z * self.stderr, self.difference + z * self.stderr)


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
                    tasks.append(_parse_task(block, p, lineno - _LINES_PER_TASK + 1, len(tasks)))
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


def _parse_task(block: list[str], path: Path, first_line: int, index: int) -> HellaSwagTask:
    context, label_text, *endings = block
    if not context.strip():
        raise ValueError(f"{path}: line {first_line}: empty context (expected 'activity_label: context')")
    try:
        label = int(label_text.strip())
    except ValueError:
        raise ValueError(
            f"{path}: line {first_line + 1}: gold label must be an integer 0-3, got {label_text!r}"
        ) from None
    if not 0 <= label < N_ENDINGS:
        raise ValueError(f"{path}: line {first_line + 1}: gold label must be 0-3, got {label}")
    for i, ending in enumerate(endings):
        if not ending.strip():
            raise ValueError(f"{path}: line {first_line + 2 + i}: ending {i} is empty")
    return HellaSwagTask(context.strip(), label, tuple(e.strip() for e in endings), index)
