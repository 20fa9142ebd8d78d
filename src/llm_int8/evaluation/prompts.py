"""Chat prompts for the agreement measure: the built-in set, or a user's file.

File formats (UTF-8):

* ``.jsonl``: one JSON object per line, ``{"prompt": "...", "id": "...", "category": "..."}``;
  ``prompt`` is required (non-empty text, may hold newlines as ``\\n``), ``id`` and ``category``
  are optional (default: ``line-N`` and ``""``); a line may also be a plain JSON string.
* anything else: one prompt per line; blank lines and lines starting with ``#`` are skipped.

Every problem is a ``ValueError`` naming the file and the 1-based line. The built-in set
(``data/chat_prompts.jsonl``, 66 prompts written for this library) covers facts, arithmetic,
instructions, code, other languages (French, Spanish, German, Portuguese, Italian), long prompts
(a paragraph, then a question) and short reasoning.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

__all__ = ["BUILTIN_PROMPTS", "Prompt", "read_prompts"]

BUILTIN_PROMPTS = "chat_prompts.jsonl"
"""The built-in set, a file of ``llm_int8.evaluation.data``."""


@dataclass(frozen=True)
class Prompt:
    text: str
    id: str
    category: str = ""


def _from_json(obj, where: str) -> Prompt:
    if isinstance(obj, str):
        obj = {"prompt": obj}
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected a JSON object with a 'prompt' (or a JSON string)")
    unknown = set(obj) - {"prompt", "id", "category"}
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {', '.join(sorted(unknown))} (allowed: prompt, id, category)")
    text = obj.get("prompt")
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{where}: 'prompt' must be non-empty text")
    for key in ("id", "category"):
        if key in obj and not isinstance(obj[key], str):
            raise ValueError(f"{where}: '{key}' must be text")
    return Prompt(text, obj.get("id", ""), obj.get("category", ""))


def _parse(lines: list[str], name: str, jsonl: bool) -> list[Prompt]:
    prompts: list[Prompt] = []
    for lineno, line in enumerate(lines, start=1):
        where = f"{name}: line {lineno}"
        if not line.strip() or (not jsonl and line.lstrip().startswith("#")):
            continue
        if jsonl:
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{where}: not JSON ({err.msg})") from None
            prompt = _from_json(obj, where)
        else:
            prompt = Prompt(line.rstrip("\r"), "")
        prompts.append(Prompt(prompt.text, prompt.id or f"line-{lineno}", prompt.category))
    seen: dict[str, int] = {}
    for p in prompts:
        if p.id in seen:
            raise ValueError(f"{name}: prompt id {p.id!r} appears twice")
        seen[p.id] = 1
    if not prompts:
        raise ValueError(f"{name}: no prompt found (empty file?)")
    return prompts


def read_prompts(path: str | os.PathLike | None = None, limit: int | None = None) -> list[Prompt]:
    """The prompts of ``path`` (``None``: the built-in set), the first ``limit`` of them if given."""
    if limit is not None and limit <= 0:
        raise ValueError(f"limit must be positive, got {limit}")
    if path is None:
        resource = files("llm_int8.evaluation.data").joinpath(BUILTIN_PROMPTS)
        prompts = _parse(resource.read_text(encoding="utf-8").splitlines(), BUILTIN_PROMPTS, jsonl=True)
    else:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"prompt file not found: {p}")
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise ValueError(f"{p}: not UTF-8 text ({err.reason} at byte {err.start})") from None
        prompts = _parse(text.splitlines(), str(p), jsonl=p.suffix == ".jsonl")
    return prompts[:limit]
