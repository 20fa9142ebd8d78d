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

import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ...config import DEFAULT_ACTIVATION, DEFAULT_THRESHOLD, PAPER_ACTIVATION, Int8Config
from ..surgery.convert import quantize_model
from ..surgery.swap import automatic_skip_modules, int8_targets, swap_linears_on_meta
from .checkpoint import CheckpointError, CheckpointShards, check_config_json
from .loading import resolve_model_source
from .offload import dispatch, plan_device_map
from .quantizer import QUANT_METHOD, LLMInt8Config, LLMInt8HfQuantizer
from .streaming import CheckpointKeys, StreamingLoad, malloc_trim

__all__ = ["from_pretrained"]

logger = logging.getLogger(__name__)


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
    batch_invariant: bool = False


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
    batch_invariant: bool | None = None,
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
    ``batch_invariant``: run every int8 layer in the batch-invariant mode (``Int8Linear.batch_invariant``);
    ``None`` uses the saved value of an llm_int8 checkpoint, else ``False``.
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
    from transformers import AutoModelForCausalLM

    auto_class = auto_class or AutoModelForCausalLM
    folder, gguf_kwargs = _local_folder(model, kwargs)
    if folder is None:
        args = (threshold, skip_modules, dtype, auto_class, gguf_kwargs, progress, activation, float_dims)
        return _from_gguf(model, *args, _batch_invariant(None, batch_invariant))
    # 1. config, checkpoint headers, the compute dtype, and the model skeleton on meta
    config, saved_q = _read_config(folder, kwargs)
    shards = CheckpointShards(folder)
    headers = shards.read_headers()
    dtype = _resolve_dtype(dtype, config, headers)
    hf_model = _skeleton_on_meta(auto_class, config, dtype)
    keymap = CheckpointKeys(hf_model)
    if not saved_q and keymap.needs_conversion(headers):
        args = (auto_class, threshold, skip_modules, device_map, max_memory, dtype, activation, float_dims)
        return _through_transformers(folder, *args, _batch_invariant(None, batch_invariant))
    # 2. which linear layers become int8; swap them on meta
    plan = _plan_layers(hf_model, folder, saved_q, headers, keymap, threshold, activation, skip_modules, float_dims)
    plan.batch_invariant = _batch_invariant(saved_q, batch_invariant)
    conv1d = _swap_on_meta(hf_model, plan, dtype)
    # 3. device plan on the int8 skeleton
    device_map = plan_device_map(hf_model, device_map, max_memory, dtype)
    offload_folder = _offload_folder(device_map, offload_folder)
    # 4. stream the tensors in, one file and one tensor at a time; 5. check that all arrived
    loader = StreamingLoad(hf_model, config, plan, conv1d, dtype, device_map, offload_folder)
    loader.run(shards, len(headers), keymap, progress)
    loader.verify(folder, headers)
    # 6. tie, record the quantization, place on devices
    return _finish(hf_model, folder, plan, device_map, offload_folder, loader.offload_index)


def _batch_invariant(saved_q: dict | None, batch_invariant: bool | None) -> bool:
    """The argument, else the saved setting of an llm_int8 checkpoint, else off (validated as ``Int8Config`` does)."""
    if batch_invariant is None:
        ours = bool(saved_q) and saved_q.get("quant_method") == QUANT_METHOD
        batch_invariant = bool(ours and saved_q.get("batch_invariant"))
    return Int8Config(batch_invariant=batch_invariant).batch_invariant


def _swap_on_meta(hf_model, plan: _LayerPlan, dtype: torch.dtype) -> set[str]:
    """Swap the planned layers for ``Int8Linear`` on meta; the names of those that were ``Conv1D``."""
    swapped = swap_linears_on_meta(
        hf_model,
        plan.to_int8,
        plan.threshold,
        bias_dtype=dtype,
        activation=plan.activation,
        float_dims=plan.float_dims,
        batch_invariant=plan.batch_invariant,
    )
    return set(swapped)


def _read_config(folder: Path, kwargs: dict):
    """The model config (without its ``quantization_config``: the skeleton is built plain, ours is
    attached at the end) and the saved quantization config as a dict, if any."""
    from transformers import AutoConfig

    check_config_json(folder)
    config = AutoConfig.from_pretrained(folder, **kwargs)
    saved_q = getattr(config, "quantization_config", None)
    if saved_q is not None and not isinstance(saved_q, dict):
        if not hasattr(saved_q, "to_dict"):
            raise CheckpointError(f"{Path(folder) / 'config.json'}: quantization_config is {saved_q!r}, not a mapping")
        saved_q = saved_q.to_dict()
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    return config, saved_q


def _offload_folder(device_map, offload_folder):
    """Where ``"disk"`` entries of the device map go: the user's folder, else a new temporary one."""
    if device_map and "disk" in device_map.values():
        if offload_folder is None:
            offload_folder = tempfile.mkdtemp(prefix="llm_int8_offload_")
            logger.info("offloading to %s", offload_folder)
        os.makedirs(offload_folder, exist_ok=True)
    return offload_folder


def _finish(hf_model, folder, plan: _LayerPlan, device_map, offload_folder, offload_index):
    """Step 6: tie the output embedding, check nothing is left on meta, record the quantization, dispatch."""
    hf_model.tie_weights()
    if device_map is None or set(device_map.values()) <= {"cpu"}:
        still_meta = [n for n, t in [*hf_model.named_parameters(), *hf_model.named_buffers()] if t.is_meta]
        if still_meta:
            raise CheckpointError(f"{folder}: tensors left unloaded: {still_meta[:10]}")
    _attach_config(
        hf_model, plan.threshold, plan.user_skip, plan.kept, plan.activation, plan.float_dims, plan.batch_invariant
    )
    if device_map:
        hf_model.hf_device_map = device_map
        hf_model = dispatch(hf_model, device_map, offload_folder, offload_index)
    hf_model.eval()
    malloc_trim()
    logger.info("loaded %s: %d int8 linear layers, %d kept in float", folder, len(plan.to_int8), len(plan.kept))
    return hf_model


def _skeleton_on_meta(auto_class, config, dtype: torch.dtype) -> nn.Module:
    """The model with every parameter on ``meta`` (no memory); small non-persistent buffers (rotary
    tables) are built for real."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        return auto_class.from_config(config, dtype=dtype)


def _plan_layers(
    hf_model, folder, saved_q, headers, keymap: CheckpointKeys, threshold, activation, skip_modules, float_dims
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


def _through_transformers(
    folder, auto_class, threshold, skip_modules, device_map, max_memory, dtype, activation, float_dims, batch_invariant
):
    """A checkpoint transformers must convert (merge / split tensors) on load: its own loader, with
    ``LLMInt8Config`` quantizing each weight as it is materialised."""
    logger.info("%s needs transformers' weight conversions: loading it through transformers with LLMInt8Config", folder)
    config = LLMInt8Config(
        threshold=DEFAULT_THRESHOLD if threshold is None else threshold,
        skip_modules=list(skip_modules or []) or None,
        activation=DEFAULT_ACTIVATION if activation is None else activation,
        float_dims={k: list(v) for k, v in float_dims.items()} if float_dims else None,
        batch_invariant=batch_invariant,
    )
    model = auto_class.from_pretrained(
        folder, quantization_config=config, dtype=dtype, device_map=device_map, max_memory=max_memory
    )
    return model.eval()


def _attach_config(
    model: nn.Module, threshold: float, user_skip, kept, activation: str, float_dims=None, batch_invariant=False
) -> None:
    """Record the quantization on the model so ``save_pretrained`` writes it to ``config.json``."""
    qconfig = LLMInt8Config(
        threshold=threshold,
        skip_modules=list(user_skip or []) or None,
        modules_to_not_convert=kept,
        activation=activation,
        float_dims=float_dims,
        batch_invariant=batch_invariant,
    )
    model.config.quantization_config = qconfig
    model.hf_quantizer = LLMInt8HfQuantizer(qconfig, pre_quantized=True)
    model.is_loaded_in_8bit = True
    if hasattr(model.config, "_is_quantized"):
        model.config._is_quantized = True


def _from_gguf(
    source, threshold, skip_modules, dtype, auto_class, gguf_kwargs, progress, activation, float_dims, batch_invariant
):
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
        batch_invariant=batch_invariant,
    )
    _attach_config(model, threshold, skip_modules, kept, activation, float_dims, batch_invariant)
    model.eval()
    return model
