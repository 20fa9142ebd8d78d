"""quantize_model: which layers are swapped, what is left alone, the report, the config."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from llm_int8 import Int8Config, Int8Linear, linear_memory, quantize_model


class _Toy(nn.Module):
    def __init__(self, tie=True):
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        self.block = nn.ModuleDict(
            {"attn": nn.Linear(16, 16), "mlp": nn.Sequential(nn.Linear(16, 64), nn.GELU(), nn.Linear(64, 16))}
        )
        self.norm = nn.LayerNorm(16)
        self.my_lm_head = nn.Linear(16, 16)  # must NOT match "lm_head" (suffix on a "." boundary)
        self.lm_head = nn.Linear(16, 50, bias=False)
        self.out = nn.Linear(16, 50, bias=False)
        if tie:
            self.out.weight = self.embed.weight

    def forward(self, ids):
        h = self.embed(ids)
        h = h + self.block["attn"](h)
        h = h + self.block["mlp"](h)
        h = self.my_lm_head(self.norm(h))
        return self.lm_head(h) + self.out(h)


def test_converts_every_linear_but_skipped_and_tied_ones():
    model = _Toy()
    embed_before = model.embed.weight.detach().clone()
    model, report = quantize_model(model, return_report=True)
    assert set(report.converted) == {"block.attn", "block.mlp.0", "block.mlp.2", "my_lm_head"}
    assert report.skipped == {"lm_head": "in skip_modules", "out": "weight tied to another module"}
    assert all(isinstance(model.get_submodule(n), Int8Linear) for n in report.converted)
    assert isinstance(model.lm_head, nn.Linear) and isinstance(model.norm, nn.LayerNorm)
    assert model.out.weight is model.embed.weight  # still tied, still float
    assert torch.equal(model.embed.weight, embed_before)


def test_report_counts_the_memory_with_scales():
    model = _Toy(tie=False)
    params = sum(m.weight.numel() + m.bias.numel() for m in (model.block.attn, model.block.mlp[0], model.block.mlp[2]))
    params += model.my_lm_head.weight.numel() + model.my_lm_head.bias.numel() + model.out.weight.numel()
    _, report = quantize_model(model, return_report=True)
    assert report.bytes_before == params * 4
    expected_after = sum(model.get_submodule(n).memory_bytes() for n in report.converted)
    assert report.bytes_after == expected_after
    assert "converted 5 linear layers" in report.summary()
    mem = linear_memory(model)
    assert mem["int8"] == expected_after and mem["float"] == model.lm_head.weight.numel() * 4


def test_user_skip_list_and_threshold_are_applied():
    model = quantize_model(_Toy(), threshold=3.5, skip_modules=["mlp.2", "lm_head"])
    assert isinstance(model.block.mlp[2], nn.Linear)
    assert model.block.attn.threshold == 3.5


def test_converting_twice_is_a_no_op_with_a_message(caplog):
    model = quantize_model(_Toy())
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with caplog.at_level(logging.INFO, logger="llm_int8"):
        _, report = quantize_model(model, return_report=True)
    assert report.converted == ()
    assert "already" in caplog.text
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_converted_model_output_tracks_the_float_model():
    model = _Toy(tie=False)
    ids = torch.randint(0, 50, (2, 9))
    with torch.no_grad():
        ref = model(ids).double()
        out = quantize_model(model)(ids).double()
    assert ((out - ref).norm() / ref.norm()) < 0.03


def test_training_mode_is_preserved():
    model = _Toy().train()
    quantize_model(model)
    assert model.block.attn.training
    assert not quantize_model(_Toy().eval()).block.attn.training


def test_a_bare_linear_is_pointed_to_from_linear():
    with pytest.raises(ValueError, match="from_linear"):
        quantize_model(nn.Linear(4, 4), skip_modules=())


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"threshold": -1.0}, "threshold"),
        ({"threshold": float("nan")}, "threshold"),
        ({"threshold": "6"}, "number"),
        ({"skip_modules": ("",)}, "skip_modules"),
        ({"skip_modules": (3,)}, "skip_modules"),
        ({"activation": "symmetric"}, "activation must be one of"),
    ],
)
def test_config_is_validated(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        Int8Config(**kwargs)
    with pytest.raises((ValueError, TypeError), match=match):
        quantize_model(_Toy(), **kwargs)


def test_config_is_frozen_and_normalises_skip_modules():
    config = Int8Config(skip_modules=["a", "b.c"])
    assert config.skip_modules == ("a", "b.c")
    assert Int8Config(skip_modules="lm_head").skip_modules == ("lm_head",)
    assert config.skips("x.b.c") and not config.skips("x.bb.c") and config.skips("a")
    with pytest.raises(AttributeError):
        config.threshold = 1.0


def test_gpt2_conv1d_model_is_converted():
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=100, n_positions=32)
    model = GPT2LMHeadModel(config).eval()
    ids = torch.randint(0, 100, (1, 12))
    with torch.no_grad():
        ref = model(ids).logits.double()
        model, report = quantize_model(model, return_report=True)
        out = model(ids).logits.double()
    assert len(report.converted) == 2 * 4  # c_attn, attn.c_proj, c_fc, mlp.c_proj per block
    assert "lm_head" in report.skipped  # tied to wte and named lm_head
    assert ((out - ref).norm() / ref.norm()) < 0.05


def test_activation_reaches_every_converted_layer():
    for activation in ("absmax", "zeropoint"):
        layers = [m for m in quantize_model(_Toy(), activation=activation).modules() if isinstance(m, Int8Linear)]
        assert layers and all(m.activation == activation for m in layers)
    default = [m.activation for m in quantize_model(_Toy()).modules() if isinstance(m, Int8Linear)]
    assert set(default) == {Int8Config().activation} == {"zeropoint"}
