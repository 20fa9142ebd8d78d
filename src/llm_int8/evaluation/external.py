"""Peers run on the same model for comparison: bitsandbytes' ``Linear8bitLt`` (LLM.int8() as its authors ship it)."""

from __future__ import annotations

import logging
import warnings

from torch import nn

__all__ = ["to_bitsandbytes"]


def to_bitsandbytes(model: nn.Module, targets: list[tuple[str, nn.Module]], threshold: float = 6.0) -> nn.Module:
    """Replace each ``(name, linear)`` of ``targets`` in ``model`` by ``bitsandbytes.nn.Linear8bitLt``
    (int8 weights, ``has_fp16_weights=False``, outlier threshold ``threshold``); returns ``model`` in eval mode.

    The same layers and state as ``transformers``' ``BitsAndBytesConfig(load_in_8bit=True)`` gives
    (checked in the tests). bitsandbytes casts float32 inputs to float16 for its quantization (on CPU
    too) and says so on every call; that one notice is silenced here.
    """
    try:
        import bitsandbytes as bnb
    except ImportError as err:
        raise ImportError("the bitsandbytes method needs bitsandbytes: pip install bitsandbytes") from err
    warnings.filterwarnings("ignore", message="MatMul8bitLt: inputs will be cast from")  # older releases warn
    logger = logging.getLogger("bitsandbytes.autograd._functions")  # 0.45+ log it instead
    if _CastNotice not in {type(f) for f in logger.filters}:
        logger.addFilter(_CastNotice())
    for name, linear in targets:
        weight = linear.weight if isinstance(linear, nn.Linear) else linear.weight.T  # Conv1D stores (in, out)
        out_features, in_features = weight.shape
        layer = bnb.nn.Linear8bitLt(
            in_features, out_features, bias=linear.bias is not None, has_fp16_weights=False, threshold=threshold
        )
        W = weight.detach().contiguous().clone()  # (out, in)
        layer.weight = bnb.nn.Int8Params(W, requires_grad=False, has_fp16_weights=False)
        if linear.bias is not None:
            layer.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        layer = layer.to(weight.device)  # Int8Params quantizes the weight as it is moved to a device
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, layer)
    return model.eval()


class _CastNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("MatMul8bitLt: inputs will be cast from")
