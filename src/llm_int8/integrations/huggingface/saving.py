"""Saving int8 models: our format and bitsandbytes', each written atomically.

Both writers build the whole folder in a temporary sibling directory and ``rename`` it into place
at the end, so a crash, a full disk or Ctrl-C never leaves a half-written checkpoint at the target
path (``rename`` within one filesystem is atomic on POSIX).

* ``save_pretrained`` -- the llm_int8 format (``FORMAT_VERSION`` 2): per int8 layer ``weight_int8``
  (out, in) int8, ``weight_scale`` (out,) float32 = row absmax / 127, ``bias`` and an empty
  placeholder ``weight`` that makes plain transformers refuse the folder (``hf_quantizer.PLACEHOLDER``);
  other tensors as they are; ``config.json`` carries ``quantization_config = {"quant_method": "llm_int8", threshold,
  skip_modules, modules_to_not_convert, format_version}``. Loads back with
  ``llm_int8.from_pretrained`` or, once ``llm_int8`` is imported, ``AutoModelForCausalLM.from_pretrained``.
* ``save_bitsandbytes`` -- the layout transformers + bitsandbytes write for 8-bit models: per int8
  layer ``weight`` (out, in) int8, ``SCB`` (out,) float32 = row absmax = 127 * weight_scale and
  ``weight_format`` (0 = row-major); ``quantization_config`` a ``BitsAndBytesConfig(load_in_8bit=True)``.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from ...nn import Int8Linear
from ...primitives.quantize import INT8_MAX
from ..surgery.convert import is_linear
from .quantizer import LLMInt8Config, LLMInt8HfQuantizer

__all__ = ["atomic_directory", "save_bitsandbytes", "save_pretrained"]

logger = logging.getLogger(__name__)


_RENAME_EXCHANGE = 2  # linux/fs.h: swap two existing paths in one step


def _exchange(a: Path, b: Path) -> bool:
    """Swap the directories ``a`` and ``b`` atomically with Linux's ``renameat2(RENAME_EXCHANGE)``.

    Returns ``False`` where the call does not exist (other systems, old kernels or C libraries, file
    systems without it); raises ``OSError`` if it exists and fails.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    renameat2.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def _replace_directory(new: Path, path: Path) -> None:
    """Make the complete folder ``new`` be ``path``, which exists; at every instant ``path`` holds the old or the new.

    One atomic exchange where the system has it. Elsewhere two renames (old aside, new in) with a
    window between them: an exception there (a failed rename, Ctrl-C) puts the old folder back
    before it propagates; only a hard kill inside that window can leave the old folder aside (as
    ``.<name>.old-*``, next to ``path``).
    """
    if _exchange(new, path):
        shutil.rmtree(new, ignore_errors=True)  # now holds the old checkpoint
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
    old = aside / path.name
    os.replace(path, old)
    try:
        os.replace(new, path)
    except BaseException:
        os.replace(old, path)
        shutil.rmtree(aside, ignore_errors=True)
        raise
    shutil.rmtree(aside, ignore_errors=True)


@contextmanager
def atomic_directory(path: str | os.PathLike, overwrite: bool = False):
    """Yield a temporary directory next to ``path``; on success it becomes ``path`` by ``rename``.

    An existing non-empty ``path`` is an error unless ``overwrite=True``, in which case it is
    replaced only once the new folder is complete, by an atomic exchange (``_replace_directory``):
    a crash at any point leaves either the old or the new folder at ``path``, never none. On any
    exception the temporary folder is removed and ``path`` is left as it was.
    """
    path = Path(path).expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} exists and is not a directory")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise FileExistsError(f"{path} exists and is not empty; pass overwrite=True to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            _replace_directory(tmp, path)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _int8_layers(model: nn.Module) -> dict[str, Int8Linear]:
    layers = {name: m for name, m in model.named_modules() if isinstance(m, Int8Linear)}
    if not layers:
        raise ValueError("the model holds no Int8Linear layer: quantize it (quantize_model / from_pretrained) first")
    return layers


def _ensure_config(model: nn.Module) -> LLMInt8Config:
    """The model's ``LLMInt8Config``; built (and attached) for a model converted by ``quantize_model``."""
    qconfig = getattr(model.config, "quantization_config", None)
    layers = _int8_layers(model)
    float_dims = {n: m.float_dims.tolist() for n, m in layers.items() if m.float_dims is not None} or None
    invariant = {m.batch_invariant for m in layers.values()}
    if len(invariant) > 1:
        raise ValueError("some Int8Linear layers are batch-invariant and some not; the format holds one setting")
    if isinstance(qconfig, LLMInt8Config):
        qconfig.float_dims = float_dims  # what the layers hold now
        qconfig.batch_invariant = next(iter(invariant))  # as the layers are set now
        return qconfig
    thresholds = {m.threshold for m in layers.values()}
    if len(thresholds) > 1:
        raise ValueError(f"the Int8Linear layers use different thresholds {sorted(thresholds)}; the format holds one")
    activations = {m.activation for m in layers.values()}
    if len(activations) > 1:
        raise ValueError(f"the Int8Linear layers use different activations {sorted(activations)}; the format holds one")
    kept = sorted(n for n, m in model.named_modules() if is_linear(m))
    qconfig = LLMInt8Config(
        threshold=thresholds.pop(),
        modules_to_not_convert=kept,
        activation=activations.pop(),
        float_dims=float_dims,
        batch_invariant=invariant.pop(),
    )
    model.config.quantization_config = qconfig
    model.hf_quantizer = LLMInt8HfQuantizer(qconfig, pre_quantized=True)
    return qconfig


def _write(model, save_directory, tokenizer, overwrite, write: Callable[[Path], None]) -> Path:
    with atomic_directory(save_directory, overwrite=overwrite) as tmp:
        write(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    logger.info("saved %s", save_directory)
    return Path(save_directory)


def save_pretrained(
    model: nn.Module,
    save_directory: str | os.PathLike,
    *,
    tokenizer=None,
    max_shard_size: int | str = "2GB",
    overwrite: bool = False,
) -> Path:
    """Write an int8 transformers model (and its tokenizer) as an llm_int8 checkpoint, atomically.

    Sharded into files of at most ``max_shard_size``. Returns the folder.
    """
    _int8_layers(model)
    _ensure_config(model)
    return _write(
        model,
        save_directory,
        tokenizer,
        overwrite,
        lambda tmp: model.save_pretrained(tmp, max_shard_size=max_shard_size),
    )


def bitsandbytes_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict in bitsandbytes' 8-bit layout (``weight`` int8, ``SCB``, ``weight_format``)."""
    layers = _int8_layers(model)
    state = {}
    for key, value in model.state_dict().items():
        layer, _, leaf = key.rpartition(".")
        if layer in layers and leaf == "weight_int8":
            state[f"{layer}.weight"] = value
            state[f"{layer}.SCB"] = layers[layer].weight_scale.float() * INT8_MAX  # row absmax of W
            state[f"{layer}.weight_format"] = torch.zeros((), dtype=torch.uint8)  # row-major
        elif not (layer in layers and leaf == "weight_scale"):
            state[key] = value
    return state


def save_bitsandbytes(
    model: nn.Module,
    save_directory: str | os.PathLike,
    *,
    tokenizer=None,
    max_shard_size: int | str = "2GB",
    overwrite: bool = False,
) -> Path:
    """Write an int8 transformers model as transformers + bitsandbytes save 8-bit models, atomically.

    The result loads with ``AutoModelForCausalLM.from_pretrained(dir)`` where bitsandbytes is
    installed (``Linear8bitLt`` layers), and with ``llm_int8.from_pretrained(dir)``.
    """
    from transformers import BitsAndBytesConfig

    qconfig = _ensure_config(model)
    if qconfig.float_dims:
        raise ValueError(
            f"{len(qconfig.float_dims)} int8 layers keep calibrated float columns (float_dims), which the "
            "bitsandbytes format cannot hold; save them with llm_int8.save_pretrained, or convert without float_dims"
        )
    if qconfig.activation != "absmax":
        logger.warning(
            "the bitsandbytes format has no activation setting: bitsandbytes will run these weights with "
            "absmax activations, not %s (llm_int8.from_pretrained(dir, activation=%r) restores it)",
            qconfig.activation,
            qconfig.activation,
        )
    bnb_config = BitsAndBytesConfig(
        load_in_8bit=True,
        llm_int8_threshold=qconfig.threshold,
        # transformers uses this list *instead of* its defaults: it must name every float layer
        llm_int8_skip_modules=list(qconfig.modules_to_not_convert or []),
    )
    state = bitsandbytes_state_dict(model)

    def write(tmp: Path) -> None:
        saved_quantizer = model.__dict__.get("hf_quantizer")
        model.config.quantization_config = bnb_config
        model.hf_quantizer = None
        try:
            model.save_pretrained(tmp, state_dict=state, max_shard_size=max_shard_size)
        finally:
            model.config.quantization_config = qconfig
            model.hf_quantizer = saved_quantizer

    return _write(model, save_directory, tokenizer, overwrite, write)
