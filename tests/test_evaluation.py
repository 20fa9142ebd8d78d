"""Evaluation: HellaSwag parsing and scoring, perplexity per method, reports, ``llm-int8 eval`` errors."""

from __future__ import annotations

import bz2
import json

import pytest
import torch

from llm_int8.cli import main
from llm_int8.evaluation import (
    apply_method,
    batched_log_likelihoods,
    compare_methods,
    paired_difference,
    perplexity,
    read_hellaswag,
    read_text,
    score_hellaswag,
    tokenize_text,
)
from llm_int8.evaluation.report import atomic_write, markdown_table, plot_comparison, write_json

TASK = ["Cooking: A man cracks an egg into a pan. he", "2", "flies away.", "sings.", "fries it.", "eats the pan."]


def _write(tmp_path, lines, name="hs.txt"):
    path = tmp_path / name
    text = "\n".join(lines) + "\n"
    if name.endswith(".bz2"):
        path.write_bytes(bz2.compress(text.encode()))
    else:
        path.write_text(text)
    return path


# --- HellaSwag parsing ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["hs.txt", "hs.txt.bz2"])
def test_read_hellaswag_parses_tasks(tmp_path, name):
    second = ["Sports: Two teams play. the ball", "0", "rolls.", "sings.", "cooks.", "reads."]
    tasks = read_hellaswag(_write(tmp_path, TASK + second, name))
    assert len(tasks) == 2
    assert tasks[0].context == TASK[0] and tasks[0].label == 2 and tasks[0].endings[2] == "fries it."
    assert tasks[1].label == 0
    assert len(read_hellaswag(_write(tmp_path, TASK + second, name), limit=1)) == 1
    skipped = read_hellaswag(_write(tmp_path, TASK + second, name), limit=5, skip=1)
    assert [t.label for t in skipped] == [0]
    with pytest.raises(ValueError, match="holds 2 tasks, cannot skip 2"):
        read_hellaswag(_write(tmp_path, TASK + second, name), skip=2)


@pytest.mark.parametrize(
    "lines, match",
    [
        (TASK[:1] + ["x"] + TASK[2:], r"line 2: gold label must be an integer"),
        (TASK[:1] + ["4"] + TASK[2:], r"line 2: gold label must be 0-3"),
        (TASK[:4] + [""] + TASK[5:], r"line 5: ending 2 is empty"),
        (TASK + TASK[:3], r"line 7: incomplete task"),
        ([""] + TASK[1:], r"line 1: empty context"),
        ([], r"no HellaSwag task"),
    ],
    ids=["label-not-int", "label-out-of-range", "empty-ending", "truncated", "empty-context", "empty-file"],
)
def test_read_hellaswag_malformed(tmp_path, lines, match):
    path = _write(tmp_path, lines)
    with pytest.raises(ValueError, match=match) as err:
        read_hellaswag(path)
    assert str(path) in str(err.value)


def test_read_hellaswag_missing_and_not_bz2(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_hellaswag(tmp_path / "nope.txt")
    bad = tmp_path / "bad.txt.bz2"
    bad.write_text("not bzip2")
    with pytest.raises(ValueError, match="bad.txt.bz2"):
        read_hellaswag(bad)


def test_read_real_hellaswag(hellaswag_path):
    tasks = read_hellaswag(hellaswag_path, limit=20)
    assert len(tasks) == 20 and all(0 <= t.label <= 3 and len(t.endings) == 4 for t in tasks)
    assert tasks[0].context.startswith("Roof shingle removal: ")
    assert read_hellaswag(hellaswag_path, limit=5, skip=15) == tasks[15:]


# --- HellaSwag scoring on the real model ---------------------------------------------------------


@pytest.mark.slow
def test_hellaswag_scores_real_tasks(smollm2, hellaswag_path):
    model, tokenizer = smollm2
    tasks = read_hellaswag(hellaswag_path, limit=8)
    batched = score_hellaswag(model, tokenizer, tasks)
    assert batched.tasks == 8 and 0 <= batched.acc <= 1 and 0 <= batched.acc_norm <= 1
    # padding and batching do not change a log-likelihood
    torch.testing.assert_close(
        torch.tensor(batched.log_likelihoods[:2]),
        torch.tensor(batched_log_likelihoods(model, tokenizer, tasks[:2])),
        rtol=1e-4,
        atol=1e-3,
    )
    # one ending scored by hand, without padding
    t = tasks[0]
    ctx = tokenizer(t.context, add_special_tokens=False)["input_ids"]
    ids = tokenizer(t.context + " " + t.endings[0], add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
    by_hand = sum(logp[i - 1, ids[i]].item() for i in range(len(ctx), len(ids)))
    assert batched.log_likelihoods[0][0] == pytest.approx(by_hand, abs=1e-3)
    # acc_norm is the argmax of the per-character log-likelihood
    n_chars = [len(" " + e) for e in t.endings]
    assert batched.predictions[0] == max(range(4), key=lambda i: batched.log_likelihoods[0][i] / n_chars[i])
    assert batched.acc_norm == sum(p == t.label for p, t in zip(batched.predictions, tasks, strict=True)) / 8


# --- perplexity per method -----------------------------------------------------------------------


@pytest.mark.slow
def test_perplexity_per_method_orders_as_the_paper(smollm2, wikitext_path):
    model, tokenizer = smollm2
    ids = tokenize_text(tokenizer, read_text(wikitext_path), max_tokens=256)
    rows = compare_methods(model, tokenizer, ["fp32", "absmax", "llm.int8"], input_ids=ids, window=128)
    ppl = {r["method"]: r["perplexity"] for r in rows}
    assert all(r["windows"] == 2 and r["tokens"] == 2 * 127 for r in rows)
    assert ppl["absmax"] > 1.5 * ppl["llm.int8"]  # tensor-wise absmax degrades, LLM.int8() does not
    assert abs(ppl["llm.int8"] / ppl["fp32"] - 1) < 0.03
    # the same windows through perplexity() directly
    assert perplexity(model, ids, window=128).perplexity == pytest.approx(ppl["fp32"], rel=1e-6)


@pytest.mark.slow
def test_library_methods_run_int8linear(smollm2):
    from llm_int8 import Int8Linear

    model, _ = smollm2
    for name, threshold in (("vectorwise", 0.0), ("llm.int8", 6.0)):
        converted = apply_method(model, name)
        layers = [m for m in converted.modules() if isinstance(m, Int8Linear)]
        assert len(layers) == 30 * 7 and all(m.threshold == threshold for m in layers)


def test_compare_methods_input_errors():
    with pytest.raises(ValueError, match="nothing to evaluate"):
        compare_methods(torch.nn.Linear(2, 2), None, ["fp32"])
    with pytest.raises(ValueError, match="fewer than one window"):
        compare_methods(torch.nn.Linear(2, 2), None, ["fp32"], input_ids=torch.arange(10), window=16)


# --- reports ---------------------------------------------------------------------------------------

ROWS = [
    {
        "method": "fp32",
        "description": "32-bit float",
        "perplexity": 20.0,
        "hellaswag_acc": 0.4,
        "hellaswag_acc_norm": 0.5,
    },
    {
        "method": "llm.int8",
        "description": "LLM.int8()",
        "perplexity": 20.1,
        "hellaswag_acc": 0.4,
        "hellaswag_acc_norm": 0.49,
    },
]


def test_markdown_table_and_plot(tmp_path):
    table = markdown_table(ROWS)
    assert "| `llm.int8` | LLM.int8() | 20.100 | +0.50% | 40.00 | 49.00 | -1.00 |" in table
    png = plot_comparison(ROWS, tmp_path / "p.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_paired_difference_by_hand():
    labels = [0, 1, 2, 3, 0, 1]
    base = [0, 1, 0, 0, 0, 1]  # right on tasks 0, 1, 4, 5
    other = [0, 0, 2, 0, 0, 2]  # right on tasks 0, 2, 4: per-task differences 0, -1, +1, 0, 0, -1
    d = paired_difference(labels, base, other)
    mean = -1 / 6
    var = (3 * mean**2 + 2 * (-1 - mean) ** 2 + (1 - mean) ** 2) / 5
    assert d.difference == pytest.approx(mean) and d.stderr == pytest.approx((var / 6) ** 0.5)
    assert (d.differing, d.tasks) == (3, 6)
    assert d.interval() == pytest.approx((mean - 1.96 * d.stderr, mean + 1.96 * d.stderr))
    assert paired_difference(labels, base, base).stderr == 0
    with pytest.raises(ValueError, match="as long"):
        paired_difference(labels, base, other[:-1])


def test_markdown_table_paired_column():
    rows = [dict(ROWS[0], hellaswag_predictions=[0, 1, 0, 0]), dict(ROWS[1], hellaswag_predictions=[0, 0, 2, 0])]
    table = markdown_table(rows, labels=[0, 1, 2, 3])
    assert "Δ acc_norm (points ± paired SE)" in table
    assert "| -1.00 ± 40.82 (2 choices differ) |" in table  # per-task differences 0, -1, +1, 0


def test_markdown_table_reads_every_method_against_bf16_too(tmp_path):
    bf16 = {"method": "bf16", "description": "bfloat16", "perplexity": 20.05, "hellaswag_acc": 0.4}
    bf16["hellaswag_acc_norm"] = 0.495
    table = markdown_table([ROWS[0], bf16, ROWS[1]])
    assert "| perplexity | Δ vs fp32 | Δ vs bf16 |" in table and "| Δ acc_norm vs bf16 (points) |" in table
    # llm.int8: +0.50% against fp32, +0.25% against bf16; acc_norm -1.00 and -0.50 points
    assert "| `llm.int8` | LLM.int8() | 20.100 | +0.50% | +0.25% | 40.00 | 49.00 | -1.00 | -0.50 |" in table
    assert "| `bf16` | bfloat16 | 20.050 | +0.25% | +0.00% |" in table
    assert "Δ vs bf16" not in markdown_table(ROWS)  # no 16-bit row, no column
    png = plot_comparison([ROWS[0], bf16, ROWS[1]], tmp_path / "p.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    path = tmp_path / "out.json"
    write_json(path, {"a": 1})
    with pytest.raises(TypeError):
        write_json(path, {"a": object()})  # not serializable: fails before any write
    assert json.loads(path.read_text()) == {"a": 1}
    atomic_write(path, "x")
    assert path.read_text() == "x" and [p.name for p in tmp_path.iterdir()] == ["out.json"]


# --- CLI bad input: all checked before the model is loaded -------------------------------------------


def test_cli_eval_bad_input(tmp_path, capsys):
    out = tmp_path / "r.json"
    text = tmp_path / "t.txt"
    text.write_text("hello world\n")
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    bad_hs = _write(tmp_path, TASK[:1] + ["9"] + TASK[2:])
    cases = [
        (["--text", str(text), "--methods", "fp32,int3"], "valid methods: fp32, absmax, zeropoint"),
        (["--text", str(empty)], "text file is empty"),
        (["--text", str(tmp_path / "missing.txt")], "text file not found"),
        (["--hellaswag", str(bad_hs)], "line 2: gold label must be 0-3"),
        ([], "give --text"),
    ]
    for extra, message in cases:
        assert main(["eval", "--json", str(out), *extra]) == 2
        assert message in capsys.readouterr().err
    assert not out.exists()
