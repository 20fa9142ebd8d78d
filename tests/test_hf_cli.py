"""``llm-int8 quantize`` and ``llm-int8 generate`` on a tiny model with a tiny word-level tokenizer."""

from __future__ import annotations

import json

import pytest
from _hf_tiny import VOCAB, tiny_model

import llm_int8
from llm_int8 import Int8Linear
from llm_int8.cli import main


@pytest.fixture
def model_dir(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>", "<pad>", "</s>"] + [f"w{i}" for i in range(VOCAB - 3)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="</s>")
    folder = tmp_path / "fp"
    tiny_model("llama", seed=1, eos_token_id=None, pad_token_id=None, bos_token_id=None).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_quantize_then_generate(model_dir, tmp_path, capsys):
    out = tmp_path / "int8"
    assert main(["quantize", str(model_dir), str(out), "--threshold", "5", "--skip", "down_proj"]) == 0
    printed = capsys.readouterr().out
    assert "wrote" in printed and "threshold 5.0" in printed
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["threshold"] == 5.0 and qc["skip_modules"] == ["down_proj"]
    assert (out / "tokenizer.json").is_file()
    model = llm_int8.from_pretrained(out, progress=False)
    assert isinstance(model.model.layers[0].mlp.up_proj, Int8Linear)
    assert not isinstance(model.model.layers[0].mlp.down_proj, Int8Linear)


def test_generate_from_float_and_from_saved_int8_agree(model_dir, tmp_path, capsys):
    out = tmp_path / "int8"
    assert main(["quantize", str(model_dir), str(out)]) == 0
    capsys.readouterr()
    prompt = ["generate", "--prompt", "w1 w2 w3", "--max-new-tokens", "4"]
    assert main([*prompt, "--model", str(model_dir)]) == 0  # float folder, converted while loading
    from_float = capsys.readouterr().out
    assert main([*prompt, "--model", str(out)]) == 0  # saved int8 folder, loaded as is
    from_int8 = capsys.readouterr().out
    assert from_float.strip().startswith("w") and from_float == from_int8


def test_quantize_to_bitsandbytes_format(model_dir, tmp_path, capsys):
    out = tmp_path / "bnb"
    assert main(["quantize", str(model_dir), str(out), "--format", "bitsandbytes"]) == 0
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["load_in_8bit"] is True


def test_quantize_refuses_a_non_empty_output(model_dir, tmp_path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "file").write_text("x")
    assert main(["quantize", str(model_dir), str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "file").read_text() == "x"
    assert main(["quantize", str(model_dir), str(out), "--overwrite"]) == 0
