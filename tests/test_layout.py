"""The package's shape, kept so: no import circles, layers that import only downwards, short functions.

Read from the source with ``ast`` (nothing is imported), so an import inside a function counts as
much as one at the top of a module. ``from pkg import name`` is an import of the module ``pkg.name``
where that is a module, else of ``pkg`` itself (its ``__init__``).
"""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
MAX_FUNCTION_LINES = 80

# Layers from the bottom up; a module may import its own layer and the layers below it. The first
# matching prefix decides (longest prefixes first), so ``llm_int8.ops.kernels.triton.gemm`` is a kernel.
LAYERS = [
    ("llm_int8._version", 0),
    ("llm_int8._files", 0),
    ("llm_int8.primitives", 1),
    ("llm_int8.config", 2),
    ("llm_int8.ops.kernels", 3),  # pure functions of tensors
    ("llm_int8.ops.choice", 4),  # which kernel: times kernels or a callable it is given, never the op
    ("llm_int8.ops", 5),  # the op: forward, linear, mm, custom_op, prepack
    ("llm_int8.nn", 6),
    ("llm_int8.integrations.surgery", 7),
    ("llm_int8.integrations.finetuning", 8),
    ("llm_int8.integrations.huggingface", 8),
    ("llm_int8.integrations", 9),
    ("llm_int8.analysis", 10),
    ("llm_int8.evaluation", 11),
    ("llm_int8.cli", 12),
    ("llm_int8", 13),  # the public API re-exports from everything below
]


def modules(src: Path) -> dict[str, tuple[Path, bool]]:
    """``{dotted name: (file, is a package __init__)}`` for every ``.py`` file under ``src``."""
    found = {}
    for path in sorted(src.rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return found


def _imported(name: str, is_package: bool, node: ast.AST, known: dict) -> set[str]:
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names if alias.name in known}
    if node.level:  # relative: from the module's package, one level up per extra dot
        package = name.split(".") if is_package else name.split(".")[:-1]
        package = package[: len(package) - (node.level - 1)]
        base = ".".join(package + ([node.module] if node.module else []))
    else:
        base = node.module or ""
    targets = set()
    for alias in node.names:
        full = f"{base}.{alias.name}"
        if full in known:
            targets.add(full)
        elif base in known:
            targets.add(base)
    return targets


def import_graph(src: Path) -> dict[str, set[str]]:
    """``{module: modules of this source tree it imports}``, at any depth of its code."""
    known = modules(src)
    graph = {}
    for name, (path, is_package) in known.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                edges |= _imported(name, is_package, node, known)
        edges.discard(name)
        graph[name] = edges
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import circle: the strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def _is_triton_kernel(node: ast.FunctionDef) -> bool:
    for decorator in node.decorator_list:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        if isinstance(target, ast.Attribute) and target.attr == "jit" and getattr(target.value, "id", "") == "triton":
            return True
    return False


def long_functions(src: Path, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """``file:line name (n lines)`` for every function or method over ``limit`` lines, decorators
    included; a ``@triton.jit`` kernel is exempt (one kernel is one launch, and splitting it costs)."""
    found = []
    for path, _ in modules(src).values():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not _is_triton_kernel(node):
                first = min([node.lineno] + [d.lineno for d in node.decorator_list])
                n = node.end_lineno - first + 1
                if n > limit:
                    found.append(f"{path.relative_to(src)}:{first} {node.name} ({n} lines)")
    return found


def layer_of(module: str) -> int | None:
    for prefix, rank in sorted(LAYERS, key=lambda item: -len(item[0])):
        if module == prefix or module.startswith(prefix + "."):
            return rank
    return None


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return [
        f"{a} (layer {layer_of(a)}) imports {b} (layer {layer_of(b)})"
        for a, targets in sorted(graph.items())
        for b in sorted(targets)
        if layer_of(b) > layer_of(a)
    ]


# --- the source tree --------------------------------------------------------------------------------


def test_no_import_cycle_in_src():
    cycles = import_cycles(import_graph(SRC))
    assert not cycles, "import circles (break them by moving the shared piece one layer down): " + "; ".join(
        " <-> ".join(c) for c in cycles
    )


def test_no_function_over_80_lines_in_src():
    too_long = long_functions(SRC)
    assert not too_long, "functions past one screen (split them into named steps): " + "; ".join(too_long)


def test_every_module_has_a_layer_and_imports_only_downwards():
    graph = import_graph(SRC)
    unplaced = sorted(m for m in graph if layer_of(m) is None)
    assert not unplaced, f"modules outside every layer of LAYERS: {unplaced}"
    assert not upward_imports(graph), "\n".join(upward_imports(graph))


# --- the checks themselves, on a tree made to break them ----------------------------------------------


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return tmp_path


def test_a_circle_through_a_function_level_import_is_found(tmp_path):
    src = _tree(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "from . import b\n",
            "pkg/b.py": "def f():\n    from .c import g\n",  # inside a function: still an import
            "pkg/c.py": "from .a import x\n",
            "pkg/d.py": "from pkg import a\n",  # into the circle, not part of it
        },
    )
    assert import_cycles(import_graph(src)) == [["pkg.a", "pkg.b", "pkg.c"]]


def test_relative_imports_resolve_to_modules_or_their_package(tmp_path):
    src = _tree(
        tmp_path,
        {
            "pkg/__init__.py": "from .sub import thing\n",
            "pkg/sub/__init__.py": "thing = 1\n",
            "pkg/sub/leaf.py": "from .. import sub\nfrom ..sub import thing\nfrom ... import nothing_here\n",
        },
    )
    graph = import_graph(src)
    assert graph["pkg"] == {"pkg.sub"}
    assert graph["pkg.sub.leaf"] == {"pkg.sub"}


def test_a_long_function_is_found_and_a_triton_kernel_is_not(tmp_path):
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_FUNCTION_LINES))
    src = _tree(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/long.py": "def long():\n" + body,
            "pkg/kernel.py": "import triton\n\n@triton.jit\ndef kernel():\n" + body,
            "pkg/short.py": "def short():\n" + "".join(f"    x{i} = {i}\n" for i in range(MAX_FUNCTION_LINES - 1)),
        },
    )
    assert long_functions(src) == [f"{Path('pkg', 'long.py')}:1 long ({MAX_FUNCTION_LINES + 1} lines)"]


@pytest.mark.parametrize(
    ("importer", "imported", "upward"),
    [
        ("llm_int8.ops.kernels.cpu_gemm", "llm_int8.ops.choice.cpu", True),
        ("llm_int8.ops.choice.cpu", "llm_int8.ops.forward", True),
        ("llm_int8.ops.forward", "llm_int8.ops.choice.cpu", False),
        ("llm_int8.ops.kernels.triton.linear", "llm_int8.ops.kernels.epilogue", False),
        ("llm_int8.nn.linear", "llm_int8.integrations.surgery.convert", True),
        ("llm_int8.integrations.surgery.swap", "llm_int8.integrations.huggingface.loading", True),
    ],
)
def test_layer_rule(importer, imported, upward):
    assert bool(upward_imports({importer: {imported}, imported: set()})) == upward
