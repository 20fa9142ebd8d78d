"""Saving int8 models: the llm_int8 format, atomic folders, reload without float weights."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from _hf_tiny import logits, tiny_model
from safetensors import safe_open

import llm_int8
from llm_int8 import Int8Linear, quantize_model
from llm_int8.integrations.huggingface.quantizer import FORMAT_VERSION
from llm_int8.integrations.huggingface.saving import atomic_directory


def _saved_tensors(folder) -> dict[str, torch.dtype]:
    out = {}
    for f in folder.glob("*.safetensors"):
        with safe_open(f, "pt") as h:
            out.update({k: h.get_slice(k).get_dtype() for k in h.keys()})
    return out


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_save_and_reload_gives_identical_outputs(tmp_path, family):
    tiny_model(family).save_pretrained(tmp_path / "fp")
    model = llm_int8.from_pretrained(tmp_path / "fp", threshold=4.0, progress=False)
    out = llm_int8.save_pretrained(model, tmp_path / "int8", max_shard_size="30KB")
    assert (out / "model.safetensors.index.json").is_file()  # sharded

    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "llm_int8" and qc["threshold"] == 4.0 and qc["format_version"] == FORMAT_VERSION
    saved = _saved_tensors(out)
    int8_layers = [n for n, m in model.named_modules() if isinstance(m, Int8Linear)]
    for name in int8_layers:  # no float weight of an int8 layer on disk
        assert saved[f"{name}.weight_int8"] == "I8" and saved[f"{name}.weight_scale"] == "F32"
        assert saved[f"{name}.weight"] == "I8"  # format 2's empty placeholder, not a float weight (test_hf_portable)

    reloaded = llm_int8.from_pretrained(out, progress=False)
    assert reloaded.model.layers[0].mlp.down_proj.threshold == 4.0 if family == "llama" else True
    torch.testing.assert_close(logits(reloaded), logits(model), rtol=0, atol=0)


def test_int8_checkpoint_is_about_half_of_fp16(tmp_path):
    # hidden sizes large against the vocabulary, so the linear layers dominate as in a real LLM
    model = tiny_model("llama", dtype=torch.float16, hidden_size=256, intermediate_size=512)
    model.save_pretrained(tmp_path / "fp16")
    out = llm_int8.save_pretrained(llm_int8.from_pretrained(tmp_path / "fp16", progress=False), tmp_path / "int8")
    fp16 = sum(f.stat().st_size for f in (tmp_path / "fp16").glob("*.safetensors"))
    int8 = sum(f.stat().st_size for f in out.glob("*.safetensors"))
    assert 0.45 < int8 / fp16 < 0.6


def test_model_converted_in_memory_saves_its_config(tmp_path):
    model = quantize_model(tiny_model("opt"), threshold=5.0)
    out = llm_int8.save_pretrained(model, tmp_path / "int8")
    reloaded = llm_int8.from_pretrained(out, progress=False)
    assert reloaded.config.quantization_config.threshold == 5.0
    torch.testing.assert_close(logits(reloaded), logits(model), rtol=0, atol=0)


def test_float_model_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no Int8Linear"):
        llm_int8.save_pretrained(tiny_model("llama"), tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_failed_save_leaves_nothing_behind(tmp_path, monkeypatch):
    model = quantize_model(tiny_model("llama"))
    real_save = type(model).save_pretrained

    def save_then_fail(self, folder, **kwargs):
        real_save(self, folder, **kwargs)  # the files are written ...
        raise OSError("disk full")  # ... then the write fails

    monkeypatch.setattr(type(model), "save_pretrained", save_then_fail)
    with pytest.raises(OSError, match="disk full"):
        llm_int8.save_pretrained(model, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []  # neither the target nor a temporary folder


def test_existing_folder_is_kept_unless_overwrite(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("old")
    model = quantize_model(tiny_model("llama"))
    with pytest.raises(FileExistsError, match="overwrite=True"):
        llm_int8.save_pretrained(model, target)
    assert (target / "keep.txt").read_text() == "old"
    llm_int8.save_pretrained(model, target, overwrite=True)
    assert not (target / "keep.txt").exists() and (target / "config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_atomic_directory_renames_only_on_success(tmp_path):
    with pytest.raises(RuntimeError), atomic_directory(tmp_path / "a") as tmp:
        (tmp / "half.bin").write_bytes(b"x")
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
    with atomic_directory(tmp_path / "a") as tmp:
        (tmp / "whole.bin").write_bytes(b"x")
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["whole.bin"]


def test_saved_model_still_converts_as_noop(tmp_path):
    model = quantize_model(tiny_model("llama"))
    reloaded = llm_int8.from_pretrained(llm_int8.save_pretrained(model, tmp_path / "q"), progress=False)
    before = copy.deepcopy(reloaded.state_dict())
    quantize_model(reloaded)
    assert all(torch.equal(before[k], v) for k, v in reloaded.state_dict().items())


def test_zeropoint_activation_is_saved_and_restored(tmp_path):
    model = quantize_model(tiny_model("llama"), threshold=5.0, activation="zeropoint")
    out = llm_int8.save_pretrained(model, tmp_path / "int8")
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["activation"] == "zeropoint" and qc["threshold"] == 5.0
    reloaded = llm_int8.from_pretrained(out, progress=False)
    assert {m.activation for m in reloaded.modules() if isinstance(m, Int8Linear)} == {"zeropoint"}
    torch.testing.assert_close(logits(reloaded), logits(model), rtol=0, atol=0)
    # the caller can override the saved choice; the stored weights are the same for both
    absmax = llm_int8.from_pretrained(out, progress=False, activation="absmax")
    assert {m.activation for m in absmax.modules() if isinstance(m, Int8Linear)} == {"absmax"}
