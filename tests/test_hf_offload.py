"""device_map / max_memory: CPU + disk offload keeps layers int8; GPUs when present."""

from __future__ import annotations

import json

import pytest
import torch
from _hf_tiny import input_ids, logits, tiny_model

import llm_int8
from llm_int8 import Int8Linear

_CPU_DISK_MAP = {
    "model.embed_tokens": "cpu",
    "model.layers.0": "cpu",
    "model.layers.1": "disk",
    "model.norm": "cpu",
    "model.rotary_emb": "cpu",
    "lm_head": "cpu",
}


@pytest.fixture
def llama_dir(tmp_path):
    tiny_model("llama").save_pretrained(tmp_path / "fp")
    return tmp_path / "fp"


def test_disk_offloaded_layers_stay_int8(llama_dir, tmp_path):
    reference = llm_int8.from_pretrained(llama_dir, progress=False)
    offloaded = llm_int8.from_pretrained(
        llama_dir, device_map=_CPU_DISK_MAP, offload_folder=tmp_path / "offload", progress=False
    )
    layer = offloaded.model.layers[1].self_attn.q_proj
    assert isinstance(layer, Int8Linear)
    assert layer.weight_int8.is_meta  # not in memory: on disk
    index = json.loads((tmp_path / "offload" / "index.json").read_text())
    assert index["model.layers.1.self_attn.q_proj.weight_int8"]["dtype"] == "int8"
    assert index["model.layers.1.self_attn.q_proj.weight_scale"]["dtype"] == "float32"
    assert not any(k.startswith("model.layers.0.") for k in index)
    torch.testing.assert_close(logits(offloaded), logits(reference), rtol=0, atol=0)


def test_max_memory_plans_on_int8_sizes(llama_dir, tmp_path):
    reference = llm_int8.from_pretrained(llama_dir, progress=False)
    layer_bytes = sum(t.numel() * t.element_size() for t in reference.model.layers[0].state_dict().values())
    embed_bytes = reference.model.embed_tokens.weight.numel() * 4
    # room on the CPU for the embedding and about one decoder layer: the rest must go to disk
    budget = embed_bytes + int(1.5 * layer_bytes)
    model = llm_int8.from_pretrained(
        llama_dir,
        device_map="sequential",
        max_memory={"cpu": budget},
        offload_folder=tmp_path / "offload",
        progress=False,
    )
    assert "disk" in set(model.hf_device_map.values())
    assert all(isinstance(model.get_submodule(n), Int8Linear) for n in ("model.layers.1.mlp.up_proj",))
    torch.testing.assert_close(logits(model), logits(reference), rtol=0, atol=0)


def test_transformers_loads_saved_int8_with_disk_offload(llama_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    reference = llm_int8.from_pretrained(llama_dir, progress=False)
    saved = llm_int8.save_pretrained(reference, tmp_path / "int8")
    model = AutoModelForCausalLM.from_pretrained(
        saved, device_map=_CPU_DISK_MAP, offload_folder=tmp_path / "offload", offload_buffers=True
    )
    layer = model.model.layers[1].mlp.up_proj
    assert isinstance(layer, Int8Linear) and layer.weight_int8.is_meta
    torch.testing.assert_close(logits(model), logits(reference), rtol=0, atol=0)


def test_disk_offload_with_and_without_float_columns(tmp_path):
    # layers without float columns hold no float_dims / float_weight buffers, so the offload hooks
    # never look them up; a disk-placed layer that has them gets them back from the offload folder
    layer = "model.layers.1.self_attn.q_proj"
    reference = llm_int8.quantize_model(tiny_model("llama"), float_dims={layer: [2, 9]})
    saved = llm_int8.save_pretrained(reference, tmp_path / "int8")
    ours = llm_int8.from_pretrained(
        saved, device_map=_CPU_DISK_MAP, offload_folder=tmp_path / "offload", progress=False
    )
    index = json.loads((tmp_path / "offload" / "index.json").read_text())
    assert index[f"{layer}.float_weight"]["shape"] == [reference.get_submodule(layer).out_features, 2]
    assert "model.layers.1.self_attn.k_proj.float_dims" not in index
    assert ours.get_submodule(layer).float_weight.is_meta
    torch.testing.assert_close(logits(ours), logits(reference), rtol=0, atol=0)
    from transformers import AutoModelForCausalLM

    theirs = AutoModelForCausalLM.from_pretrained(
        saved, device_map=_CPU_DISK_MAP, offload_folder=tmp_path / "offload2", offload_buffers=True
    )
    torch.testing.assert_close(logits(theirs), logits(reference), rtol=0, atol=0)
    tiny_model("llama").save_pretrained(tmp_path / "fp")  # and from the float checkpoint, streamed to disk
    streamed = llm_int8.from_pretrained(
        tmp_path / "fp",
        float_dims={layer: [2, 9]},
        device_map=_CPU_DISK_MAP,
        offload_folder=tmp_path / "offload3",
        progress=False,
    )
    assert streamed.get_submodule(layer).float_weight.is_meta
    torch.testing.assert_close(logits(streamed), logits(reference), rtol=0, atol=0)


def test_transformers_on_the_fly_refuses_disk(llama_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    with pytest.raises(ValueError, match="llm_int8.from_pretrained"):
        AutoModelForCausalLM.from_pretrained(
            llama_dir,
            quantization_config=llm_int8.LLMInt8Config(),
            device_map=_CPU_DISK_MAP,
            offload_folder=tmp_path / "offload",
        )


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
def test_gpu_and_cpu_placement(llama_dir):
    reference = llm_int8.from_pretrained(llama_dir, progress=False)
    device_map = {**_CPU_DISK_MAP, "model.layers.1": "cpu", "model.layers.0": 0, "model.embed_tokens": 0}
    model = llm_int8.from_pretrained(llama_dir, device_map=device_map, progress=False)
    assert model.model.layers[0].mlp.up_proj.weight_int8.device.type == "cuda"
    assert isinstance(model.model.layers[1].mlp.up_proj, Int8Linear)
    ids = input_ids().to("cuda:0")
    torch.testing.assert_close(logits(model, ids).cpu(), logits(reference), rtol=0.05, atol=0.05)
