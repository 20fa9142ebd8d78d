"""The command line: the main job end to end, and its errors."""

from __future__ import annotations

import pytest

from llm_int8.cli import build_parser, main


@pytest.mark.slow
def test_demo_runs_end_to_end_on_the_bundled_model(capsys, wikitext_path, tmp_path):
    text = tmp_path / "slice.txt"
    text.write_text(wikitext_path.read_text(encoding="utf-8")[:6000], encoding="utf-8")
    argv = ["demo", "--prompt", "What is the capital of France?", "--max-new-tokens", "6", "--agreement-prompts", "3"]
    code = main([*argv, "--text", str(text), "--window", "256"])
    out = capsys.readouterr().out
    assert code == 0
    assert "converted 210 linear layers" in out
    assert "| fp32 |" in out and "| fp16 (equivalent) |" in out and "| int8 (+ scales) |" in out
    assert "packed copy" in out  # the stored size is not what a running CPU layer holds
    assert "agreement with fp32 on 3 built-in chat prompts (facts, arithmetic, instructions)" in out
    assert "| same first token | " in out and "| identical 16-token answers | " in out
    assert "fp32:" in out and "int8:" in out and "same: " in out
    if "same: no" in out:  # where the answers part, fp32's own top two tokens there are shown
        assert "there fp32 itself gives" in out and "logit gap" in out
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


def test_demo_quick_subset_takes_every_category_in_turn():
    from llm_int8.cli.demo import _quick_subset

    picked = _quick_subset(14)
    assert len(picked) == 14 and len({p.id for p in picked}) == 14
    counts = {c: sum(p.category == c for p in picked) for c in {p.category for p in picked}}
    assert len(counts) == 7 and set(counts.values()) == {2}
    assert [p.category for p in _quick_subset(3)] == ["facts", "arithmetic", "instructions"]
    assert len(_quick_subset(1000)) == 66  # no more than the set holds


def test_demo_shows_fp32s_margin_where_the_answers_part(capsys):
    import torch

    from llm_int8.cli.demo import _show_answer
    from llm_int8.evaluation import Generation, TopTwo

    class Words:
        def decode(self, ids, skip_special_tokens=False):
            return " ".join(f"t{i}" for i in ids)

    steps = (TopTwo((1, 2), (0.9, 0.05), 3.0), TopTwo((5, 6), (0.31, 0.30), 0.03))
    ref = Generation((1, 5), torch.zeros(8), steps)
    _show_answer(Words(), "q?", ref, Generation((1, 6), torch.zeros(8)))
    out = capsys.readouterr().out
    assert "fp32: t1 t5" in out and "int8: t1 t6" in out
    assert "from token 2: there fp32 itself gives 't5' p = 0.31 and 't6' p = 0.30 (logit gap 0.03): a knife edge" in out
    _show_answer(Words(), "q?", ref, Generation((2,), torch.zeros(8)))
    assert "from token 1: there fp32 itself gives 't1' p = 0.90 and 't2' p = 0.05 (logit gap 3.00): a clear choice" in (
        capsys.readouterr().out
    )
    _show_answer(Words(), "q?", ref, ref)
    assert "same: yes" in capsys.readouterr().out
