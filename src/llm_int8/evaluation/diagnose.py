"""Where a method loses accuracy: per-layer output error on the float model's own activations.

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

__all__ = ["layer_errors"]


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
