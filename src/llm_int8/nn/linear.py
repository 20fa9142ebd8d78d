"""``Int8Linear``: a drop-in ``nn.Linear`` that holds an int8 weight and runs LLM.int8()."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..config import DEFAULT_ACTIVATION, DEFAULT_THRESHOLD
from ..ops import PackedWeightCache, compute_weight_row_sums, dequantized_weight, int8_linear
from ..primitives import ACTIVATION_QUANTIZERS, rowwise_quantize

__all__ = ["Int8Linear"]


class Int8Linear(nn.Module):
    """Linear layer with a vector-wise int8 weight and mixed-precision decomposition.

    State (all in ``state_dict``):

    * ``weight_int8``: (out_features, in_features) int8, ``W ≈ weight_int8 * weight_scale[:, None]``
    * ``weight_scale``: (out_features,) float32, the per-output-row absmax / 127
    * ``bias``: (out_features,) in the original layer's dtype, or ``None``
    * ``float_dims`` (|S|,) int64 and ``float_weight`` (out_features, |S|) in the original dtype:
      optional input dims that are always computed in float, with their float weight columns
      (``from_linear(..., float_dims=...)``, normally the calibrated outlier dims of
      ``llm_int8.analysis.calibrate_outlier_dims``). Their int8 codes are 0 and left out of the
      row absmax. ``None`` by default (no float columns): then they are not buffers at all, so
      ``state_dict``, ``named_buffers`` and accelerate's offload hooks never see them.

    No float copy of the rest of the weight is kept. The forward pass takes any float dtype and returns that
    dtype. ``threshold`` is the outlier threshold α (0 = pure vector-wise int8). ``activation``:
    how each token's row of ``X`` is quantized, ``"zeropoint"`` (asymmetric, the default; see
    ``llm_int8.ops.int8_linear``) or ``"absmax"`` (the paper). Neither is saved in ``state_dict``: the
    stored weight is the same for both.

    ``batch_invariant``: each token's output row a function of that token's row alone, bit for bit,
    whatever else is in the batch and whatever its size (``llm_int8.ops.forward_invariant``:
    per-token outliers, no weight-only kernel; ``LLM_INT8_BATCH_INVARIANT=1`` sets it for every
    layer of the process). Saved with the model's quantization config, as ``threshold`` and
    ``activation`` are; a runtime choice too: set the attribute at will.

    ``weight_only_max_tokens``: inputs of at most this many tokens (decoding) run the int8-weight,
    bf16-activation kernel (``llm_int8.ops.kernels.weight_only``) instead, on CPU, where reading the weight
    is all the time there is; ``None`` (default) uses the measured crossover
    ``llm_int8.ops.forward.weight_only_limit(in_features, out_features)`` (up to 16 tokens on small layers, 1 on
    4096 x 4096, none above 2**24 weights), 0 turns it off. A runtime choice: set the attribute at will.

    ``weight_scale`` stays float32 under ``module.to(dtype)`` / ``.half()``: the scales are part of
    the int8 format, and rounding them to 8 mantissa bits (bf16) would cost more accuracy than the
    int8 codes themselves.

    Derived state (on CPU the backend's packed copy of ``weight_int8``, and its row sums) is cached
    and rebuilt whenever it may be stale: when ``weight_int8`` is replaced, written in place (its
    version counter), loaded (``load_state_dict``, in any grad mode), moved (``.to``, ``to_empty``),
    or read as ``module.weight_int8`` from outside, since that is how one reaches the tensor to
    write it through ``.data``, ``.numpy()`` or in inference mode, routes PyTorch's version counter
    does not see. The one write the module cannot see is through such a route on a reference taken
    *before* the last forward call (``w = L.weight_int8; L(x); w.numpy()[:] = 0``): after one,
    read ``L.weight_int8`` again or call ``L.weight_changed()``.
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
        float_dims: Sequence[int] | torch.Tensor | None = None,
        batch_invariant: bool = False,
    ) -> None:
        super().__init__()
        if in_features <= 0 or out_features <= 0:
            raise ValueError(f"in_features and out_features must be positive, got {in_features}, {out_features}")
        if not 0 <= threshold < float("inf"):  # also rejects NaN; as Int8Config: a huge α is a finite number
            raise ValueError(f"threshold must be a finite number >= 0 (0 disables decomposition), got {threshold}")
        if activation not in ACTIVATION_QUANTIZERS:
            raise ValueError(f"activation must be one of {ACTIVATION_QUANTIZERS}, got {activation!r}")
        self.in_features = in_features
        self.out_features = out_features
        self.threshold = float(threshold)
        self.activation = activation
        self.weight_only_max_tokens = weight_only_max_tokens
        self.batch_invariant = _check_flag(batch_invariant)
        # derived, never saved: the backend's packed copy of weight_int8 and its row sums (for
        # zeropoint activations), rebuilt when that buffer changes
        self._packed_weight = PackedWeightCache()
        self._row_sums = PackedWeightCache(compute_weight_row_sums)
        self.register_buffer("weight_int8", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("weight_scale", torch.ones(out_features, dtype=torch.float32, device=device))
        # sized here, filled by from_linear or a load; None (not a buffer) when there are none
        dims = _check_float_dims(float_dims, in_features, "cpu")
        has_columns = dims.numel() > 0
        self.register_buffer("float_dims", dims.to(device) if has_columns else None)
        self.register_buffer(
            "float_weight",
            torch.zeros(out_features, dims.numel(), dtype=dtype or torch.float32, device=device)
            if has_columns
            else None,
        )
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
        float_dims: Sequence[int] | torch.Tensor | None = None,
        batch_invariant: bool = False,
    ) -> Int8Linear:
        """Quantize an ``nn.Linear`` (or transformers' ``Conv1D``, whose weight is (in, out)).

        ``float_dims``: input dims whose weight columns are kept in float and always computed in
        float (see the class docstring); the other columns are quantized without them.
        """
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
            batch_invariant=batch_invariant,
        )
        with torch.no_grad():
            W = weight.detach()
            dims = _check_float_dims(float_dims, in_features, weight.device)
            if dims.numel():
                module.float_dims = dims
                module.float_weight = W[:, dims].clone()  # (out, |S|), the original dtype
                W = W.index_fill(1, dims, 0)  # codes 0, and out of the row absmax
            W_i8, s_w = rowwise_quantize(W, dim=-1)  # (out, in) int8, (out,)
            module.weight_int8 = W_i8.contiguous()  # a Conv1D weight arrives transposed
            module.weight_scale = s_w
            if bias is not None:
                module.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)
        return module

    def __getattr__(self, name: str):
        if name == "weight_int8":
            # the caller may write through what it gets (.data, .numpy(), an inference tensor) where
            # the version counter cannot see it: rebuild the derived copies before their next use
            self.__dict__["_weight_exposed"] = True
        return super().__getattr__(name)

    def weight_changed(self) -> None:
        """Drop the cached packed weight and row sums; they are rebuilt from ``weight_int8`` on the next call.

        Needed only after writing the weight through ``.data`` / NumPy / DLPack or into an inference
        tensor, using a reference taken before the last forward call (see the class docstring).
        """
        self.__dict__["_weight_exposed"] = False
        self._packed_weight.clear()
        self._row_sums.clear()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.__dict__.get("_weight_exposed"):
            self.weight_changed()
        # the caches themselves: int8_linear builds the packed layout (a second copy of the weight on
        # CPU) and the row sums only if the int8 x int8 path runs, never for a layer that only decodes
        return int8_linear(
            x,
            self._buffers["weight_int8"],
            self.weight_scale,
            self.bias,
            self.threshold,
            activation=self.activation,
            packed_weight=self._packed_weight,
            weight_row_sums=self._row_sums,
            weight_only_max_tokens=self.weight_only_max_tokens,  # None: measured per shape, inside the op
            float_columns=None if self.float_dims is None else (self.float_dims, self.float_weight),
            batch_invariant=self.batch_invariant,
        )

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The float weight the layer multiplies by: ``weight_int8 * weight_scale``, with the
        ``float_dims`` columns taken from ``float_weight`` (a new tensor)."""
        float_columns = None if self.float_dims is None else (self.float_dims, self.float_weight)
        return dequantized_weight(self._buffers["weight_int8"], self.weight_scale, float_columns).to(dtype)

    @property
    def weight(self) -> torch.Tensor:
        """``dequantized_weight()`` in the bias' dtype (float32 without a bias): a new tensor, neither a
        parameter nor saved, for code written against ``nn.Linear`` that reads ``.weight`` (peft's
        device/dtype probes and DoRA's column norms). Read-only: the int8 codes are the state."""
        return self.dequantized_weight(self.bias.dtype if self.bias is not None else torch.float32)

    def memory_bytes(self) -> int:
        """Bytes held by this layer: int8 weight, scales, float columns and bias."""
        tensors = (self._buffers["weight_int8"], self.weight_scale, self.float_dims, self.float_weight, self.bias)
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errors):
        dims_key, weight_key = prefix + "float_dims", prefix + "float_weight"
        dims, weight = state_dict.get(dims_key), state_dict.get(weight_key)
        if (dims is None) != (weight is None):
            errors.append(f"{prefix}: {dims_key} and {weight_key} come together; the state holds only one of them")
            return
        if not _check_loaded_dtypes(state_dict, prefix, errors):
            return  # nothing of this layer is loaded (load_state_dict raises with the errors)
        self.weight_changed()  # whatever the grad mode: an inference-mode load bumps no version counter
        device = self._buffers["weight_int8"].device
        if dims is None or not dims.numel():  # a layer without float columns: no such buffers
            self.float_dims = self.float_weight = None
        else:  # take the stored |S|: the buffers are resized before the copy
            self.float_dims = torch.empty(dims.shape, dtype=torch.int64, device=device)
            self.float_weight = torch.empty(weight.shape, dtype=weight.dtype, device=device)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errors)
        if self.float_dims is not None:
            _check_float_dims(self.float_dims, self.in_features, device)
        elif dims is not None:  # an empty pair means none: not loaded, and not unexpected either
            for key in (dims_key, weight_key):
                if key in unexpected_keys:
                    unexpected_keys.remove(key)

    def _apply(self, fn, recurse=True):
        scale = self.weight_scale
        super()._apply(fn, recurse)
        moved = self.weight_scale
        if moved.dtype != torch.float32:
            # keep the scales float32 (see the class docstring): from the unrounded values where there
            # are any (not on meta: to_empty from meta has none, and must not copy out of meta)
            self.weight_scale = (moved if scale.is_meta else scale).to(device=moved.device, dtype=torch.float32)
        self.weight_changed()  # free the old layout now, not at the next forward
        return self

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, threshold={self.threshold}, activation={self.activation}"
            + (", batch_invariant=True" if self.batch_invariant else "")
        )


def _check_flag(batch_invariant) -> bool:
    if not isinstance(batch_invariant, bool):
        raise TypeError(f"batch_invariant must be a bool, got {batch_invariant!r}")
    return batch_invariant


def _check_loaded_dtypes(state_dict, prefix: str, errors: list[str]) -> bool:
    """A state whose tensors have the wrong kind of dtype is an error, never a silent cast
    (``copy_`` of a float ``weight_int8`` into the int8 buffer would truncate every code to 0)."""
    expected = {
        "weight_int8": (lambda t: t.dtype == torch.int8, "int8"),
        "weight_scale": (torch.Tensor.is_floating_point, "a float dtype"),
        "bias": (torch.Tensor.is_floating_point, "a float dtype"),
        "float_weight": (torch.Tensor.is_floating_point, "a float dtype"),
        "float_dims": (lambda t: not t.is_floating_point() and not t.is_complex() and t.dtype != torch.bool, "integer"),
    }
    found = [
        f"{prefix}{leaf}: expected {what}, got {value.dtype} (refusing to cast it)"
        for leaf, (ok, what) in expected.items()
        if isinstance(value := state_dict.get(prefix + leaf), torch.Tensor) and not ok(value)
    ]
    errors.extend(found)
    return not found


def _check_float_dims(dims: Sequence[int] | torch.Tensor | None, in_features: int, device) -> torch.Tensor:
    """``dims`` as a sorted int64 tensor of distinct input dims in ``[0, in_features)``."""
    if dims is None or (not isinstance(dims, torch.Tensor) and len(dims) == 0):
        return torch.zeros(0, dtype=torch.int64, device=device)
    t = torch.as_tensor(dims) if not isinstance(dims, torch.Tensor) else dims
    if t.is_meta:
        return t.to(torch.int64)
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool or t.dim() > 1:
        raise TypeError(f"float_dims must be a 1-D sequence of integer dims, got {t.dtype} {tuple(t.shape)}")
    t = t.reshape(-1).to(torch.int64)
    if t.numel() and not (0 <= int(t.min()) and int(t.max()) < in_features):
        raise ValueError(f"float_dims must lie in [0, {in_features}), got {t.tolist()}")
    if t.unique().numel() != t.numel():
        raise ValueError(f"float_dims holds a dim twice: {t.tolist()}")
    return t.sort().values.to(device)


def _linear_weight_and_bias(linear: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The (out, in) weight and bias of an ``nn.Linear`` or a GPT-2-style ``Conv1D``."""
    if isinstance(linear, nn.Linear):
        return linear.weight, linear.bias
    if type(linear).__name__ == "Conv1D" and hasattr(linear, "nf"):
        # transformers.pytorch_utils.Conv1D computes x @ W + b with W of shape (in, out)
        return linear.weight.T, linear.bias
    raise TypeError(f"expected nn.Linear or transformers Conv1D, got {type(linear).__name__}")
