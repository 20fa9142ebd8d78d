"""Where a method loses accuracy: per-layer output error on the float model's own activations, the
token that carries each layer's largest error, and which layers carry a prompt's error end to end
(``float_swap_in``: the converted model with groups of layers put back to float).

Each linear layer of the float model sees its real input ``X`` (one forward pass over the given
tokens); the layer is converted with each method and its output compared with the float output
``Y = X W^T + b``: relative error ``||Y_q - Y|| / ||Y||`` and, for decomposition methods, the
number of outlier columns ``|O|`` at the threshold. Layers are not chained, so an error is the
layer's own, not accumulated.
"""

from __future__ import annotations

import torch
from torch import nn

from ..primitives import outlier_columns
from .methods import MethodSpec, apply_method, parse_methods

__all__ = ["float_swap_in", "layer_errors", "layer_groups", "token_errors"]


@torch.no_grad()
def layer_errors(
    model: nn.Module, input_ids: torch.Tensor, methods: str | list[str], threshold: float = 6.0
) -> list[dict]:
    """One row per linear layer (not ``lm_head``): ``{"layer", "outlier_columns", "<method>": rel. error}``.

    ``input_ids``: (tokens,) or (batch, tokens), run once through ``model``.
    """
    specs: list[MethodSpec] = parse_methods(methods)
    inputs: dict[str, torch.Tensor] = {}
    handles = []
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and not n.endswith("lm_head")]
    try:
        for name in names:
            module = model.get_submodule(name)
            handles.append(
                module.register_forward_pre_hook(lambda mod, args, n=name: inputs.__setitem__(n, args[0].detach()))
            )
        ids = input_ids if input_ids.dim() == 2 else input_ids[None]
        model(ids.to(next(model.parameters()).device))
    finally:
        for h in handles:
            h.remove()
    converted = {s.name: apply_method(model, s, calibration_ids=ids) for s in specs}  # calibrated: on these ids
    rows = []
    for name in names:
        X = inputs[name]
        Y = model.get_submodule(name)(X).double()
        row: dict = {
            "layer": name,
            "outlier_columns": int(outlier_columns(X.reshape(-1, X.shape[-1]), threshold).sum()),
        }
        for s in specs:
            Yq = converted[s.name].get_submodule(name)(X).double()
            row[s.name] = ((Yq - Y).norm() / Y.norm()).item()
        rows.append(row)
    return rows


def _linear_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and not n.endswith("lm_head")]


def _last_logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    return model(ids).logits[0, -1].double()  # (vocab,)


def _distance(ref: torch.Tensor, other: torch.Tensor) -> dict:
    logp, logq = torch.log_softmax(ref, -1), torch.log_softmax(other, -1)
    c_ref, c_other = ref - ref.mean(), other - other.mean()
    return {
        "logits_rel_error": ((other - ref).norm() / ref.norm()).item(),
        "logits_rel_error_centred": ((c_other - c_ref).norm() / c_ref.norm()).item(),
        "kl": (logp.exp() * (logp - logq)).sum().clamp_min(0).item(),
    }


@torch.no_grad()
def float_swap_in(
    model: nn.Module, converted: nn.Module, input_ids: torch.Tensor, groups: dict[str, list[str]]
) -> list[dict]:
    """How much of ``converted``'s error at the last position each group of layers carries.

    For each ``groups`` entry (a name and the layer names in it), ``converted`` runs with those
    layers put back to ``model``'s float layers; the row holds its last-position logits error and
    KL against ``model`` (``"none"``: nothing put back). ``converted`` is restored afterwards.
    ``input_ids``: (1, tokens).
    """
    ref = _last_logits(model, input_ids)
    rows = [{"group": "none", "layers": 0, **_distance(ref, _last_logits(converted, input_ids))}]
    for group, names in groups.items():
        saved = {n: converted.get_submodule(n) for n in names}
        try:
            for n in names:
                parent, _, child = n.rpartition(".")
                setattr(converted.get_submodule(parent), child, model.get_submodule(n))
            rows.append({"group": group, "layers": len(names), **_distance(ref, _last_logits(converted, input_ids))})
        finally:
            for n, layer in saved.items():
                parent, _, child = n.rpartition(".")
                setattr(converted.get_submodule(parent), child, layer)
    return rows


def layer_groups(model: nn.Module) -> dict[str, list[str]]:
    """Linear layers grouped by type (``type:v_proj``, ...) and by block (``block:7``: its layers)."""
    groups: dict[str, list[str]] = {}
    for n in _linear_names(model):
        groups.setdefault(f"type:{n.rsplit('.', 1)[-1]}", []).append(n)
        block = next((p for p in n.split(".") if p.isdigit()), None)
        if block is not None:
            groups.setdefault(f"block:{block}", []).append(n)
    return groups


@torch.no_grad()
def token_errors(model: nn.Module, converted: nn.Module, input_ids: torch.Tensor, threshold: float = 6.0) -> list[dict]:
    """Per linear layer, on the float model's own inputs: the token whose output error is largest.

    Row: ``layer``, ``token`` (position), ``error`` (``||y_q - y|| / ||y||`` of that token's
    output), ``median_error`` over tokens, and the token's input row: ``absmax`` and ``mean_abs``
    (outside the ``|x| >= threshold`` columns, which the decomposition takes in float).
    """
    inputs: dict[str, torch.Tensor] = {}
    names = _linear_names(model)
    hooks = [
        model.get_submodule(n).register_forward_pre_hook(lambda m, a, n=n: inputs.__setitem__(n, a[0].detach()))
        for n in names
    ]
    try:
        model(input_ids)
    finally:
        for h in hooks:
            h.remove()
    rows = []
    for n in names:
        X = inputs[n].reshape(-1, inputs[n].shape[-1])  # (tokens, in_features)
        Y = model.get_submodule(n)(X).double()
        err = (converted.get_submodule(n)(X).double() - Y).norm(dim=-1) / Y.norm(dim=-1).clamp_min(1e-30)
        t = int(err.argmax())
        row = X[t].masked_fill(X[t].abs() >= threshold, 0).abs()
        rows.append(
            {
                "layer": n,
                "token": t,
                "error": err[t].item(),
                "median_error": err.median().item(),
                "absmax": row.max().item(),
                "mean_abs": row.mean().item(),
            }
        )
    return rows
