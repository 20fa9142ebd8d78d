"""A folder saved by this library, opened by plain transformers in a process that never imported
llm_int8, must never load as random weights: it refuses with an error (see docs/huggingface.md)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest
import torch
from _hf_tiny import logits, tiny_model
from safetensors import safe_open
from transformers import AutoModelForCausalLM

import llm_int8
from llm_int8 import Int8Linear, LLMInt8Config
from llm_int8.integrations.huggingface.quantizer import FORMAT_VERSION

PLAIN_LOAD = """
import sys
from transformers import AutoModelForCausalLM
for folder in sys.argv[1:]:
    try:
        AutoModelForCausalLM.from_pretrained(folder)
    except Exception as e:
        print("REFUSED", type(e).__name__, str(e)[:200].replace("\\n", " "))
    else:
        print("LOADED")
assert "llm_int8" not in sys.modules
"""


def _plain_transformers(*folders) -> list[str]:
    """What transformers alone (one fresh process, llm_int8 not importable) makes of each folder."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # no path to this repository's src
    out = subprocess.run(
        [sys.executable, "-c", PLAIN_LOAD, *map(str, folders)], capture_output=True, text=True, env=env, timeout=600
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip().splitlines()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """The same int8 model saved three ways: llm_int8.save_pretrained, model.save_pretrained after a
    transformers-native load, and the streaming loader's model re-saved."""
    root = tmp_path_factory.mktemp("portable")
    tiny_model("llama").save_pretrained(root / "fp")
    hf = AutoModelForCausalLM.from_pretrained(root / "fp", quantization_config=LLMInt8Config())
    hf.save_pretrained(root / "hf")
    llm_int8.save_pretrained(llm_int8.from_pretrained(root / "fp", progress=False), root / "ours")
    model = llm_int8.quantize_model(tiny_model("llama"))
    llm_int8.save_pretrained(model, root / "converted")
    if importlib.util.find_spec("bitsandbytes") is not None:  # the control: this one must load
        int8 = llm_int8.from_pretrained(root / "fp", progress=False, activation="absmax")
        llm_int8.save_bitsandbytes(int8, root / "bitsandbytes")
    return root, logits(hf)


@pytest.fixture(scope="module")
def verdicts(saved):
    root, _ = saved
    names = [p.name for p in sorted(root.iterdir()) if p.name != "fp"]
    return dict(zip(names, _plain_transformers(*(root / n for n in names)), strict=True))


@pytest.mark.parametrize("how", ["hf", "ours", "converted"])
def test_plain_transformers_refuses(verdicts, how):
    assert verdicts[how].startswith("REFUSED RuntimeError"), verdicts[how]


@pytest.mark.parametrize("how", ["hf", "ours"])
def test_with_llm_int8_the_folder_still_loads_exactly(saved, how):
    root, expected = saved
    with safe_open(root / how / "model.safetensors", "pt") as f:
        placeholder = f.get_tensor("model.layers.0.self_attn.q_proj.weight")
    assert placeholder.numel() == 0 and placeholder.dtype == torch.int8
    via_hf = AutoModelForCausalLM.from_pretrained(root / how)
    assert isinstance(via_hf.model.layers[0].mlp.up_proj, Int8Linear)
    assert via_hf.config.quantization_config.format_version == FORMAT_VERSION
    torch.testing.assert_close(logits(via_hf), expected, rtol=0, atol=0)
    torch.testing.assert_close(logits(llm_int8.from_pretrained(root / how, progress=False)), expected, rtol=0, atol=0)


def test_bitsandbytes_export_still_loads_in_plain_transformers(verdicts):
    if "bitsandbytes" not in verdicts:
        pytest.skip("bitsandbytes is not installed")
    assert verdicts["bitsandbytes"] == "LOADED"
