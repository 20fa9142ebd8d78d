"""The settings of the vLLM method, read from a ``quantization_config`` dict and validated.

The dict is what vLLM hands over: a saved int8 folder's ``config.json`` ``quantization_config``
(written by ``llm_int8.save_pretrained`` / ``llm-int8 quantize``), or the user's own through
``--hf-overrides '{"quantization_config": {"quant_method": "llm_int8", ...}}'``, or nothing at all
(``--quantization llm_int8`` on a 16-bit checkpoint: the library's defaults). No engine is imported
here, so the rules are tested without vLLM.

A dict with ``format_version`` describes a folder whose linear layers are stored in int8 (that key is
written by the library's savers only): its ``weight_int8`` / ``weight_scale`` tensors are loaded as
they are. Without it, each float weight is quantized as it is loaded (online).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ...config import DEFAULT_ACTIVATION, DEFAULT_SKIP_MODULES, DEFAULT_THRESHOLD, Int8Config

__all__ = ["KNOWN_OPTIONS", "QUANT_METHOD", "ServingOptions"]

QUANT_METHOD = "llm_int8"
"""The name vLLM knows the method by (``--quantization llm_int8``), and a saved folder's ``quant_method``."""

KNOWN_OPTIONS = {
    "quant_method": "llm_int8 (the method's name)",
    "threshold": "outlier threshold α, a finite number >= 0 (0: pure vector-wise int8)",
    "activation": "per-token activation codes: 'zeropoint' (default) or 'absmax' (the paper)",
    "skip_modules": "module names (or name suffixes) kept in float, besides lm_head",
    "modules_to_not_convert": "the resolved float layers of a saved folder",
    "skip_output_layer": "keep lm_head in float (true; vLLM never quantizes its output embedding)",
    "format_version": "set by the library's savers: the folder holds int8 weights",
    "float_dims": "calibrated float columns: not served by vLLM yet (see docs/serving.md)",
    "fp32_cpu_offload": "transformers' offload switch: ignored by vLLM, which places weights itself",
}
"""Every key this method reads, with what it means; any other key is refused at start-up."""


@dataclass(frozen=True)
class ServingOptions:
    """How the vLLM method quantizes and runs: ``threshold`` / ``activation`` as ``Int8Linear``'s,
    ``skip`` the names kept in float, ``pre_quantized`` whether the checkpoint holds int8 weights."""

    threshold: float = DEFAULT_THRESHOLD
    activation: str = DEFAULT_ACTIVATION
    skip: tuple[str, ...] = DEFAULT_SKIP_MODULES
    pre_quantized: bool = False

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None) -> ServingOptions:
        """Read vLLM's ``quantization_config`` dict; an unknown key or a bad value is a ``ValueError`` naming it."""
        config = dict(config or {})
        unknown = sorted(set(config) - set(KNOWN_OPTIONS))
        if unknown:
            raise ValueError(
                f"llm_int8 quantization config: unknown option(s) {', '.join(map(repr, unknown))}; "
                f"known: {', '.join(sorted(KNOWN_OPTIONS))}"
            )
        method = config.get("quant_method", QUANT_METHOD)
        if str(method).lower() != QUANT_METHOD:
            raise ValueError(f"llm_int8 quantization config: quant_method is {method!r}, not {QUANT_METHOD!r}")
        if config.get("float_dims"):
            raise ValueError(
                "llm_int8 quantization config: float_dims (calibrated float columns) is not supported by the vLLM "
                "method yet; serve a folder quantized without --calibrate, or use llm_int8.from_pretrained"
            )
        if config.get("skip_output_layer", True) is not True:
            raise ValueError("llm_int8 quantization config: skip_output_layer must be true (vLLM keeps lm_head float)")
        skip = _names("skip_modules", config.get("skip_modules")) + _names(
            "modules_to_not_convert", config.get("modules_to_not_convert")
        )
        try:  # the library's own checks of α, the activation mode and the names
            checked = Int8Config(
                threshold=config.get("threshold", DEFAULT_THRESHOLD),
                activation=config.get("activation", DEFAULT_ACTIVATION),
                skip_modules=tuple(dict.fromkeys((*DEFAULT_SKIP_MODULES, *skip))),
            )
        except (TypeError, ValueError) as err:
            raise ValueError(f"llm_int8 quantization config: {err}") from err
        return cls(checked.threshold, checked.activation, checked.skip_modules, "format_version" in config)

    def skips(self, names: Iterable[str]) -> bool:
        """Whether the layer made of the checkpoint layers ``names`` stays float: all of them skipped.

        A fused vLLM layer (``qkv_proj`` of ``q_proj``, ``k_proj``, ``v_proj``) is one weight, so its parts are
        skipped together or not at all; a split is an error naming them.
        """
        names = list(names)
        skipped = [Int8Config(skip_modules=self.skip).skips(name) for name in names]
        if any(skipped) and not all(skipped):
            kept = [n for n, s in zip(names, skipped, strict=True) if not s]
            raise ValueError(
                f"llm_int8: {kept} are fused with skipped layers into one vLLM layer; skip all of {names} or none"
            )
        return all(skipped)


def _names(what: str, names) -> list[str]:
    if names is None:
        return []
    if isinstance(names, str):  # one module name, never its characters
        return [names]
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"llm_int8 quantization config: {what} must be a list of module names, got {names!r}")
    return list(names)
