"""Evaluating quantized models: perplexity, HellaSwag, agreement with the float model on chat prompts,
and the paper's Table 1 method comparison."""

from .agreement import (
    Generation,
    TopTwo,
    compare_generations,
    generate,
    measure_agreement,
    reference_generations,
    summarize_agreement,
)
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
from .prompts import Prompt, read_prompts
from .tasklog import TaskLog, read_task_log

__all__ = [
    "METHODS",
    "EmulatedInt8Linear",
    "Generation",
    "HellaSwagResult",
    "HellaSwagTask",
    "MethodSpec",
    "PairedDifference",
    "PerplexityResult",
    "Prompt",
    "TopTwo",
    "TaskLog",
    "apply_method",
    "batched_log_likelihoods",
    "compare_generations",
    "compare_methods",
    "generate",
    "measure_agreement",
    "paired_difference",
    "parse_methods",
    "perplexity",
    "read_hellaswag",
    "read_prompts",
    "read_task_log",
    "read_text",
    "reference_generations",
    "score_hellaswag",
    "summarize_agreement",
    "task_log_likelihoods",
    "tokenize_text",
]
