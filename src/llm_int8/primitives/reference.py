"""Plain, float64-exact references for the int8 matmuls: the test oracle and the fallback.

Integer products are computed in float64: every partial sum of int8 x int8 products is an
integer of magnitude at most ``K * 128**2``, exactly representable while below 2**53, i.e. for
any ``K`` below 5.5e11. So these references equal an int64 GEMM bit for bit. ``int8_matmul_reference``
returns int32 (the type of the integer GEMMs it stands in for) while every sum fits, i.e. for
``K <= 2**31 // 128**2 = 131,071`` or whenever the actual sums do, and int64 beyond: a sum of more
than 2**31 is never cast to int32 (it would wrap to a wrong number).
"""

from __future__ import annotations

import torch

from .outliers import outlier_columns
from .quantize import rowwise_quantize, zeropoint_quantize

__all__ = ["ACTIVATION_QUANTIZERS", "int8_linear_reference", "int8_matmul_reference", "int8_weight_only_reference"]

ACTIVATION_QUANTIZERS = ("absmax", "zeropoint")
"""How ``X`` is quantized per token: symmetric absmax (the paper's LLM.int8()) or asymmetric zeropoint."""


_INT32_MAX = 2**31 - 1
_EXACT_IN_FLOAT64 = 2**53


def int8_matmul_reference(A_i8: torch.Tensor, B_i8: torch.Tensor) -> torch.Tensor:
    """``C = A_i8 @ B_i8^T`` with exact integer accumulation.

    ``A_i8``: (M, K) int8, ``B_i8``: (N, K) int8 (weight layout, out x in). Returns (M, N) int32
    when every entry fits in int32 (always for ``K <= 131,071``), else int64: never a wrapped value.
    """
    if A_i8.dtype != torch.int8 or B_i8.dtype != torch.int8:
        raise TypeError(f"int8 operands required, got {A_i8.dtype} and {B_i8.dtype}")
    if A_i8.shape[-1] != B_i8.shape[-1]:
        raise ValueError(f"inner dimensions differ: A {tuple(A_i8.shape)}, B {tuple(B_i8.shape)}")
    K = A_i8.shape[-1]
    if K * 128**2 >= _EXACT_IN_FLOAT64:  # 5.5e11 input features: no float64 sum is exact any more
        raise ValueError(f"inner dimension {K} is too large for an exact float64 accumulation (limit 2**53 / 128**2)")
    C = A_i8.double() @ B_i8.double().T  # (M, N), exact integers
    if K * 128**2 <= _INT32_MAX or C.numel() == 0 or C.abs().max() <= _INT32_MAX:
        return C.to(torch.int32)
    return C.to(torch.int64)


def int8_linear_reference(
    X: torch.Tensor,
    W_i8: torch.Tensor,
    s_w: torch.Tensor,
    bias: torch.Tensor | None = None,
    threshold: float = 6.0,
    activation: str = "absmax",
    float_columns: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """LLM.int8() ``C = X W^T + b``, written out as in the paper, in float64.

    ``C ≈ Σ_{h∈O} X^h W^h + (s_x ⊗ s_w) · Σ_{h∉O} X_i8^h W_i8^h``, where ``O`` are the outlier
    columns of ``X`` (``outlier_columns``), ``X_i8, s_x`` the row-wise quantization of ``X`` with
    the outlier columns removed, and ``W ≈ W_i8 * s_w`` the stored vector-wise weight. The outlier
    part uses the dequantized weight columns, since only the int8 weight is stored.

    ``activation="zeropoint"`` quantizes each row of ``X`` asymmetrically instead
    (``zeropoint_quantize``: codes ``X_q``, step ``s_x``, zero point ``zp_x``), and the int8 part
    becomes ``(s_x ⊗ s_w) · Σ_{h∉O} (X_q^h - zp_x) W_i8^h``.

    ``float_columns = (S, W_S)``: dims ``S`` that are always in the float part, with their float
    weight columns ``W_S`` (N, |S|) instead of dequantized int8 ones:
    ``C ≈ X^S W_S^T + Σ_{h∈O∖S} X^h W^h + (s_x ⊗ s_w) · Σ_{h∉O∪S} X_i8^h W_i8^h``.

    ``X``: (M, K) float; ``W_i8``: (N, K) int8; ``s_w``: (N,) float. Returns (M, N) in X's dtype.
    """
    if activation not in ACTIVATION_QUANTIZERS:
        raise ValueError(f"activation must be one of {ACTIVATION_QUANTIZERS}, got {activation!r}")
    O = outlier_columns(X, threshold)  # (K,) bool
    S = torch.zeros_like(O)
    if float_columns is not None:
        S[float_columns[0]] = True
        O = O & ~S
    X_regular = X.masked_fill(O | S, 0)  # (M, K), outlier and static float columns removed
    if activation == "absmax":
        X_i8, s_x = rowwise_quantize(X_regular, dim=-1)  # (M, K) int8, (M,)
        C_int = int8_matmul_reference(X_i8, W_i8).double()
    else:
        X_q, s_x, zp_x = zeropoint_quantize(X_regular, dim=-1)  # (M, K) int8, (M,), (M,)
        # exact in float64: every partial sum is an integer below K * 254 * 127 < 2**53
        C_int = (X_q.double() - zp_x.double()[:, None]) @ W_i8.double().T
    C = C_int * (s_x.double()[:, None] * s_w.double()[None, :])
    W_outlier = W_i8[:, O].double() * s_w.double()[:, None]  # (N, |O|) dequantized columns
    C = C + X[:, O].double() @ W_outlier.T
    if float_columns is not None:
        C = C + X[:, float_columns[0]].double() @ float_columns[1].double().T
    if bias is not None:
        C = C + bias.double()
    return C.to(X.dtype)


def int8_weight_only_reference(
    X: torch.Tensor, W_i8: torch.Tensor, s_w: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """The weight-only path ``C = X_bf16 (W_i8 ⊙ s_w)^T + b`` in float64: ``X`` rounded to bf16
    (what the kernel reads), everything else exact. Returns (M, N) in X's dtype."""
    C = (X.to(torch.bfloat16).double() @ W_i8.double().T) * s_w.double()[None, :]
    if bias is not None:
        C = C + bias.double()
    return C.to(X.dtype)
