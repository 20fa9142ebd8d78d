"""Model surgery: which linear layers become ``Int8Linear``, and the swap itself."""

from .convert import ConversionReport, dequantize_model, linear_memory, quantize_model
from .swap import automatic_skip_modules, int8_targets, swap_linears_on_meta

__all__ = [
    "ConversionReport",
    "automatic_skip_modules",
    "dequantize_model",
    "int8_targets",
    "linear_memory",
    "quantize_model",
    "swap_linears_on_meta",
]
