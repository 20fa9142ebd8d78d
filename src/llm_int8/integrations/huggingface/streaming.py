"""Step 4 of ``from_pretrained``: each checkpoint tensor, read one at a time, to its place in the int8 skeleton.

``CheckpointKeys`` maps checkpoint names to the model's as transformers' loader does; ``StreamingLoad``
places every tensor (quantizing float weights of int8 layers as they stream in, ``blockwise.py``),
checks its shape and kind against the config, and at the end that nothing is missing or left over.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import re
from contextlib import contextmanager

import torch
from torch import nn
from tqdm.auto import tqdm

from ...nn import Int8Linear
from ...primitives.quantize import INT8_MAX
from .blockwise import Scratch, read_quantized
from .checkpoint import CheckpointError
from .offload import device_for
from .quantizer import is_placeholder

__all__ = ["CheckpointKeys", "StreamingLoad", "malloc_trim"]

# bitsandbytes' weight_format codes; only the plain row-major layout is a portable checkpoint
_BNB_ROW_FORMAT = 0

# checkpoint leaves of an int8 layer besides ours: float or bitsandbytes int8 "weight", bnb's scales
_BNB_LEAVES = ("weight", "SCB", "weight_format")


@contextmanager
def _intra_op_threads(n: int):
    """Run torch ops on ``n`` threads inside the block, restoring the caller's setting after.

    The per-block work is a handful of memory-bound elementwise passes over 2 MiB; splitting those
    across threads costs a synchronisation per op that, on a busy machine, dominates (measured here:
    1.18 s on 2 threads vs 0.08 s on 1 for a 4096 x 1536 fp16 weight, with other jobs running).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def malloc_trim() -> None:
    """Give freed heap pages back to the OS (glibc only), so RSS reflects what is really held."""
    name = ctypes.util.find_library("c")
    if name is None:
        return
    try:
        ctypes.CDLL(name).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _set_tensor(model: nn.Module, key: str, value: torch.Tensor) -> None:
    module_name, _, name = key.rpartition(".")
    module = model.get_submodule(module_name) if module_name else model
    if name in module._parameters:
        old = module._parameters[name]
        requires_grad = bool(old is not None and old.requires_grad and value.is_floating_point())
        if isinstance(module, Int8Linear):
            requires_grad = False
        module._parameters[name] = nn.Parameter(value, requires_grad=requires_grad)
    elif name in module._buffers:
        module._buffers[name] = value
    else:
        raise KeyError(key)


class CheckpointKeys:
    """Maps a checkpoint tensor name to the model's, as transformers' loader does: its renamings for
    this architecture (``conversion_mapping``) and the base-model prefix added or removed (a bare
    ``LlamaModel`` checkpoint loaded into ``LlamaForCausalLM`` and back). ``None`` for no match."""

    def __init__(self, model: nn.Module) -> None:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter, WeightRenaming

        transforms = get_model_conversion_mapping(model) if hasattr(model, "config") else []
        self.renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
        self.converters = [t for t in transforms if isinstance(t, WeightConverter)]
        self.prefix = getattr(model, "base_model_prefix", "") or ""
        self.names: set[str] = set()

    def expect(self, names: set[str]) -> None:
        """The model-side names a checkpoint key may map to (its state dict plus other leaves)."""
        self.names = set(names)

    def needs_conversion(self, keys) -> bool:
        """Whether any checkpoint key matches one of transformers' merge / split conversions."""
        from transformers.core_model_loading import apply_converters, apply_renamings

        return any(apply_converters(apply_renamings(k, self.renamings), self.converters)[1] for k in keys)

    def __call__(self, ckpt_key: str) -> str | None:
        from transformers.core_model_loading import apply_renamings

        key = apply_renamings(ckpt_key, self.renamings)
        for cand in (key, f"{self.prefix}.{key}" if self.prefix else key, key.removeprefix(self.prefix + ".")):
            if cand in self.names:
                return cand
        return None


class StreamingLoad:
    """Step 4 of ``from_pretrained``: each checkpoint tensor to its place in the int8 skeleton.

    An int8 layer's tensors arrive as a float ``weight`` (quantized here, in blocks of rows), as
    bitsandbytes' int8 ``weight`` + ``SCB`` (+ ``weight_format``), or as ours (``weight_int8``,
    ``weight_scale``, and format 2's empty placeholder ``weight``, skipped); every other tensor must
    match the model's shape and kind (float or integer) and is cast to its dtype."""

    def __init__(self, model, config, plan, conv1d: set[str], dtype, device_map, offload_folder):
        self.model, self.config, self.plan, self.conv1d, self.dtype = model, config, plan, conv1d, dtype
        self.device_map, self.offload_folder = device_map, offload_folder
        self.offload_index: dict = {}
        self.expected = model.state_dict()
        self.int8 = set(plan.to_int8)
        self.arrived: set[str] = set()
        self.unexpected: list[str] = []
        self.scratch = Scratch()

    def run(self, shards, n_tensors: int, keymap: CheckpointKeys, progress: bool) -> None:
        keymap.expect(set(self.expected) | {f"{n}.{leaf}" for n in self.int8 for leaf in _BNB_LEAVES})
        bar = tqdm(total=n_tensors, desc="loading int8", unit="tensor", disable=not progress)
        with _intra_op_threads(1), bar:
            for handle in shards.open_files():
                for ckey in handle.keys():
                    bar.update(1)
                    key = keymap(ckey)
                    if key is None:
                        self.unexpected.append(ckey)
                        continue
                    layer, _, leaf = key.rpartition(".")
                    if layer in self.int8 and leaf in _BNB_LEAVES:
                        self._int8_leaf(handle, ckey, layer, leaf)
                    else:
                        self._tensor(handle, ckey, key)
                malloc_trim()

    def _int8_leaf(self, handle, ckey: str, layer: str, leaf: str) -> None:
        info = handle.tensors[ckey]
        if leaf == "weight" and is_placeholder(info.shape, info.dtype):
            return  # our format 2: the stand-in that stops a plain float load (hf_quantizer.PLACEHOLDER)
        if leaf == "SCB":  # bitsandbytes: row absmax of W
            scale_key = f"{layer}.weight_scale"
            self._check(info, scale_key, tuple(self.expected[scale_key].shape), float_expected=True)
            self._place(scale_key, handle.read(ckey).float() / INT8_MAX)
            return
        if leaf == "weight_format":
            fmt = handle.read(ckey).reshape(-1)
            if fmt.numel() != 1 or int(fmt[0]) != _BNB_ROW_FORMAT:
                raise CheckpointError(
                    f"{info.path}: tensor {ckey!r}: bitsandbytes weight format {fmt.tolist()} is a "
                    "GPU-specific tiled layout; only the row-major format (0) can be loaded"
                )
            return
        i8_key = f"{layer}.weight_int8"
        shape = tuple(self.expected[i8_key].shape)
        if info.dtype == torch.int8:  # bitsandbytes: the int8 codes, row-major (out, in)
            self._check(info, i8_key, shape)
            self._place(i8_key, handle.read(ckey))
            return
        # a float weight: quantize it as it streams in
        self._check(info, f"{layer}.weight", shape[::-1] if layer in self.conv1d else shape, float_expected=True)
        dims = None
        if self.plan.float_dims and layer in self.plan.float_dims:  # checked by the swap: distinct, in range
            dims = torch.tensor(self.plan.float_dims[layer], dtype=torch.int64).sort().values
        W_i8, s_w, W_S = read_quantized(
            handle, ckey, layer in self.conv1d, f"weight of {layer}", self.scratch, dims, self.dtype
        )
        self._place(i8_key, W_i8)
        self._place(f"{layer}.weight_scale", s_w)
        if W_S is not None:
            self._place(f"{layer}.float_dims", dims)
            self._place(f"{layer}.float_weight", W_S)

    def _tensor(self, handle, ckey: str, key: str) -> None:
        info, ref = handle.tensors[ckey], self.expected[key]
        self._check(info, key, tuple(ref.shape), float_expected=ref.dtype.is_floating_point)
        if not ref.dtype.is_floating_point and info.dtype != ref.dtype:
            raise CheckpointError(
                f"{info.path}: tensor {ckey!r} is {info.dtype} but the model expects {ref.dtype} for {key!r}"
            )
        value = handle.read(ckey)
        if value.dtype != ref.dtype:
            value = value.to(ref.dtype)  # weight_scale stays float32, the rest in `dtype`
        self._place(key, value)

    def _place(self, key: str, value: torch.Tensor) -> None:
        device = device_for(self.device_map, key)
        if device == "disk":
            from accelerate.utils import offload_weight

            self.offload_index = offload_weight(value, key, self.offload_folder, self.offload_index)
        else:
            _set_tensor(self.model, key, value.to(device) if str(device) != "cpu" else value)
        self.arrived.add(key)

    def _check(self, info, key: str, shape: tuple[int, ...], float_expected: bool | None = None) -> None:
        if tuple(info.shape) != tuple(shape):
            raise CheckpointError(
                f"{info.path}: tensor {info.name!r} has shape {list(info.shape)} but the config "
                f"({type(self.config).__name__}) gives {key!r} the shape {list(shape)}"
            )
        if float_expected is not None and info.dtype.is_floating_point != float_expected:
            raise CheckpointError(
                f"{info.path}: tensor {info.name!r} is {info.dtype} but {key!r} must be "
                f"{'a float' if float_expected else 'an integer'} tensor"
            )

    def verify(self, folder, headers) -> None:
        """Step 5: no checkpoint tensor left unplaced, no model tensor left missing (tied ones aside)."""
        ignored = getattr(self.model, "_keys_to_ignore_on_load_unexpected", None) or []
        ignore = [re.compile(p) for p in ignored]
        unexpected = [k for k in self.unexpected if not any(p.search(k) for p in ignore)]
        if unexpected:
            files = sorted({str(headers[k].path) for k in unexpected if k in headers}) or [str(folder)]
            raise CheckpointError(
                f"{', '.join(files[:3])}: {len(unexpected)} checkpoint tensors match nothing in the model "
                f"({type(self.config).__name__}): {unexpected[:10]}"
            )
        tied = dict(getattr(self.model, "all_tied_weights_keys", None) or {})
        tied_names = set(tied) | set(tied.values())
        missing = sorted(k for k in set(self.expected) - self.arrived if k not in tied_names)
        if missing:
            raise CheckpointError(
                f"{folder}: {len(missing)} tensors the model needs are not in the checkpoint: {missing[:10]}"
            )
