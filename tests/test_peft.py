"""peft on int8 models with no registration step: LoRA / DoRA training, adapter save and reload,
merging (into int8 and into float), transformers' Trainer, ``model.dequantize()``."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from _hf_tiny import input_ids, logits, tiny_model
from torch import nn
from transformers import AutoModelForCausalLM

import llm_int8
from llm_int8 import Int8Linear, LLMInt8Config

peft = pytest.importorskip("peft")
from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training  # noqa: E402

TARGETS = ["q_proj", "v_proj", "down_proj"]


@pytest.fixture(scope="module")
def float_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llama")
    tiny_model("llama").save_pretrained(path)
    return path


def _int8_model(float_dir):
    return AutoModelForCausalLM.from_pretrained(float_dir, quantization_config=LLMInt8Config())


def _peft_model(float_dir, **lora):
    model = prepare_model_for_kbit_training(_int8_model(float_dir), use_gradient_checkpointing=True)
    torch.manual_seed(0)
    # init_lora_weights=False: B is random too, so the adapters change the output from the start
    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, **lora))


def _train(model, steps: int = 3) -> list[float]:
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids, losses = input_ids(length=16), []
    for _ in range(steps):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("use_dora", [False, True], ids=["lora", "dora"])
def test_adapters_train_and_nothing_else(float_dir, use_dora):
    model = _peft_model(float_dir, use_dora=use_dora)
    q = model.base_model.model.model.layers[0].self_attn.q_proj
    assert type(q).__name__ == "Int8LoraLinear" and isinstance(q.base_layer, Int8Linear)
    assert model.base_model.model.is_gradient_checkpointing
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n for n in trainable), sorted(trainable)[:5]
    assert any("lora_magnitude_vector" in n for n in trainable) == use_dora
    codes = {n: b.clone() for n, b in model.named_buffers() if n.endswith("weight_int8")}
    losses = _train(model)
    assert losses[-1] < losses[0]
    for n, b in model.named_buffers():
        if n in codes:
            assert torch.equal(b, codes[n]), n  # the int8 weights never move


def test_lora_layer_adds_the_low_rank_update(float_dir):
    model = _peft_model(float_dir, init_lora_weights=False)
    layer = model.base_model.model.model.layers[1].mlp.down_proj
    x = torch.randn(3, 5, layer.in_features)
    A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    expected = layer.base_layer(x) + x @ A.T @ B.T * (8 / 4)
    torch.testing.assert_close(layer(x), expected)


@pytest.mark.parametrize("use_dora", [False, True], ids=["lora", "dora"])
def test_adapter_saves_and_reloads_without_extra_step(float_dir, tmp_path, use_dora):
    model = _peft_model(float_dir, init_lora_weights=False, use_dora=use_dora)
    model.eval()
    expected = logits(model)
    model.save_pretrained(tmp_path / "adapter")
    reloaded = PeftModel.from_pretrained(_int8_model(float_dir), tmp_path / "adapter")
    assert type(reloaded.base_model.model.model.layers[0].self_attn.v_proj).__name__ == "Int8LoraLinear"
    torch.testing.assert_close(logits(reloaded), expected, rtol=0, atol=0)


@pytest.mark.parametrize("use_dora", [False, True], ids=["lora", "dora"])
def test_merge_into_int8_requantizes(float_dir, use_dora):
    model = _peft_model(float_dir, init_lora_weights=False, use_dora=use_dora).eval()
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    before = logits(model)
    with model.disable_adapter():
        adapter_effect = (before - logits(model)).norm()
    W = layer.base_layer.dequantized_weight() + (0 if use_dora else layer.get_delta_weight("default"))
    merged = model.merge_and_unload()
    q = merged.model.layers[0].self_attn.q_proj
    assert isinstance(q, Int8Linear) and q.weight_int8.dtype == torch.int8
    if not use_dora:  # the merged float weight, quantized once more: error at most half a step per row
        step = W.abs().amax(dim=1, keepdim=True) / 127
        assert ((q.dequantized_weight() - W).abs() <= step / 2 + 1e-6).all()
    error = (logits(merged) - before).norm()
    # one more int8 rounding of the weights, nothing else: small, and far below what the adapters change
    assert error / before.norm() < 0.05 and error < adapter_effect / 10


def test_merge_into_float_on_request(float_dir):
    model = _peft_model(float_dir, init_lora_weights=False).eval()
    before = logits(model)
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    W = layer.base_layer.dequantized_weight() + layer.get_delta_weight("default")
    model.base_model.model.dequantize()  # the base layers become nn.Linear; peft merges in float
    merged = model.merge_and_unload()
    assert not any(isinstance(m, Int8Linear) for m in merged.modules())
    torch.testing.assert_close(merged.model.layers[0].self_attn.q_proj.weight, W)
    assert (logits(merged) - before).norm() / before.norm() < 0.02  # no activation rounding now


def test_dequantize_returns_float_layers(float_dir):
    model = _int8_model(float_dir)
    weights = {n: m.dequantized_weight() for n, m in model.named_modules() if isinstance(m, Int8Linear)}
    out = model.dequantize()
    assert not any(isinstance(m, Int8Linear) for m in out.modules())
    for name, W in weights.items():
        layer = out.get_submodule(name)
        assert type(layer) is nn.Linear and torch.equal(layer.weight, W), name
    assert getattr(out, "hf_quantizer", None) is None and not out.is_quantized
    reference = logits(AutoModelForCausalLM.from_pretrained(float_dir))
    assert (logits(out) - reference).norm() / reference.norm() < 0.02


def test_trainer_runs_on_peft_over_int8(float_dir, tmp_path):
    from torch.utils.data import Dataset
    from transformers import Trainer, TrainingArguments

    class Lines(Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            ids = input_ids(seed=i, length=16)[0]
            return {"input_ids": ids, "labels": ids}

    model = _peft_model(float_dir)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    args = TrainingArguments(
        tmp_path, max_steps=2, per_device_train_batch_size=2, learning_rate=1e-2, report_to=[], use_cpu=True
    )
    result = Trainer(model=model, args=args, train_dataset=Lines()).train()
    assert result.global_step == 2 and torch.isfinite(torch.tensor(result.training_loss))
    changed = [n for n, p in model.named_parameters() if n in before and not torch.equal(p, before[n])]
    assert any("lora_B" in n for n in changed)


def test_unsupported_lora_settings_are_named():
    layer = Int8Linear.from_linear(nn.Linear(16, 8))
    model = nn.Sequential(layer)
    with pytest.raises(ValueError, match="init_lora_weights"):
        get_peft_model(model, LoraConfig(r=2, target_modules=["0"], init_lora_weights="pissa"))


def test_llm_int8_imports_without_peft_and_installs_when_peft_comes_later():
    code = (
        "import sys, llm_int8, torch\n"
        "assert 'peft' not in sys.modules, 'llm_int8 imported peft'\n"
        "import importlib.util; assert importlib.util.find_spec('peft') is not None  # a probe, not a load\n"
        "from peft import LoraConfig, get_peft_model\n"
        "m = torch.nn.Sequential(llm_int8.Int8Linear.from_linear(torch.nn.Linear(16, 8)))\n"
        "pm = get_peft_model(m, LoraConfig(r=2, target_modules=['0']))\n"
        "print(type(pm.base_model.model[0]).__name__)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "Int8LoraLinear"


def test_quantize_model_marks_transformers_models_8bit():
    model = llm_int8.quantize_model(tiny_model("llama"))
    assert model.is_loaded_in_8bit
