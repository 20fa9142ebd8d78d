"""Calibrated outlier dims: which input dims of each linear layer keep their weight columns in float.

The decomposition of LLM.int8() finds outlier dims per call, but ``Int8Linear`` stores only the int8
weight, so their product runs against *dequantized* weight columns, and the rounding error of those
columns is multiplied by the largest activations of the model. The outlier dims are systematic
(the paper's Section 4; on SmolLM2-135M one dim holds them at 99.8% of positions), so one short
forward pass finds them: ``calibrate_outlier_dims`` records, for every linear layer, the input dims
that reach the threshold on at least ``min_fraction`` of the calibration tokens. Passed to
``quantize_model(..., float_dims=...)``, those dims are always computed in float, with their float
weight columns (``Int8Linear.float_dims`` / ``float_weight``); rarer outliers still take the dynamic
path. The cost is one float column per dim and layer.

Any text finds them; ``CALIBRATION_TEXT`` is a short default written for this library, so that no
evaluation text is used to calibrate.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from tqdm.auto import tqdm

__all__ = ["CALIBRATION_TEXT", "DEFAULT_MIN_FRACTION", "calibrate_outlier_dims", "calibration_ids"]

DEFAULT_MIN_FRACTION = 0.06
"""A dim is calibrated into the float part where it reaches the threshold on at least this fraction
of the calibration tokens: the paper's criterion of 6% of sequence positions."""

CALIBRATION_TEXT = """\
The river rises in the hills to the north of the town and runs south for about forty miles before it
reaches the sea. In the spring the water is high and fast, and the old stone bridge near the market has
been closed twice in the last ten years after floods. Most of the farms along its banks grow wheat and
barley, although a few have turned to fruit since the new road made it easier to reach the city.

A computer program is a list of instructions that a machine carries out one after another. Some
programs run for a fraction of a second; others, such as the software that controls a power station,
run for years without stopping. When a program fails, an engineer reads the log, forms a guess about
the cause, and tests it by changing one thing at a time until the fault can be reproduced.

She asked the librarian whether the book had been returned. "It came back this morning," he said,
"but someone has already reserved it. If you leave your name, I will call you when it is free."

In 1851 the Great Exhibition opened in London in a building made almost entirely of glass and iron.
More than six million people visited it in less than six months, and the profits paid for several of
the museums that still stand in South Kensington.

To make the sauce, melt two tablespoons of butter in a small pan, stir in the flour, and cook for one
minute. Add the milk slowly, whisking all the time, then season with salt, pepper and a little nutmeg.

The probability that two people in a room of twenty-three share a birthday is slightly more than one
half, a result that surprises most people because they compare each person only with themselves.
"""
"""The default calibration text: about 400 tokens of plain English on mixed topics."""


def calibration_ids(tokenizer, text: str = CALIBRATION_TEXT) -> torch.Tensor:
    """``text`` as a (1, T) tensor of token ids."""
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    if ids.numel() == 0:
        raise ValueError("the calibration text holds no tokens")
    return ids


def _linear_modules(model: nn.Module, skip: Iterable[str]) -> list[tuple[str, nn.Module]]:
    skip = tuple(skip)
    out = []
    for name, module in model.named_modules():
        is_linear = isinstance(module, nn.Linear) or (type(module).__name__ == "Conv1D" and hasattr(module, "nf"))
        if is_linear and not any(name == s or name.endswith("." + s) for s in skip):
            out.append((name, module))
    return out


@torch.no_grad()
def calibrate_outlier_dims(
    model: nn.Module,
    input_ids: torch.Tensor,
    threshold: float = 6.0,
    min_fraction: float = DEFAULT_MIN_FRACTION,
    skip_modules: Iterable[str] = ("lm_head",),
    progress: bool = False,
) -> dict[str, tuple[int, ...]]:
    """For every linear layer of the float ``model`` (not in ``skip_modules``): the input dims with
    ``|x| >= threshold`` on at least ``min_fraction`` of the tokens of ``input_ids`` ((batch, T) or
    (T,), run as one forward pass per row). Layers without such dims are left out of the result.

    Returns ``{module name: sorted dims}``, the ``float_dims`` argument of ``quantize_model``.
    """
    if not threshold > 0:
        raise ValueError(f"threshold must be > 0, got {threshold}")
    if not 0 < min_fraction <= 1:
        raise ValueError(f"min_fraction must be in (0, 1], got {min_fraction}")
    ids = input_ids if input_ids.dim() == 2 else input_ids[None]
    if ids.dim() != 2 or ids.numel() == 0:
        raise ValueError(f"input_ids must be a non-empty (batch, T) or (T,) tensor, got shape {tuple(input_ids.shape)}")
    modules = _linear_modules(model, skip_modules)
    if not modules:
        raise ValueError("the model has no float linear layer to calibrate (already converted?)")
    counts: dict[str, torch.Tensor] = {}
    tokens = 0

    def record(name):
        def hook(module, args):
            x = args[0].detach()
            hits = ~(x.abs() < threshold)  # NaN counts, as in the decomposition
            c = hits.reshape(-1, x.shape[-1]).sum(dim=0)
            counts[name] = c if name not in counts else counts[name] + c

        return hook

    handles = [m.register_forward_pre_hook(record(n)) for n, m in modules]
    try:
        device = next(model.parameters()).device
        for row in tqdm(ids, desc="calibrating outlier dims", unit="seq", disable=not progress):
            model(row[None].to(device))
            tokens += row.numel()
    finally:
        for h in handles:
            h.remove()
    need = min_fraction * tokens
    out = {}
    for name, c in counts.items():
        dims = (c >= need).nonzero().squeeze(1).tolist()
        if dims:
            out[name] = tuple(dims)
    return out
