"""The import graph of shim/: no cycle (imports inside functions count), and layers import
only downwards.  Read from the source with ast, so nothing is imported to check it."""

from __future__ import annotations

import ast
from pathlib import Path

SHIM = Path(__file__).resolve().parents[2] / "shim"
# Bottom to top; a layer may import the ones before it, never the ones after.
LAYERS = ("shim.layers.base", "shim.layers.completion", "shim.layers.fixups", "shim.layers.guard",
          "shim.layers.audit")


def _module_name(path: Path) -> str:
    parts = path.relative_to(SHIM.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in SHIM.rglob("*.py")}


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The shim modules ``path`` imports, wherever the import statement stands."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in known}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                if sub in known:
                    out.add(sub)
                elif node.module in known:
                    out.add(node.module)
    return out


def graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    return {m: imports_of(p, known) - {m} for m, p in mods.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return found


def test_the_checker_finds_a_cycle_hidden_in_a_function(tmp_path: Path) -> None:
    a = tmp_path / "a.py"
    a.write_text("import b\n")
    b = tmp_path / "b.py"
    b.write_text("def f():\n    import a\n")
    g = {"a": imports_of(a, {"a", "b"}), "b": imports_of(b, {"a", "b"})}
    assert cycles(g) == [["a", "b"]]


def test_shim_has_no_import_cycle() -> None:
    assert cycles(graph()) == []


def test_layers_import_only_layers_below_them() -> None:
    g = graph()
    for i, layer in enumerate(LAYERS):
        above = set(LAYERS[i + 1:])
        assert not g[layer] & above, f"{layer} imports {g[layer] & above}"


# Below the layers, from the top: nothing imports a package above it.  The top is the embedded
# interpreter's init code (shim/_embedded_init.py, run by cffi, imported by nothing), which boots
# the runtime.
TIERS = (("shim._embedded_init",), ("shim.runtime",), ("shim.layers",), ("shim.handlers",), ("shim.soft",))


def _tier(module: str) -> int | None:
    for i, prefixes in enumerate(TIERS):
        if module.startswith(prefixes):
            return i
    return None


def test_runtime_layers_handlers_soft_import_only_downwards() -> None:
    for m, deps in graph().items():
        mine = _tier(m)
        for d in deps:
            theirs = _tier(d)
            if theirs is not None and (mine is None or theirs < mine):
                raise AssertionError(f"{m} imports {d}, which stands above it")
