"""The package's layout rules (README "Layout"): imports go one way down the layers, there is no import cycle, and no
module is over about 300 lines (the CUDA source excepted)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "rfm_dask"
#: Layers, lowest first: a module may import from its own layer and the ones below. Settings (``config``,
#: ``options``) sit under everything, the operator interfaces with the core; other top-level modules are TOP.
LAYERS = {"config": 0, "options": 0, "core": 1, "kernel_operator": 1, "solvers": 2, "parallel": 3, "files": 4,
          "io": 4, "app": 6}
TOP = 5
MAX_LINES = 310
LONGER = {"rfm_dask.core.cuda_tiles"}  # the CUDA source


def _modules() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS.get(parts[1], TOP) if len(parts) > 1 else TOP


def _imports(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules that ``module`` imports (``from rfm_dask.x import y`` counts y if it is a module)."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules]
            found |= set(subs) if subs else ({base} if base in modules else set())
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in modules}
    return found - {module}


def test_imports_go_down_the_layers_without_cycles():
    modules = _modules()
    graph = {m: _imports(m, p, modules) for m, p in modules.items()}
    upward = [(m, d) for m, deps in graph.items() for d in deps
              if d != "rfm_dask" and not m.endswith("__init__") and _layer(d) > _layer(m)]
    assert not upward, upward
    state: dict[str, int] = {}
    cycles = []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph[m]):
            if d == "rfm_dask":  # the package's __init__ (its version, lazy exports)
                continue
            if state.get(d) == 1:
                cycles.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d, stack)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])
    assert not cycles, cycles


def test_no_module_is_over_about_300_lines():
    long = {m: n for m, p in _modules().items() if (n := len(p.read_text().splitlines())) > MAX_LINES and m not in LONGER}
    assert not long, long
