"""``quantize_model``: swap every linear layer of a model for ``Int8Linear``, in place."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from ...config import DEFAULT_ACTIVATION, DEFAULT_SKIP_MODULES, DEFAULT_THRESHOLD, Int8Config
from ...nn import Int8Linear

__all__ = ["ConversionReport", "dequantize_model", "is_linear", "linear_memory", "quantize_model", "set_submodule"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConversionReport:
    """What ``quantize_model`` did. Byte counts cover the linear layers only (scales included)."""

    converted: tuple[str, ...]
    skipped: dict[str, str] = field(default_factory=dict)  # module name -> reason
    bytes_before: int = 0
    bytes_after: int = 0

    def summary(self) -> str:
        saved = (1 - self.bytes_after / self.bytes_before) * 100 if self.bytes_before else 0.0
        return (
            f"converted {len(self.converted)} linear layers to int8 ({len(self.skipped)} kept in float); "
            f"their memory {self.bytes_before / 2**20:.1f} MiB -> {self.bytes_after / 2**20:.1f} MiB (-{saved:.0f}%)"
        )


def is_linear(module: nn.Module) -> bool:
    if isinstance(module, nn.Linear):
        return True
    # transformers.pytorch_utils.Conv1D (GPT-2 family); matched by name to keep transformers optional
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and hasattr(module, "weight")


def _tensor_bytes(module: nn.Module) -> int:
    if isinstance(module, Int8Linear):
        return module.memory_bytes()
    return sum(t.numel() * t.element_size() for t in (module.weight, getattr(module, "bias", None)) if t is not None)


def linear_memory(model: nn.Module) -> dict[str, int]:
    """Bytes of the model's linear layers, by storage: ``float``, ``int8`` (scales and bias included),
    and ``params`` (number of linear weight + bias elements)."""
    out = {"float": 0, "int8": 0, "params": 0}
    for module in model.modules():
        if isinstance(module, Int8Linear):
            out["int8"] += module.memory_bytes()
            out["params"] += module.weight_int8.numel() + (module.bias.numel() if module.bias is not None else 0)
        elif is_linear(module):
            out["float"] += _tensor_bytes(module)
            out["params"] += module.weight.numel() + (module.bias.numel() if module.bias is not None else 0)
    return out


def _shared_parameter_ids(model: nn.Module) -> set[int]:
    """ids of parameters reachable from more than one module (tied embeddings and the like)."""
    owners: dict[int, int] = {}
    for module in model.modules():
        for p in module.parameters(recurse=False):
            owners[id(p)] = owners.get(id(p), 0) + 1
    return {pid for pid, n in owners.items() if n > 1}


def quantize_model(
    model: nn.Module,
    threshold: float = DEFAULT_THRESHOLD,
    skip_modules: tuple[str, ...] | list[str] = DEFAULT_SKIP_MODULES,
    *,
    activation: str = DEFAULT_ACTIVATION,
    float_dims: Mapping[str, Sequence[int]] | None = None,
    batch_invariant: bool = False,
    progress: bool = False,
    return_report: bool = False,
):
    """Replace, in place, each ``nn.Linear`` / ``Conv1D`` of ``model`` with an ``Int8Linear``.

    A layer is kept in float when its name is (or ends in ``.`` + ) a name in ``skip_modules``, or
    when its weight is shared with another module (a tied output embedding): quantizing it would
    untie it or quantize the embedding too. Already-int8 layers are left as they are, so converting
    twice is a no-op. Works on any ``nn.Module``. ``threshold``, ``activation`` and ``batch_invariant``
    are those of ``Int8Config``.

    Returns ``model``, or ``(model, ConversionReport)`` with ``return_report=True``; the report's
    summary is also logged at INFO level.

    ``float_dims``: ``{module name: input dims}`` whose weight columns stay in float and are always
    computed in float (``Int8Linear.float_dims``), as ``llm_int8.analysis.calibrate_outlier_dims``
    finds them. A name that is not a converted layer is an error.
    """
    config = Int8Config(
        threshold=threshold, skip_modules=skip_modules, activation=activation, batch_invariant=batch_invariant
    )
    shared = _shared_parameter_ids(model)
    targets: list[tuple[str, nn.Module]] = []
    skipped: dict[str, str] = {}
    for name, module in model.named_modules():
        if not is_linear(module):
            continue
        if config.skips(name):
            skipped[name] = "in skip_modules"
        elif id(module.weight) in shared:
            skipped[name] = "weight tied to another module"
        else:
            targets.append((name, module))
    float_dims = dict(float_dims or {})
    unknown = sorted(set(float_dims) - {n for n, _ in targets})
    if unknown:
        raise ValueError(f"float_dims names modules that are not converted linear layers: {unknown[:5]}")
    already = sum(isinstance(m, Int8Linear) for m in model.modules())
    if not targets and already:
        logger.info("model already holds %d Int8Linear layers; nothing to convert", already)

    bytes_before = sum(_tensor_bytes(m) for _, m in targets)
    bytes_after = 0
    for name, module in tqdm(targets, desc="quantizing linear layers", unit="layer", disable=not progress):
        int8_module = Int8Linear.from_linear(
            module,
            threshold=config.threshold,
            activation=config.activation,
            float_dims=float_dims.get(name),
            batch_invariant=config.batch_invariant,
        )
        int8_module.train(module.training)
        set_submodule(model, name, int8_module)
        bytes_after += int8_module.memory_bytes()
        del module
    if targets and hasattr(model, "config"):  # a transformers model: peft's k-bit preparation keys on this flag
        model.is_loaded_in_8bit = True
    report = ConversionReport(tuple(n for n, _ in targets), skipped, bytes_before, bytes_after)
    logger.info(report.summary())
    return (model, report) if return_report else model


def dequantize_model(model: nn.Module, dtype: torch.dtype | None = None) -> list[str]:
    """Replace, in place, each ``Int8Linear`` of ``model`` with an ``nn.Linear`` holding its dequantized
    weight (``Int8Linear.dequantized_weight``, float columns exact) and its bias; the inverse of
    ``quantize_model`` up to the int8 rounding. ``dtype``: of the new weights (default: each layer's
    bias dtype, float32 without a bias). Layers that were GPT-2 ``Conv1D`` come back as ``nn.Linear``,
    which computes the same. Returns the names of the replaced layers."""
    names = [name for name, m in model.named_modules() if isinstance(m, Int8Linear)]
    for name in names:
        old = model.get_submodule(name)
        weight = old.weight if dtype is None else old.dequantized_weight(dtype)  # (out, in)
        new = nn.Linear(old.in_features, old.out_features, bias=old.bias is not None, device="meta")
        new.weight = nn.Parameter(weight)
        if old.bias is not None:
            new.bias = nn.Parameter(old.bias.detach().to(weight.dtype).clone())
        new.train(old.training)
        set_submodule(model, name, new)
    return names


def set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    if name == "":
        raise ValueError("the model itself is a linear layer; use Int8Linear.from_linear(model) instead")
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
