"""Wiring into the model ecosystem: module swap, model loading (Hugging Face, GGUF), streaming int8
loading, saving (ours and bitsandbytes' format), and transformers' quantizer registration.

Importing this package registers ``quant_method="llm_int8"`` with transformers, and LoRA / DoRA on
``Int8Linear`` with peft (once peft is imported; ``peft_hook``).
"""

from .checkpoint import CheckpointError
from .convert import ConversionReport, dequantize_model, linear_memory, quantize_model
from .hf_quantizer import LLMInt8Config, LLMInt8HfQuantizer
from .loading import default_model_path, load_model, load_tokenizer, resolve_model_source
from .peft_hook import install_when_imported
from .pretrained import from_pretrained
from .saving import save_bitsandbytes, save_pretrained

install_when_imported()

__all__ = [
    "CheckpointError",
    "ConversionReport",
    "LLMInt8Config",
    "LLMInt8HfQuantizer",
    "default_model_path",
    "dequantize_model",
    "from_pretrained",
    "linear_memory",
    "load_model",
    "load_tokenizer",
    "quantize_model",
    "resolve_model_source",
    "save_bitsandbytes",
    "save_pretrained",
]
