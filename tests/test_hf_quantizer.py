"""transformers-native loading: ``quantization_config=LLMInt8Config()`` and saved int8 folders."""

from __future__ import annotations

import pytest
import torch
from _hf_tiny import logits, tiny_model
from torch import nn
from transformers import AutoModelForCausalLM

import llm_int8
from llm_int8 import Int8Linear, LLMInt8Config


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_quantization_config_matches_streaming_loader(tmp_path, family):
    tiny_model(family).save_pretrained(tmp_path)
    config = LLMInt8Config(threshold=4.0, skip_modules=["mlp.c_proj" if family == "gpt2" else "down_proj"])
    hf = AutoModelForCausalLM.from_pretrained(tmp_path, quantization_config=config)
    ours = llm_int8.from_pretrained(tmp_path, threshold=4.0, skip_modules=config.skip_modules, progress=False)
    hf_layers = {n: m for n, m in hf.named_modules() if isinstance(m, Int8Linear)}
    our_layers = {n: m for n, m in ours.named_modules() if isinstance(m, Int8Linear)}
    assert hf_layers.keys() == our_layers.keys() and hf_layers
    assert all(m.threshold == 4.0 for m in hf_layers.values())
    assert type(hf.get_output_embeddings()) is nn.Linear
    for name, m in hf_layers.items():
        assert torch.equal(m.weight_int8, our_layers[name].weight_int8), name
    torch.testing.assert_close(logits(hf), logits(ours), rtol=0, atol=0)


def test_saved_folder_reloads_through_plain_auto_class(tmp_path):
    tiny_model("llama").save_pretrained(tmp_path / "fp")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "fp", quantization_config=LLMInt8Config())
    model.save_pretrained(tmp_path / "int8")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "int8")
    assert isinstance(reloaded.model.layers[1].self_attn.o_proj, Int8Linear)
    assert isinstance(reloaded.config.quantization_config, LLMInt8Config)
    torch.testing.assert_close(logits(reloaded), logits(model), rtol=0, atol=0)
    # and through ours, from the folder transformers wrote
    torch.testing.assert_close(logits(llm_int8.from_pretrained(tmp_path / "int8", progress=False)), logits(model))


def test_bf16_stays_bf16(tmp_path):
    tiny_model("llama", dtype=torch.bfloat16).save_pretrained(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tmp_path, quantization_config=LLMInt8Config(), dtype="auto")
    assert logits(model).dtype == torch.bfloat16


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"threshold": -1.0}, "threshold"), ({"format_version": 99}, "upgrade"), ({"bogus": 1}, "bogus")],
    ids=["negative-threshold", "future-format", "unknown-arg"],
)
def test_config_is_validated(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        LLMInt8Config(**kwargs)


def test_config_round_trips_through_dict():
    config = LLMInt8Config(threshold=3.5, skip_modules=["fc2"], modules_to_not_convert=["lm_head"])
    again = LLMInt8Config.from_dict(config.to_dict())
    assert again.to_dict() == config.to_dict()
    assert config.to_dict()["quant_method"] == "llm_int8"


def test_quantization_config_on_an_int8_folder_is_a_noop_with_a_message(tmp_path):
    tiny_model("llama").save_pretrained(tmp_path / "fp")
    saved = llm_int8.save_pretrained(llm_int8.from_pretrained(tmp_path / "fp", progress=False), tmp_path / "q")
    reference = llm_int8.from_pretrained(saved, progress=False)
    with pytest.warns(UserWarning, match="already has a `quantization_config`"):
        again = AutoModelForCausalLM.from_pretrained(saved, quantization_config=LLMInt8Config())
    torch.testing.assert_close(logits(again), logits(reference), rtol=0, atol=0)
