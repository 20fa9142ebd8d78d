"""``LLMInt8LinearMethod``: the vLLM linear method of LLM.int8(), over the library's own op.

Per layer it holds what ``Int8Linear`` holds (``weight_int8`` (N, K) int8, ``weight_scale`` (N,)
float32, the engine's ``bias``) for this rank's partition, and ``apply`` is one call of
``llm_int8.ops.int8_linear`` with the arguments ``Int8Linear.forward`` passes: the same custom op under
``torch.compile``, so the same bits as ``Int8Linear`` on the same weights and input.

Online (a 16-bit checkpoint) the codes and scales are buffers filled by ``loading.quantizing_loader``
behind an empty ``weight`` parameter, the name the model's loader looks for; from a saved int8 folder
they are parameters the checkpoint fills, and ``weight`` takes its empty placeholder.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager

import torch
from vllm.model_executor.layers.linear import LinearMethodBase
from vllm.model_executor.utils import set_weight_attrs

from ....ops import PackedWeightCache, compute_weight_row_sums, int8_linear
from ....ops.choice.cpu import LARGEST_BUCKET
from ..options import ServingOptions
from . import loading

__all__ = ["LLMInt8LinearMethod"]

logger = logging.getLogger(__name__)

_WARM_TOKENS = tuple(1 << i for i in range(LARGEST_BUCKET.bit_length()))
"""1, 2, 4, ..., 128: every token bucket the CPU kernel choice distinguishes (``ops/choice/cpu.py``)."""


@contextmanager
def _default_dtype(dtype: torch.dtype):
    """vLLM loads under ``torch.set_default_dtype(model dtype)``; the kernel-choice probes of ``ops/choice`` make
    their random operands in the default dtype and the fbgemm GEMMs they time take float32 only."""
    saved = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(saved)


class LLMInt8LinearMethod(LinearMethodBase):
    """LLM.int8() for one vLLM linear layer (column, merged, QKV, row-parallel or replicated)."""

    def __init__(self, options: ServingOptions, warmed: set) -> None:
        self.options = options
        self._warmed = warmed  # (N, K, dtype) shapes whose kernel choice is measured: once per engine

    def create_weights(
        self,
        layer: torch.nn.Module,
        input_size_per_partition: int,
        output_partition_sizes: list[int],
        input_size: int,
        output_size: int,
        params_dtype: torch.dtype,
        **extra_weight_attrs,
    ) -> None:
        delegate = extra_weight_attrs.pop("weight_loader")  # the layer's own (v1) loader: it shards
        N, K = sum(output_partition_sizes), input_size_per_partition
        codes = torch.empty(N, K, dtype=torch.int8)  # (out per partition, in per partition)
        scales = torch.empty(N, dtype=torch.float32)  # (out per partition,), row absmax / 127
        placeholder = torch.nn.Parameter(torch.empty(0, dtype=params_dtype), requires_grad=False)
        if self.options.pre_quantized:
            codes = torch.nn.Parameter(codes, requires_grad=False)
            scales = torch.nn.Parameter(scales, requires_grad=False)
            layer.register_parameter("weight_int8", codes)
            layer.register_parameter("weight_scale", scales)
            loaders = {name: loading.checked_loader(layer, name, delegate) for name in ("weight_int8", "weight_scale")}
            placeholder_loader = loading.placeholder_loader(layer)
        else:  # not parameters: no checkpoint tensor has these names, the float weight fills them
            layer.register_buffer("weight_int8", codes)
            layer.register_buffer("weight_scale", scales)
            loaders = {"weight_int8": delegate, "weight_scale": delegate}
            placeholder_loader = loading.quantizing_loader(layer, delegate)
        set_weight_attrs(codes, {"input_dim": 1, "output_dim": 0, "weight_loader": loaders["weight_int8"]})
        set_weight_attrs(scales, {"output_dim": 0, "weight_loader": loaders["weight_scale"]})
        layer.register_parameter("weight", placeholder)
        set_weight_attrs(placeholder, {"weight_loader": placeholder_loader})
        set_weight_attrs(codes, extra_weight_attrs)
        # derived from weight_int8, never saved, rebuilt if it changes: as Int8Linear keeps them
        layer.llm_int8_packed = PackedWeightCache()
        layer.llm_int8_row_sums = PackedWeightCache(compute_weight_row_sums)

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        """Build the packed layout and row sums now, and measure the kernel choice of this shape, so no
        request pays for it (decisions are cached on disk by ``ops/choice``: a later start reads them)."""
        W = layer.weight_int8
        if W.device.type != "cpu":
            return  # the GPU route packs nothing; its Triton / cuBLASLt choice is timed at first use
        shape = (*W.shape, layer.params_dtype)
        start = time.perf_counter()
        with torch.no_grad(), _default_dtype(torch.float32):
            layer.llm_int8_packed.get(W)  # (the first one also runs the kernels' admission, once per machine)
            if self.options.activation == "zeropoint":
                layer.llm_int8_row_sums.get(W)
            for m in _WARM_TOKENS:  # every bucket: each may choose (and pack for) another kernel
                self.apply(layer, torch.zeros(m, W.shape[1], dtype=layer.params_dtype))
        if shape not in self._warmed:
            self._warmed.add(shape)
            logger.info("llm_int8: %s ready (kernels chosen) in %.2f s", tuple(shape), time.perf_counter() - start)

    def apply(self, layer: torch.nn.Module, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        # One call of the library's op, as Int8Linear.forward makes it. Options of the op (a batch-invariant
        # mode) pass through here. TP-invariant activation statistics of a row-parallel layer would hook in
        # here too: each rank sees its slice of K, so the per-token scales and the outlier set are this
        # slice's unless they are reduced over the TP group before quantizing (docs/serving.md).
        return int8_linear(
            x,
            layer.weight_int8,
            layer.weight_scale,
            bias,
            self.options.threshold,
            activation=self.options.activation,
            packed_weight=layer.llm_int8_packed,
            weight_row_sums=layer.llm_int8_row_sums,
            weight_only_max_tokens=None,  # Int8Linear's default: the crossover measured for this shape
        )
