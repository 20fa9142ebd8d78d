"""The lm-evaluation-harness cross-check (``llm_int8.evaluation.harness``): the local task files, the
harness's choices, and on SmolLM2 the harness's acc / acc_norm against the library's scorer."""

from __future__ import annotations

import copy
import json

import pytest
import yaml

from llm_int8.evaluation import HellaSwagTask, read_hellaswag, score_hellaswag
from llm_int8.evaluation.harness import TASK_NAME, harness_choices, write_hellaswag_task
from llm_int8.evaluation.hellaswag_score import choices

TASKS = [
    HellaSwagTask('Cooking: A man says "hi". he', 2, ("flies away.", "sings.", "fries it.", "eats the pan."), 0),
    HellaSwagTask("Sports: Two teams play. the ball", 0, ("rolls.", "sings a song.", "cooks.", "reads é."), 7),
]


def test_write_hellaswag_task_writes_data_and_a_yaml_reading_it(tmp_path):
    path = write_hellaswag_task(TASKS, tmp_path / "task dir")
    assert path == tmp_path / "task dir" / f"{TASK_NAME}.yaml"
    config = yaml.safe_load(path.read_text())
    data = config["dataset_kwargs"]["data_files"]["validation"]
    assert (config["task"], config["dataset_path"], config["output_type"]) == (TASK_NAME, "json", "multiple_choice")
    assert (config["doc_to_text"], config["doc_to_target"]) == ("{{query}}", "{{gold}}")
    assert config["doc_to_choice"] == "choices"
    assert {m["metric"] for m in config["metric_list"]} == {"acc", "acc_norm"}
    rows = [json.loads(line) for line in open(data, encoding="utf-8")]
    assert rows[0] == {"query": TASKS[0].context, "choices": list(TASKS[0].endings), "gold": 2, "index": 0}
    assert rows[1]["choices"][3] == "reads é." and rows[1]["index"] == 7
    with pytest.raises(ValueError, match="no HellaSwag task"):
        write_hellaswag_task([], tmp_path)
    with pytest.raises(ValueError, match="task name"):
        write_hellaswag_task(TASKS, tmp_path, name="a/b")


def test_harness_choices_normalise_by_the_ending_without_its_space():
    task = TASKS[0]  # ending lengths 11, 6, 9, 13; the library's " " + ending: 12, 7, 10, 14
    ll = (-11.0, -6.2, -20.0, -30.0)
    assert harness_choices(task, ll) == (1, 0)  # -11 / 11 = -1.0 beats -6.2 / 6 = -1.03 ...
    assert choices(task, ll) == (1, 1)  # ... but -6.2 / 7 = -0.886 beats -11 / 12 = -0.917


@pytest.fixture(scope="module")
def lm_eval():
    return pytest.importorskip("lm_eval", reason="lm-eval is not installed (pip install 'llm-int8[eval]')")


def _compare(harness: dict, library, tasks) -> None:
    """Per-ending log-likelihoods equal to float rounding; every choice equal where no two endings are
    within that rounding; the harness's acc / acc_norm equal its choices from the library's scores."""
    tol = 2e-3  # nats, on sums of 10-40 token log-probabilities (measured differences: below 1e-4)
    for h, lib in zip(harness["log_likelihoods"], library.log_likelihoods, strict=True):
        assert h == pytest.approx(lib, abs=tol)
    mine = [harness_choices(t, ll) for t, ll in zip(tasks, library.log_likelihoods, strict=True)]
    for task, ll, (acc, norm), h_acc, h_norm in zip(
        tasks, library.log_likelihoods, mine, harness["acc_choices"], harness["acc_norm_choices"], strict=True
    ):
        top = sorted(ll, reverse=True)
        if top[0] - top[1] > 2 * tol:
            assert acc == h_acc
        per_char = sorted((x / len(e) for x, e in zip(ll, task.endings, strict=True)), reverse=True)
        if per_char[0] - per_char[1] > 2 * tol:
            assert norm == h_norm
    n = len(tasks)
    assert harness["acc"] == pytest.approx(sum(a == t.label for (a, _), t in zip(mine, tasks, strict=True)) / n)
    assert harness["acc_norm"] == pytest.approx(sum(b == t.label for (_, b), t in zip(mine, tasks, strict=True)) / n)
    assert harness["acc"] == pytest.approx(library.acc)  # same rule for acc


def _ll_gap(harness: dict, library) -> tuple[float, float]:
    """(median, max) |harness - library| over every ending's log-likelihood (nats)."""
    diffs = sorted(
        abs(a - b)
        for h, lib in zip(harness["log_likelihoods"], library.log_likelihoods, strict=True)
        for a, b in zip(h, lib, strict=True)
    )
    return diffs[len(diffs) // 2], diffs[-1]


@pytest.mark.slow
def test_harness_equals_library_scorer_on_smollm2(lm_eval, smollm2, hellaswag_path, monkeypatch):
    """fp32: the same log-likelihoods to float rounding, the same acc, and acc_norm equal under the
    harness's normaliser. int8: both scorers run the same model, but the outlier columns and kernels
    are chosen per forward call and the two make different calls, so only the size of the gap is checked."""
    from llm_int8 import quantize_model
    from llm_int8.evaluation.harness import harness_hellaswag

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")  # the local json task needs no hub
    model, tokenizer = smollm2
    tasks = read_hellaswag(hellaswag_path, limit=24)
    harness = harness_hellaswag(model, tokenizer, tasks)
    assert harness["tasks"] == len(tasks) and harness["lm_eval_version"]
    _compare(harness, score_hellaswag(model, tokenizer, tasks), tasks)
    int8 = quantize_model(copy.deepcopy(model))
    few = tasks[:6]
    median, largest = _ll_gap(harness_hellaswag(int8, tokenizer, few), score_hellaswag(int8, tokenizer, few))
    assert median < 1.0 and largest < 5.0  # measured: 0.35 and 2.1 nats on 8 tasks (sums over 10-40 tokens)


@pytest.mark.slow
def test_harness_loads_a_saved_int8_folder_through_the_registered_quantizer(
    lm_eval, smollm2, hellaswag_path, tmp_path, monkeypatch
):
    """The harness's ``hf`` backend given the folder (what ``lm_eval --model_args pretrained=FOLDER`` does
    in a process that imported llm_int8) loads the int8 model and scores it as the loaded object."""
    import llm_int8
    from llm_int8.evaluation.harness import harness_hellaswag

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    model, tokenizer = smollm2
    folder = tmp_path / "int8"
    llm_int8.save_pretrained(llm_int8.quantize_model(copy.deepcopy(model)), folder)
    tokenizer.save_pretrained(folder)
    tasks = read_hellaswag(hellaswag_path, limit=4)
    from_folder = harness_hellaswag(str(folder), tokenizer, tasks)
    loaded = llm_int8.load_model(str(folder))[0]
    assert any(isinstance(m, llm_int8.Int8Linear) for m in loaded.modules())
    from_object = harness_hellaswag(loaded, tokenizer, tasks)
    assert from_folder["log_likelihoods"] == [pytest.approx(ll, abs=1e-4) for ll in from_object["log_likelihoods"]]
