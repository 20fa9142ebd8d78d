"""Exact emulation of the int8 matmul variants compared in Table 1 of the LLM.int8() paper.

Every variant computes ``C = X W^T`` (``X``: (tokens, K), ``W``: (N, K) in ``nn.Linear`` layout) as

    C ≈ Σ_{h∈O} X^h W'^h  +  (s_x ⊗ s_w) · Σ_{h∉O} (X_q^h - zp_x)(W_q^h - zp_w)

where ``X_q, s_x, zp_x`` and ``W_q, s_w, zp_w`` are int8 codes, dequantization steps and zero points
(``zp = 0`` for absmax), with one scale per tensor or per row (per token for ``X``, per output
feature for ``W``), and ``O`` is the set of outlier columns of ``X`` (empty without decomposition).

The integer sum is *emulated exactly*: the centred codes ``X_q - zp_x`` and ``W_q - zp_w`` are
integers in ``[-254, 254]``, held in float64, so every partial sum of their products is an integer
of magnitude at most ``K * 254**2`` — exactly representable below 2**53, i.e. for any ``K`` below
1.3e11. The result therefore equals an int32/int64 GEMM bit for bit (for zeropoint: the paper's
int16 product ``(A_i8 + zp_a)(B_i8 + zp_b)``, or its unrolled form
``A_i8 B_i8 - A_i8 zp_b - zp_a B_i8 + zp_a zp_b``, which are the same integer). The denormalization
and the outlier part are done in float64 too and cast to ``X``'s dtype once at the end.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .outliers import outlier_columns
from .quantize import rowwise_quantize, zeropoint_quantize

__all__ = ["QuantizedOperand", "emulated_int8_matmul", "exact_quantized_product", "quantize_operand"]


class QuantizedOperand(NamedTuple):
    """Int8 codes of a 2-D operand ``A`` (rows, K) with ``A ≈ (codes - zero_point) * scale``.

    ``scale`` and ``zero_point`` are (rows,) for per-row quantization, 0-d for tensor-wise;
    ``zero_point`` is ``None`` for absmax (symmetric) quantization.
    """

    codes: torch.Tensor  # (rows, K) int8
    scale: torch.Tensor  # (rows,) or () float32
    zero_point: torch.Tensor | None  # like scale, int32, or None

    def centred(self) -> torch.Tensor:
        """``codes - zero_point`` as float64 integers in [-254, 254], shape (rows, K)."""
        C = self.codes.double()
        if self.zero_point is None:
            return C
        zp = self.zero_point.double()
        return C - (zp[:, None] if zp.dim() else zp)

    def dequantize(self) -> torch.Tensor:
        """``(codes - zero_point) * scale`` in float64, shape (rows, K)."""
        s = self.scale.double()
        return self.centred() * (s[:, None] if s.dim() else s)


def quantize_operand(A: torch.Tensor, per_row: bool, zeropoint: bool) -> QuantizedOperand:
    """Quantize a 2-D ``A`` (rows, K): absmax or zeropoint, one scale per row or for the tensor.

    Per-row absmax: ``A_q[i] = round(127 / max|A[i]| * A[i])`` (``rowwise_quantize``); zeropoint:
    ``nd = 254 / (max - min)``, ``zp = -round(nd * min) - 127``, ``A_q = round(nd * A + zp)``
    (``zeropoint_quantize``), per row or over the whole tensor.
    """
    if A.dim() != 2:
        raise ValueError(f"quantize_operand expects a 2-D tensor (rows, K), got shape {tuple(A.shape)}")
    dim = -1 if per_row else None
    if zeropoint:
        codes, scale, zp = zeropoint_quantize(A, dim=dim)
        return QuantizedOperand(codes, scale, zp)
    codes, scale = rowwise_quantize(A, dim=dim)
    return QuantizedOperand(codes, scale, None)


def exact_quantized_product(
    Xq: QuantizedOperand, Wq: QuantizedOperand, W_centred: torch.Tensor | None = None
) -> torch.Tensor:
    """``(s_x ⊗ s_w) · (X_q - zp_x)(W_q - zp_w)^T`` in float64, the integer sum exact.

    ``Xq``: (M, K) codes, ``Wq``: (N, K) codes. ``W_centred``: ``Wq.centred()`` if the caller keeps
    it (a layer reusing its weight saves the conversion). Returns (M, N) float64.
    """
    if Xq.codes.shape[-1] != Wq.codes.shape[-1]:
        raise ValueError(f"inner dimensions differ: X {tuple(Xq.codes.shape)}, W {tuple(Wq.codes.shape)}")
    W_c = Wq.centred() if W_centred is None else W_centred  # (N, K) float64 integers
    C_int = Xq.centred() @ W_c.T  # (M, N), integer-valued, exact below 2**53
    s_x, s_w = Xq.scale.double(), Wq.scale.double()
    s_x = s_x[:, None] if s_x.dim() else s_x  # (M, 1) or ()
    s_w = s_w[None, :] if s_w.dim() else s_w  # (1, N) or ()
    return C_int * s_x * s_w


def emulated_int8_matmul(
    X: torch.Tensor,
    Wq: QuantizedOperand,
    *,
    x_per_row: bool,
    zeropoint: bool,
    threshold: float = 0.0,
    W_outlier: torch.Tensor | None = None,
    W_centred: torch.Tensor | None = None,
) -> torch.Tensor:
    """One Table 1 variant of ``C = X W^T`` for ``X`` (M, K) float and the quantized weight ``Wq`` (N, K).

    ``threshold > 0`` turns on the mixed-precision decomposition: ``O`` = columns of ``X`` with some
    ``|x| >= threshold``; they are removed from ``X`` before it is quantized (so they do not set
    ``s_x``) and multiplied in float64 against ``W_outlier[:, O]`` — the float weight (the paper's
    ``X_f16^h W_f16^h``) — or, when ``W_outlier`` is ``None``, against the dequantized int8 weight
    (what ``Int8Linear``, which stores only int8, does). ``threshold == 0``: no decomposition, but
    non-finite columns still take the float path, as in ``int8_linear``. ``W_centred``: the cached
    ``Wq.centred()``, optional.

    Returns (M, N) float64 (no bias).
    """
    O = outlier_columns(X, threshold)  # (K,) bool
    has_outliers = bool(O.any())
    X_regular = X.masked_fill(O, 0) if has_outliers else X  # (M, K), outlier columns removed
    # The zeroed columns add exactly 0 to the integer sum: 0 quantizes to code 0 (absmax) or to the
    # zero point itself (zeropoint: a zeroed row has min <= 0 <= max, so |zp| <= 127, no clamping).
    Xq = quantize_operand(X_regular, per_row=x_per_row, zeropoint=zeropoint)
    C = exact_quantized_product(Xq, Wq, W_centred)  # (M, N) float64
    if has_outliers:
        if W_outlier is not None:
            W_O = W_outlier[:, O].double()  # (N, |O|) float weight columns
        else:
            s_w = Wq.scale.double()
            W_c = Wq.centred() if W_centred is None else W_centred
            W_O = W_c[:, O] * (s_w[:, None] if s_w.dim() else s_w)  # (N, |O|) dequantized columns
        C = C + X[:, O].double() @ W_O.T
    return C
