"""Install the peft support (``llm_int8.integrations.finetuning.peft``) as soon as peft is imported, and not before.

Importing peft costs seconds and peft is optional, so ``import llm_int8`` must not import it. If peft
is already imported, ``install_when_imported()`` installs the support at once; otherwise it puts a
finder on ``sys.meta_path`` that lets the normal finders locate ``peft``, wraps that package's loader,
and installs the support right after ``peft/__init__.py`` has run (by then every peft module the
support needs is loaded). The finder removes itself once peft is loaded.
"""

from __future__ import annotations

import importlib.abc
import sys

__all__ = ["install_when_imported"]

_PACKAGE = "peft"


def _install() -> None:
    from .peft import install

    install()


class _InstallAfterLoad(importlib.abc.Loader):
    def __init__(self, loader: importlib.abc.Loader) -> None:
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        self._loader.exec_module(module)
        sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _PeftFinder)]
        _install()

    def __getattr__(self, name):  # resource readers and the like: the wrapped loader's
        return getattr(self._loader, name)


class _PeftFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname != _PACKAGE:
            return None
        # a find without a load (importlib.util.find_spec, as transformers' is_peft_available does)
        # keeps the finder in place; the load that follows removes it
        for finder in sys.meta_path:
            if finder is self:
                continue
            find = getattr(finder, "find_spec", None)
            spec = find(fullname, path, target) if find is not None else None
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _InstallAfterLoad(spec.loader)
                return spec
        return None  # not installed: the import fails as it would have


def install_when_imported() -> None:
    """Install the peft support now if peft is loaded, else when it is first imported (idempotent)."""
    if _PACKAGE in sys.modules:
        _install()
    elif not any(isinstance(f, _PeftFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _PeftFinder())
