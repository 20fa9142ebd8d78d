"""Quantizing a checkpoint weight row-wise while it is read, one block of rows at a time.

``W_i8[i] = round(W[i] * 127 / max|W[i]|)``, ``s_w[i] = max|W[i]| / 127``, computed as
``rowwise_quantize(W)`` computes it (bit-identical) but in place in two reused scratch buffers, so at
no time is more than one block of float weight alive. An ``nn.Linear`` stores ``W`` (out, in): each
block of output rows is quantized on its own. A GPT-2 ``Conv1D`` stores ``W^T`` (in, out): the row
absmax of ``W`` is a column max there, so a first pass over the blocks collects it and a second pass
writes the codes.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from ...primitives.quantize import INT8_MAX
from .checkpoint import CheckpointError

__all__ = ["BLOCK_BYTES", "Scratch", "read_quantized"]

# Float32 bytes of one block of weight rows quantized at a time: small enough to be noise next to
# the int8 model, large enough for the reads and the row-wise quantizer to run at full speed.
BLOCK_BYTES = 2 * 2**20

_TINY = torch.finfo(torch.float32).tiny


class Scratch:
    """The two buffers every block goes through, allocated once per load: the raw bytes read from the
    file and their float32 copy that is quantized in place. Reusing them, instead of letting each
    block allocate its own temporaries, is what keeps the heap from growing: blocks of a few MiB
    freed between the long-lived int8 tensors fragment glibc's heap and stay resident."""

    def __init__(self) -> None:
        self.raw = torch.empty(0, dtype=torch.uint8)  # grown to the largest block read
        self.work = torch.empty(BLOCK_BYTES // 4, dtype=torch.float32)

    def rows_per_block(self, cols: int, itemsize: int) -> int:
        return max(1, BLOCK_BYTES // (max(4, itemsize) * max(cols, 1)))

    def float_view(self, block: torch.Tensor) -> torch.Tensor:
        if block.numel() > self.work.numel():  # a single row longer than a block
            self.work = torch.empty(block.numel(), dtype=torch.float32)
        return self.work[: block.numel()].view(block.shape).copy_(block)

    def raw_for(self, nbytes: int) -> torch.Tensor:
        if nbytes > self.raw.numel():
            self.raw = torch.empty(nbytes, dtype=torch.uint8)
        return self.raw


def _absmax(A: torch.Tensor, dim: int) -> torch.Tensor:
    """``max |A|`` along ``dim`` without an ``|A|`` temporary: ``max(-min A, max A)``."""
    lo, hi = torch.aminmax(A, dim=dim)
    return torch.maximum(lo.neg_(), hi)


def _inv_step(absmax: torch.Tensor) -> torch.Tensor:
    """``127 / max|W[i]|`` as ``rowwise_quantize`` computes it, except that an all-zero row gets 0
    (not ``127 / tiny = inf``, whose product with the zero row is NaN and casts to int8 by luck)."""
    return (INT8_MAX / absmax.clamp_min(_TINY)).masked_fill_(absmax == 0, 0.0)


def read_quantized(
    handle,
    key: str,
    transposed: bool,
    label: str,
    scratch: Scratch,
    float_dims: torch.Tensor | None = None,
    float_dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Quantize checkpoint tensor ``key`` (``label`` names it in errors) row-wise while reading it.

    ``transposed``: the tensor is stored (in, out), as a ``Conv1D`` stores it. ``float_dims`` (sorted
    int64 input dims, or ``None``): their weight columns are taken out in ``float_dtype`` and zeroed
    before the row absmax, as ``Int8Linear.from_linear(float_dims=...)`` does. Returns
    ``(W_i8 (out, in) int8, s_w (out,) float32, W[:, float_dims] or None)``.
    """
    info = handle.tensors[key]
    if not info.dtype.is_floating_point or len(info.shape) != 2:
        raise CheckpointError(
            f"{info.path}: tensor {key!r} ({label}) is {info.dtype} {list(info.shape)}, but the config "
            "describes a float 2-D linear weight"
        )
    dims = float_dims if float_dims is not None and float_dims.numel() else None
    blocks = _Blocks(handle, key, scratch)
    if transposed:
        return _quantize_transposed(blocks, dims, float_dtype)
    return _quantize_rows(blocks, dims, float_dtype)


class _Blocks:
    """The float32 blocks of rows of one checkpoint tensor, read into the scratch buffers."""

    def __init__(self, handle, key: str, scratch: Scratch) -> None:
        info = handle.tensors[key]
        self.handle, self.key, self.scratch, self.path = handle, key, scratch, info.path
        self.rows, self.cols = info.shape
        self.block_rows = scratch.rows_per_block(self.cols, info.dtype.itemsize)
        self.raw = scratch.raw_for(min(self.rows, self.block_rows) * self.cols * info.dtype.itemsize)

    def __iter__(self) -> Iterator[tuple[int, int, torch.Tensor]]:
        for r0 in range(0, self.rows, self.block_rows):
            r1 = min(self.rows, r0 + self.block_rows)
            block = self.handle.read_rows(self.key, r0, r1, scratch=self.raw)
            yield r0, r1, self.scratch.float_view(block)  # (r1 - r0, cols)

    def check_finite(self, absmax: torch.Tensor) -> None:
        if not torch.isfinite(absmax).all():  # a NaN or Inf anywhere in the rows makes their absmax non-finite
            raise CheckpointError(f"{self.path}: tensor {self.key!r} holds NaN or Inf values; cannot quantize it")


def _quantize_rows(blocks: _Blocks, dims: torch.Tensor | None, float_dtype: torch.dtype):
    """``nn.Linear``: the stored (out, in) rows are the weight's rows; one pass."""
    W_i8 = torch.empty(blocks.rows, blocks.cols, dtype=torch.int8)  # (out, in)
    s_w = torch.empty(blocks.rows, dtype=torch.float32)  # (out,)
    W_S = None if dims is None else torch.empty(blocks.rows, dims.numel(), dtype=float_dtype)  # (out, |S|)
    for r0, r1, W_block in blocks:
        if dims is not None:
            W_S[r0:r1] = W_block[:, dims]
            W_block.index_fill_(1, dims, 0)
        absmax = _absmax(W_block, dim=1)  # (r1 - r0,)
        blocks.check_finite(absmax)
        W_block.mul_(_inv_step(absmax)[:, None]).round_().clamp_(-INT8_MAX, INT8_MAX)
        W_i8[r0:r1].copy_(W_block)  # exact: the values are integers in [-127, 127]
        torch.div(absmax, INT8_MAX, out=s_w[r0:r1])
    return W_i8, s_w, W_S


def _quantize_transposed(blocks: _Blocks, dims: torch.Tensor | None, float_dtype: torch.dtype):
    """``Conv1D``: stored (in, out) = (rows, cols); two passes, the float dims are stored rows."""
    absmax = torch.zeros(blocks.cols, dtype=torch.float32)  # (out,)
    W_S = None if dims is None else torch.empty(blocks.cols, dims.numel(), dtype=float_dtype)  # (out, |S|)

    def take_float_rows(r0: int, r1: int, WT_block: torch.Tensor, keep: bool) -> None:
        if dims is None:
            return
        inside = ((dims >= r0) & (dims < r1)).nonzero().reshape(-1)  # positions in S
        local = dims[inside] - r0
        if keep:
            W_S[:, inside] = WT_block[local].T
        WT_block.index_fill_(0, local, 0)

    for r0, r1, WT_block in blocks:
        take_float_rows(r0, r1, WT_block, keep=True)
        torch.maximum(absmax, _absmax(WT_block, dim=0), out=absmax)
    blocks.check_finite(absmax)
    inv_step = _inv_step(absmax)  # (out,)
    W_i8 = torch.empty(blocks.cols, blocks.rows, dtype=torch.int8)  # (out, in)
    for r0, r1, WT_block in blocks:
        take_float_rows(r0, r1, WT_block, keep=False)
        WT_block.mul_(inv_step).round_().clamp_(-INT8_MAX, INT8_MAX)  # (r1 - r0, out)
        W_i8[:, r0:r1].copy_(WT_block.T)
    return W_i8, absmax / INT8_MAX, W_S
