"""Exact emulation of the int8 matmul variants compared in Table 1 of the LLM.int8() paper.

Every variant computes ``C = X W^T`` (``X``: (tokens, K), ``W``: (N, K) in ``nn.Linear`` layout) as

    C ≈ Σ_{h∈O} X^h W'^h  +  (s_x ⊗ s_w) · Σ_{h∉O} (X_q^h - zp_x)(W_q^h - zp_w)

where ``X_q, s_x, zp_x`` and ``W_q, s_w, zp_w`` are int8 codes, dequantization steps and zero points
(``zp = 0`` for absmax), with one scale per tensor or per row (per token for ``X``, per output
feature for ``W``), and ``O`` is the set of outlier columns of ``X`` (empty without decomposition).

The integer sum is *emulated exactly*: the centred codes ``X_q - zp_x`` and ``W_q - zp_w`` are
integers in ``[-254, 254]``, so every partial sum of their products is an integer. On the CPU the
product runs as float32 GEMMs over slices of ``K`` short enough that no partial sum can reach
2**24 (where float32 stops holding every integer): ``K_slice * max|X_c| * max|W_c| < 2**24``, e.g.
1,040 columns at once for absmax codes, 260 for the worst zeropoint codes. Each slice's result is
then an exact integer whatever order the GEMM adds in, and the slices are summed in float64
(exact below 2**53). Elsewhere (CUDA, where TF32 may be on) or when
``torch.set_float32_matmul_precision`` allows reduced precision, the whole product is done in
float64, exact for any ``K`` below 1.3e11. Either way the result equals an int32/int64 GEMM bit for
bit (for zeropoint: the paper's int16 product ``(A_i8 + zp_a)(B_i8 + zp_b)``, or its unrolled form
``A_i8 B_i8 - A_i8 zp_b - zp_a B_i8 + zp_a zp_b``, which are the same integer). The denormalization
and the outlier part are done in float64 and cast to ``X``'s dtype once at the end.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .outliers import outlier_columns
from .quantize import rowwise_quantize, zeropoint_quantize

__all__ = ["QuantizedOperand", "emulated_int8_matmul", "exact_quantized_product", "integer_matmul", "quantize_operand"]


class QuantizedOperand(NamedTuple):
    """Int8 codes of a 2-D operand ``A`` (rows, K) with ``A ≈ (codes - zero_point) * scale``.

    ``scale`` and ``zero_point`` are (rows,) for per-row quantization, 0-d for tensor-wise;
    ``zero_point`` is ``None`` for absmax (symmetric) quantization.
    """

    codes: torch.Tensor  # (rows, K) int8
    scale: torch.Tensor  # (rows,) or () float32
    zero_point: torch.Tensor | None  # like scale, int32, or None

    def centred(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """``codes - zero_point`` as integers in [-254, 254], shape (rows, K), in float ``dtype``
        (float32 and float64 hold them exactly)."""
        C = self.codes.to(dtype)
        if self.zero_point is None:
            return C
        zp = self.zero_point.to(dtype)
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
    W_c = Wq.centred() if W_centred is None else W_centred  # (N, K) float integers
    C_int = integer_matmul(Xq.centred(torch.float32), W_c)  # (M, N) float64, exact
    s_x, s_w = Xq.scale.double(), Wq.scale.double()
    s_x = s_x[:, None] if s_x.dim() else s_x  # (M, 1) or ()
    s_w = s_w[None, :] if s_w.dim() else s_w  # (1, N) or ()
    return C_int * s_x * s_w


_FLOAT32_EXACT = 2**24  # float32 holds every integer of magnitude <= 2**24


def integer_matmul(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """``A @ B.T`` for integer-valued float tensors ``A`` (M, K) and ``B`` (N, K), exact, as float64.

    Float32 GEMMs over ``K`` slices where no partial sum can reach 2**24, summed in float64 (CPU,
    full-precision float32 matmul); float64 otherwise. See the module docstring.
    """
    K = A.shape[-1]
    fast = A.device.type == "cpu" and torch.get_float32_matmul_precision() == "highest" and K > 0
    if fast:
        bound = float(A.abs().amax()) * float(B.abs().amax())  # largest |product| of two entries
        step = K if bound == 0 else int((_FLOAT32_EXACT - 1) // bound)
        fast = step >= 16  # codes up to ~1000: a slice still fills a GEMM
    if not fast:
        return A.double() @ B.double().T
    A32, B32 = A.float(), B.float()  # exact: integers far below 2**24
    C = None
    for k in range(0, K, step):
        part = (A32[:, k : k + step] @ B32[:, k : k + step].T).double()
        C = part if C is None else C.add_(part)
    return C


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
