"""Decisions measured once per machine and kept: in memory for the process, and in a JSON file.

A kernel choice depends on the shape and on the machine (CPU model and flags or GPU name, library
versions, thread count). Each kind of choice (``ops/choice/cpu.py``, ``ops/choice/cuda.py``) keeps a
``DecisionStore`` keyed by what its decisions depend on; the store's file is named by a digest of
that key, so a change of machine, version or thread count starts a new file rather than trusting an
old one. Files live in ``$LLM_INT8_CACHE_DIR``, else ``$XDG_CACHE_HOME/llm-int8``, else
``~/.cache/llm-int8``, and are replaced atomically (merged with what another process may have
written since): a reader sees the old file or the new one, never half of one. A read-only or full
disk keeps the decisions in memory only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

__all__ = ["AUTOTUNE_ENV", "CACHE_DIR_ENV", "DecisionStore", "cache_dir", "timing_enabled"]

logger = logging.getLogger(__name__)

CACHE_DIR_ENV = "LLM_INT8_CACHE_DIR"
AUTOTUNE_ENV = "LLM_INT8_AUTOTUNE"


def timing_enabled() -> bool:
    """Whether kernels are chosen by timing: ``LLM_INT8_AUTOTUNE`` is not 0/false/off/no (CPU and CUDA)."""
    return os.environ.get(AUTOTUNE_ENV, "1").strip().lower() not in ("0", "false", "off", "no")


def cache_dir() -> Path:
    """The folder of every decision file."""
    root = os.environ.get(CACHE_DIR_ENV)
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "llm-int8"


class DecisionStore:
    """``name -> decision`` (a JSON-able dict) for the machine described by ``key()``.

    ``decide(name, measure)`` returns the known decision or runs ``measure()`` once (outside the
    lock: timing a large layer takes a while; two threads may both measure, the first result is
    kept) and saves it.
    """

    def __init__(self, prefix: str, key: Callable[[], dict[str, str]]) -> None:
        self._prefix = prefix
        self._key = key
        self._lock = threading.Lock()
        self._table: dict[str, dict] = {}
        self._loaded_from: Path | None = None

    def path(self) -> Path:
        """The JSON file holding this machine key's decisions."""
        digest = hashlib.sha1(json.dumps(self._key(), sort_keys=True).encode()).hexdigest()[:16]
        return cache_dir() / f"{self._prefix}-{digest}.json"

    def _current(self) -> dict[str, dict]:
        path = self.path()
        if self._loaded_from != path:  # first use, or the key or folder changed: read that file
            self._table = _read(path)
            self._loaded_from = path
        return self._table

    def get(self, name: str) -> dict | None:
        with self._lock:
            return self._current().get(name)

    def decide(self, name: str, measure: Callable[[], dict]) -> dict:
        known = self.get(name)
        if known is not None:
            return known
        decision = measure()
        with self._lock:
            table = self._current()
            table.setdefault(name, decision)
            _write(self._loaded_from, self._key(), table)
            return table[name]

    def snapshot(self) -> dict[str, dict]:
        """A copy of every decision known (measured in this process or read from the file)."""
        with self._lock:
            return {name: dict(value) for name, value in self._current().items()}

    def forget(self) -> None:
        """Drop what is held in memory; the file is read again on the next use (tests, new processes)."""
        with self._lock:
            self._table, self._loaded_from = {}, None


def _read(path: Path) -> dict[str, dict]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        decisions = data.get("decisions", {})
        if not isinstance(decisions, dict):
            raise ValueError("'decisions' is not an object")
        return dict(decisions)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, AttributeError) as err:
        logger.warning("ignoring the unreadable decision cache %s: %s", path, err)
        return {}


def _write(path: Path, key: dict[str, str], table: dict[str, dict]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        merged = {**_read(path), **table}
        fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({"machine": key, "decisions": merged}, f, indent=1, sort_keys=True)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as err:
        logger.info("decisions not saved to %s: %s", path, err)
