"""Wiring into the model ecosystem: module swap, model loading (Hugging Face, GGUF)."""

from .convert import ConversionReport, linear_memory, quantize_model
from .loading import default_model_path, load_model, resolve_model_source

__all__ = [
    "ConversionReport",
    "default_model_path",
    "linear_memory",
    "load_model",
    "quantize_model",
    "resolve_model_source",
]
