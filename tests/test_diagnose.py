"""Attribution of a converted model's error: layers put back to float, and the worst token per layer."""

from __future__ import annotations

import copy

from _hf_tiny import input_ids, tiny_model

from llm_int8 import quantize_model
from llm_int8.evaluation.diagnose import float_swap_in, layer_groups, token_errors


def test_layer_groups_by_type_and_block():
    groups = layer_groups(tiny_model("llama"))
    assert len(groups["type:v_proj"]) == 2 and groups["type:v_proj"][0] == "model.layers.0.self_attn.v_proj"
    assert len(groups["block:1"]) == 7 and all(".layers.1." in n for n in groups["block:1"])
    assert not any("lm_head" in n for names in groups.values() for n in names)


def test_float_swap_in_puts_layers_back_and_restores_them():
    model = tiny_model("llama")
    converted = quantize_model(copy.deepcopy(model), threshold=0.0)  # pure int8: every layer errs
    ids = input_ids()[:1]
    before = [type(m).__name__ for m in converted.modules()]
    groups = layer_groups(model)
    every = [n for g, names in groups.items() if g.startswith("type:") for n in names]
    rows = {r["group"]: r for r in float_swap_in(model, converted, ids, {**groups, "all": every})}
    assert [type(m).__name__ for m in converted.modules()] == before  # restored
    assert rows["none"]["logits_rel_error"] > 0 and rows["none"]["kl"] > 0
    assert rows["all"]["logits_rel_error"] == 0 and rows["all"]["kl"] == 0  # every layer float: fp32 itself
    assert all(r["logits_rel_error"] <= rows["none"]["logits_rel_error"] * 1.5 for r in rows.values())


def test_token_errors_name_each_layers_worst_token():
    model = tiny_model("llama")
    converted = quantize_model(copy.deepcopy(model))
    ids = input_ids()[:1]
    rows = token_errors(model, converted, ids)
    assert len(rows) == 2 * 7
    assert all(0 <= r["token"] < ids.shape[1] and r["error"] >= r["median_error"] >= 0 for r in rows)
    assert all(r["absmax"] >= r["mean_abs"] > 0 for r in rows)
