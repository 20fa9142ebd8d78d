"""The method comparison: every Table 1 method on the same tokens, HellaSwag tasks and chat prompts."""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable
from dataclasses import replace

import torch

from ..analysis.calibration import calibration_ids
from .agreement import measure_agreement, reference_generations, summarize_agreement
from .hellaswag import HellaSwagTask
from .hellaswag_score import score_hellaswag
from .methods import MethodSpec, apply_method, parse_methods
from .perplexity import perplexity
from .prompts import Prompt
from .tasklog import TaskLog

__all__ = ["compare_methods"]

logger = logging.getLogger(__name__)


def compare_methods(
    model,
    tokenizer,
    methods: str | list[str] | list[MethodSpec],
    input_ids: torch.Tensor | None = None,
    window: int = 512,
    tasks: list[HellaSwagTask] | None = None,
    progress: bool = False,
    on_result: Callable[[dict], None] | None = None,
    task_log: TaskLog | None = None,
    prompts: list[Prompt] | None = None,
    new_tokens: int = 16,
) -> list[dict]:
    """One result row per method: perplexity of ``input_ids`` in windows of ``window`` tokens,
    HellaSwag ``acc`` / ``acc_norm`` on ``tasks``, and/or agreement with ``model`` (the float
    reference) on the chat ``prompts`` (greedy ``new_tokens``), with the seconds each took.

    ``model`` is never modified: each method converts a copy, freed before the next.
    ``on_result`` is called with each row as soon as it is complete (for progress reports).
    ``task_log``: each HellaSwag task's log-likelihoods are appended to it as soon as scored, and
    tasks it already holds for a method (a resumed run) are read from it instead of scored again.
    Agreement rows hold the summary (``agreement``) and one row per prompt (``agreement_prompts``).
    """
    specs = parse_methods(methods)
    if input_ids is None and not tasks and not prompts:
        raise ValueError("nothing to evaluate: give input_ids (perplexity), HellaSwag tasks and/or prompts")
    if input_ids is not None and input_ids.numel() < window:
        raise ValueError(f"text has {input_ids.numel()} tokens, fewer than one window of {window}")
    if tasks and any(t.index is None for t in tasks):
        tasks = [replace(t, index=i) if t.index is None else t for i, t in enumerate(tasks)]
    references = None
    if prompts:
        references = reference_generations(model, tokenizer, prompts, new_tokens, progress, desc="fp32 answers")
    rows = []
    for spec in specs:
        t0 = time.perf_counter()
        done = _done(task_log, spec.name, tasks)
        if input_ids is None and not prompts and tasks and all(t.index in done for t in tasks):
            converted = model  # every task is in the log: nothing to run
        else:
            calibration = calibration_ids(tokenizer) if spec.calibrated else None
            converted = apply_method(model, spec, calibration_ids=calibration)
        row: dict = {"method": spec.name, "description": spec.description}
        if input_ids is not None:
            row.update(_perplexity(converted, spec, input_ids, window, progress))
        if tasks:
            on_task = None if task_log is None else _appender(task_log, spec.name)
            row.update(_hellaswag(converted, tokenizer, spec, tasks, progress, done, on_task))
        if prompts:
            t = time.perf_counter()
            per_prompt = measure_agreement(
                converted, tokenizer, prompts, references, new_tokens, progress, desc=f"{spec.name} answers"
            )
            row.update(
                agreement=summarize_agreement(per_prompt),
                agreement_prompts=per_prompt,
                agreement_seconds=time.perf_counter() - t,
            )
        row["seconds"] = time.perf_counter() - t0
        rows.append(row)
        if on_result is not None:
            on_result(row)
        if converted is not model:
            del converted
            gc.collect()
    return rows


def _perplexity(converted, spec: MethodSpec, input_ids: torch.Tensor, window: int, progress: bool) -> dict:
    t = time.perf_counter()
    ppl = perplexity(converted, input_ids, window=window, progress=progress, desc=f"{spec.name} ppl")
    return {
        "perplexity": ppl.perplexity,
        "nll": ppl.nll,
        "tokens": ppl.tokens,
        "windows": ppl.windows,
        "perplexity_seconds": time.perf_counter() - t,
    }


def _hellaswag(converted, tokenizer, spec: MethodSpec, tasks, progress: bool, done: dict, on_task) -> dict:
    t = time.perf_counter()
    hs = score_hellaswag(
        converted, tokenizer, tasks, progress=progress, desc=f"{spec.name} hellaswag", done=done, on_task=on_task
    )
    return {
        "hellaswag_acc": hs.acc,
        "hellaswag_acc_norm": hs.acc_norm,
        "hellaswag_tasks": hs.tasks,
        "hellaswag_predictions": list(hs.predictions),  # acc_norm choices, to compare methods task by task
        "hellaswag_seconds": time.perf_counter() - t,
        "hellaswag_resumed": sum(t.index in done for t in tasks),
    }


def _done(task_log: TaskLog | None, method: str, tasks: list[HellaSwagTask] | None) -> dict[int, tuple[float, ...]]:
    """Log-likelihoods of ``method`` already in ``task_log``, by task index (checked against the tasks)."""
    if task_log is None or not tasks:
        return {}
    labels = {t.index: t.label for t in tasks}
    done = {}
    for index, record in task_log.done(method).items():
        if index in labels:
            if record.get("label") != labels[index]:
                raise ValueError(
                    f"{task_log.path}: task {index} has label {record.get('label')}, the file {labels[index]}"
                )
            done[index] = tuple(record["log_likelihoods"])
    return done


def _appender(task_log: TaskLog, method: str) -> Callable[[HellaSwagTask, tuple[float, ...]], None]:
    def append(task: HellaSwagTask, ll: tuple[float, ...]) -> None:
        task_log.append({"method": method, "task": task.index, "label": task.label, "log_likelihoods": list(ll)})

    return append
