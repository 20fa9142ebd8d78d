"""Evaluating quantized models: perplexity, HellaSwag, and the paper's Table 1 method comparison."""

from .compare import compare_methods
from .hellaswag import (
    HellaSwagResult,
    HellaSwagTask,
    PairedDifference,
    paired_difference,
    read_hellaswag,
    score_hellaswag,
)
from .methods import METHODS, EmulatedInt8Linear, MethodSpec, apply_method, parse_methods
from .perplexity import PerplexityResult, perplexity, read_text, tokenize_text

__all__ = [
    "METHODS",
    "EmulatedInt8Linear",
    "HellaSwagResult",
    "HellaSwagTask",
    "MethodSpec",
    "PairedDifference",
    "PerplexityResult",
    "apply_method",
    "compare_methods",
    "paired_difference",
    "parse_methods",
    "perplexity",
    "read_hellaswag",
    "read_text",
    "score_hellaswag",
    "tokenize_text",
]
