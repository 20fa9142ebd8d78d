"""``Int8Linear``: a drop-in ``nn.Linear`` that holds an int8 weight and runs LLM.int8()."""

from __future__ import annotations

import torch
from torch import nn

from ..config import DEFAULT_ACTIVATION, DEFAULT_THRESHOLD
from ..ops import PackedWeightCache, compute_weight_row_sums, int8_linear, weight_only
from ..primitives import ACTIVATION_QUANTIZERS, rowwise_quantize

__all__ = ["Int8Linear"]


class Int8Linear(nn.Module):
    """Linear layer with a vector-wise int8 weight and mixed-precision decomposition.

    State (all in ``state_dict``):

    * ``weight_int8``: (out_features, in_features) int8, ``W ≈ weight_int8 * weight_scale[:, None]``
    * ``weight_scale``: (out_features,) float32, the per-output-row absmax / 127
    * ``bias``: (out_features,) in the original layer's dtype, or ``None``

    No float copy of the weight is kept. The forward pass takes any float dtype and returns that
    dtype. ``threshold`` is the outlier threshold α (0 = pure vector-wise int8). ``activation``:
    how each token's row of ``X`` is quantized, ``"zeropoint"`` (asymmetric, the default; see
    ``llm_int8.ops.int8_linear``) or ``"absmax"`` (the paper). Neither is saved in ``state_dict``: the
    stored weight is the same for both.

    ``weight_only_max_tokens``: inputs of at most this many tokens (decoding) run the int8-weight,
    bf16-activation kernel (``llm_int8.ops.weight_only``) instead, on CPU, where reading the weight
    is all the time there is; ``None`` (default) uses the measured crossover
    ``weight_only.auto_max_tokens(in_features, out_features)`` (up to 16 tokens on small layers, 1 on
    4096 x 4096, none above 2**24 weights), 0 turns it off. A runtime choice: set the attribute at will.

    ``weight_scale`` stays float32 under ``module.to(dtype)`` / ``.half()``: the scales are part of
    the int8 format, and rounding them to 8 mantissa bits (bf16) would cost more accuracy than the
    int8 codes themselves.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        threshold: float = DEFAULT_THRESHOLD,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        activation: str = DEFAULT_ACTIVATION,
        weight_only_max_tokens: int | None = None,
    ) -> None:
        super().__init__()
        if in_features <= 0 or out_features <= 0:
            raise ValueError(f"in_features and out_features must be positive, got {in_features}, {out_features}")
        if not threshold >= 0:  # also rejects NaN
            raise ValueError(f"threshold must be >= 0 (0 disables decomposition), got {threshold}")
        if activation not in ACTIVATION_QUANTIZERS:
            raise ValueError(f"activation must be one of {ACTIVATION_QUANTIZERS}, got {activation!r}")
        self.in_features = in_features
        self.out_features = out_features
        self.threshold = float(threshold)
        self.activation = activation
        self.weight_only_max_tokens = weight_only_max_tokens
        # derived, never saved: the backend's packed copy of weight_int8 and its row sums (for
        # zeropoint activations), rebuilt when that buffer changes
        self._packed_weight = PackedWeightCache()
        self._row_sums = PackedWeightCache(compute_weight_row_sums)
        self.register_buffer("weight_int8", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("weight_scale", torch.ones(out_features, dtype=torch.float32, device=device))
        if bias:
            self.bias = nn.Parameter(
                torch.zeros(out_features, dtype=dtype or torch.float32, device=device), requires_grad=False
            )
        else:
            self.register_parameter("bias", None)

    @classmethod
    def from_linear(
        cls,
        linear: nn.Module,
        threshold: float = DEFAULT_THRESHOLD,
        activation: str = DEFAULT_ACTIVATION,
        weight_only_max_tokens: int | None = None,
    ) -> Int8Linear:
        """Quantize an ``nn.Linear`` (or transformers' ``Conv1D``, whose weight is (in, out))."""
        weight, bias = _linear_weight_and_bias(linear)
        if weight.is_meta:
            raise ValueError("cannot quantize a weight on the meta device; load the weights first")
        if not torch.isfinite(weight).all():
            raise ValueError("cannot quantize a weight that holds NaN or Inf values")
        out_features, in_features = weight.shape
        module = cls(
            in_features,
            out_features,
            bias=bias is not None,
            threshold=threshold,
            device=weight.device,
            activation=activation,
            weight_only_max_tokens=weight_only_max_tokens,
        )
        with torch.no_grad():
            W_i8, s_w = rowwise_quantize(weight.detach(), dim=-1)  # (out, in) int8, (out,)
            module.weight_int8 = W_i8.contiguous()  # a Conv1D weight arrives transposed
            module.weight_scale = s_w
            if bias is not None:
                module.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)
        return module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the caches themselves: int8_linear builds the packed layout (a second copy of the weight on
        # CPU) and the row sums only if the int8 x int8 path runs, never for a layer that only decodes
        return int8_linear(
            x,
            self.weight_int8,
            self.weight_scale,
            self.bias,
            self.threshold,
            activation=self.activation,
            packed_weight=self._packed_weight,
            weight_row_sums=self._row_sums,
            weight_only_max_tokens=self._weight_only_limit(),
        )

    def _weight_only_limit(self) -> int:
        limit = self.weight_only_max_tokens
        return weight_only.auto_max_tokens(self.in_features, self.out_features) if limit is None else limit

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The float weight the int8 codes stand for, ``weight_int8 * weight_scale`` (a new tensor)."""
        return (self.weight_int8.float() * self.weight_scale[:, None]).to(dtype)

    def memory_bytes(self) -> int:
        """Bytes held by this layer: int8 weight, scales and bias."""
        return sum(
            t.numel() * t.element_size() for t in (self.weight_int8, self.weight_scale, self.bias) if t is not None
        )

    def _apply(self, fn, recurse=True):
        scale = self.weight_scale
        super()._apply(fn, recurse)
        # keep the scales float32 (see the class docstring); follow the device the buffers moved to
        self.weight_scale = scale.to(device=self.weight_int8.device, dtype=torch.float32)
        self._packed_weight.clear()  # free the old layout now, not at the next forward
        self._row_sums.clear()
        return self

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, threshold={self.threshold}, activation={self.activation}"
        )


def _linear_weight_and_bias(linear: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The (out, in) weight and bias of an ``nn.Linear`` or a GPT-2-style ``Conv1D``."""
    if isinstance(linear, nn.Linear):
        return linear.weight, linear.bias
    if type(linear).__name__ == "Conv1D" and hasattr(linear, "nf"):
        # transformers.pytorch_utils.Conv1D computes x @ W + b with W of shape (in, out)
        return linear.weight.T, linear.bias
    raise TypeError(f"expected nn.Linear or transformers Conv1D, got {type(linear).__name__}")
