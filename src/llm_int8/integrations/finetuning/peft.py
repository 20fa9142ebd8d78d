"""peft LoRA and DoRA on ``Int8Linear`` layers, installed into peft by ``import llm_int8``.

``Int8LoraLinear`` is peft's own LoRA ``Linear`` over a frozen ``Int8Linear``: the forward pass, the
adapter bookkeeping, dropout, scaling, mixed-adapter batches and DoRA's forward are peft's, since
they only call ``base_layer(x)`` and read ``base_layer.weight`` (which ``Int8Linear`` provides,
dequantized). What differs is merging: peft adds the update into ``base_layer.weight.data`` in place,
which an int8 layer cannot hold, so ``merge`` dequantizes, adds the update in float32 and quantizes
the result again (row-wise absmax, as ``Int8Linear.from_linear``), as peft does for bitsandbytes'
8-bit layers. Merged weights therefore carry one extra int8 rounding; ``unmerge`` is exact only up to
it. To merge into float instead, dequantize the base first: ``model.dequantize()`` (or
``llm_int8.integrations.surgery.convert.dequantize_model``) turns the base layers into ``nn.Linear`` and
``merge`` then runs peft's float merge.

How it reaches peft: peft picks a LoRA layer class through ``LoraConfig._register_custom_module``
(its documented hook for layer types it does not know). ``install()`` wraps
``LoraModel._create_new_module`` so that every LoRA config (the user's, or one
``PeftModel.from_pretrained`` reads from an adapter folder) has ``Int8Linear -> Int8LoraLinear``
registered before peft dispatches; a mapping the user registered for ``Int8Linear`` is kept.
``llm_int8.integrations.finetuning.peft_hook`` calls ``install()`` once peft is imported; this module imports peft
and is never imported by ``llm_int8`` itself, so peft stays optional.
"""

from __future__ import annotations

import warnings

import torch
from peft.tuners.lora.layer import Linear as LoraLinear
from peft.tuners.lora.model import LoraModel
from peft.tuners.lora.variants import DoraLinearVariant
from peft.tuners.tuners_utils import check_adapters_to_merge

from ...nn import Int8Linear
from ...primitives import rowwise_quantize

__all__ = ["Int8LoraLinear", "install"]

_PLAIN_INITS = (True, False, "gaussian")
"""LoRA initialisations that leave the base weight alone; the others (PiSSA, OLoRA, LoftQ, ...)
rewrite it in float, which an int8 layer cannot take in place."""


class Int8LoraLinear(LoraLinear):
    """LoRA (``use_dora=False``) or DoRA (``use_dora=True``) adapters on a frozen ``Int8Linear``:
    ``y = Int8Linear(x) + B A dropout(x) * scaling`` (DoRA: rescaled per output row by its magnitude)."""

    def __init__(self, base_layer, adapter_name: str, config, r: int = 0, lora_alpha: int = 1, **kwargs) -> None:
        if config.init_lora_weights not in _PLAIN_INITS:
            raise ValueError(
                f"init_lora_weights={config.init_lora_weights!r} rewrites the base weight, which is int8 here; "
                f"use one of {_PLAIN_INITS}, or dequantize the model first (model.dequantize())"
            )
        if config.fan_in_fan_out:
            raise ValueError("fan_in_fan_out=True does not apply: Int8Linear stores its weight (out, in)")
        super().__init__(base_layer, adapter_name, config=config, r=r, lora_alpha=lora_alpha, **kwargs)

    @property
    def lora_variants(self):
        # plain LoRA and DoRA; peft names any other variant an "unsupported variant combination"
        return {(): None, ("use_dora",): DoraLinearVariant}

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """Fold the adapters into the base layer: dequantize, add in float32, quantize again.

        Always checks the merged weight for NaN / Inf (``safe_merge`` is implied: the new weight is
        built in a copy anyway). A base layer that is no longer int8 merges as in peft."""
        base = self.get_base_layer()
        if not isinstance(base, Int8Linear):
            return super().merge(safe_merge=safe_merge, adapter_names=adapter_names)
        for name in check_adapters_to_merge(self, adapter_names):
            if name not in self.lora_A:
                continue
            W = base.dequantized_weight(torch.float32)  # (out, in)
            if name in self.lora_variant:  # DoRA: W' = m / ||W + dW|| * (W + dW), its own formula
                W = self.lora_variant[name].merge_safe(self, name, W).float()
            else:
                W = W + self.get_delta_weight(name).float()
            bias = base.bias
            if self.lora_bias[name]:
                if bias is None:
                    raise RuntimeError("cannot merge lora_bias=True into a base layer without a bias")
                bias = bias + self.lora_B[name].bias * self.scaling[name]
            _set_weight(base, W, bias, adapter=name)
            self.merged_adapters.append(name)

    def unmerge(self) -> None:
        """Take the merged adapters out again (dequantize, subtract, quantize): exact up to the int8
        rounding each merge and unmerge adds."""
        base = self.get_base_layer()
        if not isinstance(base, Int8Linear):
            return super().unmerge()
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            if name not in self.lora_A:
                continue
            W = base.dequantized_weight(torch.float32)  # (out, in)
            if name in self.lora_variant:
                W = self.lora_variant[name].unmerge(self, name, W).float()
            else:
                W = W - self.get_delta_weight(name).float()
            bias = base.bias
            if self.lora_bias[name]:
                bias = bias - self.lora_B[name].bias * self.scaling[name]
            _set_weight(base, W, bias, adapter=name)

    def __repr__(self) -> str:
        return "lora." + super(LoraLinear, self).__repr__()


def _set_weight(layer: Int8Linear, W: torch.Tensor, bias: torch.Tensor | None, adapter: str) -> None:
    """Quantize the float32 (out, in) ``W`` into ``layer``'s int8 codes and scales (its float columns,
    if any, take their columns of ``W`` exactly), and set its bias. New tensors, so the layer's packed
    caches see a different weight and rebuild."""
    if not torch.isfinite(W).all():
        raise ValueError(f"merging adapter {adapter!r} gives NaN or Inf weights; the adapter is broken")
    with torch.no_grad():
        if layer.float_dims is not None:
            layer.float_weight = W[:, layer.float_dims].to(layer.float_weight.dtype)
            W = W.index_fill(1, layer.float_dims, 0)  # codes 0, and out of the row absmax
        W_i8, s_w = rowwise_quantize(W, dim=-1)  # (out, in) int8, (out,) float32
        layer.weight_int8 = W_i8.to(layer.weight_int8.device)
        layer.weight_scale = s_w.to(layer.weight_scale.device)
        if bias is not None:
            layer.bias = torch.nn.Parameter(bias.detach().to(layer.bias.dtype), requires_grad=False)


def install() -> None:
    """Make peft build ``Int8LoraLinear`` for ``Int8Linear`` targets (idempotent; see the module docstring)."""
    create = LoraModel._create_new_module
    if getattr(create, "_llm_int8", False):
        return

    def _create_new_module(lora_config, adapter_name, target, **kwargs):
        if Int8Linear not in (lora_config._custom_modules or {}):
            lora_config._register_custom_module({Int8Linear: Int8LoraLinear})
        return create(lora_config, adapter_name, target, **kwargs)

    _create_new_module._llm_int8 = True
    LoraModel._create_new_module = staticmethod(_create_new_module)
    # peft warns "Unsupported layer type ... proceed at your own risk" for every layer type it has no
    # branch for when reading in/out features, registered custom layers included; this one is supported
    warnings.filterwarnings("ignore", message=r"Unsupported layer type '<class 'llm_int8\.nn\.linear\.Int8Linear'>'")
