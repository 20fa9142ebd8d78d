"""``LLMInt8VllmConfig``: vLLM's quantization config for LLM.int8(): its options, and which layers are int8."""

from __future__ import annotations

from typing import Any

import torch
from vllm.model_executor.layers.linear import LinearBase, UnquantizedLinearMethod
from vllm.model_executor.layers.quantization.base_config import QuantizationConfig

from ..options import QUANT_METHOD, ServingOptions
from .method import LLMInt8LinearMethod

__all__ = ["LLMInt8VllmConfig"]


class LLMInt8VllmConfig(QuantizationConfig):
    """LLM.int8() for every linear layer of a vLLM model but those skipped (``lm_head`` stays float).

    Built by vLLM from a saved int8 folder's ``quantization_config``, from the user's one in
    ``--hf-overrides``, or with no arguments for ``--quantization llm_int8`` on a 16-bit checkpoint.
    """

    def __init__(self, options: ServingOptions | None = None) -> None:
        super().__init__()
        self.options = options if options is not None else ServingOptions()
        self._warmed: set = set()  # shapes whose kernel choice this engine has measured (method.py)

    def __repr__(self) -> str:
        return f"LLMInt8VllmConfig({self.options})"

    def get_name(self) -> str:
        return QUANT_METHOD

    @classmethod
    def get_supported_act_dtypes(cls) -> list[torch.dtype]:
        return [torch.bfloat16, torch.float16, torch.float32]

    @classmethod
    def get_min_capability(cls) -> int:
        return 70  # on a GPU the op runs Triton or cuBLASLt kernels (ops/forward_cuda.py); CPUs are not checked

    @staticmethod
    def get_config_filenames() -> list[str]:
        return []  # no file of its own: without a quantization_config, the defaults (online)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> LLMInt8VllmConfig:
        return cls(ServingOptions.from_config(config))

    def get_quant_method(self, layer: torch.nn.Module, prefix: str):
        if not isinstance(layer, LinearBase):
            return None  # embeddings and the output layer stay as vLLM makes them
        if self.options.skips(self._checkpoint_names(prefix)):
            return UnquantizedLinearMethod()
        return LLMInt8LinearMethod(self.options, self._warmed)

    def _checkpoint_names(self, prefix: str) -> list[str]:
        """The checkpoint layers a vLLM layer is made of: ``...qkv_proj`` -> ``...q_proj``, ``...k_proj``, ..."""
        head, _, leaf = prefix.rpartition(".")
        parts = self.packed_modules_mapping.get(leaf)
        if not parts:
            return [prefix]
        return [f"{head}.{part}" if head else part for part in parts]
