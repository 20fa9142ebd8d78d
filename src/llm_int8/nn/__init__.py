"""Modules that hold quantized state and call ``llm_int8.ops``."""

from .linear import Int8Linear

__all__ = ["Int8Linear"]
