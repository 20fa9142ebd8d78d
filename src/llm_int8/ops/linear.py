"""``int8_linear``: the LLM.int8() linear layer as one function, eager or under ``torch.compile``.

Eagerly it runs ``forward.py`` (the steps of the method, each a kernel of ``kernels/``). While Dynamo
traces it (``torch.compiler.is_compiling()``) it is one call of the custom op
``llm_int8::int8_linear`` (``custom_op.py``), which runs the same eager code inside: one graph node
per layer, the same numerics, no graph break on the data-dependent steps.
"""

from __future__ import annotations

import torch

from . import custom_op, forward_invariant
from .forward import check_inputs, forward, needs_grad
from .prepack import PackedWeight, PackedWeightCache

__all__ = ["int8_linear"]


def _compiling() -> bool:
    is_compiling = getattr(torch.compiler, "is_compiling", None)  # torch >= 2.3
    return bool(is_compiling and is_compiling())


def int8_linear(
    x: torch.Tensor,
    weight_int8: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    threshold: float = 6.0,
    *,
    activation: str = "absmax",
    packed_weight: PackedWeight | PackedWeightCache | None = None,
    weight_row_sums: torch.Tensor | PackedWeightCache | None = None,
    weight_only_max_tokens: int | None = 0,
    float_columns: tuple[torch.Tensor, torch.Tensor] | None = None,
    batch_invariant: bool = False,
    statistics: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """LLM.int8() linear layer: ``x`` (..., K) float -> (..., N) in ``x``'s dtype.

    ``threshold`` is α of the decomposition; 0 disables it (pure vector-wise int8).
    ``activation``: ``"absmax"`` (the paper's symmetric per-token codes) or ``"zeropoint"``
    (asymmetric per-token codes, corrected with the weight's row sums; see ``forward.py``).
    ``packed_weight``: optionally ``llm_int8.ops.prepack_int8_weight(weight_int8)``, built once and
    reused; without it a backend that wants a packed layout packs per call.
    ``weight_row_sums``: optionally ``llm_int8.ops.compute_weight_row_sums(weight_int8)``, cached likewise
    (only read for ``activation="zeropoint"``).
    Either may instead be a ``PackedWeightCache`` (``Int8Linear`` passes its caches): it is asked for
    its value only when the int8 x int8 path runs, so a layer that only takes the weight-only path
    never builds the packed copy of its weight or its row sums.
    ``weight_only_max_tokens``: inputs of at most this many rows (tokens) take the int8-weight,
    bf16-activation kernel of ``kernels/weight_only.py`` where it is available (CPU, ``in_features`` a
    multiple of 16) and no gradient is needed; 0 (the default here) never; ``None``: the crossover
    measured for this shape on this machine (``choice/cpu.py``), which ``Int8Linear`` uses.
    ``float_columns = (S, W_S)``: input dims always computed in float, with their float weight columns.

    ``batch_invariant``: each token's output row a function of that row alone, bit for bit, at any
    batch size and batch composition (``forward_invariant.py``): per-token outliers, no weight-only
    kernel, every float step summed in a fixed order per row. ``LLM_INT8_BATCH_INVARIANT=1`` turns it
    on for every call of the process. ``statistics = (row_max, row_min)``, (tokens,) each, only in
    that mode: the per-token ranges to quantize with instead of each row's own over this ``x``
    (``kernels.quantize_tokenwise.token_statistics``), for a row-parallel layer whose ranks
    all-reduce them first (docs/batch_invariance.md).

    NaN/Inf policy: a column of ``x`` that holds a non-finite value is always computed in float,
    so non-finite values propagate to exactly the outputs ``nn.Linear`` would make non-finite,
    and never corrupt the int8 scale of other values. The weight-only path multiplies ``x`` as it
    is, so it propagates them the same way.
    """
    if _compiling() and custom_op.OP is not None:
        check_inputs(x, weight_int8, weight_scale, bias, threshold, activation)
        S, W_S = (None, None) if float_columns is None else float_columns
        if needs_grad(x, bias):  # as in eager: a differentiated call never takes the weight-only path
            weight_only_max_tokens = 0
        hi, lo = (None, None) if statistics is None else statistics
        return custom_op.OP(
            x, weight_int8, weight_scale, bias, float(threshold), activation, weight_only_max_tokens, S, W_S,
            forward_invariant.enabled(batch_invariant), hi, lo,
        )  # fmt: skip
    return forward(
        x, weight_int8, weight_scale, bias, threshold, activation, packed_weight, weight_row_sums,
        weight_only_max_tokens, float_columns, batch_invariant, statistics,
    )  # fmt: skip
