"""bitsandbytes' 8-bit option names in ``LLMInt8Config``, with ``BitsAndBytesConfig``'s meaning."""

from __future__ import annotations

import pytest
import torch
from _hf_tiny import tiny_model
from torch import nn
from transformers import AutoModelForCausalLM

from llm_int8 import Int8Linear, LLMInt8Config
from llm_int8.integrations.huggingface.quantizer import LLMInt8HfQuantizer


def _float_layers(model) -> set[str]:
    return {n for n, m in model.named_modules() if type(m) is nn.Linear}


def test_threshold_alias():
    assert LLMInt8Config(llm_int8_threshold=4.0).threshold == 4.0
    assert LLMInt8Config(load_in_8bit=True, llm_int8_threshold=5.0).to_dict()["threshold"] == 5.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"threshold": 3.0, "llm_int8_threshold": 4.0}, "both"),
        ({"skip_modules": ["a"], "llm_int8_skip_modules": ["b"]}, "both"),
        ({"llm_int8_has_fp16_weight": True}, "llm_int8_has_fp16_weight"),
        ({"llm_int8_threshold": -1.0}, "threshold"),
    ],
    ids=["threshold-twice", "skip-twice", "fp16-weight", "bad-threshold"],
)
def test_alias_errors(kwargs, match):
    with pytest.raises((TypeError, ValueError), match=match):
        LLMInt8Config(**kwargs)


def test_has_fp16_weight_false_and_offload_flag_accepted():
    config = LLMInt8Config(llm_int8_has_fp16_weight=False, llm_int8_enable_fp32_cpu_offload=True)
    assert config.fp32_cpu_offload
    assert LLMInt8Config(**config.to_dict()).fp32_cpu_offload


def test_skip_modules_alias_replaces_defaults_as_bitsandbytes_does(tmp_path):
    """bitsandbytes quantizes lm_head once ``llm_int8_skip_modules`` is given without it; so do we."""
    pytest.importorskip("bitsandbytes")
    from transformers import BitsAndBytesConfig

    tiny_model("llama").save_pretrained(tmp_path)
    skip = ["down_proj"]
    ours = AutoModelForCausalLM.from_pretrained(tmp_path, quantization_config=LLMInt8Config(llm_int8_skip_modules=skip))
    bnb = AutoModelForCausalLM.from_pretrained(
        tmp_path, quantization_config=BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    )
    assert _float_layers(ours) == _float_layers(bnb) == {"model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"}
    assert isinstance(ours.lm_head, Int8Linear)
    # our own name extends the default list instead: lm_head stays float
    extended = AutoModelForCausalLM.from_pretrained(tmp_path, quantization_config=LLMInt8Config(skip_modules=skip))
    assert _float_layers(extended) == _float_layers(bnb) | {"lm_head"}
    saved = LLMInt8Config.from_dict(ours.config.quantization_config.to_dict())
    assert not saved.skip_output_layer


def test_fp32_cpu_offload_keeps_cpu_placed_modules_float():
    with torch.device("meta"):
        model = tiny_model("llama")
    device_map = {"model.embed_tokens": 0, "model.layers.0": 0, "model.layers.1": "cpu", "model.norm": 0, "lm_head": 0}
    quantizer = LLMInt8HfQuantizer(LLMInt8Config(llm_int8_enable_fp32_cpu_offload=True), pre_quantized=True)
    quantizer._process_model_before_weight_loading(model, device_map=device_map)
    floats = _float_layers(model)
    projections = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    assert {n for n in floats if n.startswith("model.layers.1.")} == {
        f"model.layers.1.{part}.{p}"
        for p in projections
        for part in ("self_attn", "mlp")
        if (part == "mlp") == (p in projections[4:])
    }
    assert not any(n.startswith("model.layers.0.") for n in floats)
