"""transformers-native LLM.int8(): ``LLMInt8Config`` and the ``HfQuantizer`` behind it.

Registered with transformers under ``quant_method="llm_int8"`` when ``llm_int8`` is imported, so

* ``AutoModelForCausalLM.from_pretrained(path, quantization_config=LLMInt8Config(threshold=6.0))``
  quantizes a float checkpoint while transformers loads it, one weight at a time, and
* ``AutoModelForCausalLM.from_pretrained(saved_int8_dir)`` reloads a checkpoint saved by this library
  (its ``config.json`` carries the ``quantization_config``) without any float weights.

Hooks used (transformers 5): ``preprocess_model`` swaps layers on the meta device before loading
(pre-quantized checkpoints); ``param_needs_quantization`` + ``get_quantize_ops`` quantize a float
``weight`` as it is materialised (float checkpoints), replacing the meta ``nn.Linear`` by an
``Int8Linear`` that receives ``weight_int8`` / ``weight_scale``.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import torch
from transformers.core_model_loading import ConversionOps
from transformers.quantizers.auto import (
    AUTO_QUANTIZATION_CONFIG_MAPPING,
    AUTO_QUANTIZER_MAPPING,
    register_quantization_config,
    register_quantizer,
)
from transformers.quantizers.base import HfQuantizer
from transformers.utils.quantization_config import QuantizationConfigMixin

from ...config import DEFAULT_ACTIVATION, DEFAULT_THRESHOLD, Int8Config
from ...nn import Int8Linear
from ...primitives import rowwise_quantize
from ..surgery.convert import dequantize_model, is_linear, set_submodule
from ..surgery.swap import automatic_skip_modules, int8_targets, is_conv1d, swap_linears_on_meta

__all__ = [
    "BITSANDBYTES_ALIASES",
    "FORMAT_VERSION",
    "PLACEHOLDER",
    "QUANT_METHOD",
    "is_placeholder",
    "with_placeholders",
    "LLMInt8Config",
    "LLMInt8HfQuantizer",
]

logger = logging.getLogger(__name__)

QUANT_METHOD = "llm_int8"
FORMAT_VERSION = 2
"""Version of the on-disk layout: per int8 layer ``weight_int8`` (out, in) int8 and ``weight_scale``
(out,) float32 = row absmax / 127, plus ``bias``; layers in ``modules_to_not_convert`` stay float.
Version 2 adds the ``PLACEHOLDER`` ``weight`` of each int8 layer; version 1 folders load as before."""

PLACEHOLDER = torch.zeros(0, dtype=torch.int8)
"""Written as each int8 layer's ``<layer>.weight``: an empty tensor where a float model expects an
(out, in) weight. transformers without ``llm_int8`` does not know ``quant_method="llm_int8"``, skips
the quantization config with a warning and would otherwise fill the missing ``weight`` tensors with
random values; with this placeholder it stops with a size-mismatch error instead (loudly, as a
shared folder must never load as garbage). This library skips it on load."""


_NO_DISK_ON_THE_FLY = (
    "transformers offloads a disk-placed weight before the quantizer sees it, so quantizing while "
    "loading cannot offload to disk: use llm_int8.from_pretrained(path, device_map=..., "
    "offload_folder=...), or save the int8 model first and load that folder with offload_buffers=True"
)


class LLMInt8Config(QuantizationConfigMixin):
    """Quantization config for LLM.int8(), usable as transformers' ``quantization_config``.

    ``threshold``: outlier threshold α. ``activation``: ``"absmax"`` or ``"zeropoint"`` per-token
    activation codes (``Int8Config.activation``). ``skip_modules``: the user's extra layer names (or name
    suffixes) to keep in float, added to the automatic list (``lm_head``, tied output embeddings).
    ``modules_to_not_convert``: the resolved list of float linear layers, filled in when a model is
    quantized and saved with it, so a reload rebuilds exactly the same split.
    ``float_dims``: ``{layer: input dims}`` whose weight columns are stored in float
    (``Int8Linear.float_dims``; ``quantize_model(float_dims=...)``), filled in when such a model is
    saved, so a reload sizes those layers' ``float_weight``. Given for a float checkpoint, the
    named layers keep those columns in float as they are quantized.
    ``batch_invariant``: the layers run in the batch-invariant mode (``Int8Linear.batch_invariant``).
    ``format_version``: checked on load; a newer format than this library knows is an error.
    """

    def __init__(
        self,
        threshold: float = DEFAULT_THRESHOLD,
        skip_modules: list[str] | tuple[str, ...] | None = None,
        modules_to_not_convert: list[str] | None = None,
        format_version: int = FORMAT_VERSION,
        activation: str = DEFAULT_ACTIVATION,
        float_dims: dict[str, list[int]] | None = None,
        skip_output_layer: bool = True,
        fp32_cpu_offload: bool = False,
        batch_invariant: bool = False,
        **kwargs: Any,
    ) -> None:
        kwargs.pop("quant_method", None)
        threshold, skip_modules, skip_output_layer, fp32_cpu_offload = _bitsandbytes_aliases(
            kwargs, threshold, skip_modules, skip_output_layer, fp32_cpu_offload
        )
        if kwargs:
            raise TypeError(f"LLMInt8Config got unknown arguments {sorted(kwargs)}")
        # a single name is a one-element list, never its characters (list("lm_head") = ['l', 'm', ...])
        skip_modules = _name_list("skip_modules", skip_modules)
        modules_to_not_convert = _name_list("modules_to_not_convert", modules_to_not_convert)
        if skip_modules is not None and not skip_modules:
            skip_modules = None
        # validates threshold and names the same way as quantize_model
        checked = Int8Config(
            threshold=threshold,
            skip_modules=tuple(skip_modules or ("lm_head",)),
            activation=activation,
            batch_invariant=batch_invariant,
        )
        if not isinstance(format_version, int) or format_version < 1:
            raise ValueError(f"format_version must be a positive int, got {format_version!r}")
        if format_version > FORMAT_VERSION:
            raise ValueError(
                f"this checkpoint uses llm_int8 format version {format_version}, but this llm_int8 reads up to "
                f"version {FORMAT_VERSION}: upgrade llm-int8"
            )
        for name, flag in (("skip_output_layer", skip_output_layer), ("fp32_cpu_offload", fp32_cpu_offload)):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be a bool, got {flag!r}")
        self.quant_method = QUANT_METHOD
        self.threshold = checked.threshold
        self.activation = checked.activation
        self.batch_invariant = checked.batch_invariant
        self.skip_modules = list(skip_modules) if skip_modules is not None else None
        self.modules_to_not_convert = list(modules_to_not_convert) if modules_to_not_convert is not None else None
        self.format_version = format_version
        self.float_dims = _checked_float_dims(float_dims)
        self.skip_output_layer = skip_output_layer
        self.fp32_cpu_offload = fp32_cpu_offload

    def to_dict(self) -> dict[str, Any]:
        return {
            "quant_method": QUANT_METHOD,
            "threshold": self.threshold,
            "activation": self.activation,
            "skip_modules": self.skip_modules,
            "modules_to_not_convert": self.modules_to_not_convert,
            "format_version": self.format_version,
            **({"float_dims": self.float_dims} if self.float_dims else {}),
            **({"skip_output_layer": False} if not self.skip_output_layer else {}),
            **({"fp32_cpu_offload": True} if self.fp32_cpu_offload else {}),
            **({"batch_invariant": True} if self.batch_invariant else {}),
        }


def _name_list(what: str, names) -> list[str] | None:
    """``names`` (``None``, a str, or an iterable of str) as a list of module names."""
    if names is None:
        return None
    if isinstance(names, str):
        names = [names]
    names = list(names)
    for name in names:
        if not isinstance(name, str) or not name:
            raise ValueError(f"{what} must hold non-empty module names, got {name!r}")
    return names


BITSANDBYTES_ALIASES = {
    "llm_int8_threshold": "threshold",
    "llm_int8_skip_modules": "skip_modules (replacing the default lm_head skip: skip_output_layer=False)",
    "llm_int8_enable_fp32_cpu_offload": "fp32_cpu_offload",
    "llm_int8_has_fp16_weight": "(False only: Int8Linear keeps no float weight)",
}
"""``BitsAndBytesConfig`` option names ``LLMInt8Config`` accepts, and what each becomes."""


def _bitsandbytes_aliases(kwargs: dict, threshold, skip_modules, skip_output_layer, fp32_cpu_offload):
    """Take ``BitsAndBytesConfig``'s 8-bit option names out of ``kwargs``, with bitsandbytes' meaning.

    ``llm_int8_skip_modules`` *replaces* transformers' default skip list (the output layer) in
    bitsandbytes (``get_modules_to_not_convert`` adds the defaults only without a list), so here it
    sets ``skip_modules`` and ``skip_output_layer=False``. Giving an option under both names is an error.
    """
    kwargs.pop("load_in_8bit", None)  # what BitsAndBytesConfig needs to mean 8-bit; implied here

    def take(alias: str, name: str, value, default):
        if alias not in kwargs:
            return value
        given = kwargs.pop(alias)
        if value != default:
            raise TypeError(f"LLMInt8Config got both {name}={value!r} and its bitsandbytes alias {alias}={given!r}")
        return given

    threshold = take("llm_int8_threshold", "threshold", threshold, DEFAULT_THRESHOLD)
    if "llm_int8_skip_modules" in kwargs:
        skip_modules = take("llm_int8_skip_modules", "skip_modules", skip_modules, None)
        skip_output_layer = False
    fp32_cpu_offload = take("llm_int8_enable_fp32_cpu_offload", "fp32_cpu_offload", fp32_cpu_offload, False)
    if kwargs.pop("llm_int8_has_fp16_weight", False):
        raise ValueError(
            "llm_int8_has_fp16_weight=True (training the full weight in 16 bits) is not supported: Int8Linear holds "
            "no float weight. Train adapters on the int8 model with peft (LoRA / DoRA) instead."
        )
    return threshold, skip_modules, skip_output_layer, fp32_cpu_offload


def _checked_float_dims(float_dims) -> dict[str, list[int]] | None:
    if not float_dims:
        return None
    if not isinstance(float_dims, dict):
        raise TypeError(f"float_dims must map layer names to lists of input dims, got {type(float_dims).__name__}")
    out = {}
    for name, dims in float_dims.items():
        if not isinstance(name, str) or not isinstance(dims, (list, tuple)):
            raise TypeError(f"float_dims: {name!r} -> {dims!r} is not a layer name and a list of dims")
        if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in dims):
            raise ValueError(f"float_dims of {name!r} must be non-negative ints, got {dims!r}")
        out[name] = sorted(dims)
    return out


def with_placeholders(model, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with a ``PLACEHOLDER`` under ``<layer>.weight`` for each ``Int8Linear`` of ``model``."""
    out = dict(state)
    for name, module in model.named_modules():
        if isinstance(module, Int8Linear):
            out[f"{name}.weight"] = PLACEHOLDER
    return out


def is_placeholder(shape, dtype: torch.dtype) -> bool:
    """Whether a checkpoint tensor of ``shape`` / ``dtype`` is an int8 layer's ``PLACEHOLDER``."""
    return tuple(shape) == tuple(PLACEHOLDER.shape) and dtype == PLACEHOLDER.dtype


def _linears_under(model, prefixes: list[str]) -> list[str]:
    """Names of the linear layers at or below any of the module names ``prefixes`` (``""`` = all)."""
    names = [n for n, m in model.named_modules() if is_linear(m)]
    return [n for n in names if any(p == "" or n == p or n.startswith(p + ".") for p in prefixes)]


def _mark_initialized(model, layers) -> None:
    """Keep transformers' init of missing weights off int8 layers and their parents: some models' init
    writes into a child's float ``weight`` from the parent (GPT-2 rescales ``c_proj.weight``), which
    an ``Int8Linear`` does not have; its codes come from the checkpoint, never from an init."""
    for layer in layers:
        parent = layer.rpartition(".")[0]
        for name in (layer, parent):
            (model.get_submodule(name) if name else model)._is_hf_initialized = True


class _QuantizeOnLoad(ConversionOps):
    """Turns the float ``<layer>.weight`` that transformers just materialised into an ``Int8Linear``."""

    def __init__(self, hf_quantizer: LLMInt8HfQuantizer) -> None:
        self.hf_quantizer = hf_quantizer

    def convert(self, input_dict, source_patterns=None, target_patterns=None, **kwargs):
        model = kwargs["model"]
        missing_keys = kwargs.get("missing_keys")
        out = {}
        for key, value in input_dict.items():
            value = value[0] if isinstance(value, list) else value
            layer = key.removesuffix(".weight")
            old = model.get_submodule(layer)
            W = value.T if is_conv1d(old) else value  # (out, in)
            if not torch.isfinite(W).all():
                raise ValueError(f"{key}: the checkpoint weight holds NaN or Inf values; cannot quantize it")
            dims = (self.hf_quantizer.quantization_config.float_dims or {}).get(layer)
            if dims:  # those columns stay float, out of the int8 codes and the row absmax
                out[f"{layer}.float_dims"] = torch.tensor(dims, dtype=torch.int64)
                out[f"{layer}.float_weight"] = W[:, dims].clone()
                W = W.index_fill(1, out[f"{layer}.float_dims"].to(W.device), 0)
            W_i8, s_w = rowwise_quantize(W, dim=-1)  # (out, in) int8, (out,) float32
            bias = getattr(old, "bias", None)
            new = Int8Linear(
                W.shape[1],
                W.shape[0],
                bias=bias is not None,
                threshold=self.hf_quantizer.quantization_config.threshold,
                device="meta",
                activation=self.hf_quantizer.quantization_config.activation,
                float_dims=dims,
                batch_invariant=self.hf_quantizer.quantization_config.batch_invariant,
            )
            if bias is not None:
                new.bias = bias  # already loaded (keys arrive sorted, bias first) or filled in later
            new.train(old.training)
            set_submodule(model, layer, new)
            _mark_initialized(model, [layer])
            if missing_keys is not None:
                missing_keys.discard(key)
            out[f"{layer}.weight_int8"] = W_i8
            out[f"{layer}.weight_scale"] = s_w
        return out


class LLMInt8HfQuantizer(HfQuantizer):
    """transformers' loader hooks for LLM.int8() (see the module docstring)."""

    requires_calibration = False
    quantization_config: LLMInt8Config

    def __init__(self, quantization_config: LLMInt8Config, **kwargs: Any) -> None:
        super().__init__(quantization_config, **kwargs)
        self._targets: set[str] = set()

    @property
    def quantized_element_size(self) -> float:
        return 1  # int8 codes; lets accelerate's device maps count int8 bytes, not float

    def validate_environment(self, device_map=None, **kwargs) -> None:
        if not self.pre_quantized and isinstance(device_map, dict) and "disk" in device_map.values():
            raise ValueError(_NO_DISK_ON_THE_FLY)

    def update_dtype(self, dtype: torch.dtype) -> torch.dtype:
        return dtype  # compute in the checkpoint's / user's dtype: a bf16 model stays bf16

    def _process_model_before_weight_loading(self, model, device_map=None, **kwargs):
        cfg = self.quantization_config
        if self.pre_quantized and cfg.modules_to_not_convert is not None:
            skip = list(cfg.modules_to_not_convert)
        else:
            skip = automatic_skip_modules(model, output_layer=cfg.skip_output_layer) + list(cfg.skip_modules or ())
            if cfg.fp32_cpu_offload and isinstance(device_map, dict):
                # bitsandbytes' meaning: what the device map puts on the CPU or the disk stays float
                skip += _linears_under(model, [k for k, v in device_map.items() if v in ("cpu", "disk")])
        to_int8, kept = int8_targets(model, skip)
        cfg.modules_to_not_convert = kept
        if self.pre_quantized:
            dtype = kwargs.get("dtype")
            swap_linears_on_meta(
                model,
                to_int8,
                cfg.threshold,
                bias_dtype=dtype if dtype else None,
                activation=cfg.activation,
                float_dims=cfg.float_dims,
                batch_invariant=cfg.batch_invariant,
            )
            _mark_initialized(model, to_int8)
            # the placeholders written in place of the float weights (format 2): not model tensors
            ignore = set(getattr(model, "_keys_to_ignore_on_load_unexpected", None) or ())
            model._keys_to_ignore_on_load_unexpected = ignore | {rf"{re.escape(n)}\.weight$" for n in to_int8}
        else:
            self._targets = set(to_int8)
        return model

    def param_needs_quantization(self, model, param_name: str, **kwargs) -> bool:
        if self.pre_quantized or not param_name.endswith(".weight"):
            return False
        return param_name.removesuffix(".weight") in self._targets

    def get_quantize_ops(self):
        return _QuantizeOnLoad(self)

    def _process_model_after_weight_loading(self, model, **kwargs):
        left = [n for n in self._targets if not isinstance(model.get_submodule(n), Int8Linear)]
        if left:
            raise ValueError(
                f"{len(left)} linear layers were not quantized (no weight in the checkpoint, or placed on the "
                f"disk?): {sorted(left)[:5]}. {_NO_DISK_ON_THE_FLY}"
            )
        model.is_loaded_in_8bit = True
        return model

    def is_serializable(self) -> bool:
        return True

    def get_state_dict_and_metadata(self, model):
        """The model's state dict plus the ``PLACEHOLDER`` ``weight`` of every int8 layer."""
        self.quantization_config.format_version = FORMAT_VERSION  # what this writer writes
        return with_placeholders(model, model.state_dict()), {}

    @property
    def is_trainable(self) -> bool:
        # adapters (peft LoRA / DoRA) train on top; the int8 weights are buffers, never trained, and
        # gradients flow through them to the inputs (Int8Linear's backward, llm_int8.ops)
        return True

    def _dequantize(self, model, dtype=None):
        dequantize_model(model, dtype)
        model.is_loaded_in_8bit = False
        return model


def _register() -> None:
    """Make ``quant_method="llm_int8"`` known to transformers (idempotent)."""
    if QUANT_METHOD not in AUTO_QUANTIZATION_CONFIG_MAPPING:
        register_quantization_config(QUANT_METHOD)(LLMInt8Config)
    if QUANT_METHOD not in AUTO_QUANTIZER_MAPPING:
        register_quantizer(QUANT_METHOD)(LLMInt8HfQuantizer)


_register()
