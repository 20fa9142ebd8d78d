"""``examples/finetune_lora.py`` end to end on a tiny model: both backends train, and the comparison
files are written (the real run on SmolLM2-135M is in results/finetune_lora.md)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from test_hf_cli import model_dir  # noqa: F401  (the fixture)

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "finetune_lora.py"


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("finetune_lora", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_both_backends_train_and_compare(example, model_dir, tmp_path):  # noqa: F811
    pytest.importorskip("peft")
    pytest.importorskip("bitsandbytes")
    data = tmp_path / "text.txt"
    data.write_text(
        "\n".join(
            " = heading = " if i % 7 == 0 else " ".join(f"w{(i * 5 + j) % 120}" for j in range(12)) for i in range(80)
        )
    )
    runs = []
    for backend in ("llm_int8", "bitsandbytes"):
        argv = ["--model", str(model_dir), "--data", str(data), "--backend", backend, "--steps", "6"]
        argv += ["--batch-size", "2", "--seq-len", "8", "--eval-batches", "2", "--lr", "1e-2", "--rank", "4"]
        runs.append(example.run(example.parse_args(argv)))
    for r in runs:
        assert len(r["train_loss"]) == 6 and r["loss_after"] < r["loss_before"], r
        assert r["peak_rss_training_mib"] > 0 and r["trainable_parameters"] > 0
    # the same start: same weights (up to each backend's int8 rounding), same batches, same adapter init
    assert abs(runs[0]["loss_before"] - runs[1]["loss_before"]) < 0.05 * runs[0]["loss_before"]
    example.write_comparison(runs, tmp_path / "cmp")
    saved = json.loads((tmp_path / "cmp.json").read_text())
    assert [r["backend"] for r in saved["runs"]] == ["llm_int8", "bitsandbytes"]
    assert (tmp_path / "cmp.png").stat().st_size > 0 and "| 6 |" in (tmp_path / "cmp.md").read_text()


def test_subprocess_arguments_drop_backend_and_out(example):
    argv = ["--backend", "both", "--steps", "3", "--out=x", "--seq-len", "8"]
    assert example._without(argv, "--backend", "--out") == ["--steps", "3", "--seq-len", "8"]
