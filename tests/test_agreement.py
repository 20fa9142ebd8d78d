"""Agreement with the float model: the prompt files, the per-prompt measures, bitsandbytes as a peer,
and ``llm-int8 eval --agreement``."""

from __future__ import annotations

import copy
import importlib.util
import json
import math

import pytest
import torch
from _hf_tiny import save_tiny_llama, tiny_model, word_tokenizer

from llm_int8.cli import main
from llm_int8.evaluation import (
    Generation,
    Prompt,
    TopTwo,
    apply_method,
    compare_generations,
    generate,
    measure_agreement,
    read_prompts,
    reference_generations,
    summarize_agreement,
)
from llm_int8.evaluation.report import agreement_table, plot_comparison

# --- prompt files ------------------------------------------------------------------------------------


def test_builtin_prompts_cover_the_categories():
    prompts = read_prompts()
    assert len(prompts) >= 60 and len({p.id for p in prompts}) == len(prompts)
    categories = {p.category for p in prompts}
    assert {"facts", "arithmetic", "instructions", "code", "multilingual", "long"} <= categories
    long = [p for p in prompts if p.category == "long"]
    assert len(long) >= 5 and all(len(p.text.split()) >= 60 for p in long)
    assert any("\n" in p.text for p in prompts if p.category == "code")
    assert read_prompts(limit=3) == prompts[:3]


def test_user_prompt_files(tmp_path):
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text('{"prompt": "Hi there", "id": "a"}\n\n"Just a string"\n{"prompt": "x\\ny", "category": "c"}\n')
    assert read_prompts(jsonl) == [
        Prompt("Hi there", "a"),
        Prompt("Just a string", "line-3"),
        Prompt("x\ny", "line-4", "c"),
    ]
    txt = tmp_path / "p.txt"
    txt.write_text("# my prompts\nWhat is 2 + 2?\n\nName a colour.\n")
    assert [(p.text, p.id) for p in read_prompts(txt)] == [("What is 2 + 2?", "line-2"), ("Name a colour.", "line-4")]


@pytest.mark.parametrize(
    "content, match",
    [
        ('{"prompt": "a"}\n{"prompt": "b"\n', r"p.jsonl: line 2: not JSON"),
        ('{"prompt": ""}\n', r"line 1: 'prompt' must be non-empty text"),
        ('{"text": "a"}\n', r"line 1: unknown field\(s\) text"),
        ("[1, 2]\n", r"line 1: expected a JSON object"),
        ('{"prompt": "a", "id": 3}\n', r"line 1: 'id' must be text"),
        ('{"prompt": "a", "id": "x"}\n{"prompt": "b", "id": "x"}\n', r"prompt id 'x' appears twice"),
        ("\n\n", r"no prompt found"),
    ],
    ids=["bad-json", "empty-prompt", "unknown-field", "not-object", "id-not-text", "duplicate-id", "empty"],
)
def test_bad_prompt_files_are_named_with_the_line(tmp_path, content, match):
    path = tmp_path / "p.jsonl"
    path.write_text(content)
    with pytest.raises(ValueError, match=match) as err:
        read_prompts(path)
    assert str(path) in str(err.value)


def test_missing_and_non_utf8_prompt_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="prompt file not found"):
        read_prompts(tmp_path / "none.txt")
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match="latin1.txt: not UTF-8"):
        read_prompts(bad)


# --- the measures ------------------------------------------------------------------------------------


def test_compare_generations_by_hand():
    ref_logits = torch.tensor([2.0, 1.0, 0.0, -1.0])
    steps = [TopTwo((0, 1), (0.6, 0.2), 1.0), TopTwo((3, 0), (0.5, 0.3), 0.5), TopTwo((1, 2), (0.41, 0.40), 0.05)]
    ref = Generation((0, 3, 1, 2), ref_logits, (*steps, TopTwo((2, 3), (0.9, 0.1), 2.0)))
    other = Generation((0, 3, 2), torch.tensor([2.0, 1.5, 0.0, -1.0]))
    row = compare_generations(ref, other)
    p, q = torch.softmax(ref_logits.double(), 0), torch.softmax(other.last_logits.double(), 0)
    assert row["first_token_same"] is True and row["identical"] is False
    assert row["logits_rel_error"] == pytest.approx(0.5 / math.sqrt(6))
    assert row["logits_rel_error_centred"] == pytest.approx(math.sqrt(0.1875 / 5))
    assert row["kl"] == pytest.approx((p * (p / q).log()).sum().item())
    assert (row["matched_tokens"], row["reference_tokens"], row["first_difference"]) == (2, 4, 2)
    assert row["matched_share"] == 0.5
    assert row["ref_margin_logit"] == 0.05 and row["ref_margin_prob"] == pytest.approx(0.01)  # a knife edge
    assert row["ref_top2"] == {"tokens": [1, 2], "probs": [0.41, 0.40]}
    shifted = compare_generations(ref, Generation(ref.tokens, ref_logits + 5.0))  # the same distribution
    assert shifted["logits_rel_error"] > 1 and shifted["logits_rel_error_centred"] < 1e-12 and shifted["kl"] < 1e-12
    same = compare_generations(ref, Generation(ref.tokens, ref_logits))
    assert same["identical"] and same["kl"] == 0 and same["ref_margin_logit"] is None and same["matched_share"] == 1
    flipped = compare_generations(ref, Generation((1,), torch.tensor([0.0, 1.0, 0.0, 0.0])))
    assert not flipped["first_token_same"] and flipped["matched_tokens"] == 0
    assert flipped["ref_margin_prob"] == pytest.approx(0.4)


def test_summary_and_table():
    rows = [
        {"first_token_same": True, "logits_rel_error": 0.01, "kl": 0.001, "matched_share": 1.0, "identical": True},
        {"first_token_same": False, "logits_rel_error": 0.30, "kl": 0.100, "matched_share": 0.0, "identical": False},
        {"first_token_same": True, "logits_rel_error": 0.05, "kl": 0.002, "matched_share": 0.5, "identical": False},
    ]
    for r, c in zip(rows, (0.02, 0.2, 0.04), strict=True):
        r["logits_rel_error_centred"] = c
    s = summarize_agreement(rows)
    assert (s["prompts"], s["first_token_same"], s["identical"]) == (3, 2, 1)
    assert (s["logits_rel_error_median"], s["logits_rel_error_max"]) == (0.05, 0.30)
    assert s["kl_mean"] == pytest.approx(0.103 / 3) and s["matched_share_mean"] == pytest.approx(0.5)
    table = agreement_table([{"method": "default", "agreement": s}])
    assert "| `default` | 2/3 | 0.050 / 0.300 | 0.040 / 0.200 | 0.0343 / 0.1000 | 0.50 | 1/3 (33%) |" in table
    with pytest.raises(ValueError, match="no agreement row"):
        summarize_agreement([])


def _prompts(n: int = 4) -> list[Prompt]:
    return [Prompt(" ".join(f"w{5 + 7 * i + j}" for j in range(3 + i)), f"p{i}") for i in range(n)]


def test_agreement_of_a_model_with_itself_and_with_a_perturbed_copy():
    model, tokenizer = tiny_model("llama", seed=3), word_tokenizer()
    prompts = _prompts()
    refs = reference_generations(model, tokenizer, prompts, new_tokens=6)
    assert all(len(r.tokens) == 6 and len(r.margins) == 6 for r in refs)
    assert all(m.logit_gap >= 0 and 1 >= m.probs[0] >= m.probs[1] >= 0 for r in refs for m in r.margins)
    assert all(m.tokens[0] == t for r in refs for m, t in zip(r.margins, r.tokens, strict=True))  # greedy
    same = summarize_agreement(measure_agreement(model, tokenizer, prompts, refs, new_tokens=6))
    assert same["identical"] == 4 and same["kl_max"] == 0 and same["logits_rel_error_max"] == 0
    noisy = copy.deepcopy(model)
    with torch.no_grad():
        for p in noisy.parameters():
            p.add_(0.5 * p.std() * torch.randn_like(p))
    rows = measure_agreement(noisy, tokenizer, prompts, refs, new_tokens=6)
    worse = summarize_agreement(rows)
    assert worse["identical"] < 4 and worse["kl_mean"] > 0 and worse["logits_rel_error_median"] > 0.05
    assert all(r["text"] and r["reference_text"] for r in rows)
    with pytest.raises(ValueError, match="4 prompts but 3 reference"):
        measure_agreement(model, tokenizer, prompts, refs[:3])


def test_generate_stops_at_the_end_of_turn():
    model, tokenizer = tiny_model("llama", seed=3), word_tokenizer()
    free = generate(model, tokenizer, "w5 w6 w7", new_tokens=5)
    assert len(free.tokens) == 5
    model.generation_config.eos_token_id = free.tokens[0]  # make the first answer token end the turn
    stopped = generate(model, tokenizer, "w5 w6 w7", new_tokens=5)
    assert stopped.tokens == free.tokens[:1]  # the end-of-turn token is kept


# --- bitsandbytes as a peer ----------------------------------------------------------------------------


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes not installed")
def test_bitsandbytes_method_is_what_transformers_loads(tmp_path):
    import bitsandbytes as bnb
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    model = tiny_model("llama", seed=4)
    ours = apply_method(model, "bitsandbytes")
    assert sum(isinstance(m, bnb.nn.Linear8bitLt) for m in ours.modules()) == 2 * 7 and not ours.training
    assert isinstance(ours.lm_head, torch.nn.Linear) and not isinstance(
        model.model.layers[0].mlp.up_proj, bnb.nn.Linear8bitLt
    )
    model.save_pretrained(tmp_path / "fp")
    theirs = AutoModelForCausalLM.from_pretrained(
        tmp_path / "fp", quantization_config=BitsAndBytesConfig(load_in_8bit=True), dtype=torch.float32
    )
    ids = torch.randint(3, 100, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, theirs(ids).logits, rtol=0, atol=0)
        assert (ours(ids).logits - model(ids).logits).abs().max() > 0  # it did quantize


# --- the command -----------------------------------------------------------------------------------------


@pytest.fixture
def model_dir(tmp_path):
    return save_tiny_llama(tmp_path / "fp")


def test_cli_eval_agreement_writes_json_table_and_plot(model_dir, tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(p.text for p in _prompts(3)) + "\n")
    out, md, png = tmp_path / "a.json", tmp_path / "a.md", tmp_path / "a.png"
    argv = ["eval", "--model", str(model_dir), "--methods", "fp32,default,llm.int8", "--agreement", str(prompts)]
    assert main([*argv, "--new-tokens", "5", "--json", str(out), "--markdown", str(md), "--plot", str(png)]) == 0
    assert "agreement: identical 3/3" in capsys.readouterr().out  # fp32 against itself
    data = json.loads(out.read_text())
    rows = {r["method"]: r for r in data["results"]}
    assert data["settings"]["agreement_prompts"] == str(prompts) and data["settings"]["new_tokens"] == 5
    assert [p["id"] for p in rows["default"]["agreement_prompts"]] == ["line-1", "line-2", "line-3"]
    assert rows["fp32"]["agreement"]["identical"] == 3 and "perplexity" not in rows["default"]
    assert "identical 5-token continuations" in md.read_text()
    assert png.read_bytes()[:4] == b"\x89PNG"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": 1}\n')
    assert main(["eval", "--agreement", str(bad), "--json", str(out)]) == 2
    assert "bad.jsonl: line 1: 'prompt' must be non-empty text" in capsys.readouterr().err


def test_plot_with_agreement_only(tmp_path):
    s = {"prompts": 2, "identical": 1, "logits_rel_error_median": 0.05}
    rows = [
        {"method": "fp32", "agreement": dict(s, identical=2), "agreement_prompts": [{"logits_rel_error": 0.0}] * 2},
        {
            "method": "default",
            "agreement": s,
            "agreement_prompts": [{"logits_rel_error": 0.02}, {"logits_rel_error": 0.1}],
        },
    ]
    assert plot_comparison(rows, tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
