"""Weight loaders of the vLLM method: each checkpoint tensor becomes int8 as it is loaded.

vLLM's model code hands every checkpoint tensor to the ``weight_loader`` of the parameter it names,
with the shard id of a fused layer (``"q"``, ``"k"``, ``"v"`` of ``qkv_proj``, 0 / 1 of ``gate_up_proj``).
A float ``weight`` is quantized here whole, one absmax scale per output row, as
``Int8Linear.from_linear`` does it; the layer's own loader then cuts this rank's rows (column-parallel)
or columns (row-parallel) out of the codes, and its rows out of the scales. So no float copy of a layer
is ever kept, and every rank holds exactly the codes and scales of the unsharded layer: a row-parallel
rank's half of a row keeps the scale of the whole row.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ....primitives import rowwise_quantize
from ...huggingface.quantizer import is_placeholder

__all__ = ["checked_loader", "placeholder_loader", "quantizing_loader"]

Loader = Callable[..., None]
"""``loader(param, loaded_weight, *shard_id)``: vLLM's v1 weight-loader signature."""


def quantizing_loader(layer: torch.nn.Module, delegate: Loader) -> Loader:
    """The loader of a float checkpoint ``weight``: quantized, then sharded into ``weight_int8`` / ``weight_scale``."""

    def load(param: torch.Tensor, loaded_weight: torch.Tensor, *shard_id) -> None:
        if not loaded_weight.is_floating_point():
            raise ValueError(
                f"{layer.prefix}.weight: llm_int8 quantizes float checkpoints as they load, got {loaded_weight.dtype}; "
                "an int8 folder saved by llm_int8 names its format in config.json (format_version)"
            )
        # the float weight this engine would hold (its dtype), as Int8Linear.from_linear would get it
        W = loaded_weight.to(layer.params_dtype)  # (rows of this tensor, in_features)
        if not torch.isfinite(W).all():
            where = f"{layer.prefix}.weight{list(shard_id) or ''}"
            raise ValueError(f"{where}: cannot quantize a weight holding NaN or Inf")
        W_i8, s_w = rowwise_quantize(W, dim=-1)  # (rows, in) int8, (rows,) float32
        delegate(layer.weight_int8, W_i8, *shard_id)
        delegate(layer.weight_scale, s_w, *shard_id)

    return load


def checked_loader(layer: torch.nn.Module, name: str, delegate: Loader) -> Loader:
    """The loader of a stored ``weight_int8`` (int8) or ``weight_scale`` (float): a wrong dtype refused, never cast."""
    wants_int8 = name == "weight_int8"

    def load(param: torch.Tensor, loaded_weight: torch.Tensor, *shard_id) -> None:
        ok = loaded_weight.dtype == torch.int8 if wants_int8 else loaded_weight.is_floating_point()
        if not ok:
            what = "int8" if wants_int8 else "a float dtype"
            raise ValueError(f"{layer.prefix}.{name}: expected {what}, got {loaded_weight.dtype} (refusing to cast it)")
        delegate(param, loaded_weight, *shard_id)

    return load


def placeholder_loader(layer: torch.nn.Module) -> Loader:
    """The loader of an int8 layer's empty ``weight`` placeholder (format 2): nothing to load, a float one refused."""

    def load(param: torch.Tensor, loaded_weight: torch.Tensor, *shard_id) -> None:
        if not is_placeholder(loaded_weight.shape, loaded_weight.dtype):
            raise ValueError(
                f"{layer.prefix}.weight: the folder's quantization_config says its layers are int8, but it holds a "
                f"{loaded_weight.dtype} weight of shape {tuple(loaded_weight.shape)}; list the layer in "
                "modules_to_not_convert or save the folder again with llm_int8.save_pretrained"
            )

    return load
