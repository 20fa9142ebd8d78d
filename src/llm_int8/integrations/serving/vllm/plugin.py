"""The entry point vLLM runs in each of its processes (``vllm.general_plugins`` in pyproject.toml).

The main process validates ``--quantization`` (and a folder's ``quant_method``) against the registered
names before any model code runs, so the name must be known there and in every worker; only an entry
point reaches the OpenAI server, which runs no user code.
"""

from __future__ import annotations

__all__ = ["register"]


def register() -> None:
    """Make ``llm_int8`` a vLLM quantization method (idempotent)."""
    from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS, register_quantization_config

    from ..options import QUANT_METHOD
    from .config import LLMInt8VllmConfig

    if QUANT_METHOD not in QUANTIZATION_METHODS:
        register_quantization_config(QUANT_METHOD)(LLMInt8VllmConfig)
