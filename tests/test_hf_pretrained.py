"""llm_int8.from_pretrained: streaming int8 loading of Hugging Face checkpoints."""

from __future__ import annotations

import copy

import pytest
import torch
from _hf_tiny import FAMILIES, logits, tiny_model
from safetensors.torch import save_file
from torch import nn

import llm_int8
from llm_int8 import Int8Linear, quantize_model
from llm_int8.integrations.huggingface import blockwise
from llm_int8.integrations.huggingface.checkpoint import CheckpointError, SafetensorsFile


def _int8_layers(model) -> dict[str, Int8Linear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, Int8Linear)}


def _assert_same_int8(a, b) -> None:
    la, lb = _int8_layers(a), _int8_layers(b)
    assert la.keys() == lb.keys() and la
    for name in la:
        assert torch.equal(la[name].weight_int8, lb[name].weight_int8), name
        assert torch.equal(la[name].weight_scale, lb[name].weight_scale), name


@pytest.mark.parametrize("sharded", [False, True], ids=["single", "sharded"])
@pytest.mark.parametrize("family", FAMILIES)
def test_streaming_equals_load_then_convert(tmp_path, family, sharded):
    model = tiny_model(family)
    model.save_pretrained(tmp_path, max_shard_size="40KB" if sharded else "1GB")
    assert (tmp_path / "model.safetensors.index.json").is_file() == sharded

    loaded = llm_int8.from_pretrained(tmp_path, progress=False)
    reference = quantize_model(copy.deepcopy(model))
    _assert_same_int8(loaded, reference)
    torch.testing.assert_close(logits(loaded), logits(reference), rtol=0, atol=0)
    assert not any(t.is_meta for t in [*loaded.parameters(), *loaded.buffers()])
    assert loaded.config.quantization_config.threshold == 6.0


@pytest.mark.parametrize("transposed", [False, True], ids=["linear", "conv1d"])
def test_zero_and_tiny_rows(tmp_path, transposed):
    W = torch.randn(6, 10)
    W[1] = 0.0  # a pruned row
    W[4] = 1e-30
    save_file({"w": W.T.contiguous() if transposed else W}, tmp_path / "x.safetensors")
    with SafetensorsFile(tmp_path / "x.safetensors") as f:
        W_i8, s_w, _ = blockwise.read_quantized(f, "w", transposed, "w", blockwise.Scratch())
    assert torch.equal(W_i8[1], torch.zeros(10, dtype=torch.int8)) and s_w[1] == 0
    expected = Int8Linear.from_linear(_linear_with(W))
    assert torch.equal(W_i8, expected.weight_int8) and torch.equal(s_w, expected.weight_scale)


def _linear_with(W: torch.Tensor) -> nn.Linear:
    layer = nn.Linear(W.shape[1], W.shape[0], bias=False)
    with torch.no_grad():
        layer.weight.copy_(W)
    return layer


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_blockwise_quantization_is_bit_exact(tmp_path, monkeypatch, family):
    """Tiny blocks force many row blocks per weight (and the two-pass Conv1D path for GPT-2)."""
    model = tiny_model(family)
    model.save_pretrained(tmp_path)
    monkeypatch.setattr(blockwise, "BLOCK_BYTES", 3 * 4 * 64)  # 3 rows of 64 float32 per block
    loaded = llm_int8.from_pretrained(tmp_path, progress=False)
    _assert_same_int8(loaded, quantize_model(copy.deepcopy(model)))


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_float_dims_are_taken_out_while_streaming(tmp_path, monkeypatch, family):
    """``float_dims`` for a float checkpoint: bit-identical to ``quantize_model(float_dims=...)``,
    across row blocks (and the two passes of a Conv1D weight, where the dims are stored rows)."""
    model = tiny_model(family)
    model.save_pretrained(tmp_path)
    layers = [n for n, m in quantize_model(copy.deepcopy(model)).named_modules() if isinstance(m, Int8Linear)]
    dims = {layers[0]: [0, 5, 33], layers[-1]: [2]}
    monkeypatch.setattr(blockwise, "BLOCK_BYTES", 3 * 4 * 64)  # 3 rows of 64 float32 per block
    loaded = llm_int8.from_pretrained(tmp_path, float_dims=dims, progress=False)
    reference = quantize_model(copy.deepcopy(model), float_dims=dims)
    _assert_same_int8(loaded, reference)
    for name, d in dims.items():
        ours, theirs = loaded.get_submodule(name), reference.get_submodule(name)
        assert ours.float_dims.tolist() == d and torch.equal(ours.float_weight, theirs.float_weight)
    torch.testing.assert_close(logits(loaded), logits(reference), rtol=0, atol=0)
    assert loaded.config.quantization_config.float_dims == dims
    with pytest.raises(ValueError, match="not converted linear layers"):
        llm_int8.from_pretrained(tmp_path, float_dims={"lm_head": [1]}, progress=False)
    with pytest.raises(ValueError, match="float_dims must lie in"):
        llm_int8.from_pretrained(tmp_path, float_dims={layers[0]: [10**6]}, progress=False)


def test_skip_modules_are_added_to_the_automatic_list(tmp_path):
    tiny_model("llama").save_pretrained(tmp_path)
    loaded = llm_int8.from_pretrained(tmp_path, skip_modules=["down_proj"], progress=False)
    assert type(loaded.lm_head) is nn.Linear  # automatic skip kept
    assert type(loaded.model.layers[0].mlp.down_proj) is nn.Linear  # user's skip
    assert isinstance(loaded.model.layers[0].mlp.up_proj, Int8Linear)
    qc = loaded.config.quantization_config
    assert qc.skip_modules == ["down_proj"]
    assert "lm_head" in qc.modules_to_not_convert and "model.layers.1.mlp.down_proj" in qc.modules_to_not_convert


@pytest.mark.parametrize("family", ["gpt2", "opt"])
def test_tied_output_embedding_stays_float_and_tied(tmp_path, family):
    tiny_model(family).save_pretrained(tmp_path)
    loaded = llm_int8.from_pretrained(tmp_path, skip_modules=["nothing_matches"], progress=False)
    head = loaded.get_output_embeddings()
    assert type(head) is nn.Linear
    assert head.weight is loaded.get_input_embeddings().weight


def test_bf16_checkpoint_computes_in_bf16(tmp_path):
    tiny_model("llama", dtype=torch.bfloat16).save_pretrained(tmp_path)
    loaded = llm_int8.from_pretrained(tmp_path, progress=False)
    assert loaded.model.embed_tokens.weight.dtype == torch.bfloat16
    assert loaded.model.layers[0].input_layernorm.weight.dtype == torch.bfloat16
    assert loaded.model.layers[0].self_attn.q_proj.weight_scale.dtype == torch.float32
    assert logits(loaded).dtype == torch.bfloat16
    as_fp32 = llm_int8.from_pretrained(tmp_path, dtype=torch.float32, progress=False)
    assert logits(as_fp32).dtype == torch.float32


def test_pickle_checkpoint_loads_with_weights_only(tmp_path):
    model = tiny_model("llama")
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    loaded = llm_int8.from_pretrained(tmp_path, progress=False)
    _assert_same_int8(loaded, quantize_model(copy.deepcopy(model)))


def test_legacy_pickle_format_loads(tmp_path):
    model = tiny_model("opt")
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin", _use_new_zipfile_serialization=False)
    loaded = llm_int8.from_pretrained(tmp_path, progress=False)
    _assert_same_int8(loaded, quantize_model(copy.deepcopy(model)))


class _NotATensor:
    def __reduce__(self):
        return (print, ("code ran while unpickling",))


def test_pickle_with_code_is_refused(tmp_path, capsys):
    tiny_model("llama").config.save_pretrained(tmp_path)
    torch.save({"model.embed_tokens.weight": _NotATensor()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin.*weights_only=True"):
        llm_int8.from_pretrained(tmp_path, progress=False)
    assert "code ran" not in capsys.readouterr().out


def test_loading_an_int8_model_again_is_a_noop(tmp_path, caplog):
    tiny_model("llama").save_pretrained(tmp_path)
    loaded = llm_int8.from_pretrained(tmp_path, progress=False)
    before = logits(loaded)
    with caplog.at_level("INFO", logger="llm_int8"):
        again, report = quantize_model(loaded, return_report=True)
    assert again is loaded and report.converted == ()
    assert "already" in caplog.text
    torch.testing.assert_close(logits(loaded), before, rtol=0, atol=0)


def test_reader_reads_row_blocks(tmp_path):
    t = torch.arange(7 * 5, dtype=torch.float16).reshape(7, 5)
    save_file({"w": t}, tmp_path / "x.safetensors")
    with SafetensorsFile(tmp_path / "x.safetensors") as f:
        assert torch.equal(f.read("w"), t)
        assert torch.equal(f.read_rows("w", 2, 6), t[2:6])
        scratch = torch.empty(64, dtype=torch.uint8)
        rows = f.read_rows("w", 5, 7, scratch=scratch)
        assert torch.equal(rows, t[5:7]) and rows.data_ptr() == scratch.data_ptr()


@pytest.mark.slow
def test_gguf_file_loads_as_int8(smollm2, monkeypatch):
    """The GGUF path on the real SmolLM2-135M. transformers' GGUF dequantization (slow) is replaced by
    a copy of the session's already-loaded model, cut to its first 2 layers to keep the test short."""
    from llm_int8.integrations import default_model_path

    path = default_model_path()
    full = smollm2[0]
    calls = []

    class _Auto:
        @staticmethod
        def from_pretrained(name, **kwargs):
            calls.append((name, kwargs))
            layers = full.model.layers
            full.model.layers = nn.ModuleList(list(layers[:2]))
            try:
                model = copy.deepcopy(full)
            finally:
                full.model.layers = layers  # the shared fixture is left as it was
            model.config.num_hidden_layers = 2
            return model

    model = llm_int8.from_pretrained(path, auto_class=_Auto, progress=False)
    assert calls[0][1]["gguf_file"] == path.name
    assert len(_int8_layers(model)) == 2 * 7  # per layer: q, k, v, o, gate, up, down
    assert type(model.lm_head) is nn.Linear and model.lm_head.weight is model.model.embed_tokens.weight
    assert model.config.quantization_config.modules_to_not_convert == ["lm_head"]
    expected = Int8Linear.from_linear(full.model.layers[1].mlp.down_proj)
    assert torch.equal(model.model.layers[1].mlp.down_proj.weight_int8, expected.weight_int8)
