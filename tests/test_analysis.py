"""Outlier-feature analysis: measured sites, hooks that always go away, the criteria, the ablation."""

from __future__ import annotations

import types

import pytest
import torch
from torch import nn

from llm_int8.analysis import (
    OutlierCriteria,
    OutlierStatistics,
    Site,
    ablate_outliers,
    find_outlier_features,
    find_sites,
    plot_outliers,
    record_inputs,
    zero_input_dims,
)


class _Block(nn.Module):
    def __init__(self, h):
        super().__init__()
        self.self_attn = nn.Module()
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            setattr(self.self_attn, name, nn.Linear(h, h))
        self.mlp = nn.Module()
        for name in ("gate_proj", "up_proj"):
            setattr(self.mlp, name, nn.Linear(h, 2 * h))
        self.mlp.down_proj = nn.Linear(2 * h, h)

    def forward(self, x):
        a = self.self_attn.q_proj(x) + self.self_attn.k_proj(x) + self.self_attn.v_proj(x)
        x = x + self.self_attn.o_proj(a)
        return x + self.mlp.down_proj(self.mlp.gate_proj(x) * self.mlp.up_proj(x))


class _TinyLlama(nn.Module):
    """Llama module names, 4 layers, hidden 8."""

    def __init__(self, h=8, layers=4):
        super().__init__()
        self.config = types.SimpleNamespace(model_type="llama")
        self.layers = nn.ModuleList(_Block(h) for _ in range(layers))

    def forward(self, x):
        for block in self.layers:
            x = block(x)
        return x


def _hook_count(model):
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())


def test_find_sites_groups_shared_inputs():
    model = _TinyLlama()
    sites = find_sites(model)
    assert [(s.layer, s.kind) for s in sites[:3]] == [(0, "attn_in"), (0, "attn_out"), (0, "ffn_in")]
    assert len(sites) == 4 * 3
    assert [n for n, _ in sites[0].modules] == [f"layers.0.self_attn.{p}_proj" for p in "qkv"]
    assert not any("down_proj" in n for s in sites for n, _ in s.modules)  # FFN contraction not measured


def test_find_sites_unknown_architecture_and_patterns():
    model = _TinyLlama()
    model.config.model_type = "mamba"
    with pytest.raises(ValueError, match="unknown architecture 'mamba'.*--modules"):
        find_sites(model)
    sites = find_sites(model, [r"o_proj$"])
    assert [s.name for s in sites] == [f"layers.{i}.self_attn.o_proj" for i in range(4)]
    with pytest.raises(ValueError, match="no module name matches"):
        find_sites(model, ["nothing"])


def test_record_inputs_hooks_removed_even_on_error():
    model = _TinyLlama()
    sites = find_sites(model)
    seen = []
    with record_inputs(sites, lambda i, x: seen.append((i, x.shape))):
        assert _hook_count(model) == len(sites)  # one per site, not per module
        model(torch.randn(2, 3, 8))
    assert _hook_count(model) == 0
    assert [i for i, _ in seen] == list(range(len(sites)))
    with pytest.raises(RuntimeError, match="boom"), record_inputs(sites, lambda i, x: None):
        raise RuntimeError("boom")
    assert _hook_count(model) == 0


def test_zero_input_dims_zeroes_every_module_of_a_site():
    model = _TinyLlama()
    sites = find_sites(model)
    x = torch.randn(1, 5, 8)
    x_copy = x.clone()
    reference = model(x)
    seen = {}
    with zero_input_dims(sites, [1, 6]):
        # pre-hooks run in registration order: these spies see what the zeroing hook returned
        spies = [
            m.register_forward_pre_hook(lambda mod, args, n=n: seen.__setitem__(n, args[0]))
            for n, m in model.named_modules()
            if n.endswith(("k_proj", "o_proj", "up_proj"))
        ]
        zeroed = model(x)
        for h in spies:
            h.remove()
    assert _hook_count(model) == 0
    assert len(seen) == 3 * 4
    assert all(torch.all(v[..., [1, 6]] == 0) and v[..., [0, 2]].abs().sum() > 0 for v in seen.values())
    assert torch.equal(x, x_copy)  # the caller's tensor is not modified
    assert not torch.allclose(zeroed, reference)
    assert torch.equal(model(x), reference)  # hooks gone: the model is back to normal


def _stats_with_planted_outlier():
    """4 layers x 3 sites, hidden 10, two sequences of 50 tokens. Dim 3: +8..+12 at 10 positions of
    every sequence in layers 1-3 (75% of layers, 20% of positions, one-sided). Dim 7: -9 at one
    position in layer 0 only (fails the layer criterion). Everything else small."""
    sites = [Site(f"layers.{l}.{k}", k, l, ()) for l in range(4) for k in ("attn_in", "attn_out", "ffn_in")]
    stats = OutlierStatistics(sites, hidden=10, criteria=OutlierCriteria())
    g = torch.Generator().manual_seed(0)
    for _ in range(2):
        stats.begin(tokens=50, sequences=1)
        for i, site in enumerate(sites):
            x = torch.rand(50, 10, generator=g) * 2 - 1
            if site.layer >= 1:
                x[:10, 3] = torch.linspace(8, 12, 10)
            if site.layer == 0 and site.kind == "ffn_in":
                x[0, 7] = -9
            stats.observe(i, x)
        stats.end()
    return stats


def test_outlier_criteria_on_planted_features(tmp_path):
    stats = _stats_with_planted_outlier()
    s = stats.summary()
    assert [o["dim"] for o in s["outliers"]] == [3]
    o = s["outliers"][0]
    assert o["fraction_of_layers"] == 0.75 and o["layers"] == [1, 2, 3]
    assert o["fraction_of_positions"] == pytest.approx(0.2)
    assert o["count"] == 2 * 9 * 10 and o["count_per_sequence"] == 90
    assert o["one_sided"] and o["positive_fraction"] == 1.0
    values = torch.linspace(8, 12, 10).double().repeat(2 * 9)  # every value, as recorded
    q = torch.quantile(values, torch.tensor([0.25, 0.5, 0.75]).double())
    assert o["magnitude_quartiles"] == pytest.approx(q.tolist(), rel=1e-6)
    t = s["totals"]
    assert t["outlier_dims"] == 1 and t["dims_with_any_value_ge_magnitude"] == 2
    assert t["outliers_per_sequence"] == 90
    assert t["values_ge_magnitude_per_sequence"] == 91  # + the -9, once per sequence
    assert t["fraction_of_layers_affected"] == 0.75
    assert t["regular_dims_fraction_within_3.5"] == pytest.approx(1 - 2 / (2 * 12 * 50 * 9))
    # stricter criteria drop it
    stats.criteria = OutlierCriteria(min_layers=0.8)
    assert stats.summary()["outliers"] == []
    png = plot_outliers(stats, s, tmp_path / "o.png")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_criteria_validation():
    with pytest.raises(ValueError, match="min_layers"):
        OutlierCriteria(min_layers=1.5)
    with pytest.raises(ValueError, match="magnitude"):
        OutlierCriteria(magnitude=0)


# --- the real model -------------------------------------------------------------------------------


@pytest.mark.slow
def test_smollm2_outliers_and_ablation(smollm2, wikitext_path):
    from llm_int8.evaluation import read_text, tokenize_text

    model, tokenizer = smollm2
    sites = find_sites(model)
    assert len(sites) == 30 * 3 and [n.rsplit(".", 1)[-1] for n, _ in sites[2].modules] == ["gate_proj", "up_proj"]
    ids = tokenize_text(tokenizer, read_text(wikitext_path), max_tokens=256)

    # transformers installs its own output-recording hooks on attention modules; count ours only
    def site_hooks():
        return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for s in sites for _, m in s.modules)

    before = site_hooks()
    stats = find_outlier_features(model, ids, sites, window=256)
    assert site_hooks() == before
    dims = [o["dim"] for o in stats.summary()["outliers"]]
    assert dims, "SmolLM2-135M has an outlier feature dim"
    implementation = model.config._attn_implementation
    ab = ablate_outliers(model, ids[:128], sites, dims, hidden=stats.hidden, window=128, random_draws=1)
    assert site_hooks() == before
    assert model.config._attn_implementation == implementation  # eager only during the measurement
    assert 0 < ab["baseline"]["mean_top1_attention"] <= 1
    out, rnd = ab["outlier_dims_zeroed"], ab["random_dims_zeroed"][0]
    assert out["perplexity_change_pct"] > 10 * abs(rnd["perplexity_change_pct"])
    assert out["top1_attention_change_points"] < rnd["top1_attention_change_points"]
    assert not set(rnd["dims"]) & set(dims)
