"""Candidate changes to the LLM.int8() forward, prototyped around ``Int8Linear`` (the op is not touched).

Each is a module that wraps a converted ``Int8Linear`` and computes what the op would compute
with the change, so it can be measured end to end (perplexity, HellaSwag, agreement) before the
op is changed:

* ``RelativeOutlierLinear`` — a *per-token outlier rule*: besides the paper's absolute rule
  (``|x| >= α``), a feature dim is an outlier when, in some token's row, ``|x| >= β · mean_k |x_k|``
  (a value far above that token's own scale, a "massive activation" too small to reach α). Those
  columns are zeroed before the int8 layer (a zero column adds nothing to the int8 product, and
  the zeropoint range always holds 0) and multiplied in float against the dequantized int8
  weight columns — exactly the op's decomposition with ``O`` widened by the new columns.
* ``FloatRowsLinear`` — a *per-token float path*: rows with a massive value (same test) are
  computed as ``bf16(x) @ W_deqᵀ`` (what the op's weight-only kernel computes for decoding),
  the other rows as usual.
* ``ClippedLinear`` — *activation clipping*: each row (outside the ``|x| >= α`` columns) is clipped
  to ``κ`` times its root-mean-square before the int8 layer.

``wrap_linears(model, make)`` wraps every ``Int8Linear`` of a converted model.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..nn import Int8Linear

__all__ = ["ClippedLinear", "FloatRowsLinear", "RelativeOutlierLinear", "massive_values", "wrap_linears"]


def massive_values(X: torch.Tensor, beta: float) -> torch.Tensor:
    """Boolean mask, same shape as ``X`` (tokens, features): ``|x| >= β · mean |x|`` of its row."""
    A = X.abs()
    return A >= beta * A.mean(dim=-1, keepdim=True).clamp_min(torch.finfo(X.dtype).tiny)


class _Wrapper(nn.Module):
    def __init__(self, inner: Int8Linear) -> None:
        super().__init__()
        self.inner = inner
        self.in_features, self.out_features = inner.in_features, inner.out_features
        self._w_deq: torch.Tensor | None = None  # float copy of the dequantized weight, prototype only

    def w_deq(self) -> torch.Tensor:
        if self._w_deq is None:
            self._w_deq = self.inner.dequantized_weight()  # (out, in)
        return self._w_deq

    def _bias(self) -> torch.Tensor | float:
        return 0.0 if self.inner.bias is None else self.inner.bias.float()


class RelativeOutlierLinear(_Wrapper):
    """``Int8Linear`` whose outlier set also takes the columns holding a value ``>= β ×`` its row's mean |x|."""

    def __init__(self, inner: Int8Linear, beta: float) -> None:
        super().__init__(inner)
        self.beta = beta
        self.extra_columns = 0  # columns added, summed over calls (for reports)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        X = x.reshape(-1, self.in_features)  # (tokens, in_features)
        absolute = X.abs() >= self.inner.threshold  # the op's own outliers, decomposed inside it
        extra = massive_values(X.masked_fill(absolute, 0), self.beta).any(dim=0) & ~absolute.any(dim=0)
        if self.inner.threshold == 0 or not extra.any():
            return self.inner(x)
        self.extra_columns += int(extra.sum())
        cols = extra.nonzero()[:, 0]
        X0 = X.clone()
        X0[:, cols] = 0
        Y = self.inner(X0) + (X[:, cols].float() @ self.w_deq()[:, cols].T).to(x.dtype)  # (tokens, out)
        return Y.reshape(*x.shape[:-1], self.out_features)


class FloatRowsLinear(_Wrapper):
    """``Int8Linear`` with the rows that hold a massive value computed as ``bf16(x) @ W_deqᵀ``."""

    def __init__(self, inner: Int8Linear, beta: float) -> None:
        super().__init__(inner)
        self.beta = beta
        self.float_rows = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        X = x.reshape(-1, self.in_features)  # (tokens, in_features)
        rows = massive_values(X.masked_fill(X.abs() >= self.inner.threshold, 0), self.beta).any(dim=-1)
        if not rows.any():
            return self.inner(x)
        self.float_rows += int(rows.sum())
        idx = rows.nonzero()[:, 0]
        Y = self.inner(X).clone()  # (tokens, out)
        Y[idx] = (X[idx].bfloat16().float() @ self.w_deq().T + self._bias()).to(Y.dtype)
        return Y.reshape(*x.shape[:-1], self.out_features)


class ClippedLinear(_Wrapper):
    """``Int8Linear`` on rows clipped to ``±κ · rms`` (the ``|x| >= α`` columns left as they are)."""

    def __init__(self, inner: Int8Linear, kappa: float) -> None:
        super().__init__(inner)
        self.kappa = kappa

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        X = x.reshape(-1, self.in_features)  # (tokens, in_features)
        keep = X.abs() >= self.inner.threshold if self.inner.threshold > 0 else torch.zeros_like(X, dtype=torch.bool)
        inner = X.masked_fill(keep, 0)
        bound = self.kappa * inner.pow(2).mean(dim=-1, keepdim=True).sqrt()  # (tokens, 1)
        Xc = torch.where(keep, X, torch.minimum(torch.maximum(X, -bound), bound))
        return self.inner(Xc).reshape(*x.shape[:-1], self.out_features)


def wrap_linears(
    model: nn.Module, make: Callable[[Int8Linear], nn.Module], only: tuple[str, ...] | None = None
) -> nn.Module:
    """Replace every ``Int8Linear`` of ``model`` (whose name ends with one of ``only``, if given) by
    ``make(layer)``, in place; returns ``model``."""
    targets = [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, Int8Linear) and (only is None or name.split(".")[-1] in only)
    ]
    for name, layer in targets:
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, make(layer))
    return model
