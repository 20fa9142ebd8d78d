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
    assert "agreement with fp32 on 3 built-in chat prompts (facts, arithmetic, instructions; a stratified random" in out
    assert "| bf16 (the model cast to bfloat16) |" in out  # the 16-bit reference beside int8 (issue 28)
    assert "| same first token | " in out and "| identical 16-token answers | " in out
    assert "fp32:" in out and "int8:" in out and "bf16:" in out and "int8 = fp32: " in out and "bf16 = fp32: " in out
    if "= fp32: no" in out:  # where the answers part, fp32's own top two tokens there are shown
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


def test_demo_quick_subset_takes_every_category_in_turn_in_a_seeded_random_order():
    import random

    from llm_int8.cli.demo import SUBSET_SEED, _quick_subset
    from llm_int8.evaluation import read_prompts

    picked = _quick_subset(14)
    assert len(picked) == 14 and len({p.id for p in picked}) == 14
    counts = {c: sum(p.category == c for p in picked) for c in {p.category for p in picked}}
    assert len(counts) == 7 and set(counts.values()) == {2}
    assert [p.category for p in _quick_subset(3)] == ["facts", "arithmetic", "instructions"]
    assert [p.id for p in _quick_subset(20)] == [p.id for p in _quick_subset(20)]  # fixed, not per run
    facts = [p for p in read_prompts() if p.category == "facts"]
    random.Random(SUBSET_SEED).shuffle(facts)  # the first category is shuffled first
    assert _quick_subset(1)[0].id == facts[0].id
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
    _show_answer(Words(), "q?", ref, {"int8": Generation((1, 6), torch.zeros(8)), "bf16": ref})
    out = capsys.readouterr().out
    assert "fp32: t1 t5\n  int8: t1 t6\n  bf16: t1 t5\n" in out  # the three answers, then what parts
    assert (
        "int8 = fp32: no, from token 2: there fp32 itself gives 't5' p = 0.31 and 't6' p = 0.30 (logit gap 0.03):"
        " a knife edge" in out
    )
    assert "bf16 = fp32: yes" in out
    _show_answer(Words(), "q?", ref, {"bf16": Generation((2,), torch.zeros(8))})
    assert (
        "bf16 = fp32: no, from token 1: there fp32 itself gives 't1' p = 0.90 and 't2' p = 0.05 (logit gap 3.00):"
        " a clear choice" in capsys.readouterr().out
    )


def test_demo_summary_has_a_column_per_model():
    from llm_int8.cli.demo import _summary_lines

    a = {
        "prompts": 4, "first_token_same": 3, "identical": 2, "matched_share_mean": 0.5,
        "logits_rel_error_median": 0.01, "logits_rel_error_max": 0.2,
        "logits_rel_error_centred_median": 0.02, "logits_rel_error_centred_max": 0.1, "kl_mean": 0.0123,
    }  # fmt: skip
    lines = _summary_lines({"int8": a, "bf16": {**a, "identical": 4}}, 12.0, 16)
    assert lines[0] == "| measure (against fp32, 4 prompts, 12 s) | int8 | bf16 |"
    assert "| identical 16-token answers | 2/4 | 4/4 |" in lines
    assert "| KL(fp32 ‖ model) of the next token, mean (nats) | 0.0123 | 0.0123 |" in lines
