"""The streaming loader reads every architecture transformers reads: tiny random models of ten
families, saved by the installed transformers, load with the same int8 codes and the same logits as
through transformers' own loader with ``LLMInt8Config``, and close to the float model."""

from __future__ import annotations

import pytest
import torch
from _hf_tiny import ARCHITECTURES, arch_logits, tiny_arch

import llm_int8
from llm_int8 import Int8Linear, LLMInt8Config


def _codes(model) -> dict[str, torch.Tensor]:
    return {n: m.weight_int8 for n, m in model.named_modules() if isinstance(m, Int8Linear)}


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_streaming_loader_matches_transformers_loader(tmp_path, arch):
    float_model, auto = tiny_arch(arch)
    float_model.save_pretrained(tmp_path / "fp")
    ours = llm_int8.from_pretrained(tmp_path / "fp", auto_class=auto, progress=False)
    hf = auto.from_pretrained(tmp_path / "fp", quantization_config=LLMInt8Config())
    codes, hf_codes = _codes(ours), _codes(hf)
    assert codes.keys() == hf_codes.keys() and len(codes) >= 8, sorted(codes)
    for name, c in codes.items():
        assert torch.equal(c, hf_codes[name]), name
    expected = arch_logits(hf)
    torch.testing.assert_close(arch_logits(ours), expected, rtol=0, atol=0)
    # int8 error, not random weights: far closer to the float model than another random draw is
    reference = arch_logits(float_model)
    unrelated = arch_logits(tiny_arch(arch, seed=1)[0])
    assert (expected - reference).norm() < (unrelated - reference).norm() / 3

    # the int8 folder, saved and streamed back
    llm_int8.save_pretrained(ours, tmp_path / "int8")
    again = llm_int8.from_pretrained(tmp_path / "int8", auto_class=auto, progress=False)
    torch.testing.assert_close(arch_logits(again), expected, rtol=0, atol=0)


def test_a_checkpoint_needing_conversions_goes_through_transformers(tmp_path, caplog):
    """Mixtral's per-expert checkpoint tensors are fused on load (a transformers conversion, not a
    renaming): the streaming loader hands such a checkpoint to transformers' loader + LLMInt8Config."""
    import logging

    import transformers as tf

    torch.manual_seed(0)
    cfg = tf.MixtralConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_local_experts=2,
        num_experts_per_tok=1,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    tf.MixtralForCausalLM(cfg).eval().save_pretrained(tmp_path)
    with caplog.at_level(logging.INFO, logger="llm_int8"):
        ours = llm_int8.from_pretrained(tmp_path, progress=False)
    assert "needs transformers' weight conversions" in caplog.text
    hf = tf.AutoModelForCausalLM.from_pretrained(tmp_path, quantization_config=LLMInt8Config())
    assert _codes(ours).keys() == _codes(hf).keys() and _codes(ours)
    torch.testing.assert_close(arch_logits(ours), arch_logits(hf), rtol=0, atol=0)
