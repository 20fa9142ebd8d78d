"""HellaSwag through lm-evaluation-harness (``lm-eval``, the ``eval`` extra), on local data, to check
the library's scorer (``hellaswag_score.py``) against the harness users and papers quote.

``write_hellaswag_task`` turns the tasks of a HellaSwag file (``read_hellaswag``) into a harness
task: a JSON Lines file and a task YAML beside it, which read that file through the ``json``
dataset builder (no hub). ``harness_hellaswag`` runs ``lm_eval.simple_evaluate`` on a model
object (the harness's ``HFLM`` backend wraps a converted model as it is) and returns every ending's
log-likelihood with the harness's own acc and acc_norm.

What is the same and what is not (lm-eval 0.4.13; ``lm_eval/tasks/hellaswag``, ``lm_eval/api``):

* *Text*: the harness's own ``hellaswag`` task builds ``activity_label: ctx_a Ctx_b`` from the hub
  copy and strips WikiHow's ``[title]``-style markers (``process_docs``). The flattened file here
  holds ``activity_label: ctx`` already without markers, and ``ctx_b`` not capitalized; the local
  task uses that text as it is, so both scorers see the same strings. Numbers from the harness's
  hub task can differ from these by that capitalization.
* *Log-likelihoods*: both score the continuation ``" " + ending`` after the context, with the
  continuation's tokens taken from the tokenization of the whole string after the context's (the
  library falls back to separate encodings where the boundary merges; the harness does not);
  the harness runs each context + ending in full, the library the context once and the endings on
  its key/value cache. Equal to float rounding (the test checks it).
* *acc*: the ending with the highest summed log-likelihood, in both.
* *acc_norm*: the harness divides by the ending's length in characters (``len(choice)``, the
  choice without the leading space; ``acc_bytes``, not reported here, divides by UTF-8 bytes); the
  library by the continuation's, ``len(" " + ending)``, one more. ``harness_choices`` makes the
  harness's choices from the library's log-likelihoods, so the two can be compared task by task.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from .._files import atomic_write
from .hellaswag import N_ENDINGS, HellaSwagTask

__all__ = ["TASK_NAME", "harness_choices", "harness_hellaswag", "write_hellaswag_task"]

TASK_NAME = "hellaswag_local"


def _task_yaml(name: str, data_file: Path) -> str:
    # JSON strings are valid YAML scalars: quoting is exact whatever the path holds
    q = json.dumps
    return "\n".join(
        [
            f"task: {q(name)}",
            "dataset_path: json",
            "dataset_kwargs:",
            "  data_files:",
            f"    validation: {q(str(data_file))}",
            "output_type: multiple_choice",
            "validation_split: validation",
            "test_split: null",
            f"doc_to_text: {q('{{query}}')}",
            f"doc_to_target: {q('{{gold}}')}",
            "doc_to_choice: choices",
            "metric_list:",
            "  - metric: acc",
            "    aggregation: mean",
            "    higher_is_better: true",
            "  - metric: acc_norm",
            "    aggregation: mean",
            "    higher_is_better: true",
            "metadata:",
            "  version: 1.0",
            "",
        ]
    )


def write_hellaswag_task(tasks: list[HellaSwagTask], directory: str | os.PathLike, name: str = TASK_NAME) -> Path:
    """Write ``tasks`` as the harness task ``name`` into ``directory``: ``name.jsonl`` (one
    ``{"query", "choices", "gold", "index"}`` per task, in order) and ``name.yaml``; returns the YAML's path.

    Pass ``directory`` to ``lm_eval`` as ``--include_path`` (or ``TaskManager(include_path=...)``).
    """
    if not tasks:
        raise ValueError("no HellaSwag task to write")
    if not name or not name.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"task name must be letters, digits, '_' or '-', got {name!r}")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    data_file = (out / f"{name}.jsonl").resolve()
    lines = [
        json.dumps({"query": t.context, "choices": list(t.endings), "gold": t.label, "index": t.index}) for t in tasks
    ]
    atomic_write(data_file, "\n".join(lines) + "\n")
    return atomic_write(out / f"{name}.yaml", _task_yaml(name, data_file))


def harness_choices(task: HellaSwagTask, log_likelihoods: tuple[float, ...]) -> tuple[int, int]:
    """(acc choice, acc_norm choice) as the harness makes them: highest sum, and highest sum per
    character of the ending (without the leading space). Ties go to the first ending, as ``argmax``."""
    norm = [ll / len(e) for ll, e in zip(log_likelihoods, task.endings, strict=True)]
    return (max(range(N_ENDINGS), key=log_likelihoods.__getitem__), max(range(N_ENDINGS), key=norm.__getitem__))


def _import_lm_eval():
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as err:
        raise ImportError(
            "the lm-evaluation-harness cross-check needs lm-eval: pip install 'llm-int8[eval]' "
            f"(or pip install lm-eval==0.4.13): {err}"
        ) from err
    return lm_eval, HFLM, TaskManager


def harness_hellaswag(model, tokenizer, tasks: list[HellaSwagTask], batch_size: int = 1) -> dict:
    """Score ``tasks`` with ``lm_eval.simple_evaluate`` on ``model``: a transformers causal LM object
    (converted or not; its device and dtype as they are), or the path of a saved model folder, which
    the harness loads itself (``--model hf --model_args pretrained=PATH``; an int8 folder loads
    because this process imported ``llm_int8``), in float32 on the CPU.

    Returns ``acc`` / ``acc_norm`` (the harness's aggregates, fractions), their standard errors,
    ``log_likelihoods`` (per task, per ending, in the order of ``tasks``), and the harness's
    per-task ``acc_choices`` and ``acc_norm_choices``.
    """
    lm_eval, HFLM, TaskManager = _import_lm_eval()
    if isinstance(model, (str, os.PathLike)):
        lm = HFLM(pretrained=str(model), tokenizer=tokenizer, batch_size=batch_size, dtype="float32", device="cpu")
    else:
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    with tempfile.TemporaryDirectory(prefix="llm-int8-harness-") as tmp:
        write_hellaswag_task(tasks, tmp)
        out = lm_eval.simple_evaluate(
            model=lm,
            tasks=[TASK_NAME],
            task_manager=TaskManager(include_path=tmp, include_defaults=False),
            log_samples=True,
            num_fewshot=0,
        )
    return _read_output(out, tasks, getattr(lm_eval, "__version__", None))


def _read_output(out: dict, tasks: list[HellaSwagTask], version: str | None) -> dict:
    metrics = out["results"][TASK_NAME]
    samples = sorted(out["samples"][TASK_NAME], key=lambda s: s["doc_id"])
    if len(samples) != len(tasks):
        raise RuntimeError(f"the harness scored {len(samples)} of {len(tasks)} tasks")
    lls = [tuple(float(r[0]) for r in s["filtered_resps"]) for s in samples]
    return {
        "acc": metrics["acc,none"],
        "acc_stderr": metrics.get("acc_stderr,none"),
        "acc_norm": metrics["acc_norm,none"],
        "acc_norm_stderr": metrics.get("acc_norm_stderr,none"),
        "tasks": len(samples),
        "log_likelihoods": lls,
        "acc_choices": [max(range(N_ENDINGS), key=ll.__getitem__) for ll in lls],
        "acc_norm_choices": [harness_choices(t, ll)[1] for t, ll in zip(tasks, lls, strict=True)],
        "lm_eval_version": version,
    }
