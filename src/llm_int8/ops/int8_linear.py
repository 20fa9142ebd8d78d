"""``int8_linear``: the LLM.int8() forward ``Y = X W^T + b`` with mixed-precision decomposition.

Steps, for ``X`` (tokens, K) and the stored int8 weight ``W_i8`` (N, K) with row scales ``s_w``:

1. ``O`` = outlier feature dims of ``X`` (``|x| >= threshold``; non-finite always).
2. Row-wise absmax quantization of ``X`` with the columns in ``O`` zeroed: ``X_i8``, ``s_x``.
3. ``C_i32 = X_i8 W_i8^T`` on the integer GEMM (``int8_mm``'s backends, read as float32).
4. Denormalize by the outer product ``s_x ⊗ s_w``, add ``X[:, O] (W_i8[:, O] s_w)^T`` computed in
   float, add the bias, cast to ``X``'s dtype.

``float_columns = (S, W_S)`` (optional, static): feature dims ``S`` that are always in the float
part, multiplied by their *float* weight columns ``W_S`` (N, |S|) rather than by dequantized int8
ones. ``Int8Linear`` holds them when it was converted with calibrated outlier dims
(``llm_int8.analysis.calibrate_outlier_dims``): the dims that reach α on every token carry the
largest activations, so the rounding error of their int8 weight columns is multiplied by the
largest ``x``. The stored codes of those columns are 0 and left out of the weight's row absmax.

``activation="zeropoint"`` (opt-in; see ``Int8Config.activation``) replaces step 2 by asymmetric
row-wise quantization, codes ``X_q`` in [-127, 127] with zero points ``zp_x``, and step 4 by
``(s_x ⊗ s_w) · (C_i32 - zp_x ⊗ r_w)`` with ``r_w = Σ_k W_i8[:, k]`` the weight's row sums: the
integer GEMM is the same int8 x int8 product, plus one rank-1 update. The columns in ``O`` hold
the code of 0, ``zp_x``, so they add exactly nothing to the corrected sum.

The plain-PyTorch oracle is ``llm_int8.primitives.int8_linear_reference``.

Gradients flow to ``X`` only (the int8 weight is frozen): ``dX = dY · W`` with ``W`` dequantized,
as in bitsandbytes, so adapters can be trained on a frozen int8 model.
"""

from __future__ import annotations

import torch

from ..primitives import ACTIVATION_QUANTIZERS, INT8_MAX, zeropoint_params
from . import cuda, weight_only
from .int8_mm import int8_mm_float
from .prepack import PackedWeight, PackedWeightCache

__all__ = ["compute_weight_row_sums", "dequantized_weight", "int8_linear"]


def _check_inputs(x, weight_int8, weight_scale, bias, threshold, activation):
    if not x.is_floating_point():
        raise TypeError(f"int8_linear: input must be a float tensor, got {x.dtype}")
    if weight_int8.dtype != torch.int8 or weight_int8.dim() != 2:
        raise TypeError(
            f"int8_linear: weight must be a 2-D int8 tensor, got {weight_int8.dtype} {tuple(weight_int8.shape)}"
        )
    N, K = weight_int8.shape
    if x.dim() == 0 or x.shape[-1] != K:
        raise ValueError(
            f"int8_linear: input has {x.shape[-1] if x.dim() else 'no'} features in its last "
            f"dimension (shape {tuple(x.shape)}), but the layer expects in_features={K}"
        )
    if weight_scale.shape != (N,):
        raise ValueError(f"int8_linear: weight_scale must have shape ({N},), got {tuple(weight_scale.shape)}")
    if bias is not None and bias.shape != (N,):
        raise ValueError(f"int8_linear: bias must have shape ({N},), got {tuple(bias.shape)}")
    if not threshold >= 0:
        raise ValueError(f"int8_linear: threshold must be >= 0, got {threshold}")
    if activation not in ACTIVATION_QUANTIZERS:
        raise ValueError(f"int8_linear: activation must be one of {ACTIVATION_QUANTIZERS}, got {activation!r}")


def _check_float_columns(float_columns, N: int, K: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    S, W_S = float_columns
    if S.dtype != torch.int64 or S.dim() != 1:
        raise TypeError(f"int8_linear: float_columns dims must be a 1-D int64 tensor, got {S.dtype} {tuple(S.shape)}")
    if W_S.shape != (N, S.numel()) or not W_S.is_floating_point():
        raise ValueError(
            f"int8_linear: float_columns weight must be a float ({N}, {S.numel()}) tensor, "
            f"got {W_S.dtype} {tuple(W_S.shape)}"
        )
    if S.numel() and S.device.type == "cpu" and not (0 <= int(S.min()) and int(S.max()) < K):  # no GPU sync
        raise ValueError(f"int8_linear: float_columns dims must lie in [0, {K}), got {S.tolist()}")
    return float_columns if S.numel() else None


def _outlier_index(col_absmax: torch.Tensor, threshold: float) -> torch.Tensor:
    """Indices of ``O`` from the per-column max of ``|X|``, as ``outlier_columns`` defines it."""
    # "not (max < t)" so that a NaN column is an outlier for every threshold (see outlier_columns)
    O = ~(col_absmax < threshold) if threshold > 0 else ~torch.isfinite(col_absmax)
    return O.nonzero().squeeze(1)  # (|O|,)


def _split_outliers(X: torch.Tensor, threshold: float, static_idx: torch.Tensor | None = None):
    """Step 1 and the row ranges for step 2, from four reductions over ``X`` (M, K) float32, bf16 or fp16.

    Returns ``X_regular`` (``X`` with the columns in ``O`` and in ``static_idx`` zeroed; ``X``
    itself when both are empty), the indices of ``O`` outside ``static_idx``, and the per-row max
    and min of ``X_regular``. ``max|x|`` is taken as
    ``max(max x, -min x)``: the same value as ``|X|.amax()``, without an ``|X|`` copy (4x slower
    than the reductions on torch 2.13 CPU); ``amax`` / ``amin`` propagate NaN, so a NaN column is an
    outlier. (``torch.aminmax`` is 15x slower than the two reductions there.)
    """
    # in X's own dtype: max and min are exact in any float format, and a bf16 X is read at 2 bytes a
    # value rather than copied to float32 first (the reductions' (K,) and (M,) results are widened)
    col_absmax = torch.maximum(X.amax(dim=0), X.amin(dim=0).neg()).float()  # (K,)
    if static_idx is not None and static_idx.numel():
        col_absmax[static_idx] = 0.0  # in the float part anyway, with their float weight columns
    outlier_idx = _outlier_index(col_absmax, threshold)
    float_idx = outlier_idx if static_idx is None else torch.cat([outlier_idx, static_idx])
    X_regular = X.index_fill(1, float_idx, 0) if float_idx.numel() else X  # (M, K)
    return X_regular, outlier_idx, X_regular.amax(dim=1).float(), X_regular.amin(dim=1).float()


def _as_compute_dtype(X: torch.Tensor) -> torch.Tensor:
    # 16-bit floats widen exactly inside the float32 arithmetic that reads them; anything else
    # (float64) is rounded to float32 first, as the quantizers of primitives/quantize.py do
    return X if X.dtype in (torch.float32, torch.bfloat16, torch.float16) else X.float()


def _quantize_activations(
    X: torch.Tensor, threshold: float, static_idx: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Steps 1-2: outlier dims ``O`` and the row-wise absmax int8 codes of ``X`` without them.

    Bit-identical to ``outlier_columns(X, threshold)`` followed by
    ``rowwise_quantize(X.index_fill(1, O, 0))``, which read ``X`` three times and copy it twice.
    Returns the codes ``X_i8`` (M, K) as float32 integers in [-127, 127] (zero in ``O``; the CPU
    kernels read them in that form), ``s_x`` (M,) float32 and the indices of ``O``.
    """
    X_regular, outlier_idx, row_max, row_min = _split_outliers(_as_compute_dtype(X), threshold, static_idx)
    absmax = torch.maximum(row_max, row_min.neg())  # (M,)
    # 127 / absmax; an all-zero row gets codes 0 and s_x 0
    inv_step = torch.where(absmax > 0, INT8_MAX / absmax, 0.0)  # (M,)
    # a bf16/fp16 X_regular times float32 steps is computed and returned in float32 (type promotion):
    # the same products as X.float() * inv_step, without the float32 copy of X
    X_scaled = X_regular * inv_step[:, None]
    tiny = torch.isinf(inv_step)
    if tiny.any():
        # absmax < 127 / float32 max (3.7e-37): divide instead, as rowwise_quantize does, so such rows
        # keep 8-bit codes rather than their signs
        X_scaled = torch.where(tiny[:, None], X_regular / absmax[:, None] * INT8_MAX, X_scaled)
    X_codes = X_scaled.round_().clamp_(-INT8_MAX, INT8_MAX)  # half to even
    return X_codes, absmax / INT8_MAX, outlier_idx


def _quantize_activations_zeropoint(
    X: torch.Tensor, threshold: float, static_idx: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Steps 1-2 with asymmetric codes: bit-identical to ``zeropoint_quantize(X_regular, dim=-1)``.

    ``X_regular`` is ``X`` with the columns in ``O`` zeroed. Returns the codes ``X_q`` (M, K) as
    float32 integers in [-127, 127] (``zp_x`` in ``O``), ``s_x`` (M,), ``zp_x`` (M,) float32 and the
    indices of ``O``.
    """
    X_regular, outlier_idx, row_max, row_min = _split_outliers(_as_compute_dtype(X), threshold, static_idx)
    nd, zp = zeropoint_params(row_max, row_min)  # (M,) each: codes per unit, zero point
    X_codes = (X_regular * nd[:, None]).add_(zp[:, None]).round_().clamp_(-INT8_MAX, INT8_MAX)
    return X_codes, 1.0 / nd, zp, outlier_idx


def compute_weight_row_sums(weight_int8: torch.Tensor) -> torch.Tensor:
    """``r_w = Σ_k W_i8[:, k]`` (N,) as float32 (exact below 2**24 / 127 = 132k input features)."""
    return weight_int8.sum(dim=1, dtype=torch.float32)


_MAX_CACHED_COLUMNS = 64  # per weight: N bytes each (256 KiB for N = 4096), far more dims than α = 6 finds


def _outlier_columns(W_i8: torch.Tensor, idx: torch.Tensor, packed: PackedWeight | None) -> torch.Tensor:
    """``W_i8[:, O]`` (N, |O|) int8, from the packed weight's cache of recent outlier columns where there is one."""
    cache = getattr(packed, "columns", None)
    if cache is None or idx.numel() > _MAX_CACHED_COLUMNS:
        # gather: 1.5-3x faster than index_select on dim 1 for a (N, K) int8 weight (torch 2.13 CPU)
        return W_i8.gather(1, idx.expand(W_i8.shape[0], -1))
    dims = idx.tolist()
    missing = [k for k in dims if k not in cache]
    if missing:
        excess = len(cache) + len(missing) - _MAX_CACHED_COLUMNS
        if excess > 0:  # drop the oldest columns this call does not use
            for k in [k for k in cache if k not in dims][:excess]:
                del cache[k]
        gathered = W_i8.gather(1, torch.tensor(missing).expand(W_i8.shape[0], -1)).T  # (|missing|, N)
        cache.update(zip(missing, gathered.contiguous().unbind(0), strict=True))
    return torch.stack([cache[k] for k in dims], dim=1)  # (N, |O|)


def _forward_2d(
    X: torch.Tensor,
    W_i8: torch.Tensor,
    s_w: torch.Tensor,
    threshold: float,
    packed: PackedWeight | None,
    activation: str = "absmax",
    row_sums: torch.Tensor | None = None,
    float_columns: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """LLM.int8() product of (M, K) ``X`` with the int8 weight; float32 (M, N), no bias."""
    static_idx = None if float_columns is None else float_columns[0]
    if activation == "zeropoint":
        X_codes, s_x, zp_x, outlier_idx = _quantize_activations_zeropoint(X, threshold, static_idx)
        C = int8_mm_float(X_codes, W_i8, packed=packed)  # (M, N) float32(X_q W_i8^T)
        r_w = compute_weight_row_sums(W_i8) if row_sums is None else row_sums  # (N,)
        C.addr_(zp_x, r_w, alpha=-1)  # C_i32 - zp_x ⊗ r_w: the integer product of (X_q - zp_x)
    else:
        X_codes, s_x, outlier_idx = _quantize_activations(X, threshold, static_idx)  # (M, K), (M,), (|O|,)
        C = int8_mm_float(X_codes, W_i8, packed=packed)  # (M, N) float32(C_i32)
    # (s_x ⊗ s_w) · C_i32, s_w first: C_i32 s_w is of the order of the output over s_x, so a row with
    # |x| near float32's maximum (s_x ~ 1e34) overflows only where the output itself does
    C.mul_(s_w.float()[None, :]).mul_(s_x[:, None])
    if outlier_idx.numel():
        X_O = X.index_select(1, outlier_idx).float()  # (M, |O|)
        W_O = _outlier_columns(W_i8, outlier_idx, packed).float() * s_w.float()[:, None]  # (N, |O|)
        C.addmm_(X_O, W_O.T)
    if static_idx is not None and static_idx.numel():
        C.addmm_(X.index_select(1, static_idx).float(), float_columns[1].float().T)  # X_S W_S^T
    return C


def dequantized_weight(
    W_i8: torch.Tensor, s_w: torch.Tensor, float_columns: tuple[torch.Tensor, torch.Tensor] | None = None
) -> torch.Tensor:
    """The (N, K) float32 weight the layer multiplies by: ``W_i8 ⊙ s_w``, the float columns as stored."""
    W = W_i8.float() * s_w.float()[:, None]
    if float_columns is not None:
        W[:, float_columns[0]] = float_columns[1].float()
    return W


def _needs_grad(x: torch.Tensor, bias: torch.Tensor | None) -> bool:
    return torch.is_grad_enabled() and (x.requires_grad or (bias is not None and bias.requires_grad))


def _compiling() -> bool:
    is_compiling = getattr(torch.compiler, "is_compiling", None)  # torch >= 2.3
    return bool(is_compiling and is_compiling())


class _Int8LinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, X, W_i8, s_w, threshold, packed, activation, row_sums, float_columns):
        ctx.save_for_backward(W_i8, s_w)
        ctx.x_dtype = X.dtype
        ctx.float_columns = float_columns
        return _forward_2d(X, W_i8, s_w, threshold, packed, activation, row_sums, float_columns)  # float32

    @staticmethod
    def backward(ctx, grad_C):
        W_i8, s_w = ctx.saved_tensors
        grad_X = None
        if ctx.needs_input_grad[0]:
            W = dequantized_weight(W_i8, s_w, ctx.float_columns)  # (N, K)
            grad_X = (grad_C.float() @ W).to(ctx.x_dtype)
        return grad_X, None, None, None, None, None, None, None


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
) -> torch.Tensor:
    """LLM.int8() linear layer: ``x`` (..., K) float -> (..., N) in ``x``'s dtype.

    ``threshold`` is α of the decomposition; 0 disables it (pure vector-wise int8).
    ``activation``: ``"absmax"`` (the paper's symmetric per-token codes) or ``"zeropoint"``
    (asymmetric per-token codes, corrected with the weight's row sums; see the module docstring).
    ``packed_weight``: optionally ``llm_int8.ops.prepack_int8_weight(weight_int8)``, built once and
    reused; without it a backend that wants a packed layout packs per call.
    ``weight_row_sums``: optionally ``llm_int8.ops.compute_weight_row_sums(weight_int8)``, cached likewise
    (only read for ``activation="zeropoint"``).
    Either may instead be a ``PackedWeightCache`` (``Int8Linear`` passes its caches): it is asked for
    its value only when the int8 x int8 path runs, so a layer that only takes the weight-only path
    never builds the packed copy of its weight or its row sums.
    ``weight_only_max_tokens``: inputs of at most this many rows (tokens) take the int8-weight,
    bf16-activation kernel of ``ops/weight_only.py`` where it is available (CPU, ``in_features`` a
    multiple of 16) and no gradient is needed; 0 (the default here) never; ``None``: the crossover
    measured for this shape on this machine (``weight_only.auto_max_tokens``), which ``Int8Linear`` uses.

    Under ``torch.compile`` the whole call is the custom op ``llm_int8::int8_linear``
    (``ops/custom_op.py``): one graph node, the same numerics.

    NaN/Inf policy: a column of ``x`` that holds a non-finite value is always computed in float,
    so non-finite values propagate to exactly the outputs ``nn.Linear`` would make non-finite,
    and never corrupt the int8 scale of other values. The weight-only path multiplies ``x`` as it
    is, so it propagates them the same way.
    """
    _check_inputs(x, weight_int8, weight_scale, bias, threshold, activation)
    N, K = weight_int8.shape
    if _compiling():
        from .custom_op import OP  # registered with the ops package; imported here, it imports this module

        if OP is not None:  # one opaque node for torch.compile: no graph break on the data-dependent steps
            S, W_S = (None, None) if float_columns is None else float_columns
            if _needs_grad(x, bias):  # as in eager: a differentiated call never takes the weight-only path
                weight_only_max_tokens = 0
            return OP(x, weight_int8, weight_scale, bias, float(threshold), activation, weight_only_max_tokens, S, W_S)
    if weight_only_max_tokens is None:
        # the measured crossover times CPU kernels: a CUDA layer takes the fixed rule, not a CPU timing
        cpu = x.device.type == "cpu"
        weight_only_max_tokens = weight_only.auto_max_tokens(K, N) if cpu else weight_only.fixed_max_tokens(K, N)
    if float_columns is not None:
        float_columns = _check_float_columns(float_columns, N, K)
    lead = x.shape[:-1]
    X = x.reshape(-1, K)  # (tokens, in_features)
    if X.shape[0] == 0:
        out = x.new_zeros(*lead, N)
        return out if bias is None else out + bias.to(x.dtype)
    if X.shape[0] <= weight_only_max_tokens and not _needs_grad(x, bias) and weight_only.available(x.device, K):
        out = weight_only.int8_weight_only_linear(x, weight_int8, weight_scale, bias)
        if float_columns is not None:  # the codes of S are 0: add X_S W_S^T in float
            S, W_S = float_columns
            out = (out.float() + x.index_select(-1, S).float() @ W_S.float().T).to(x.dtype)
        return out
    if isinstance(packed_weight, PackedWeightCache):
        packed_weight = packed_weight.get(weight_int8)
    if isinstance(weight_row_sums, PackedWeightCache):
        weight_row_sums = weight_row_sums.get(weight_int8) if activation == "zeropoint" else None
    if x.device.type == "cuda" and not _needs_grad(x, bias):  # Triton or cuBLASLt, as measured (ops/cuda.py)
        out = cuda.int8_linear_cuda(
            X, weight_int8, weight_scale, bias, threshold, activation, weight_row_sums, float_columns,
            weight_only_max_tokens,
            lambda: _forward_2d(X, weight_int8, weight_scale, threshold, packed_weight, activation, weight_row_sums,
                                float_columns),
        )  # fmt: skip
        return out.reshape(*lead, N)
    if torch.is_grad_enabled() and x.requires_grad:
        C = _Int8LinearFunction.apply(
            X, weight_int8, weight_scale, threshold, packed_weight, activation, weight_row_sums, float_columns
        )  # float32 (tokens, N)
    else:
        C = _forward_2d(
            X, weight_int8, weight_scale, threshold, packed_weight, activation, weight_row_sums, float_columns
        )
    if bias is not None:
        # out of place: under autograd the bias may itself be trained
        C = C + bias.float() if bias.requires_grad else C.add_(bias.float())
    return C.to(x.dtype).reshape(*lead, N)  # (..., out_features)
