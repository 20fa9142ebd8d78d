"""Hugging Face models: loading, streaming int8 loading, saving, transformers' quantizer, offload."""

from .checkpoint import CheckpointError
from .loading import default_model_path, load_model, load_tokenizer, resolve_model_source
from .pretrained import from_pretrained
from .quantizer import LLMInt8Config, LLMInt8HfQuantizer
from .saving import save_bitsandbytes, save_pretrained

__all__ = [
    "CheckpointError",
    "LLMInt8Config",
    "LLMInt8HfQuantizer",
    "default_model_path",
    "from_pretrained",
    "load_model",
    "load_tokenizer",
    "resolve_model_source",
    "save_bitsandbytes",
    "save_pretrained",
]
