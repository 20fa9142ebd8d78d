"""``llm-int8 quantize`` and ``llm-int8 generate`` on a tiny model with a tiny word-level tokenizer."""

from __future__ import annotations

import json

import pytest
from _hf_tiny import save_tiny_llama

import llm_int8
from llm_int8 import Int8Linear
from llm_int8.cli import main


@pytest.fixture
def model_dir(tmp_path):
    return save_tiny_llama(tmp_path / "fp")


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


def test_quantize_with_calibration_keeps_the_found_dims(model_dir, tmp_path, capsys):
    from transformers import AutoTokenizer

    from llm_int8 import quantize_model
    from llm_int8.analysis import calibrate_outlier_dims, calibration_ids
    from llm_int8.integrations import load_model

    text = tmp_path / "calib.txt"
    text.write_text(" ".join(f"w{i % 100}" for i in range(300)))
    out = tmp_path / "int8"
    args = ["quantize", str(model_dir), str(out), "--calibrate", "--calibration-text", str(text), "--threshold", "2"]
    assert main(args) == 0
    assert "calibrated:" in capsys.readouterr().out
    model, _ = load_model(str(model_dir))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    dims = calibrate_outlier_dims(model, calibration_ids(tokenizer, text.read_text()), threshold=2.0)
    assert dims, "the scaled-up tiny model has outlier dims on this text"
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["float_dims"] == {k: list(v) for k, v in dims.items()}
    saved = llm_int8.from_pretrained(out, progress=False)
    assert saved.config.quantization_config.float_dims == qc["float_dims"]
    ids = calibration_ids(tokenizer, "w1 w2 w3 w4")
    import torch

    with torch.no_grad():
        expected = quantize_model(model, threshold=2.0, float_dims=dims)(ids).logits
        torch.testing.assert_close(saved(ids).logits, expected, rtol=0, atol=0)


def test_calibrate_refuses_the_bitsandbytes_format(model_dir, tmp_path, capsys):
    out = tmp_path / "bnb"
    assert main(["quantize", str(model_dir), str(out), "--calibrate", "--format", "bitsandbytes"]) == 2
    assert "cannot hold" in capsys.readouterr().err and not out.exists()
