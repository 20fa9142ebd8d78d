"""Capability probes: which integer GEMM kernels this process can run on CPU, and whether they are exact.

Each probe runs its kernel once on codes chosen to expose the known ways an x86 int8 GEMM goes wrong
(int16 pair sums that saturate, 7-bit misreadings) and compares with the float64 product. Which of
the exact kernels is *used* is decided one layer up, in ``ops/choice/``, by measurement.

Callers go through the module (``probes.has_fbgemm_linear()``), never through names imported from
it, so that a test can patch one probe and run every branch on any machine.
"""

from __future__ import annotations

import functools
import logging

import torch

from . import cpu_gemm

__all__ = [
    "FBGEMM",
    "FBGEMM_PAIRS",
    "ALL_CPU_KERNELS",
    "INT_MM",
    "ONEDNN",
    "ONEDNN_S8",
    "REFERENCE",
    "SHAPE_CASES_K",
    "SHAPE_CASES_MN",
    "exact_cpu_kernels",
    "has_fbgemm_linear",
    "has_fbgemm_pairs_linear",
    "has_int_mm",
    "has_int_mm_cpu",
    "has_onednn_linear",
    "has_onednn_s8_linear",
    "has_weight_int8pack_mm",
    "run_kernel",
]

logger = logging.getLogger(__name__)

FBGEMM = cpu_gemm.FBGEMM
"""fbgemm's u8 x s8 GEMM behind ``quantized::linear_dynamic`` on sign-split 7-bit codes (``cpu_gemm.py``)."""
FBGEMM_PAIRS = cpu_gemm.FBGEMM_PAIRS
"""fbgemm's u8 x s8 GEMM on full 8-bit codes, no split, on a pair-bounded weight plus a sparse fix (``cpu_gemm.py``)."""
ONEDNN = cpu_gemm.ONEDNN
"""oneDNN's u8 x s8 GEMM behind ``onednn::qlinear_pointwise``, same split; slow below ~32 rows."""
ONEDNN_S8 = cpu_gemm.ONEDNN_S8
"""oneDNN's s8 x s8 GEMM on the codes as they are, no split: exact only with VNNI or AMX (int32 sums)."""
INT_MM = cpu_gemm.INT_MM
"""``torch._int_mm``: exact, but a generic loop on CPU (seconds for 512x4096x4096 on AVX2)."""
REFERENCE = "reference"
"""``int8_matmul_reference``: float64 GEMM, exact for any K below 5e11."""
ALL_CPU_KERNELS = (ONEDNN_S8, FBGEMM_PAIRS, FBGEMM, ONEDNN, INT_MM)
"""Every CPU integer GEMM this library knows, in order of preference when nothing is measured."""


SHAPE_CASES_K = (1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 33, 63, 65, 127, 129, 255, 257, 4099)
"""Input-feature counts every kernel is proven on: 1 to 4, and just below and past each power-of-two
block size a GEMM unrolls or tiles by (8 to 256, and 4096). ``torch._int_mm`` on AMD Zen 4 returned
uninitialised memory at K = 1 only; a kernel is trusted only where it was shown exact."""
SHAPE_CASES_MN = ((1, 45), (3, 1), (17, 67))
"""(M, N) taken in turn with the values of K: one token, one output row, and sizes that are not
multiples of 8 or 16 (each K gets one, so the self-test costs tens of milliseconds per kernel)."""


def _saturation_cases() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Codes that saturate an int16 pair sum (``vpmaddubsw`` without VNNI) or expose a 7-bit misreading."""
    A = torch.full((4, 256), 127, dtype=torch.int8)
    A[1::2] = -127
    A[2, ::3] = 5
    W = torch.full((8, 256), 127, dtype=torch.int8)
    W[::3] = -127
    W[4, 1::2] = -3
    return [(A, W)]


def _shape_cases() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Degenerate and odd shapes (each of ``SHAPE_CASES_K`` with the next of ``SHAPE_CASES_MN``): random
    codes in [-127, 127]; at the largest K one row of 127 against one of 127, a sum past 2**24 (float32's
    exact range, which the float-output kernels check)."""
    gen = torch.Generator().manual_seed(2208_07339)
    cases = []
    for i, K in enumerate(SHAPE_CASES_K):
        M, N = SHAPE_CASES_MN[i % len(SHAPE_CASES_MN)]
        A = torch.randint(-127, 128, (M, K), generator=gen, dtype=torch.int8)
        W = torch.randint(-127, 128, (N, K), generator=gen, dtype=torch.int8)
        if K == SHAPE_CASES_K[-1]:
            A[0], W[0] = 127, 127  # C[0, 0] = 127 * 127 * 4099 > 2**24
        cases.append((A, W))
    return cases


def _self_test_cases() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(A (M, K), W (N, K))`` int8: the saturating codes, then every shape of ``_shape_cases``. (Sums
    past int32 are the business of ``accumulate.py``, tested per kernel in the suite: a runtime case
    would cost a second per process.)"""
    return _saturation_cases() + _shape_cases()


def run_kernel(kernel: str, A_i8: torch.Tensor, W_i8: torch.Tensor) -> torch.Tensor:
    """``A_i8 W_i8^T`` on one CPU kernel, the weight packed for it now (int32, or int64 past int32)."""
    if kernel == INT_MM:
        return cpu_gemm.int_mm(A_i8, W_i8)
    return cpu_gemm.int8_mm_integer(A_i8, W_i8, cpu_gemm.prepack(W_i8, kernel))


def _self_test(kernel: str) -> bool:
    """Run the kernel on ``_self_test_cases`` and compare with the exact product."""
    for A, W in _self_test_cases():
        try:
            C = run_kernel(kernel, A, W)
        except (RuntimeError, AttributeError, NotImplementedError) as err:
            logger.debug("CPU int8 kernel %s unavailable: %s", kernel, err)
            return False
        if not torch.equal(C.to(torch.int64), (A.double() @ W.double().T).to(torch.int64)):
            if kernel == ONEDNN_S8:  # the expected outcome without VNNI / AMX
                logger.info("CPU int8 kernel %s saturates on this CPU (no VNNI/AMX); not using it", kernel)
            else:
                logger.warning(
                    "CPU int8 kernel %s returned wrong integers on its self-test (M=%d, K=%d, N=%d); not using it",
                    kernel,
                    A.shape[0],
                    A.shape[1],
                    W.shape[0],
                )
            return False
    return True


@functools.cache
def has_fbgemm_linear() -> bool:
    """fbgemm's quantized linear is registered (x86 builds) and exact on this CPU."""
    if torch.backends.quantized.engine not in ("x86", "fbgemm"):
        return False  # qnnpack (ARM) ignores reduce_range, so the unit scale of cpu_gemm.py would not hold
    return _self_test(FBGEMM)


@functools.cache
def has_fbgemm_pairs_linear() -> bool:
    """fbgemm's 8-bit dynamic linear is exact here on pair-bounded weights (the self-test's weights of
    +-127 everywhere become pairs (127, 1) exactly at the bound, times u8 activations of 255 and 1)."""
    if torch.backends.quantized.engine not in ("x86", "fbgemm"):
        return False
    return _self_test(FBGEMM_PAIRS)


@functools.cache
def has_onednn_linear() -> bool:
    """oneDNN's quantized linear is registered (x86 builds with mkldnn) and exact on this CPU."""
    return torch.backends.mkldnn.is_available() and _self_test(ONEDNN)


@functools.cache
def has_onednn_s8_linear() -> bool:
    """oneDNN's s8 x s8 linear is exact on full-range codes: true with VNNI / AMX, false on AVX2
    (``vpmaddubsw`` saturates its int16 pair sums; the self-test's codes make it do so)."""
    return torch.backends.mkldnn.is_available() and _self_test(ONEDNN_S8)


@functools.cache
def has_int_mm_cpu() -> bool:
    """``torch._int_mm`` runs on CPU tensors and is exact there."""
    return has_int_mm() and _self_test(INT_MM)


@functools.cache
def has_weight_int8pack_mm() -> bool:
    """``torch._weight_int8pack_mm`` runs on CPU with bf16 activations and gives the right product."""
    if not hasattr(torch, "_weight_int8pack_mm"):
        return False
    X = torch.linspace(-2, 2, 3 * 64).reshape(3, 64).to(torch.bfloat16)  # (M, K), exact in bf16
    W = torch.arange(-64, 64, dtype=torch.int8).reshape(2, 64)  # (N, K)
    try:
        C = torch._weight_int8pack_mm(X, W, torch.ones(2, dtype=torch.bfloat16))
    except (RuntimeError, NotImplementedError) as err:
        logger.debug("_weight_int8pack_mm unavailable: %s", err)
        return False
    exact = X.double() @ W.double().T
    ok = C.shape == exact.shape and bool(((C.double() - exact).abs() <= 2**-7 * exact.abs().amax()).all())
    if not ok:
        logger.warning("_weight_int8pack_mm returned a wrong product on its self-test; not using it")
    return ok


def has_int_mm() -> bool:
    # _int_mm exists for CPU and CUDA since torch 2.2
    return hasattr(torch, "_int_mm")


def exact_cpu_kernels() -> list[str]:
    """Every CPU integer GEMM that runs here and passed its exactness self-test, in order of preference
    when nothing is measured (no split before split, fbgemm before oneDNN, ``INT_MM`` last).

    ``REFERENCE`` is not among them (float64, always exact, only ever the fallback). Which of these
    may be used at all, and which one runs for a shape, is ``ops/choice/cpu.py``'s business."""
    probes = {
        ONEDNN_S8: has_onednn_s8_linear,
        FBGEMM_PAIRS: has_fbgemm_pairs_linear,
        FBGEMM: has_fbgemm_linear,
        ONEDNN: has_onednn_linear,
        INT_MM: has_int_mm_cpu,
    }
    return [kernel for kernel, probe in probes.items() if probe()]
