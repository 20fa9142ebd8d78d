"""The frozen, validated settings of an LLM.int8() conversion."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .primitives.reference import ACTIVATION_QUANTIZERS

__all__ = [
    "ACTIVATION_QUANTIZERS",
    "DEFAULT_ACTIVATION",
    "DEFAULT_SKIP_MODULES",
    "DEFAULT_THRESHOLD",
    "PAPER_ACTIVATION",
    "PAPER_THRESHOLD",
    "Int8Config",
]

PAPER_THRESHOLD = 6.0
"""α of the paper: hidden-state magnitude from which a feature dim is an outlier."""
PAPER_ACTIVATION = "absmax"
"""The paper's per-token absmax (symmetric) quantization of the activations."""

DEFAULT_THRESHOLD = PAPER_THRESHOLD
"""This library's default α: the paper's."""
DEFAULT_ACTIVATION = "zeropoint"
"""This library's default per-token activation codes: asymmetric (zeropoint), not the paper's
absmax. Same int8 GEMM plus one rank-1 correction; on SmolLM2-135M it cuts LLM.int8()'s WikiText-2
perplexity gap to fp32 about threefold (RESULTS.md, section 3). ``activation="absmax"`` is the
paper's LLM.int8() exactly, as bitsandbytes runs it."""

DEFAULT_SKIP_MODULES: tuple[str, ...] = ("lm_head",)
"""Modules kept in float by default: the output projection, as in bitsandbytes and the paper."""


@dataclass(frozen=True)
class Int8Config:
    """How to convert a model to LLM.int8().

    ``threshold``: outlier threshold α (>= 0; 0 disables the decomposition, pure vector-wise int8).
    ``skip_modules``: module names (or name suffixes, matched on ``.`` boundaries) to keep in float.
    ``activation``: ``"zeropoint"`` (default: asymmetric per-token codes, twice the resolution on
    skewed rows, at one rank-1 update per call; see ``llm_int8.ops.int8_linear``) or ``"absmax"``
    (the paper's symmetric per-token codes). The stored int8 weight is the same for both.
    ``batch_invariant``: run every layer in the batch-invariant mode (``Int8Linear.batch_invariant``:
    a token's output does not depend on its batch mates; per-token outliers). Same stored weight.
    """

    threshold: float = DEFAULT_THRESHOLD
    skip_modules: tuple[str, ...] = DEFAULT_SKIP_MODULES  # a str or list is accepted and normalised
    activation: str = DEFAULT_ACTIVATION
    batch_invariant: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)):
            raise TypeError(f"threshold must be a number, got {type(self.threshold).__name__}")
        if math.isnan(self.threshold) or self.threshold < 0 or math.isinf(self.threshold):
            raise ValueError(f"threshold must be a finite number >= 0 (0 disables decomposition), got {self.threshold}")
        skip = self.skip_modules
        if isinstance(skip, str):
            skip = (skip,)
        skip = tuple(skip)
        for name in skip:
            if not isinstance(name, str) or not name:
                raise ValueError(f"skip_modules must hold non-empty module names, got {name!r}")
        if self.activation not in ACTIVATION_QUANTIZERS:
            raise ValueError(f"activation must be one of {ACTIVATION_QUANTIZERS}, got {self.activation!r}")
        if not isinstance(self.batch_invariant, bool):
            raise TypeError(f"batch_invariant must be a bool, got {self.batch_invariant!r}")
        object.__setattr__(self, "threshold", float(self.threshold))
        object.__setattr__(self, "skip_modules", skip)

    def skips(self, module_name: str) -> bool:
        """Whether ``module_name`` is kept in float: it equals a skipped name or ends with ``.name``."""
        return any(module_name == s or module_name.endswith("." + s) for s in self.skip_modules)
