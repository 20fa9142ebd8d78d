"""The LLM.int8() forward ``Y = X W^T + b`` with mixed-precision decomposition, run eagerly.

Steps, for ``X`` (tokens, K) and the stored int8 weight ``W_i8`` (N, K) with row scales ``s_w``,
each a kernel of ``kernels/`` (their oracle is ``llm_int8.primitives.int8_linear_reference``):

1. ``O`` = outlier feature dims of ``X`` (``|x| >= threshold``; non-finite always)  (``kernels/quantize.py``);
2. row-wise int8 codes of ``X`` with the columns in ``O`` zeroed: ``X_i8``, ``s_x``  (``kernels/quantize.py``);
3. ``C_i32 = X_i8 W_i8^T`` on the integer GEMM chosen for this machine  (``mm.py`` -> ``kernels/cpu_gemm.py``);
4. denormalize by ``s_x ⊗ s_w``, add ``X[:, O] (W_i8[:, O] s_w)^T`` in float and the bias  (``kernels/epilogue.py``).

``activation="zeropoint"`` (the library's default; see ``Int8Config.activation``) replaces step 2 by
asymmetric row-wise codes ``X_q`` with zero points ``zp_x``, and step 4 by
``(s_x ⊗ s_w) · (C_i32 - zp_x ⊗ r_w)`` with ``r_w = Σ_k W_i8[:, k]``: the same int8 GEMM plus one
rank-1 update. The columns in ``O`` hold the code of 0, ``zp_x``, so they add exactly nothing.

``float_columns = (S, W_S)`` (optional, static): feature dims ``S`` always in the float part,
multiplied by their *float* weight columns ``W_S`` (N, |S|) rather than dequantized int8 ones.
``Int8Linear`` holds them when converted with calibrated outlier dims
(``llm_int8.analysis.calibrate_outlier_dims``). Their stored codes are 0 and left out of the row absmax.

Routes, in ``forward``: a few tokens on CPU take the weight-only kernel
(``kernels/weight_only.py``; up to the crossover ``choice/cpu.py`` measured); CUDA tensors go to
``forward_cuda.py``; CPU inference runs ``_forward_cpu``: the quantizer writes the codes once, in the
form the chosen GEMM reads (``kernels/codes_gemm.py``), and one epilogue pass (``epilogue.finish``)
takes the GEMM's output to the layer's output, bias and cast included, both in C++ where the
extension is built (``kernels/native/``) and bit for bit the sequence of ``_forward_2d`` either way;
everything else (autograd, float64) runs ``_forward_2d``, the four steps above one op at a time.
Gradients flow to ``X`` only (the int8 weight is frozen): ``dX = dY · W`` with ``W`` dequantized, as
in bitsandbytes, so adapters can be trained on a frozen int8 model. ``linear.py`` is the public entry
(it adds the ``torch.compile`` custom op on top of this).
"""

from __future__ import annotations

import torch

from ..primitives import ACTIVATION_QUANTIZERS
from . import forward_cuda, forward_invariant, mm
from .choice import cpu as cpu_choice
from .kernels import bf16, codes_gemm, cpu_gemm, epilogue, probes, weight_only
from .kernels.quantize import quantize_activations, quantize_activations_zeropoint, quantize_into
from .mm import int8_mm_float
from .prepack import PackedWeight, PackedWeightCache

_CPU_DTYPES = (torch.float32, torch.bfloat16, torch.float16)  # what _forward_cpu reads and writes

__all__ = ["check_inputs", "dequantized_weight", "forward", "needs_grad", "weight_only_limit"]


def check_inputs(x, weight_int8, weight_scale, bias, threshold, activation):
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
    """Steps 1-4 for (M, K) ``X``: float32 (M, N), no bias."""
    static_idx = None if float_columns is None else float_columns[0]
    zp_x = None
    if activation == "zeropoint":
        X_codes, s_x, zp_x, outlier_idx = quantize_activations_zeropoint(X, threshold, static_idx)
        if row_sums is None:
            row_sums = epilogue.compute_weight_row_sums(W_i8)  # (N,)
    else:
        X_codes, s_x, outlier_idx = quantize_activations(X, threshold, static_idx)  # (M, K), (M,), (|O|,)
    C = int8_mm_float(X_codes, W_i8, packed=packed)  # (M, N) float32(C_i32)
    epilogue.denormalize(C, s_x, s_w, zp_x, row_sums)
    epilogue.add_outlier_product(C, X, outlier_idx, W_i8, s_w, packed)
    return epilogue.add_float_columns(C, X, float_columns)


def _forward_cpu(
    X: torch.Tensor,
    W_i8: torch.Tensor,
    s_w: torch.Tensor,
    bias: torch.Tensor | None,
    threshold: float,
    packed: PackedWeight | None,
    activation: str,
    row_sums: torch.Tensor | None,
    float_columns: tuple[torch.Tensor, torch.Tensor] | None,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """Steps 1-4, the bias and the cast for (M, K) CPU ``X``, no autograd: (M, N) ``out_dtype``.

    The codes are written once into the buffer the chosen GEMM reads; ``FBGEMM_PAIRS``' sparse fix,
    the scales, the float products, the bias and the cast are one epilogue pass. Equal to
    ``_forward_2d`` plus the bias and the cast, bit for bit (tests/test_native_kernels.py).
    """
    M, K = X.shape
    kernel, layout, pairs, A = mm.gemm_plan(W_i8, packed, M)  # A: (M, K) or (M + 2, K)
    static_idx = None if float_columns is None else float_columns[0]
    s_x, zp_x, outlier_idx = quantize_into(X, threshold, static_idx, activation, A)  # and A's sentinel rows
    if zp_x is not None and row_sums is None:
        row_sums = epilogue.compute_weight_row_sums(W_i8)  # (N,)
    if pairs:
        C = codes_gemm.pairs_main_product(A, layout)  # (M + 2, N); the sparse fix is added by finish
    elif layout is not None:
        C = cpu_gemm.int8_mm_float(A, W_i8, layout)
    elif kernel == probes.INT_MM:
        C = cpu_gemm.int_mm(A, W_i8)  # (M, N) int32, read as it is by the epilogue
        if C.dtype != torch.int32:  # int64 past int32's reach (K > 131,071): float32(C), rounded once
            C = C.float()
    else:
        C = int8_mm_float(A, W_i8, packed=packed)  # torch._int_mm or the reference
    products = []
    if outlier_idx.numel():
        products.append(epilogue.outlier_operands(X, outlier_idx, W_i8, s_w, packed))
    if float_columns is not None:
        products.append((X.index_select(1, float_columns[0]).float(), float_columns[1].float()))
    inexact = torch.zeros(1, dtype=torch.int32) if pairs and not layout.always_exact else None
    fix = dict(fix=layout.fix, codes=A, inexact=inexact) if pairs else {}
    inline = X.dtype == torch.bfloat16 and bf16.has_native_bf16()  # the bf16 route (kernels/bf16.py)
    products, common = tuple(products), dict(bias=bias, out_dtype=out_dtype, inline_products=inline)
    out = epilogue.finish(C, s_w, s_x, zp_x, row_sums, **fix, products=products, **common)
    if inexact is not None and inexact.item():  # a main product reached 2**24: the exact route, rows checked
        C = cpu_gemm.int8_mm_float(A[:M], W_i8, layout)
        out = epilogue.finish(C, s_w, s_x, zp_x, row_sums, products=products, **common)
    return out


def _int8_layer_probe(X, W_i8, s_w, packed, row_sums) -> torch.Tensor:
    """The int8 x int8 forward as ``choice/cpu.py`` times it against the weight-only kernel."""
    return _forward_cpu(X, W_i8, s_w, None, 6.0, packed, "zeropoint", row_sums, None, X.dtype)


def weight_only_limit(in_features: int, out_features: int) -> int:
    """The measured weight-only crossover of a CPU layer of this shape (``choice/cpu.py``)."""
    return cpu_choice.weight_only_max_tokens(in_features, out_features, _int8_layer_probe)


def dequantized_weight(
    W_i8: torch.Tensor, s_w: torch.Tensor, float_columns: tuple[torch.Tensor, torch.Tensor] | None = None
) -> torch.Tensor:
    """The (N, K) float32 weight the layer multiplies by: ``W_i8 ⊙ s_w``, the float columns as stored."""
    W = W_i8.float() * s_w.float()[:, None]
    if float_columns is not None:
        W[:, float_columns[0]] = float_columns[1].float()
    return W


def needs_grad(x: torch.Tensor, bias: torch.Tensor | None) -> bool:
    return torch.is_grad_enabled() and (x.requires_grad or (bias is not None and bias.requires_grad))


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


def _weight_only(x, weight_int8, weight_scale, bias, float_columns) -> torch.Tensor:
    out = weight_only.int8_weight_only_linear(x, weight_int8, weight_scale, bias)
    if float_columns is not None:  # the codes of S are 0: add X_S W_S^T in float
        S, W_S = float_columns
        out = (out.float() + x.index_select(-1, S).float() @ W_S.float().T).to(x.dtype)
    return out


def _int8_2d(X, weight_int8, weight_scale, bias, threshold, activation, packed, row_sums, float_columns):
    """Steps 1-4 plus the bias on (tokens, K) ``X``, with autograd where ``X`` needs a gradient; float32."""
    args = (X, weight_int8, weight_scale, threshold, packed, activation, row_sums, float_columns)
    if torch.is_grad_enabled() and X.requires_grad:
        C = _Int8LinearFunction.apply(*args)  # float32 (tokens, N)
    else:
        C = _forward_2d(*args)
    if bias is not None:
        # out of place: under autograd the bias may itself be trained
        C = C + bias.float() if bias.requires_grad else C.add_(bias.float())
    return C


def forward(x, weight_int8, weight_scale, bias, threshold, activation, packed, row_sums, weight_only_max_tokens,
            float_columns, batch_invariant=False, statistics=None) -> torch.Tensor:  # fmt: skip
    """``llm_int8.ops.int8_linear`` run eagerly, its arguments in order (``linear.py`` documents them;
    ``packed`` and ``row_sums`` are its ``packed_weight`` and ``weight_row_sums``)."""
    check_inputs(x, weight_int8, weight_scale, bias, threshold, activation)
    invariant = forward_invariant.enabled(batch_invariant)
    if statistics is not None and not invariant:
        raise ValueError("int8_linear: statistics (per-token ranges) need batch_invariant=True")
    if invariant:
        weight_only_max_tokens = 0  # one numeric definition at every M: no weight-only kernel below a crossover
    N, K = weight_int8.shape
    if "meta" in (x.device.type, weight_int8.device.type):  # shape inference: no data to find outliers in
        return torch.nn.functional.linear(x.to("meta"), torch.empty(N, K, dtype=x.dtype, device="meta"))
    tokens = x.numel() // K if K else 0
    if weight_only_max_tokens is None and tokens > cpu_choice.AUTO_MAX_TOKENS:
        weight_only_max_tokens = 0  # beyond any crossover: no need to know (or measure) this shape's
    elif weight_only_max_tokens is None:
        # the measured crossover times CPU kernels: a CUDA layer takes the fixed rule, not a CPU timing
        on_cpu = x.device.type == "cpu"
        weight_only_max_tokens = weight_only_limit(K, N) if on_cpu else cpu_choice.fixed_max_tokens(K, N)
    if float_columns is not None:
        float_columns = _check_float_columns(float_columns, N, K)
    lead = x.shape[:-1]
    X = x.reshape(-1, K)  # (tokens, in_features)
    if X.shape[0] == 0:
        out = x.new_zeros(*lead, N)
        return out if bias is None else out + bias.to(x.dtype)
    if X.shape[0] <= weight_only_max_tokens and not needs_grad(x, bias) and weight_only.available(x.device, K):
        return _weight_only(x, weight_int8, weight_scale, bias, float_columns)
    # the derived copies are built only now: a layer that only takes the weight-only path never packs
    if isinstance(packed, PackedWeightCache):
        packed = packed.get(weight_int8)
    if isinstance(row_sums, PackedWeightCache):
        row_sums = row_sums.get(weight_int8) if activation == "zeropoint" else None
    if invariant:
        out = forward_invariant.forward_invariant(
            X, weight_int8, weight_scale, bias, threshold, activation, packed, row_sums, float_columns, statistics,
            needs_grad(x, bias),
        )  # fmt: skip
        return out.reshape(*lead, N)
    if x.device.type == "cuda" and not needs_grad(x, bias):  # Triton or cuBLASLt, as measured
        out = forward_cuda.int8_linear_cuda(
            X, weight_int8, weight_scale, bias, threshold, activation, row_sums, float_columns,
            weight_only_max_tokens,
            lambda: _forward_2d(X, weight_int8, weight_scale, threshold, packed, activation, row_sums, float_columns),
        )  # fmt: skip
        return out.reshape(*lead, N)
    if x.device.type == "cpu" and x.dtype in _CPU_DTYPES and not needs_grad(x, bias):
        out = _forward_cpu(X, weight_int8, weight_scale, bias, threshold, packed, activation, row_sums, float_columns,
                           x.dtype)  # fmt: skip
        return out.reshape(*lead, N)
    C = _int8_2d(X, weight_int8, weight_scale, bias, threshold, activation, packed, row_sums, float_columns)
    return C.to(x.dtype).reshape(*lead, N)  # (..., out_features)
