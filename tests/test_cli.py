"""The command line: the main job end to end, and its errors."""

from __future__ import annotations

import pytest

from llm_int8.cli import build_parser, main


@pytest.mark.slow
def test_demo_runs_end_to_end_on_the_bundled_model(capsys, wikitext_path, tmp_path):
    text = tmp_path / "slice.txt"
    text.write_text(wikitext_path.read_text(encoding="utf-8")[:6000], encoding="utf-8")
    code = main(["demo", "--prompt", "What is 2 + 2?", "--max-new-tokens", "6", "--text", str(text), "--window", "256"])
    out = capsys.readouterr().out
    assert code == 0
    assert "converted 210 linear layers" in out
    assert "| fp32 |" in out and "| fp16 (equivalent) |" in out and "| int8 (+ scales) |" in out
    assert "packed copy" in out  # the stored size is not what a running CPU layer holds
    assert "fp32:" in out and "int8:" in out
    assert "| LLM.int8() (zeropoint activations, α = 6) |" in out


def test_demo_refuses_a_missing_text_file_before_loading(capsys, tmp_path):
    code = main(["demo", "--text", str(tmp_path / "missing.txt")])
    assert code == 2
    assert "missing.txt" in capsys.readouterr().err


def test_unknown_model_is_named(capsys, tmp_path):
    code = main(["generate", "--model", str(tmp_path / "nope"), "--prompt", "hi"])
    assert code == 2
    assert "nope" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["demo", "--threshold", "-1"], ["demo", "--max-new-tokens", "0"], ["frobnicate"]])
def test_bad_arguments_exit_with_usage(argv):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(argv)
    assert exc.value.code == 2
