"""Bad checkpoints fail loudly, naming the file and the tensor."""

from __future__ import annotations

import json
import os

import pytest
import torch
from _hf_tiny import tiny_model
from safetensors.torch import load_file, save_file

import llm_int8
from llm_int8 import CheckpointError


@pytest.fixture
def sharded(tmp_path):
    tiny_model("llama").save_pretrained(tmp_path, max_shard_size="40KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())["weight_map"]
    return tmp_path, index


def _shard_of(index, key):
    return index[key]


def test_missing_shard_names_the_file(sharded):
    folder, index = sharded
    victim = _shard_of(index, "model.layers.1.mlp.up_proj.weight")
    os.remove(folder / victim)
    with pytest.raises(CheckpointError, match=rf"shard .*{victim}.* is missing"):
        llm_int8.from_pretrained(folder, progress=False)


def test_truncated_shard_names_file_and_tensor(sharded):
    folder, index = sharded
    victim = folder / _shard_of(index, "model.layers.1.mlp.up_proj.weight")
    size = victim.stat().st_size
    with open(victim, "r+b") as f:
        f.truncate(size - 100)
    with pytest.raises(CheckpointError, match=rf"{victim.name}: tensor '.*' ends at byte \d+ .*truncated"):
        llm_int8.from_pretrained(folder, progress=False)


def test_corrupt_header_names_the_file(sharded):
    folder, index = sharded
    victim = folder / _shard_of(index, "model.layers.0.self_attn.q_proj.weight")
    data = bytearray(victim.read_bytes())
    data[8:20] = b"\xff" * 12  # garbage at the start of the JSON header
    victim.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=rf"{victim.name}: corrupt safetensors header"):
        llm_int8.from_pretrained(folder, progress=False)


def test_garbage_file_names_the_file(tmp_path):
    tiny_model("llama").config.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 5)
    with pytest.raises(CheckpointError, match=r"model\.safetensors: 5 bytes, too short"):
        llm_int8.from_pretrained(tmp_path, progress=False)


def test_shape_that_disagrees_with_config_names_the_key(tmp_path):
    tiny_model("llama").save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["intermediate_size"] = 80  # the checkpoint's MLP is 96 wide
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: tensor 'model\.layers\.0\.mlp\.\w+_proj\.weight'"):
        llm_int8.from_pretrained(tmp_path, progress=False)


def _rewrite(folder, edit):
    tensors = load_file(folder / "model.safetensors")
    edit(tensors)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})


def test_dtype_that_disagrees_names_the_key(tmp_path):
    tiny_model("llama").save_pretrained(tmp_path)
    _rewrite(tmp_path, lambda t: t.update({"model.norm.weight": t["model.norm.weight"].to(torch.int32)}))
    with pytest.raises(CheckpointError, match=r"tensor 'model\.norm\.weight' is torch\.int32"):
        llm_int8.from_pretrained(tmp_path, progress=False)


def test_int_weight_for_a_float_linear_names_the_key(tmp_path):
    tiny_model("llama").save_pretrained(tmp_path)
    key = "model.layers.0.mlp.up_proj.weight"
    _rewrite(tmp_path, lambda t: t.update({key: t[key].to(torch.int16)}))
    with pytest.raises(CheckpointError, match=rf"tensor '{key}' is torch\.int16"):
        llm_int8.from_pretrained(tmp_path, progress=False)


def test_missing_tensor_is_named(tmp_path):
    tiny_model("llama").save_pretrained(tmp_path)
    _rewrite(tmp_path, lambda t: t.pop("model.layers.1.post_attention_layernorm.weight"))
    with pytest.raises(CheckpointError, match=r"not in the checkpoint: \['model\.layers\.1\.post_attention_layernorm"):
        llm_int8.from_pretrained(tmp_path, progress=False)


def test_unexpected_tensor_is_named(tmp_path):
    tiny_model("llama").save_pretrained(tmp_path)
    _rewrite(tmp_path, lambda t: t.update({"model.extra.weight": torch.zeros(3)}))
    with pytest.raises(CheckpointError, match=r"match nothing in the model.*model\.extra\.weight"):
        llm_int8.from_pretrained(tmp_path, progress=False)


def test_nan_weight_is_named(tmp_path):
    tiny_model("llama").save_pretrained(tmp_path)
    key = "model.layers.1.self_attn.k_proj.weight"

    def poison(t):
        t[key][3, 4] = float("nan")

    _rewrite(tmp_path, poison)
    with pytest.raises(CheckpointError, match=rf"tensor '{key}' holds NaN"):
        llm_int8.from_pretrained(tmp_path, progress=False)


def test_unknown_path_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        llm_int8.from_pretrained(tmp_path / "nope" / "model.gguf", progress=False)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        llm_int8.from_pretrained(tmp_path, progress=False)


def test_other_quantization_methods_are_refused(tmp_path):
    tiny_model("llama").save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "gptq", "bits": 4}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="gptq"):
        llm_int8.from_pretrained(tmp_path, progress=False)
