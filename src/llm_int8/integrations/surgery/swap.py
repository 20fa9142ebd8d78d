"""Choosing which linear layers of a Hugging Face model become int8, and swapping them on ``meta``.

Shared by the streaming loader (``huggingface/pretrained.py``) and the transformers quantizer
(``huggingface/quantizer.py``): both build the model skeleton without memory, decide the float/int8 split
here, then fill in the weights.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import nn

from ...config import DEFAULT_ACTIVATION, DEFAULT_SKIP_MODULES, Int8Config
from ...nn import Int8Linear
from .convert import is_linear, set_submodule

__all__ = ["automatic_skip_modules", "int8_targets", "is_conv1d", "swap_linears_on_meta"]


def is_conv1d(module: nn.Module) -> bool:
    """transformers' ``Conv1D`` (GPT-2 family): a linear layer whose weight is stored (in, out)."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def automatic_skip_modules(model: nn.Module, output_layer: bool = True) -> list[str]:
    """Linear layers every conversion keeps in float: ``lm_head``, the output embedding (whatever
    its name), any layer whose weight is tied to another module, and ``_keep_in_fp32_modules``.

    ``output_layer=False`` leaves out the first two (bitsandbytes' ``llm_int8_skip_modules`` replaces
    them); tied layers stay float regardless, since quantizing one would untie or quantize its twin."""
    names = set(DEFAULT_SKIP_MODULES if output_layer else ())
    get_out = getattr(model, "get_output_embeddings", None)
    out = get_out() if get_out is not None and output_layer else None
    owners: dict[int, list[str]] = {}
    for name, module in model.named_modules():
        if out is not None and module is out:
            names.add(name)
        if is_linear(module):
            owners.setdefault(id(module.weight), []).append(name)
    for pname, param in model.named_parameters(remove_duplicate=False):
        # a linear weight that is also reachable under another module's name is tied
        owner = owners.get(id(param))
        if owner and pname.rpartition(".")[0] not in owner:
            names.update(owner)
    tied = getattr(model, "all_tied_weights_keys", None) or {}
    for target, source in dict(tied).items():
        names.update(k.removesuffix(".weight") for k in (target, source))
    names.update(getattr(model, "_keep_in_fp32_modules", None) or ())
    return sorted(n for n in names if n)


def int8_targets(model: nn.Module, skip_modules: Iterable[str]) -> tuple[list[str], list[str]]:
    """``(to_int8, kept_float)``: names of the linear layers that are converted and those that are not.

    ``skip_modules`` holds exact names or ``.``-suffixes (``"lm_head"`` matches ``model.lm_head``).
    """
    config = Int8Config(skip_modules=tuple(skip_modules))
    to_int8, kept = [], []
    for name, module in model.named_modules():
        if isinstance(module, Int8Linear):
            to_int8.append(name)
        elif is_linear(module):
            (kept if config.skips(name) else to_int8).append(name)
    return to_int8, kept


def swap_linears_on_meta(
    model: nn.Module,
    names: Iterable[str],
    threshold: float,
    bias_dtype: torch.dtype | None = None,
    activation: str = DEFAULT_ACTIVATION,
    float_dims: Mapping[str, Sequence[int]] | None = None,
    batch_invariant: bool = False,
) -> list[str]:
    """Replace each named ``nn.Linear`` / ``Conv1D`` with an ``Int8Linear`` on the meta device.

    ``float_dims`` (from the saved config) sizes the layers' float columns, so that the checkpoint's
    ``float_dims`` / ``float_weight`` tensors have a place to load into.

    Returns the names of the swapped layers that were ``Conv1D`` (their checkpoint weight is (in, out)).
    Layers that already are ``Int8Linear`` are left alone.
    """
    conv1d = []
    for name in names:
        old = model.get_submodule(name)
        if isinstance(old, Int8Linear):
            continue
        if is_conv1d(old):
            in_features, out_features = old.weight.shape
            conv1d.append(name)
        else:
            in_features, out_features = old.in_features, old.out_features
        has_bias = getattr(old, "bias", None) is not None
        dtype = bias_dtype or (old.bias.dtype if has_bias else None)
        new = Int8Linear(
            in_features,
            out_features,
            bias=has_bias,
            threshold=threshold,
            device="meta",
            dtype=dtype,
            activation=activation,
            float_dims=(float_dims or {}).get(name),
            batch_invariant=batch_invariant,
        )
        new.train(old.training)
        set_submodule(model, name, new)
    return conv1d
