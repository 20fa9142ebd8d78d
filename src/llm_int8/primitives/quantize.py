"""Int8 quantizers from Section 2 of the LLM.int8() paper, in plain PyTorch.

Every quantizer returns integer codes and the *dequantization step* ``scale`` such that
``A ≈ A_i8 * scale`` (absmax) or ``A ≈ (A_i8 - zero_point) * scale`` (zeropoint). The paper writes
the inverse, ``s = 127 / max|A|``; we keep the step so that dequantizing and denormalizing a
matmul are multiplications.

Codes are symmetric in ``[-127, 127]``: -128 is never produced, so negating a code cannot overflow
and absmax quantization is an odd function.
"""

from __future__ import annotations

import torch

__all__ = [
    "INT8_MAX",
    "absmax_quantize",
    "rowwise_quantize",
    "zeropoint_params",
    "zeropoint_quantize",
    "dequantize",
]

INT8_MAX = 127
"""Largest int8 code used; the paper's 127 in ``s = 127 / max|A|``."""

_FLOAT32_MAX = torch.finfo(torch.float32).max


def _round_to_int8(A_scaled: torch.Tensor) -> torch.Tensor:
    # round-half-to-even, as torch.round; clamp guards the last ulp of a division.
    return A_scaled.round_().clamp_(-INT8_MAX, INT8_MAX).to(torch.int8)


def _absmax_scaled(A: torch.Tensor, absmax: torch.Tensor) -> torch.Tensor:
    """``A * (127 / absmax)``, all-zero slices mapped to 0.

    An absmax below ``127 / float32 max`` (about 3.7e-37) makes ``127 / absmax`` overflow to inf:
    those slices are scaled as ``A / absmax * 127`` instead (a division, slower, and rare), so
    tiny activations keep their 8 bits rather than collapsing to their signs.
    """
    inv_step = torch.where(absmax > 0, INT8_MAX / absmax, 0.0)
    A_scaled = A * inv_step
    tiny = torch.isinf(inv_step)
    if tiny.any():
        A_scaled = torch.where(tiny, A / absmax * INT8_MAX, A_scaled)
    return A_scaled


def absmax_quantize(A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Tensor-wise absmax: ``s_a = 127 / max|A|``, ``A_i8 = round(s_a * A)``.

    Returns ``(A_i8, scale)`` with ``scale = max|A| / 127`` a 0-d float32 tensor.
    """
    return rowwise_quantize(A, dim=None)


def rowwise_quantize(A: torch.Tensor, dim: int | None = -1) -> tuple[torch.Tensor, torch.Tensor]:
    """Absmax quantization with one scale per slice along ``dim``.

    For ``X`` of shape (tokens, features) and ``dim=-1`` this is the paper's row-wise
    quantization of ``X`` (one ``c_x`` per token); applied to ``W`` of shape (out, in) it gives
    the per-output-feature ``c_w`` of vector-wise quantization. ``dim=None`` is tensor-wise
    absmax. ``A_i8[i, :] = round(127 / max|A[i, :]| * A[i, :])``.

    Returns ``(A_i8, scale)``; ``scale`` (float32) has ``A``'s shape with ``dim`` removed.
    Non-finite inputs are the caller's business: LLM.int8() routes them to the float path first.
    """
    A = A.float()
    if dim is None:
        absmax = A.abs().amax()
        scale_b = absmax
    else:
        absmax = A.abs().amax(dim=dim)
        scale_b = absmax.unsqueeze(dim)
    A_i8 = _round_to_int8(_absmax_scaled(A, scale_b))
    return A_i8, absmax / INT8_MAX


def zeropoint_params(hi: torch.Tensor, lo: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(nd, zp)`` of zeropoint quantization for the range ``[lo, hi]`` widened to include 0.

    ``nd = 2*127 / (max(hi, 0) - min(lo, 0))`` and ``zp = -round(nd * min(lo, 0)) - 127``, both
    float32 (``zp`` integer-valued). Widening the range to hold 0 (as PyTorch's and ONNX's
    observers do) changes nothing for data that spans 0 (hidden states, weights), and makes the
    codes well defined everywhere else: 0 is exactly the code ``zp``, ``|zp| <= 127``, and
    ``nd * A + zp`` stays within [-127, 127] without cancellation. Without it a constant or nearly
    constant row far from 0 (``[1000, 1000.0001]``) gets ``nd`` ~ 4e6 and a ``zp`` beyond int32.
    An all-zero range gets ``nd = 1``; a denormal one saturates ``nd`` at the float32 maximum.
    The range is formed in float64, so ``max - min`` cannot overflow.
    """
    hi = hi.float().clamp_min(0)
    lo = lo.float().clamp_max(0)
    width = hi.double() - lo.double()
    nd = torch.where(width > 0, (2 * INT8_MAX) / width, 1.0).clamp_max(_FLOAT32_MAX).float()
    zp = -(nd * lo).round() - INT8_MAX
    return nd, zp


def zeropoint_quantize(A: torch.Tensor, dim: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric (zeropoint) quantization, tensor-wise (``dim=None``) or per slice along ``dim``.

    ``nd_a = 2*127 / (max A - min A)``, ``zp_a = -round(nd_a * min A) - 127``,
    ``A_q = round(nd_a * A + zp_a)``; dequantize ``(A_q - zp_a) / nd_a``. The range is widened to
    include 0 (see ``zeropoint_params``), which is the paper's formula for any ``A`` that spans 0.

    Returns ``(A_q, scale, zero_point)`` with ``scale = 1 / nd_a`` (float32) and ``zero_point``
    integer-valued (int32, in [-127, 127]) so that ``A ≈ (A_q - zero_point) * scale``. ``A_q``
    spans the full [-127, 127] range whatever the sign balance of ``A``, which is what makes
    zeropoint better than absmax on one-sided distributions such as post-GeLU activations.
    """
    A = A.float()
    if dim is None:
        hi, lo = A.amax(), A.amin()
    else:
        hi, lo = A.amax(dim=dim, keepdim=True), A.amin(dim=dim, keepdim=True)
    nd, zp = zeropoint_params(hi, lo)
    A_q = _round_to_int8(A * nd + zp)
    if dim is not None:
        nd, zp = nd.squeeze(dim), zp.squeeze(dim)
    return A_q, 1.0 / nd, zp.to(torch.int32)


def dequantize(
    A_i8: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor | None = None,
    dim: int | None = -1,
) -> torch.Tensor:
    """Inverse of the quantizers above: ``A = (A_i8 - zero_point) * scale`` in float32.

    ``scale`` and ``zero_point`` are broadcast along ``dim`` (the dimension that was reduced when
    quantizing); pass ``dim=None`` for tensor-wise scales.
    """
    if dim is not None and scale.dim() > 0:
        scale = scale.unsqueeze(dim)
        if zero_point is not None and zero_point.dim() > 0:
            zero_point = zero_point.unsqueeze(dim)
    A = A_i8.float()
    if zero_point is not None:
        A = A - zero_point
    return A * scale
