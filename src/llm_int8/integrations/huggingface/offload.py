"""Placing an int8 model over several devices, CPU and disk with accelerate.

The device map is planned on the meta skeleton *after* the linear layers were swapped for
``Int8Linear``, so accelerate sizes every layer by its int8 bytes (codes + float32 scales + bias),
not by the float checkpoint. Tensors are then sent straight to their device as they are loaded;
disk-placed ones are written to the offload folder and never held in memory.

Offloaded ``Int8Linear`` layers stay int8: their ``weight_int8`` / ``weight_scale`` buffers are what
is offloaded and brought back for each forward (which is why buffers are offloaded too).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

__all__ = ["device_for", "dispatch", "plan_device_map"]


def plan_device_map(
    model: nn.Module,
    device_map: str | dict | torch.device | None,
    max_memory: dict | None = None,
    dtype: torch.dtype | None = None,
) -> dict[str, str | int] | None:
    """A ``{module name: device}`` map: ``device_map`` as given (a dict, or one device for all), or
    for ``"auto"`` / ``"balanced"`` / ``"balanced_low_0"`` / ``"sequential"`` one planned by accelerate
    within ``max_memory`` (bytes or strings such as ``"10GiB"`` per device, ``"cpu"``, ``"disk"``)."""
    if device_map is None:
        if max_memory is not None:
            device_map = "auto"
        else:
            return None
    if isinstance(device_map, dict):
        return dict(device_map)
    if isinstance(device_map, (torch.device, int)) or device_map not in (
        "auto",
        "balanced",
        "balanced_low_0",
        "sequential",
    ):
        return {"": str(device_map) if not isinstance(device_map, int) else device_map}
    from accelerate import infer_auto_device_map
    from accelerate.utils import get_balanced_memory

    no_split = list(getattr(model, "_no_split_modules", None) or [])
    if device_map != "sequential":
        max_memory = get_balanced_memory(
            model,
            max_memory=max_memory,
            no_split_module_classes=no_split,
            dtype=dtype,
            low_zero=device_map == "balanced_low_0",
        )
    return infer_auto_device_map(model, max_memory=max_memory, no_split_module_classes=no_split, dtype=dtype)


def device_for(device_map: dict[str, str | int] | None, tensor_name: str) -> str | int:
    """The device a tensor goes to: that of the longest module name in the map that contains it."""
    if not device_map:
        return "cpu"
    best, best_len = None, -1
    for module_name, device in device_map.items():
        if module_name == "" or tensor_name == module_name or tensor_name.startswith(module_name + "."):
            if len(module_name) > best_len:
                best, best_len = device, len(module_name)
    if best is None:
        raise ValueError(f"device_map places no module that holds {tensor_name!r}")
    return best


def dispatch(
    model: nn.Module,
    device_map: dict[str, str | int],
    offload_folder: str | os.PathLike | None,
    offload_index: dict | None,
) -> nn.Module:
    """Attach accelerate's hooks when the model spans several devices or the disk."""
    devices = set(device_map.values())
    if len(devices) <= 1 and "disk" not in devices:
        return model
    from accelerate import dispatch_model
    from accelerate.utils import save_offload_index

    if offload_index:
        save_offload_index(offload_index, offload_folder)
    return dispatch_model(
        model,
        device_map=device_map,
        offload_dir=Path(offload_folder) if offload_folder else None,
        offload_index=offload_index or None,
        offload_buffers=True,
    )
