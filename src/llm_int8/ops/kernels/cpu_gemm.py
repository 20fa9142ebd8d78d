"""Exact int8 x int8 GEMM on x86 CPUs through fbgemm or oneDNN, immune to int16 saturation.

Why the activations are split: x86 CPUs without VNNI (AVX2, AVX-512F) multiply u8 x s8 with
``vpmaddubsw``, which adds two adjacent products into a *saturating* int16. With 8-bit unsigned
activations (``X_i8 + 128``) a pair reaches 2 * 255 * 127 = 64770 > 32767 and is silently clipped
(oneDNN's s8 and u8 activation paths both return wrong integers on full-range codes, measured with
torch 2.13 on AVX2; this is why PyTorch quantizes activations to 7 bits, ``reduce_range``, on
fbgemm). Operands below 128 cannot saturate (2 * 127 * 127 = 32258), so the signed codes are
written as a difference of two 7-bit unsigned matrices and one u8 x s8 GEMM runs on their stack:

    X_i8 = X_pos - X_neg,   X_pos = max(X_i8, 0),  X_neg = max(-X_i8, 0)      (both in [0, 127])
    [C_pos; C_neg] = [X_pos; X_neg] W_i8^T                                     ((2M, K) x (K, N))
    C_i32 = C_pos - C_neg

Doubling the rows doubles the arithmetic: exact int8 on these CPUs runs at the speed of the
saturating kernel on 2M rows. On CPUs with VNNI the split is unnecessary, but stays correct.

Two kernels take the stack, both with unit scales and zero offsets so that they return
``float(acc)``:

* fbgemm, ``quantized::linear_dynamic`` with ``reduce_range``: it quantizes a float input with
  ``scale = max / 127`` (min 0), so integer-valued codes whose maximum is exactly 127 (a sentinel
  row guarantees it) are taken as they are. About 8x faster than oneDNN on one or two rows
  (4096x4096, AVX2, measured), equal at hundreds of rows.
* oneDNN, ``onednn::qlinear_pointwise`` on the u8 codes: no sentinel, no deprecated quantized
  tensors; the fallback where fbgemm's quantized ops are missing.

``FBGEMM_PAIRS`` needs no split at all on the same AVX2 instruction. A pair sum saturates only if
``|u_k w_k + u_{k+1} w_{k+1}| > 32767`` for the u8 activations ``u = X_i8 + 128`` in [0, 255]; it
cannot when the weight's adjacent pair obeys ``|w_k| + |w_{k+1}| <= 128`` (255 * 128 = 32640). So
the weight is written once, at packing, as ``W_i8 = W_safe + W_fix``: ``W_safe`` is ``W_i8`` with the
larger entry of every pair that breaks the bound shrunk to meet it, and ``W_fix`` (the shrinkage) is
sparse: 3% of SmolLM2-135M's pairs, under 2% of a Gaussian 4096 x 4096 weight's entries. One
full-range u8 x s8 GEMM on M rows (fbgemm, ``reduce_range`` off, a two-row sentinel making its
activation scale exactly 1 and zero point 128) gives ``X_i8 W_safe^T``, and a sparse product adds
``X_i8 W_fix^T``: measured 1.7-1.9x faster than the sign split on the AVX2 machine of BENCHMARKS.md
(SmolLM2 and 4096 x 4096 shapes, 512 tokens). The self-test of ``probes.py`` puts pairs exactly
at the bound (and a kernel pairing other entries would fail it). The sparse product costs about 40
times a dense one per multiply-add, so the kernel pays only for bell-shaped weights, as trained
models have: on one AVX2 core at 128 x 4096 x 4096 (2026-12-03), a Gaussian weight (0.75% of its
entries in ``W_fix``) took 53 ms against 53-69 ms for the split kernels, but a uniform one (24%, as
``nn.Linear``'s random initialisation gives) 284 ms against 67-70 ms. A layout records its share
of ``W_fix`` (``fix_density``); past ``PAIRS_MAX_FIX_DENSITY`` the op runs another kernel.

A third kernel, ``ONEDNN_S8``, is the same oneDNN call on the signed codes as they are, with no
split: half the arithmetic. It is exact only where the CPU accumulates int8 products straight into
int32 (VNNI ``vpdpbusd``, AMX); without VNNI it saturates like the others, which its self-test in
``probes.py`` detects, so it is never admitted there. Its float output is ``float32(C_i32)``
rounded once by the kernel, so ``int8_mm_float`` needs no exactness check for it.

Why no sum can wrap: every kernel here accumulates in int32, which reaches ``K_CHUNK`` input
features (``accumulate.py``). A weight with more is packed as chunks of at most ``K_CHUNK`` columns;
the chunks' exact int32 products are added in int64. ``int_mm`` does the same for ``torch._int_mm``.

Why the float output is exact: float32 holds every integer with ``|v| <= 2**24`` and rounding is
monotonic, so an output with ``|out| < 2**24`` *is* the integer accumulator, and ``C_pos - C_neg`` of
two such floats is ``float32(C_i32)`` rounded once, the value ``int8_mm(...).float()`` has. That is
known per weight when ``127 * max_n sum_k |W_i8[n, k]| < 2**24`` (then for any activations), and is
otherwise checked per output row; rows that fail are recomputed by the exact reference.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace

import torch

from ...primitives import INT8_MAX, int8_matmul_reference
from .accumulate import K_CHUNK, sum_over_k_chunks

__all__ = [
    "FBGEMM",
    "FBGEMM_PAIRS",
    "INT_MM",
    "INT_MM_MIN_K",
    "KERNELS",
    "PAIRS_MAX_FIX_DENSITY",
    "ONEDNN",
    "ONEDNN_S8",
    "CpuInt8Weight",
    "int8_mm_float",
    "int8_mm_integer",
    "int_mm",
    "pair_bounded",
    "prepack",
]

FBGEMM = "fbgemm"
FBGEMM_PAIRS = "fbgemm_pairs"
ONEDNN = "onednn"
ONEDNN_S8 = "onednn_s8"
INT_MM = "int_mm"
KERNELS = (ONEDNN_S8, FBGEMM_PAIRS, FBGEMM, ONEDNN)
"""The packed CPU kernels of this file, in the fixed order used when nothing is measured. ``INT_MM``
(``torch._int_mm``) reads the weight as it is: its layout (``prepack(W, INT_MM)``) holds no copy, only
what is derived once per weight (the exactness bound, the other kernels' layouts, the outlier columns)."""

PAIRS_MAX_FIX_DENSITY = 0.02
"""Above this share of nonzeros in ``W_fix``, ``FBGEMM_PAIRS`` loses to the split kernels (see the module doc)."""

# Every integer of magnitude <= 2**24 is exact in float32 (24-bit significand).
_F32_EXACT_INT = 2**24


@dataclass(frozen=True, eq=False)
class CpuInt8Weight:
    """An int8 weight (N, K) reordered once for one CPU kernel; derived state, never saved.

    ``always_exact``: ``127 * max_n ||W_i8[n]||_1 < 2**24``, so no product with 7-bit codes can
    leave float32's exact-integer range and outputs need no check. ``chunks``: for more than
    ``K_CHUNK`` input features, the layouts of consecutive column blocks of at most ``K_CHUNK``
    (``packed`` is then ``None``).
    """

    kernel: str  # one of KERNELS, or INT_MM
    packed: object  # fbgemm: LinearPackedParamsBase; oneDNN: an opaque mkldnn tensor; INT_MM: None
    out_features: int
    in_features: int
    always_exact: bool
    unit_scale: torch.Tensor | None = None  # oneDNN: (N,) float32 ones
    zero_point: torch.Tensor | None = None  # oneDNN: (N,) int64 zeros
    fix: torch.Tensor | None = None  # FBGEMM_PAIRS: W_fix (N, K) sparse CSR, float32 if always_exact, else float64
    chunks: tuple = ()  # K > K_CHUNK: one CpuInt8Weight per block of K_CHUNK columns
    fix_density: float = 0.0  # FBGEMM_PAIRS: nonzeros of W_fix / (N * K)
    fix_row_max: int = 0  # FBGEMM_PAIRS: the most nonzeros in one row of W_fix
    # layouts of the same weight for the other kernels, packed on first use (the kernel choice of
    # ops/choice/cpu.py may differ per token bucket); derived like this one
    others: dict = field(default_factory=dict, repr=False)
    # int8 weight columns W_i8[:, k] (N,) of recent outlier dims k, contiguous: a column of the
    # row-major weight is N reads one row (often one page) apart, 0.4 ms for 3 columns of a
    # 4096 x 4096 weight on the AVX2 machine, more than the rest of a 1-token epilogue; outlier
    # dims recur from call to call (they are features of the model), so they are gathered once
    columns: dict = field(default_factory=dict, repr=False)

    def for_kernel(self, kernel: str, W_i8: torch.Tensor) -> CpuInt8Weight:
        """This weight's layout for ``kernel``: itself, or one packed once from ``W_i8`` and kept."""
        _check_layout(W_i8, self)
        if kernel == self.kernel:
            return self
        if kernel not in self.others:
            onednn = (ONEDNN, ONEDNN_S8)
            # u8 and s8 activations read the same oneDNN layout: share it rather than pack twice
            shared = self.kernel in onednn and kernel in onednn and not self.chunks
            self.others[kernel] = replace(self, kernel=kernel, others={}) if shared else prepack(W_i8, kernel)
        return self.others[kernel]


def _prepack_fbgemm(W_i8: torch.Tensor) -> object:
    with warnings.catch_warnings():
        # quantized tensor constructors are deprecated in torch >= 2.10; this is their only use,
        # and probes.has_fbgemm_linear() checks the result before the kernel is ever chosen
        warnings.simplefilter("ignore", UserWarning)
        W_q = torch._make_per_tensor_quantized_tensor(W_i8, 1.0, 0)  # qint8 view of the codes, scale 1
    return torch.ops.quantized.linear_prepack(W_q, None)


_PAIR_BOUND = 128  # |w_k| + |w_{k+1}| <= 128: with u8 activations <= 255, a pair sums to at most 32640


def pair_bounded(W_i8: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W_safe, W_fix)`` with ``W_safe + W_fix == W_i8``, every adjacent pair ``(2j, 2j+1)`` of each
    row of ``W_safe`` within ``|w| + |w'| <= 128``, and ``W_fix`` (int16) zero wherever a pair already was."""
    N, K = W_i8.shape
    W = torch.nn.functional.pad(W_i8.to(torch.int16), (0, K % 2)).view(N, -1, 2)  # (N, K/2, pairs)
    mag = W.abs()
    big = mag.argmax(dim=-1, keepdim=True)  # the larger entry of each pair: shrinking it suffices
    small = mag.gather(-1, 1 - big)
    W_big = W.gather(-1, big)
    shrunk = torch.where(mag.sum(-1, keepdim=True) > _PAIR_BOUND, W_big.sign() * (_PAIR_BOUND - small), W_big)
    W_safe = W.scatter(-1, big, shrunk).view(N, -1)[:, :K]
    return W_safe.to(torch.int8), W_i8.to(torch.int16) - W_safe


def _always_exact(W_i8: torch.Tensor) -> bool:
    """``127 * max_n ||W_n||_1 < 2**24``: the norm widened first (|-128| overflows int8), in row blocks
    to bound the temporary."""
    l1_max = max(
        (rows.to(torch.int16).abs_().sum(dim=1, dtype=torch.int64).max().item() for rows in W_i8.split(4096)), default=0
    )
    return INT8_MAX * l1_max < _F32_EXACT_INT


def prepack(W_i8: torch.Tensor, kernel: str) -> CpuInt8Weight:
    """Reorder the (N, K) int8 weight for ``kernel`` (a copy of N*K bytes)."""
    if W_i8.device.type != "cpu":
        raise ValueError(f"CPU kernels pack CPU weights, got one on {W_i8.device}")
    N, K = W_i8.shape
    if kernel == INT_MM:  # no copy: int_mm blocks K itself
        return CpuInt8Weight(INT_MM, None, N, K, _always_exact(W_i8))
    if K > K_CHUNK:  # no call may sum over more than K_CHUNK inputs: one layout per block of columns
        chunks = tuple(prepack(W_i8[:, k0 : k0 + K_CHUNK], kernel) for k0 in range(0, K, K_CHUNK))
        exact = all(c.always_exact for c in chunks)
        density = sum(c.fix_density * c.in_features for c in chunks) / K
        return CpuInt8Weight(kernel, None, N, K, exact, chunks=chunks, fix_density=density)
    W_i8 = W_i8.contiguous()
    always_exact = _always_exact(W_i8)
    if kernel == FBGEMM:
        return CpuInt8Weight(FBGEMM, _prepack_fbgemm(W_i8), N, K, always_exact)
    if kernel == FBGEMM_PAIRS:
        W_safe, W_fix = pair_bounded(W_i8)
        # |W_fix| <= |W_i8| entrywise, so the bound that makes float32 exact for W_i8 holds for it
        with warnings.catch_warnings():  # "sparse CSR support is in beta": used for one product, tested
            warnings.simplefilter("ignore", UserWarning)
            fix = W_fix.to(torch.float32 if always_exact else torch.float64).to_sparse_csr()
        density = fix._nnz() / max(N * K, 1)
        crow = fix.crow_indices()
        row_max = int((crow[1:] - crow[:-1]).max()) if N else 0
        return CpuInt8Weight(
            FBGEMM_PAIRS, _prepack_fbgemm(W_safe), N, K, always_exact, fix=fix, fix_density=density, fix_row_max=row_max
        )
    if kernel in (ONEDNN, ONEDNN_S8):  # one packed layout serves u8 and s8 activations
        packed = torch.ops.onednn.qlinear_prepack(W_i8, None)  # None: one layout for any number of rows
        ones, zeros = torch.ones(N, dtype=torch.float32), torch.zeros(N, dtype=torch.int64)
        return CpuInt8Weight(kernel, packed, N, K, always_exact, ones, zeros)
    raise ValueError(f"unknown CPU int8 kernel {kernel!r}; expected one of {(*KERNELS, INT_MM)}")


def _gemm_fbgemm(A_codes: torch.Tensor, weight: CpuInt8Weight) -> torch.Tensor:
    M, K = A_codes.shape
    stacked = torch.empty(2 * M + 1, K, dtype=torch.float32)  # (2M + 1, K): X_pos, X_neg, sentinel
    torch.clamp(A_codes, min=0, out=stacked[:M])
    torch.neg(A_codes, out=stacked[M : 2 * M]).clamp_(min=0)
    # sentinel row: max 127 and min 0 make fbgemm pick scale (127 - 0) / 127 = 1, zero point 0
    stacked[2 * M].zero_()
    stacked[2 * M, 0] = INT8_MAX
    return torch.ops.quantized.linear_dynamic(stacked, weight.packed, True)[: 2 * M]  # (2M, N)


def _pairs_product(A_codes: torch.Tensor, W_i8: torch.Tensor, weight: CpuInt8Weight):
    """``(C_main, C_fix, rows)``: ``float32(A W_safe^T)`` (M, N), ``A W_fix^T`` (M, N) exact in its
    dtype, and the rows m where ``C_main`` may be inexact (``None``: none can be)."""
    _check_layout(W_i8, weight)
    M, K = A_codes.shape
    stacked = torch.zeros(M + 2, K, dtype=torch.float32)  # (M + 2, K): codes, then the sentinel rows
    stacked[:M] = A_codes
    # min -128 and max 127 over the input make fbgemm's 8-bit dynamic quantization take scale
    # (127 - (-128)) / 255 = 1 and zero point 128: u = X_i8 + 128, the codes as they are
    stacked[M, 0], stacked[M + 1, 0] = -128, INT8_MAX
    C_main = torch.ops.quantized.linear_dynamic(stacked, weight.packed, False)[:M]  # (M, N)
    C_fix = torch.sparse.mm(weight.fix, A_codes.T.to(weight.fix.dtype)).T  # (M, N), few nonzeros per row of W_fix
    rows = None
    if not weight.always_exact:
        rows = (C_main.abs() >= _F32_EXACT_INT).any(dim=1).nonzero().squeeze(1)
    return C_main, C_fix, rows


def _gemm_onednn(A_codes: torch.Tensor, weight: CpuInt8Weight) -> torch.Tensor:
    M, K = A_codes.shape
    stacked = torch.empty(2 * M, K, dtype=torch.uint8)  # (2M, K): X_pos, X_neg
    A_i8 = A_codes.to(torch.int8)
    as_int8 = stacked.view(torch.int8)  # same bytes; 0..127 read the same as int8 and uint8
    torch.clamp(A_i8, min=0, out=as_int8[:M])
    torch.neg(A_i8, out=as_int8[M:]).clamp_(min=0)  # -A cannot overflow: codes are never -128
    return _qlinear_onednn(stacked, weight)  # (2M, N)


def _qlinear_onednn(A: torch.Tensor, weight: CpuInt8Weight) -> torch.Tensor:
    """``float(A W_i8^T)`` for u8 or s8 ``A`` (rows, K) on oneDNN, unit scales, zero offsets."""
    # positional: activation scale, zero point, weight, its scales and zero points, bias,
    # output scale and zero point (unused for float output), output dtype, post-op name, args, algorithm
    return torch.ops.onednn.qlinear_pointwise(
        A, 1.0, 0, weight.packed, weight.unit_scale, weight.zero_point, None, 1.0, 0, torch.float32, "none", [], ""
    )


def _gemm_onednn_s8(A_codes: torch.Tensor, weight: CpuInt8Weight) -> torch.Tensor:
    A_i8 = A_codes if A_codes.dtype == torch.int8 else A_codes.to(torch.int8)
    return _qlinear_onednn(A_i8.contiguous(), weight)  # (M, N): float32(C_i32), no split


def _inexact_rows(C_split: torch.Tensor, M: int) -> torch.Tensor:
    """Indices of rows m whose ``C_pos[m]`` or ``C_neg[m]`` may have left float32's exact range."""
    lo, hi = torch.aminmax(C_split)  # one pass; the common case ends here
    if -_F32_EXACT_INT < lo and hi < _F32_EXACT_INT:
        return C_split.new_empty(0, dtype=torch.long)
    # per row: amax and amin separately are 7x faster than aminmax(dim=1) (torch 2.13 CPU)
    inexact = (C_split.amax(dim=1) >= _F32_EXACT_INT) | (C_split.amin(dim=1) <= -_F32_EXACT_INT)  # (2M,)
    return (inexact[:M] | inexact[M:]).nonzero().squeeze(1)


def _check_layout(W_i8: torch.Tensor, weight: CpuInt8Weight) -> None:
    if weight.out_features != W_i8.shape[0] or weight.in_features != W_i8.shape[1]:
        raise ValueError(
            f"packed weight is ({weight.out_features}, {weight.in_features}) but the int8 weight is "
            f"{tuple(W_i8.shape)}: the packed layout belongs to another tensor"
        )


def _split_product(
    A_codes: torch.Tensor, W_i8: torch.Tensor, weight: CpuInt8Weight
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``[C_pos; C_neg]`` (2M, N) float32 and the rows m it may hold inexactly (``None``: none can)."""
    _check_layout(W_i8, weight)
    gemm = _gemm_fbgemm if weight.kernel == FBGEMM else _gemm_onednn
    C_split = gemm(A_codes, weight)  # (2M, N)
    rows = None if weight.always_exact else _inexact_rows(C_split, A_codes.shape[0])
    return C_split, rows


def int8_mm_float(A_codes: torch.Tensor, W_i8: torch.Tensor, weight: CpuInt8Weight) -> torch.Tensor:
    """``float32(A W_i8^T)`` for integer codes ``A`` in [-127, 127] held as float32 (M, K).

    ``W_i8``: (N, K) int8; ``weight = prepack(W_i8, kernel)``. Returns (M, N) float32, equal to
    the exact integer product cast once.
    """
    if weight.kernel == INT_MM:
        _check_layout(W_i8, weight)
        return int_mm(A_codes.to(torch.int8), W_i8).float()  # the exact sum, rounded once
    if weight.chunks:
        return _chunked_product(A_codes.to(torch.int8), W_i8, weight).float()  # the exact sum, rounded once
    if weight.kernel == ONEDNN_S8:
        _check_layout(W_i8, weight)
        return _gemm_onednn_s8(A_codes, weight)  # rounded once from the int32 accumulator
    if weight.kernel == FBGEMM_PAIRS:
        C_main, C_fix, rows = _pairs_product(A_codes, W_i8, weight)
        if C_fix.dtype == torch.float32:  # both exact integers: the sum is float32(C_i32), rounded once
            C = torch.add(C_main, C_fix)  # a new tensor: C_main is a view of the sentinel-padded output
        else:
            C = (C_main.double() + C_fix).float()
        if rows is not None and rows.numel():
            C[rows] = int8_matmul_reference(A_codes[rows].to(torch.int8), W_i8).float()
        return C
    M = A_codes.shape[0]
    C_split, rows = _split_product(A_codes, W_i8, weight)
    C = C_split[:M] - C_split[M:]  # (M, N): exact integers in, float32(C_i32) out
    if rows is not None and rows.numel():
        C[rows] = int8_matmul_reference(A_codes[rows].to(torch.int8), W_i8).float()
    return C


def int8_mm_integer(A_i8: torch.Tensor, W_i8: torch.Tensor, weight: CpuInt8Weight) -> torch.Tensor:
    """``A_i8 W_i8^T``: (M, K) x (N, K) int8 -> (M, N) exact, int32 where every sum fits, else int64.
    Codes must avoid -128 for the sign-split kernels (``ONEDNN_S8`` and ``FBGEMM_PAIRS`` take them too)."""
    if weight.kernel == INT_MM:
        _check_layout(W_i8, weight)
        return int_mm(A_i8, W_i8)
    if weight.chunks:
        return _chunked_product(A_i8, W_i8, weight)
    return _int32_product(A_i8, W_i8, weight)


def _chunked_product(A_i8: torch.Tensor, W_i8: torch.Tensor, weight: CpuInt8Weight) -> torch.Tensor:
    """The exact product of a weight packed in chunks, one kernel call per chunk (int32 or int64)."""
    _check_layout(W_i8, weight)
    chunks = iter(weight.chunks)
    return sum_over_k_chunks(lambda A, W: _int32_product(A.contiguous(), W, next(chunks)), A_i8, W_i8)


INT_MM_MIN_K = 16
"""``int_mm`` never hands ``torch._int_mm`` fewer input features than this: shorter operands are padded
with zero columns, which add nothing to any sum. On AMD Zen 4 (AVX-512 VNNI, torch 2.13) ``torch._int_mm``
returns uninitialised memory at K = 1 for N >= 16 (K = 2 .. 4099 right); padding is exact on any CPU,
costs nothing at these sizes, and the self-test of ``probes.py`` proves the kernel at K = 16 and above."""


def _dense(t: torch.Tensor) -> torch.Tensor:
    """``t`` with row-major strides. ``.contiguous()`` keeps a stride of 0 on a size-1 dimension (such a
    tensor counts as contiguous), and ``torch._int_mm`` on CPU returns wrong integers for it (measured with
    torch 2.13; pytorch/pytorch#195066); Inductor gives single-token activations that stride."""
    rows, cols = t.shape
    return t if t.stride() == (cols, 1) or t.numel() == 0 else t.new_empty(rows, cols).copy_(t)


def _int_mm_block(A_i8: torch.Tensor, W_i8: torch.Tensor) -> torch.Tensor:
    K = A_i8.shape[1]
    if K < INT_MM_MIN_K:
        A_i8 = torch.nn.functional.pad(A_i8, (0, INT_MM_MIN_K - K))  # (M, 16): zero columns
        W_i8 = torch.nn.functional.pad(W_i8, (0, INT_MM_MIN_K - K))  # (N, 16)
    # W^T as a view of the (N, K) weight: 5x faster than a contiguous (K, N) copy (torch 2.13, AVX2)
    return torch._int_mm(_dense(A_i8), _dense(W_i8).T)


def int_mm(A_i8: torch.Tensor, W_i8: torch.Tensor) -> torch.Tensor:
    """``torch._int_mm`` on CPU tensors: (M, K) x (N, K) int8 -> (M, N), exact for any ``K`` >= 1
    (blocks of ``K_CHUNK``; fewer than ``INT_MM_MIN_K`` features padded, any stride made row-major)."""
    return sum_over_k_chunks(_int_mm_block, A_i8, W_i8)


def _int32_product(A_i8: torch.Tensor, W_i8: torch.Tensor, weight: CpuInt8Weight) -> torch.Tensor:
    """``A_i8 W_i8^T`` (M, N) int32 for a weight of at most ``K_CHUNK`` input features."""
    if weight.kernel == FBGEMM_PAIRS:
        C_main, C_fix, rows = _pairs_product(A_i8.float(), W_i8, weight)
        C = C_main.to(torch.int32).add_(C_fix.to(torch.int32))
        if rows is not None and rows.numel():
            C[rows] = int8_matmul_reference(A_i8[rows], W_i8)
        return C
    if weight.kernel == ONEDNN_S8:
        _check_layout(W_i8, weight)
        C_float = _gemm_onednn_s8(A_i8, weight)  # (M, N)
        C = C_float.to(torch.int32)
        if not weight.always_exact:  # |C| >= 2**24 may have been rounded on the way to float32
            rows = ((C_float.abs() >= _F32_EXACT_INT).any(dim=1)).nonzero().squeeze(1)
            if rows.numel():
                C[rows] = int8_matmul_reference(A_i8[rows], W_i8)
        return C
    M = A_i8.shape[0]
    C_split, rows = _split_product(A_i8.float(), W_i8, weight)
    C = C_split[:M].to(torch.int32).sub_(C_split[M:].to(torch.int32))  # (M, N)
    if rows is not None and rows.numel():
        C[rows] = int8_matmul_reference(A_i8[rows], W_i8)
    return C
