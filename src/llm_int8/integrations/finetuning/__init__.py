"""Fine-tuning a frozen int8 model: peft's LoRA / DoRA on ``Int8Linear`` (``peft.py``), installed into
peft when it is imported (``peft_hook.py``; peft itself is optional and never imported here)."""

from .peft_hook import install_when_imported

__all__ = ["install_when_imported"]
