"""Per-task HellaSwag results: the JSON Lines log, ``llm-int8 eval --per-task / --resume / --shard``, and
the shared-context scoring against the plain computation."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from _hf_tiny import save_tiny_llama, tiny_model, word_tokenizer

from llm_int8.cli import main
from llm_int8.evaluation import (
    HellaSwagTask,
    TaskLog,
    apply_method,
    batched_log_likelihoods,
    read_hellaswag,
    read_task_log,
    score_hellaswag,
    task_log_likelihoods,
)

SRC = Path(__file__).resolve().parents[1] / "src"


def _words(rng: random.Random, n: int) -> str:
    return " ".join(f"w{rng.randrange(3, 100)}" for _ in range(n))


def _tasks_file(path: Path, count: int, seed: int = 0) -> Path:
    rng = random.Random(seed)
    lines = []
    for _ in range(count):
        lines += [_words(rng, rng.randrange(3, 12)), str(rng.randrange(4))]
        lines += [_words(rng, rng.randrange(1, 6)) for _ in range(4)]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def model_dir(tmp_path):
    return save_tiny_llama(tmp_path / "fp")


# --- the log itself --------------------------------------------------------------------------------


def test_log_appends_resumes_and_refuses_to_overwrite(tmp_path):
    path = tmp_path / "log.jsonl"
    with TaskLog(path, {"model": "m"}) as log:
        log.append({"method": "fp32", "task": 0, "x": 1.5})
        log.append({"method": "fp32", "task": 1, "x": 2.5})
    assert read_task_log(path) == (
        {"model": "m"},
        [{"method": "fp32", "task": i, "x": x} for i, x in ((0, 1.5), (1, 2.5))],
    )
    with pytest.raises(FileExistsError, match="pass --resume"):
        TaskLog(path, {"model": "m"})
    with pytest.raises(ValueError, match=r"written by another run \(model: 'm', now 'other'\)"):
        TaskLog(path, {"model": "other"}, resume=True)
    with TaskLog(path, {"model": "m"}, resume=True) as log:
        assert set(log.done("fp32")) == {0, 1} and log.done("default") == {}
        log.append({"method": "default", "task": 0})
    assert len(read_task_log(path)[1]) == 3


def test_torn_last_line_is_cut_and_a_damaged_line_is_named(tmp_path):
    path = tmp_path / "log.jsonl"
    with TaskLog(path, {"model": "m"}) as log:
        log.append({"method": "fp32", "task": 0})
    with open(path, "ab") as f:
        f.write(b'{"method": "fp32", "ta')  # killed in the middle of a write
    assert [r["task"] for r in read_task_log(path)[1]] == [0]
    with TaskLog(path, {"model": "m"}, resume=True) as log:
        assert set(log.done("fp32")) == {0}
        log.append({"method": "fp32", "task": 1})
    assert [r["task"] for r in read_task_log(path)[1]] == [0, 1]  # the torn bytes are gone
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], "{not json", *lines[1:]]) + "\n")
    with pytest.raises(ValueError, match=r"log.jsonl: line 2: not a JSON record"):
        TaskLog(path, {"model": "m"}, resume=True)
    path.write_text('{"hello": 1}\n')
    with pytest.raises(ValueError, match="line 1: not an llm-int8 per-task log header"):
        read_task_log(path)
    path.write_bytes(b'{"llm_int8_task')  # killed while writing the header: started again
    with TaskLog(path, {"model": "m"}, resume=True) as log:
        assert log.done("fp32") == {}
    assert read_task_log(path) == ({"model": "m"}, [])


# --- scoring: shared context against the plain computation ------------------------------------------


@pytest.mark.parametrize("family", ["llama", "gpt2", "opt"])
def test_shared_context_equals_plain_computation(tmp_path, family):
    model, tokenizer = tiny_model(family, seed=2), word_tokenizer()
    tasks = read_hellaswag(_tasks_file(tmp_path / "hs.txt", 6))
    plain = batched_log_likelihoods(model, tokenizer, tasks)
    fast = [task_log_likelihoods(model, tokenizer, t) for t in tasks]
    torch.testing.assert_close(torch.tensor(fast), torch.tensor(plain), rtol=1e-5, atol=1e-4)
    result = score_hellaswag(model, tokenizer, tasks)
    assert result.log_likelihoods == tuple(fast)


def test_score_hellaswag_reads_done_tasks_and_reports_new_ones(tmp_path):
    model, tokenizer = tiny_model("llama", seed=2), word_tokenizer()
    tasks = read_hellaswag(_tasks_file(tmp_path / "hs.txt", 4))
    full = score_hellaswag(model, tokenizer, tasks)
    fake = (0.0, -1.0, -2.0, -3.0)
    seen = []
    resumed = score_hellaswag(model, tokenizer, tasks, done={1: fake}, on_task=lambda t, ll: seen.append(t.index))
    assert seen == [0, 2, 3]
    assert resumed.log_likelihoods[1] == fake and resumed.log_likelihoods[2] == full.log_likelihoods[2]


@pytest.mark.slow
def test_shared_context_on_the_real_model(smollm2, hellaswag_path):
    model, tokenizer = smollm2
    tasks = read_hellaswag(hellaswag_path, limit=6)
    plain = batched_log_likelihoods(model, tokenizer, tasks)
    fast = score_hellaswag(model, tokenizer, tasks).log_likelihoods
    torch.testing.assert_close(torch.tensor(fast), torch.tensor(plain), rtol=1e-5, atol=2e-4)
    # int8: the outlier columns and the few-token kernel depend on what one forward call holds, so the
    # two computations differ by int8 noise (about 0.4 nats per ending here), and the fast one is
    # no further from fp32 than the plain one
    int8 = apply_method(model, "default")
    plain8 = torch.tensor([batched_log_likelihoods(int8, tokenizer, [t])[0] for t in tasks])
    fast8 = torch.tensor(score_hellaswag(int8, tokenizer, tasks).log_likelihoods)
    fp32 = torch.tensor(fast)
    assert (fast8 - fp32).abs().mean() < 1.25 * (plain8 - fp32).abs().mean()
    assert (fast8 - fp32).abs().max() < 3.0


# --- the command: interrupted, resumed, sharded ---------------------------------------------------


def _eval_args(model_dir, hs, log, out, *extra):
    return ["eval", "--model", str(model_dir), "--methods", "fp32,default", "--hellaswag", str(hs)] + [
        "--per-task",
        str(log),
        "--json",
        str(out),
        *extra,
    ]


def _records(path) -> dict:
    return {(r["method"], r["task"]): r for r in read_task_log(path)[1]}


def _summary(tmp_path) -> list[dict]:
    return json.loads((tmp_path / "whole.json").read_text())["results"]


def test_eval_killed_mid_run_resumes_to_the_uninterrupted_result(model_dir, tmp_path, capsys):
    hs = _tasks_file(tmp_path / "hs.txt", 40)
    assert main(_eval_args(model_dir, hs, tmp_path / "whole.jsonl", tmp_path / "whole.json")) == 0
    whole = _records(tmp_path / "whole.jsonl")
    assert len(whole) == 80

    log, out = tmp_path / "cut.jsonl", tmp_path / "cut.json"
    slow = (  # each task 50 ms slower, so the kill lands mid-run
        "import sys, time; import llm_int8.evaluation.hellaswag_score as s; f = s.task_log_likelihoods; "
        "s.task_log_likelihoods = lambda *a: (time.sleep(0.05), f(*a))[1]; "
        "from llm_int8.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    env = dict(os.environ, PYTHONPATH=f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    proc = subprocess.Popen([sys.executable, "-c", slow, *_eval_args(model_dir, hs, log, out)], env=env)
    deadline = time.time() + 120
    while time.time() < deadline and (not log.exists() or len(log.read_bytes().splitlines()) < 15):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    cut = _records(log)
    assert 10 <= len(cut) < 80 and not out.exists()  # killed mid-run: nothing summarised, records kept
    assert all(whole[k] == r for k, r in cut.items())
    with open(log, "ab") as f:
        f.write(b'{"method": "default", "task": 3')  # as if killed in the middle of a line
    capsys.readouterr()
    assert main(_eval_args(model_dir, hs, log, out)) == 2
    assert "pass --resume" in capsys.readouterr().err
    assert main(_eval_args(model_dir, hs, log, out, "--resume")) == 0
    assert f"({len(cut) if len(cut) < 40 else 40} tasks read back" in capsys.readouterr().out
    assert _records(log) == whole
    keys = ("method", "hellaswag_acc", "hellaswag_acc_norm", "hellaswag_predictions")
    for path in (out, tmp_path / "whole.json"):
        rows = json.loads(path.read_text())["results"]
        assert [[r[k] for k in keys] for r in rows] == [[r[k] for k in keys] for r in _summary(tmp_path)]


def test_eval_shards_cover_the_run(model_dir, tmp_path, capsys):
    hs = _tasks_file(tmp_path / "hs.txt", 7)
    assert main(_eval_args(model_dir, hs, tmp_path / "all.jsonl", tmp_path / "all.json")) == 0
    parts = {}
    for i in range(3):
        log = tmp_path / f"s{i}.jsonl"
        assert main(_eval_args(model_dir, hs, log, tmp_path / f"s{i}.json", "--shard", f"{i}/3")) == 0
        parts.update(_records(log))
        tasks = json.loads((tmp_path / f"s{i}.json").read_text())["settings"]["hellaswag_tasks"]
        assert tasks == [[0, 1], [2, 3], [4, 6]][i]
    assert parts == _records(tmp_path / "all.jsonl")
    capsys.readouterr()
    for bad, message in (("3/3", "0 <= i < n"), ("x", "expected i/n")):
        with pytest.raises(SystemExit):
            main(_eval_args(model_dir, hs, tmp_path / "x.jsonl", tmp_path / "x.json", "--shard", bad))
        assert message in capsys.readouterr().err
    assert main(["eval", "--hellaswag", str(hs), "--resume", "--json", str(tmp_path / "y.json")]) == 2
    assert "--resume continues a --per-task file" in capsys.readouterr().err


def test_task_index_is_the_position_in_the_file(tmp_path):
    tasks = read_hellaswag(_tasks_file(tmp_path / "hs.txt", 5), skip=2, limit=2)
    assert [t.index for t in tasks] == [2, 3]
    assert HellaSwagTask("c", 0, ("a", "b", "c", "d")).index is None
