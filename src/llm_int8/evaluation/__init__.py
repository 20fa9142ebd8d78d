"""Evaluating quantized models: perplexity, HellaSwag, and the paper's Table 1 method comparison."""

from .compare import compare_methods
from .hellaswag import (
    HellaSwagResult,
    HellaSwagTask,
    PairedDifference,
    paired_difference,
    read_hellaswag,
)
from .hellaswag_score import batched_log_likelihoods, score_hellaswag, task_log_likelihoods
from .methods import METHODS, EmulatedInt8Linear, MethodSpec, apply_method, parse_methods
from .perplexity import PerplexityResult, perplexity, read_text, tokenize_text
from .tasklog import TaskLog, read_task_log

__all__ = [
    "METHODS",
    "EmulatedInt8Linear",
    "HellaSwagResult",
    "HellaSwagTask",
    "MethodSpec",
    "PairedDifference",
    "PerplexityResult",
    "TaskLog",
    "apply_method",
    "batched_log_likelihoods",
    "compare_methods",
    "paired_difference",
    "parse_methods",
    "perplexity",
    "read_hellaswag",
    "read_task_log",
    "read_text",
    "score_hellaswag",
    "task_log_likelihoods",
    "tokenize_text",
]
