"""llm-int8: LLM.int8() (Dettmers et al., 2022) for PyTorch and Hugging Face models.

Layers, each importing only those before it:
``primitives`` (pure math) -> ``ops`` (kernels, per-device dispatch) -> ``nn`` (Int8Linear)
-> ``integrations`` (model conversion and loading) -> ``evaluation`` -> ``cli``.
"""

from ._version import __version__
from .config import Int8Config
from .integrations import (
    CheckpointError,
    ConversionReport,
    LLMInt8Config,
    from_pretrained,
    linear_memory,
    load_model,
    quantize_model,
    save_bitsandbytes,
    save_pretrained,
)
from .nn import Int8Linear
from .ops import int8_linear, int8_mm

__all__ = [
    "CheckpointError",
    "ConversionReport",
    "Int8Config",
    "Int8Linear",
    "LLMInt8Config",
    "__version__",
    "from_pretrained",
    "int8_linear",
    "int8_mm",
    "linear_memory",
    "load_model",
    "quantize_model",
    "save_bitsandbytes",
    "save_pretrained",
]
