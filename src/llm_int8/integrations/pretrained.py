"""``from_pretrained``: load a Hugging Face checkpoint straight into an int8 model, streaming.

The paper's promise is that a 16-bit checkpoint "can be loaded, converted to Int8, and used
immediately"; that only saves memory if the float model is never held whole. So:

1. build the model skeleton on the ``meta`` device (no memory; small non-persistent buffers such as
   rotary tables are built for real), swap its linear layers for ``Int8Linear`` there;
2. read the checkpoint one tensor at a time; a linear weight is read in blocks of rows, each block
   quantized row-wise (``W_i8[i] = round(127 / max|W[i]| * W[i])``, ``s_w[i] = max|W[i]| / 127``)
   into the preallocated int8 buffer, so at no time is more than one block of float weight alive;
3. check that every tensor the model expects arrived with the shape and dtype its config implies,
   tie the output embedding, attach the ``LLMInt8Config`` (so ``save_pretrained`` records it).

The same reader loads checkpoints saved by this library (``weight_int8`` / ``weight_scale``) and
bitsandbytes 8-bit checkpoints (``weight`` int8 + ``SCB`` = row absmax, so ``weight_scale = SCB/127``),
neither of which ever holds a float weight.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from ..config import DEFAULT_ACTIVATION, DEFAULT_THRESHOLD, PAPER_ACTIVATION, Int8Config
from ..nn import Int8Linear
from ..primitives.quantize import INT8_MAX
from .checkpoint import CheckpointError, CheckpointShards, check_config_json
from .convert import quantize_model
from .hf_quantizer import QUANT_METHOD, LLMInt8Config, LLMInt8HfQuantizer, is_placeholder
from .loading import resolve_model_source
from .offload import device_for, dispatch, plan_device_map
from .swap import automatic_skip_modules, int8_targets, swap_linears_on_meta

__all__ = ["from_pretrained"]

logger = logging.getLogger(__name__)

# Float32 bytes of one block of weight rows quantized at a time: small enough to be noise next to
# the int8 model, large enough for the reads and the row-wise quantizer to run at full speed.
_BLOCK_BYTES = 2 * 2**20

# bitsandbytes' weight_format codes; only the plain row-major layout is a portable checkpoint
_BNB_ROW_FORMAT = 0

# checkpoint leaves of an int8 layer besides ours: float or bitsandbytes int8 "weight", bnb's scales
_BNB_LEAVES = ("weight", "SCB", "weight_format")

_TINY = torch.finfo(torch.float32).tiny


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


def _malloc_trim() -> None:
    """Give freed heap pages back to the OS (glibc only), so RSS reflects what is really held."""
    name = ctypes.util.find_library("c")
    if name is None:
        return
    try:
        ctypes.CDLL(name).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _is_float(dtype: torch.dtype) -> bool:
    return dtype.is_floating_point


def _resolve_dtype(dtype, config, headers) -> torch.dtype:
    """The compute dtype: the user's, else the config's, else the checkpoint's first float tensor's."""
    if dtype is not None and dtype != "auto":
        return getattr(torch, dtype) if isinstance(dtype, str) else dtype
    cfg_dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(cfg_dtype, str):
        cfg_dtype = getattr(torch, cfg_dtype, None)
    if isinstance(cfg_dtype, torch.dtype) and cfg_dtype.is_floating_point:
        return cfg_dtype
    for info in headers.values():
        if info.dtype.is_floating_point:
            return info.dtype
    return torch.float32


class _Scratch:
    """The two buffers every block goes through, allocated once per load: the raw bytes read from the
    file and their float32 copy that is quantized in place. Reusing them, instead of letting each
    block allocate its own temporaries, is what keeps the heap from growing: blocks of a few MiB
    freed between the long-lived int8 tensors fragment glibc's heap and stay resident."""

    def __init__(self) -> None:
        self.raw = torch.empty(0, dtype=torch.uint8)  # grown to the largest block read
        self.work = torch.empty(_BLOCK_BYTES // 4, dtype=torch.float32)

    def rows_per_block(self, cols: int, itemsize: int) -> int:
        return max(1, _BLOCK_BYTES // (max(4, itemsize) * max(cols, 1)))

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


def _read_quantized(
    handle,
    key: str,
    transposed: bool,
    label: str,
    scratch: _Scratch,
    float_dims: torch.Tensor | None = None,
    float_dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Quantize checkpoint tensor ``key`` row-wise while reading it in blocks of rows.

    ``W_i8[i] = round(W[i] * 127 / max|W[i]|)``, ``s_w[i] = max|W[i]| / 127``, computed as
    ``rowwise_quantize(W)`` computes it (bit-identical) but in place in ``scratch``.

    For an ``nn.Linear`` the stored weight is ``W`` (out, in) and each block of output rows is
    quantized on its own. A ``Conv1D`` stores ``W^T`` (in, out): the row absmax of ``W`` is a column
    max there, so a first pass over the blocks collects it and a second pass writes the codes.

    ``float_dims`` (sorted int64 input dims, or ``None``): their weight columns are taken out in
    ``float_dtype`` and zeroed before the row absmax, as ``Int8Linear.from_linear(float_dims=...)``
    does. Returns ``(W_i8 (out, in) int8, s_w (out,) float32, W[:, float_dims] or None)``.
    """
    info = handle.tensors[key]
    if not _is_float(info.dtype) or len(info.shape) != 2:
        raise CheckpointError(
            f"{info.path}: tensor {key!r} ({label}) is {info.dtype} {list(info.shape)}, but the config "
            "describes a float 2-D linear weight"
        )
    rows, cols = info.shape
    block_rows = scratch.rows_per_block(cols, info.dtype.itemsize)
    raw = scratch.raw_for(min(rows, block_rows) * cols * info.dtype.itemsize)

    def blocks():
        for r0 in range(0, rows, block_rows):
            r1 = min(rows, r0 + block_rows)
            yield r0, r1, scratch.float_view(handle.read_rows(key, r0, r1, scratch=raw))  # (r1 - r0, cols)

    def check_finite(absmax: torch.Tensor) -> None:
        if not torch.isfinite(absmax).all():  # a NaN or Inf anywhere in the rows makes their absmax non-finite
            raise CheckpointError(f"{info.path}: tensor {key!r} holds NaN or Inf values; cannot quantize it")

    dims = float_dims if float_dims is not None and float_dims.numel() else None
    if not transposed:
        W_i8 = torch.empty(rows, cols, dtype=torch.int8)  # (out, in)
        s_w = torch.empty(rows, dtype=torch.float32)  # (out,)
        W_S = None if dims is None else torch.empty(rows, dims.numel(), dtype=float_dtype)  # (out, |S|)
        for r0, r1, W_block in blocks():
            if dims is not None:
                W_S[r0:r1] = W_block[:, dims]
                W_block.index_fill_(1, dims, 0)
            absmax = _absmax(W_block, dim=1)  # (r1 - r0,)
            check_finite(absmax)
            inv_step = _inv_step(absmax)
            W_block.mul_(inv_step[:, None]).round_().clamp_(-INT8_MAX, INT8_MAX)
            W_i8[r0:r1].copy_(W_block)  # exact: the values are integers in [-127, 127]
            torch.div(absmax, INT8_MAX, out=s_w[r0:r1])
        return W_i8, s_w, W_S
    # Conv1D: stored (in, out) = (rows, cols); the float dims are rows here
    absmax = torch.zeros(cols, dtype=torch.float32)  # (out,)
    W_S = None if dims is None else torch.empty(cols, dims.numel(), dtype=float_dtype)  # (out, |S|)

    def take_float_rows(r0: int, r1: int, WT_block: torch.Tensor, keep: bool) -> None:
        if dims is None:
            return
        inside = ((dims >= r0) & (dims < r1)).nonzero().reshape(-1)  # positions in S
        local = dims[inside] - r0
        if keep:
            W_S[:, inside] = WT_block[local].T
        WT_block.index_fill_(0, local, 0)

    for r0, r1, WT_block in blocks():
        take_float_rows(r0, r1, WT_block, keep=True)
        torch.maximum(absmax, _absmax(WT_block, dim=0), out=absmax)
    check_finite(absmax)
    inv_step = _inv_step(absmax)  # (out,)
    W_i8 = torch.empty(cols, rows, dtype=torch.int8)  # (out, in)
    for r0, r1, WT_block in blocks():
        take_float_rows(r0, r1, WT_block, keep=False)
        WT_block.mul_(inv_step).round_().clamp_(-INT8_MAX, INT8_MAX)  # (r1 - r0, out)
        W_i8[:, r0:r1].copy_(WT_block.T)
    return W_i8, absmax / INT8_MAX, W_S


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


def _local_folder(source: str, kwargs: dict) -> tuple[Path | None, dict]:
    """``(folder, gguf kwargs)``: a local folder, a downloaded hub snapshot, or ``None`` for GGUF."""
    name, extra = resolve_model_source(source)
    if "gguf_file" in extra:
        return None, extra
    if Path(name).is_dir():
        return Path(name), {}
    from huggingface_hub import snapshot_download

    folder = snapshot_download(
        name,
        allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken"],
        revision=kwargs.pop("revision", None),
        token=kwargs.pop("token", None),
    )
    return Path(folder), {}


@dataclass
class _LayerPlan:
    """Which linear layers become int8, with what settings: step 2 of ``from_pretrained``."""

    threshold: float
    activation: str
    user_skip: list[str]
    to_int8: list[str]
    kept: list[str]
    float_dims: dict[str, list[int]] | None


def from_pretrained(
    model: str | os.PathLike | None,
    threshold: float | None = None,
    skip_modules: list[str] | tuple[str, ...] | None = None,
    device_map: str | dict | None = None,
    max_memory: dict | None = None,
    dtype: torch.dtype | str | None = None,
    *,
    progress: bool = True,
    offload_folder: str | os.PathLike | None = None,
    auto_class=None,
    activation: str | None = None,
    float_dims: Mapping[str, Sequence[int]] | None = None,
    **kwargs,
):
    """Load a Hugging Face causal LM with its linear layers as ``Int8Linear``, streaming the weights.

    ``model``: a local Hugging Face folder (``model.safetensors``, sharded with an index, or
    ``pytorch_model.bin`` read with ``weights_only=True``), a folder saved by this library or by
    transformers + bitsandbytes in 8 bit, a ``.gguf`` file (dequantized by transformers, then
    converted), or a hub id.

    ``threshold``: outlier threshold α; ``None`` uses the checkpoint's saved value, else 6.0.
    ``activation``: ``"absmax"`` or ``"zeropoint"`` (``Int8Config.activation``); ``None`` uses the
    saved value of an llm_int8 checkpoint, ``"absmax"`` for a bitsandbytes 8-bit checkpoint (the
    numerics bitsandbytes runs it with), and the library default ``"zeropoint"`` for a float one.
    ``skip_modules``: extra layer names (or suffixes) kept in float, *added* to the automatic ones
    (``lm_head``, tied output embeddings). ``dtype``: compute dtype of the float parts; default is
    the checkpoint's (a bf16 checkpoint stays bf16). ``device_map`` / ``max_memory``: as in
    transformers (``"auto"``, a dict, ...), planned on int8 sizes; ``"disk"`` entries go to
    ``offload_folder``. ``auto_class``: the transformers auto class (``AutoModelForCausalLM``).
    ``float_dims``: for a float checkpoint (or GGUF), ``{layer name: input dims}`` whose weight
    columns stay in float and are always computed in float (``Int8Linear.float_dims``), e.g. from
    ``llm_int8.analysis.calibrate_outlier_dims`` or the ``float_dims`` of a saved config; taken
    out of each weight as it streams in. An int8 checkpoint keeps the float dims it was saved with.
    Remaining ``kwargs`` go to ``AutoConfig.from_pretrained``.

    Checkpoint names go through transformers' own renamings for the architecture
    (``conversion_mapping``: GPT-NeoX's ``embed_out`` -> ``lm_head``, legacy ``gamma`` / ``beta``,
    ...). A checkpoint that needs one of transformers' *conversions* (tensors merged or split on
    load, e.g. per-expert MoE weights fused) cannot be read one tensor at a time: it is loaded
    through transformers' loader with ``LLMInt8Config`` instead (logged), which quantizes each
    weight as transformers materialises it.

    Raises ``CheckpointError`` (a ``ValueError``) naming the file and tensor for a missing, corrupt
    or truncated shard, or for tensors whose shape / dtype disagree with the config.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    auto_class = auto_class or AutoModelForCausalLM
    folder, gguf_kwargs = _local_folder(model, kwargs)
    if folder is None:
        return _from_gguf(
            model, threshold, skip_modules, dtype, auto_class, gguf_kwargs, progress, activation, float_dims
        )

    # 1. config, checkpoint headers, the compute dtype, and the model skeleton on meta
    check_config_json(folder)
    config = AutoConfig.from_pretrained(folder, **kwargs)
    saved_q = getattr(config, "quantization_config", None)
    if saved_q is not None and not isinstance(saved_q, dict):
        if not hasattr(saved_q, "to_dict"):
            raise CheckpointError(f"{Path(folder) / 'config.json'}: quantization_config is {saved_q!r}, not a mapping")
        saved_q = saved_q.to_dict()
    shards = CheckpointShards(folder)
    headers = shards.read_headers()
    dtype = _resolve_dtype(dtype, config, headers)
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the skeleton is built plain; ours is attached at the end
    hf_model = _skeleton_on_meta(auto_class, config, dtype)
    keymap = _CheckpointKeys(hf_model)

    if not saved_q and keymap.needs_conversion(headers):
        return _through_transformers(
            folder, auto_class, threshold, skip_modules, device_map, max_memory, dtype, activation, float_dims
        )

    # 2. which linear layers become int8; swap them on meta
    plan = _plan_layers(hf_model, folder, saved_q, headers, keymap, threshold, activation, skip_modules, float_dims)
    conv1d = set(
        swap_linears_on_meta(
            hf_model,
            plan.to_int8,
            plan.threshold,
            bias_dtype=dtype,
            activation=plan.activation,
            float_dims=plan.float_dims,
        )
    )

    # 3. device plan on the int8 skeleton
    device_map = plan_device_map(hf_model, device_map, max_memory, dtype)
    if device_map and "disk" in device_map.values():
        if offload_folder is None:
            offload_folder = tempfile.mkdtemp(prefix="llm_int8_offload_")
            logger.info("offloading to %s", offload_folder)
        os.makedirs(offload_folder, exist_ok=True)

    # 4. stream the tensors in, one file and one tensor at a time; 5. check that all arrived
    loader = _StreamingLoad(hf_model, config, plan, conv1d, dtype, device_map, offload_folder)
    loader.run(shards, len(headers), keymap, progress)
    loader.verify(folder, headers)

    # 6. tie, record the quantization, place on devices
    hf_model.tie_weights()
    if device_map is None or set(device_map.values()) <= {"cpu"}:
        still_meta = [n for n, t in [*hf_model.named_parameters(), *hf_model.named_buffers()] if t.is_meta]
        if still_meta:
            raise CheckpointError(f"{folder}: tensors left unloaded: {still_meta[:10]}")
    _attach_config(hf_model, plan.threshold, plan.user_skip, plan.kept, plan.activation, plan.float_dims)
    if device_map:
        hf_model.hf_device_map = device_map
        hf_model = dispatch(hf_model, device_map, offload_folder, loader.offload_index)
    hf_model.eval()
    _malloc_trim()
    logger.info("loaded %s: %d int8 linear layers, %d kept in float", folder, len(plan.to_int8), len(plan.kept))
    return hf_model


def _skeleton_on_meta(auto_class, config, dtype: torch.dtype) -> nn.Module:
    """The model with every parameter on ``meta`` (no memory); small non-persistent buffers (rotary
    tables) are built for real."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        return auto_class.from_config(config, dtype=dtype)


def _plan_layers(
    hf_model, folder, saved_q, headers, keymap, threshold, activation, skip_modules, float_dims
) -> _LayerPlan:
    """Settings and the float / int8 split: from the saved config for an int8 checkpoint (ours or
    bitsandbytes'), else from the arguments; a layer stored int8 is int8 whatever the lists say."""
    if saved_q and saved_q.get("quant_method") == QUANT_METHOD:
        try:
            saved = LLMInt8Config.from_dict(saved_q)
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"{Path(folder) / 'config.json'}: quantization_config: {err}") from err
        logger.info("%s is already int8 (llm_int8 format %d): loading it as is", folder, saved.format_version)
        if skip_modules:
            logger.warning("skip_modules=%s ignored: %s is already int8", list(skip_modules), folder)
        if float_dims:
            logger.warning("float_dims ignored: %s is already int8 (its saved float_dims are used)", folder)
        auto_skip = list(saved.modules_to_not_convert or automatic_skip_modules(hf_model))
        threshold = saved.threshold if threshold is None else threshold
        activation = saved.activation if activation is None else activation
        user_skip = list(saved.skip_modules or [])
        float_dims = saved.float_dims
    elif saved_q and saved_q.get("load_in_8bit"):
        if float_dims:
            raise ValueError(
                f"float_dims needs the float weight columns, but {folder} is a bitsandbytes int8 checkpoint; "
                "load the float checkpoint instead"
            )
        auto_skip = automatic_skip_modules(hf_model) + list(saved_q.get("llm_int8_skip_modules") or [])
        if threshold is None:
            threshold = float(saved_q.get("llm_int8_threshold", DEFAULT_THRESHOLD))
        if activation is None:  # run a bitsandbytes checkpoint as bitsandbytes runs it
            activation = PAPER_ACTIVATION
        user_skip = list(skip_modules or [])
    elif saved_q:
        raise CheckpointError(
            f"{folder}: checkpoint is quantized with {saved_q.get('quant_method')!r}; only float, llm_int8 and "
            "bitsandbytes 8-bit checkpoints can be loaded"
        )
    else:
        auto_skip = automatic_skip_modules(hf_model)
        user_skip = list(skip_modules or [])
    checked = Int8Config(
        threshold=DEFAULT_THRESHOLD if threshold is None else threshold,
        activation=DEFAULT_ACTIVATION if activation is None else activation,
    )
    to_int8, kept = int8_targets(hf_model, auto_skip + user_skip)
    all_linear = set(to_int8) | set(kept)
    keymap.expect({f"{n}.{leaf}" for n in all_linear for leaf in ("weight_int8", "SCB")})
    stored_int8 = {k.rpartition(".")[0] for k in map(keymap, headers) if k is not None}
    to_int8 = sorted(set(to_int8) | stored_int8)
    float_dims = {k: list(v) for k, v in (float_dims or {}).items()} or None
    unknown = sorted(set(float_dims or {}) - set(to_int8))
    if unknown:
        raise ValueError(f"float_dims names modules that are not converted linear layers: {unknown[:5]}")
    kept = sorted(all_linear - set(to_int8))
    return _LayerPlan(checked.threshold, checked.activation, user_skip, to_int8, kept, float_dims)


class _CheckpointKeys:
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


class _StreamingLoad:
    """Step 4 of ``from_pretrained``: each checkpoint tensor to its place in the int8 skeleton.

    An int8 layer's tensors arrive as a float ``weight`` (quantized here, in blocks of rows), as
    bitsandbytes' int8 ``weight`` + ``SCB`` (+ ``weight_format``), or as ours (``weight_int8``,
    ``weight_scale``, and format 2's empty placeholder ``weight``, skipped); every other tensor must
    match the model's shape and kind (float or integer) and is cast to its dtype."""

    def __init__(self, model, config, plan: _LayerPlan, conv1d: set[str], dtype, device_map, offload_folder):
        self.model, self.config, self.plan, self.conv1d, self.dtype = model, config, plan, conv1d, dtype
        self.device_map, self.offload_folder = device_map, offload_folder
        self.offload_index: dict = {}
        self.expected = model.state_dict()
        self.int8 = set(plan.to_int8)
        self.arrived: set[str] = set()
        self.unexpected: list[str] = []
        self.scratch = _Scratch()

    def run(self, shards, n_tensors: int, keymap: _CheckpointKeys, progress: bool) -> None:
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
                _malloc_trim()

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
        W_i8, s_w, W_S = _read_quantized(
            handle, ckey, layer in self.conv1d, f"weight of {layer}", self.scratch, dims, self.dtype
        )
        self._place(i8_key, W_i8)
        self._place(f"{layer}.weight_scale", s_w)
        if W_S is not None:
            self._place(f"{layer}.float_dims", dims)
            self._place(f"{layer}.float_weight", W_S)

    def _tensor(self, handle, ckey: str, key: str) -> None:
        info, ref = handle.tensors[ckey], self.expected[key]
        self._check(info, key, tuple(ref.shape), float_expected=_is_float(ref.dtype))
        if not _is_float(ref.dtype) and info.dtype != ref.dtype:
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
        if float_expected is not None and _is_float(info.dtype) != float_expected:
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


def _through_transformers(
    folder, auto_class, threshold, skip_modules, device_map, max_memory, dtype, activation, float_dims
):
    """A checkpoint transformers must convert (merge / split tensors) on load: its own loader, with
    ``LLMInt8Config`` quantizing each weight as it is materialised."""
    logger.info("%s needs transformers' weight conversions: loading it through transformers with LLMInt8Config", folder)
    config = LLMInt8Config(
        threshold=DEFAULT_THRESHOLD if threshold is None else threshold,
        skip_modules=list(skip_modules or []) or None,
        activation=DEFAULT_ACTIVATION if activation is None else activation,
        float_dims={k: list(v) for k, v in float_dims.items()} if float_dims else None,
    )
    model = auto_class.from_pretrained(
        folder, quantization_config=config, dtype=dtype, device_map=device_map, max_memory=max_memory
    )
    return model.eval()


def _attach_config(model: nn.Module, threshold: float, user_skip, kept, activation: str, float_dims=None) -> None:
    """Record the quantization on the model so ``save_pretrained`` writes it to ``config.json``."""
    qconfig = LLMInt8Config(
        threshold=threshold,
        skip_modules=list(user_skip or []) or None,
        modules_to_not_convert=kept,
        activation=activation,
        float_dims=float_dims,
    )
    model.config.quantization_config = qconfig
    model.hf_quantizer = LLMInt8HfQuantizer(qconfig, pre_quantized=True)
    model.is_loaded_in_8bit = True
    if hasattr(model.config, "_is_quantized"):
        model.config._is_quantized = True


def _from_gguf(source, threshold, skip_modules, dtype, auto_class, gguf_kwargs, progress, activation, float_dims):
    """GGUF: transformers dequantizes it to float on load; convert after (a GGUF is small anyway)."""
    name, extra = resolve_model_source(source)
    model = auto_class.from_pretrained(name, dtype=dtype or torch.float32, **extra)
    threshold = DEFAULT_THRESHOLD if threshold is None else threshold
    activation = DEFAULT_ACTIVATION if activation is None else activation
    skip = automatic_skip_modules(model) + list(skip_modules or [])
    to_int8, kept = int8_targets(model, skip)
    quantize_model(
        model,
        threshold=threshold,
        skip_modules=tuple(skip),
        progress=progress,
        activation=activation,
        float_dims=float_dims,
    )
    _attach_config(model, threshold, skip_modules, kept, activation, float_dims)
    model.eval()
    return model
