"""The method comparison: every Table 1 method on the same tokens and the same HellaSwag tasks."""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable

import torch

from ..analysis.calibration import calibration_ids
from .hellaswag import HellaSwagTask, score_hellaswag
from .methods import MethodSpec, apply_method, parse_methods
from .perplexity import perplexity

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
) -> list[dict]:
    """One result row per method: perplexity of ``input_ids`` in windows of ``window`` tokens and/or
    HellaSwag ``acc`` / ``acc_norm`` on ``tasks``, with the seconds each took.

    ``model`` is never modified: each method converts a copy, freed before the next.
    ``on_result`` is called with each row as soon as it is complete (for progress reports).
    """
    if isinstance(methods, list) and methods and all(isinstance(m, MethodSpec) for m in methods):
        specs = list(methods)
    else:
        specs = parse_methods(methods)
    if input_ids is None and not tasks:
        raise ValueError("nothing to evaluate: give input_ids (perplexity) and/or HellaSwag tasks")
    if input_ids is not None and input_ids.numel() < window:
        raise ValueError(f"text has {input_ids.numel()} tokens, fewer than one window of {window}")
    rows = []
    for spec in specs:
        t0 = time.perf_counter()
        calibration = calibration_ids(tokenizer) if spec.calibrated else None
        converted = apply_method(model, spec, calibration_ids=calibration)
        row: dict = {"method": spec.name, "description": spec.description}
        if input_ids is not None:
            t = time.perf_counter()
            ppl = perplexity(converted, input_ids, window=window, progress=progress, desc=f"{spec.name} ppl")
            row.update(
                perplexity=ppl.perplexity,
                nll=ppl.nll,
                tokens=ppl.tokens,
                windows=ppl.windows,
                perplexity_seconds=time.perf_counter() - t,
            )
        if tasks:
            t = time.perf_counter()
            hs = score_hellaswag(converted, tokenizer, tasks, progress=progress, desc=f"{spec.name} hellaswag")
            row.update(
                hellaswag_acc=hs.acc,
                hellaswag_acc_norm=hs.acc_norm,
                hellaswag_tasks=hs.tasks,
                hellaswag_predictions=list(hs.predictions),  # acc_norm choices, to compare methods task by task
                hellaswag_seconds=time.perf_counter() - t,
            )
        row["seconds"] = time.perf_counter() - t0
        rows.append(row)
        if on_result is not None:
            on_result(row)
        if converted is not model:
            del converted
            gc.collect()
    return rows
