"""Interop with bitsandbytes 8-bit checkpoints, against the real bitsandbytes package (CPU)."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from _hf_tiny import logits, tiny_model
from transformers import AutoModelForCausalLM, BitsAndBytesConfig

import llm_int8
from llm_int8 import Int8Linear, quantize_model

bnb = pytest.importorskip("bitsandbytes")


def _bnb_layers(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear8bitLt)}


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.fixture
def quiet_bnb():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*inputs will be cast.*")
        yield


@pytest.mark.usefixtures("quiet_bnb")
def test_checkpoint_written_by_bitsandbytes_loads_here(tmp_path):
    float_model = tiny_model("llama")
    float_model.save_pretrained(tmp_path / "fp")
    theirs = AutoModelForCausalLM.from_pretrained(
        tmp_path / "fp", quantization_config=BitsAndBytesConfig(load_in_8bit=True), device_map="cpu"
    )
    theirs.save_pretrained(tmp_path / "bnb")
    assert json.loads((tmp_path / "bnb" / "config.json").read_text())["quantization_config"]["load_in_8bit"]

    ours = llm_int8.from_pretrained(tmp_path / "bnb", progress=False)
    their_layers = _bnb_layers(theirs)
    our_layers = {n: m for n, m in ours.named_modules() if isinstance(m, Int8Linear)}
    assert our_layers.keys() == their_layers.keys() and our_layers
    for name, m in our_layers.items():  # lossless: same codes, weight_scale = SCB / 127
        assert torch.equal(m.weight_int8, their_layers[name].weight.data)
        torch.testing.assert_close(m.weight_scale * 127, their_layers[name].weight.SCB, rtol=1e-6, atol=0)
    # same codes, different activation arithmetic (bitsandbytes casts to fp16 on CPU): the two int8
    # models differ by less than either differs from the float model
    quant_err = _rel_err(logits(theirs), logits(float_model))
    assert _rel_err(logits(ours), logits(theirs)) < min(quant_err, 0.03)


@pytest.mark.usefixtures("quiet_bnb")
def test_checkpoint_written_here_loads_in_bitsandbytes(tmp_path):
    float_model = tiny_model("gpt2")
    # Conv1D layers: exported (out, in) as bnb expects; absmax activations, as bitsandbytes runs them
    ours = quantize_model(tiny_model("gpt2"), activation="absmax")
    llm_int8.save_bitsandbytes(ours, tmp_path / "bnb")
    qc = json.loads((tmp_path / "bnb" / "config.json").read_text())["quantization_config"]
    assert qc["load_in_8bit"] and qc["llm_int8_threshold"] == 6.0 and "lm_head" in qc["llm_int8_skip_modules"]

    theirs = AutoModelForCausalLM.from_pretrained(tmp_path / "bnb", device_map="cpu")
    their_layers = _bnb_layers(theirs)
    our_layers = {n: m for n, m in ours.named_modules() if isinstance(m, Int8Linear)}
    assert our_layers.keys() == their_layers.keys() and our_layers
    for name, m in our_layers.items():
        assert torch.equal(their_layers[name].weight.data, m.weight_int8)
    quant_err = _rel_err(logits(ours), logits(float_model))
    assert _rel_err(logits(theirs), logits(ours)) < min(quant_err, 0.03)
    # and back: the bitsandbytes-format folder loads here with the very same codes
    again = llm_int8.from_pretrained(tmp_path / "bnb", progress=False, activation="absmax")
    torch.testing.assert_close(logits(again), logits(ours), rtol=1e-5, atol=1e-5)


def test_saving_zeropoint_activations_in_bitsandbytes_format_warns(tmp_path, caplog):
    ours = quantize_model(tiny_model("gpt2"))  # the default: zeropoint activations
    with caplog.at_level("WARNING", logger="llm_int8.integrations.huggingface.saving"):
        llm_int8.save_bitsandbytes(ours, tmp_path / "bnb")
    assert "bitsandbytes will run these weights with absmax activations, not zeropoint" in caplog.text
