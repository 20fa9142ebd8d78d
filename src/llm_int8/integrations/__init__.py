"""Wiring into the model ecosystem, by what a user reaches for:

* ``surgery/``: model surgery. ``quantize_model`` swaps every linear layer of a model for
  ``Int8Linear`` in place (``convert.py``); which layers, and the swap on the ``meta`` device that
  the loaders share (``swap.py``).
* ``huggingface/``: Hugging Face models. Finding and loading them (``loading.py``: local folders,
  ``.gguf`` files, hub ids), the streaming int8 ``from_pretrained`` (``pretrained.py``, reading
  with ``streaming.py`` and ``blockwise.py``, checked by ``checkpoint.py``), saving in our format
  and bitsandbytes' (``saving.py``), transformers' quantizer registration (``quantizer.py``), and
  placement over devices and disk (``offload.py``).
* ``finetuning/``: LoRA / DoRA adapters with peft on a frozen int8 model (``peft.py``), hooked in
  lazily when peft is imported (``peft_hook.py``).

Importing this package registers ``quant_method="llm_int8"`` with transformers, and LoRA / DoRA on
``Int8Linear`` with peft (once peft is imported).
"""

from .finetuning import install_when_imported
from .huggingface import (
    CheckpointError,
    LLMInt8Config,
    LLMInt8HfQuantizer,
    default_model_path,
    from_pretrained,
    load_model,
    load_tokenizer,
    resolve_model_source,
    save_bitsandbytes,
    save_pretrained,
)
from .surgery import ConversionReport, dequantize_model, linear_memory, quantize_model

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
