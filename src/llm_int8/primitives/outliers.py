"""Emergent-outlier detection: the set ``O`` of LLM.int8()'s mixed-precision decomposition."""

from __future__ import annotations

import torch

__all__ = ["outlier_columns"]


def outlier_columns(X: torch.Tensor, threshold: float) -> torch.Tensor:
    """Boolean mask over the feature dims (columns) of ``X`` (tokens, features).

    ``O = {i : some |X[:, i]| >= threshold}`` (paper: α = 6.0). With ``threshold == 0``
    decomposition is off, as in bitsandbytes, and ``O`` holds only the columns with a non-finite
    value: NaN and Inf then take the float path and propagate exactly as in ``nn.Linear``
    instead of poisoning a whole row's int8 scale. ``not (max < t)`` is used rather than
    ``max >= t`` so that a NaN column counts as an outlier for any threshold.
    """
    col_absmax = X.abs().amax(dim=0)  # (features,); amax propagates NaN
    if threshold > 0:
        return ~(col_absmax < threshold)
    return ~torch.isfinite(col_absmax)
