"""llm-int8's C++ CPU kernels (``cpu_kernels.cpp``), compiled once per machine, or ``None``.

``ops()`` returns the ``torch.ops.llm_int8_cpu`` namespace (``quantize_rows``, ``epilogue``) after
building the extension with ``torch.utils.cpp_extension`` into
``$XDG_CACHE_HOME/llm-int8/native-<key>`` (``~/.cache`` by default; the key hashes the source, the
torch version, the compiler and the CPU's flags, because the code is compiled with
``-march=native``), or ``None`` where that cannot be done: no C++ compiler, no ninja, a failed
build, ``LLM_INT8_NATIVE=0``. The callers (``quantize.py``, ``epilogue.py``) then run their
pure-PyTorch sequence, which gives the same bits; ``reason()`` says why, and the reason is logged
once. Nothing here raises: a missing compiler never fails a model load.

The build costs about 35 s of CPU time once per machine (measured on the 2-core AVX2 machine of
BENCHMARKS.md, torch 2.13, gcc); ``bash scripts/install.sh`` runs it
(``python -m llm_int8.ops.kernels.native``), otherwise the first int8 x int8 forward does. A later
process loads the cached library in about 0.05 s.

Callers go through the module (``native.ops()``), never through a name imported from it, so that a
test can patch ``ops`` and run the fallback on any machine.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import shutil
import threading
import time
from pathlib import Path

import torch

__all__ = ["DISABLE_ENV", "SOURCE", "build_directory", "ops", "reason"]

logger = logging.getLogger(__name__)

DISABLE_ENV = "LLM_INT8_NATIVE"
SOURCE = Path(__file__).with_name("cpu_kernels.cpp")
_LIBRARY = "llm_int8_cpu"
# -ffp-contract=off: every product and sum rounded as written (the kernels equal a PyTorch sequence
# bit for bit); -march=native: the cache is per CPU (its flags are in the key)
_CFLAGS = ["-O3", "-march=native", "-ffp-contract=off", "-fno-math-errno", "-std=c++17"]

_lock = threading.Lock()
_state: dict[str, object] = {}  # "ops": the namespace or None, "reason": why None


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor()


def _compiler() -> str | None:
    return shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++") or shutil.which("clang++")


def build_directory() -> Path:
    """Where this machine's build of the extension lives (its key: the source and its path, torch and its
    path, the compiler, the CPU flags)."""
    key = hashlib.sha1()
    # the source's and torch's paths too: ninja's build file records them, so two checkouts or
    # environments sharing one folder would rebuild it each time the other loaded it
    torch_path = str(Path(torch.__file__).parent)
    parts = (SOURCE.read_bytes(), str(SOURCE).encode(), torch.__version__.encode(), torch_path.encode(),
             str(_compiler()).encode(), _cpu_flags().encode())  # fmt: skip
    for part in parts:
        key.update(part)
        key.update(b"\0")
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "llm-int8"
    return base / f"native-{platform.machine()}-{key.hexdigest()[:16]}"


def _unavailable() -> str | None:
    """Why the extension cannot be built or loaded here, or ``None``."""
    if os.environ.get(DISABLE_ENV, "").strip().lower() in ("0", "false", "off", "no"):
        return f"{DISABLE_ENV}={os.environ[DISABLE_ENV]}"
    if not SOURCE.is_file():
        return f"source {SOURCE} missing"
    if _compiler() is None:
        return "no C++ compiler (c++, g++ or clang++ on PATH, or $CXX)"
    from torch.utils import cpp_extension

    if not cpp_extension.is_ninja_available():
        return "ninja is not installed (pip install ninja)"
    return None


def _load() -> object:
    from torch.utils import cpp_extension

    directory = build_directory()
    directory.mkdir(parents=True, exist_ok=True)
    cached = any(directory.glob("*.so"))
    if not cached:
        logger.warning("compiling llm-int8's CPU kernels once for this machine into %s (about a minute)", directory)
    start = time.perf_counter()
    cpp_extension.load(
        name=f"{_LIBRARY}_{directory.name.rsplit('-', 1)[-1]}",
        sources=[str(SOURCE)],
        build_directory=str(directory),
        extra_cflags=_CFLAGS,
        is_python_module=False,
        verbose=False,
    )
    logger.info("llm-int8 CPU kernels %s in %.1f s", "loaded" if cached else "built", time.perf_counter() - start)
    return getattr(torch.ops, _LIBRARY)


def ops() -> object | None:
    """``torch.ops.llm_int8_cpu`` (built or loaded on the first call), or ``None`` (see ``reason()``)."""
    if "ops" in _state:
        return _state["ops"]
    with _lock:
        if "ops" not in _state:
            why = _unavailable()
            namespace = None
            if why is None:
                try:
                    namespace = _load()
                except Exception as err:  # a failed build must not fail the forward: fall back, say why
                    why = f"build failed: {type(err).__name__}: {str(err).strip().splitlines()[-1:] or ''}"
            if why is not None:
                logger.warning("llm-int8 CPU kernels not used (%s); running the PyTorch fallback", why)
            _state["reason"] = why
            _state["ops"] = namespace
    return _state["ops"]


def reason() -> str | None:
    """Why ``ops()`` returned ``None`` (``None`` when it did not, or was not called yet)."""
    return _state.get("reason")  # type: ignore[return-value]
