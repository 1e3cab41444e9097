"""The import graph of the project's packages, read statically with `ast` (imports inside
functions count too): no cycles, no module importing a higher layer, no private (_name) symbol
imported from another module, and engine/analysis/runs.py reading run directories on its own.

The layers are one table, lowest first. A module may import modules of its own layer (without a
cycle) and of any layer listed before it.
"""
from __future__ import annotations

import ast
import copy
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("kernels", "models", "profiling", "engine", "launch")

LAYERS: list[tuple[str, ...]] = [
    ("kernels", "models"),
    ("engine.runtime",),
    ("profiling",),
    ("engine.data",),
    ("engine.inherit",),
    ("engine.train",),
    ("engine.analysis",),
    ("engine.ladder",),
    ("launch",),
]
# Package roots that hold only a docstring: importable from anywhere, matched exactly (a new
# module directly under engine/ must be given a layer, not inherit this one).
ROOTS = {"engine": 0}

# Violations in modules whose owners have not fixed them yet; each entry is (importer, imported)
# for a layer or cycle problem, or (importer, "imported:symbol") for a private import. The list
# is meant to be emptied: an entry that no longer occurs fails the test too.
KNOWN: set[tuple[str, str]] = set()

# engine/analysis/runs.py reads run directories with nothing of ours but the stdlib-only JSONL reader.
RUNS_MAY_IMPORT = {"engine.runtime.jsonl"}


def module_files() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            mods[".".join(parts)] = path
    return mods


def layer_of(mod: str) -> int | None:
    if mod in ROOTS:
        return ROOTS[mod]
    best = None  # (length of the matching entry, layer): the longest entry wins
    for i, entries in enumerate(LAYERS):
        for e in entries:
            if (mod == e or mod.startswith(e + ".")) and (best is None or len(e) > best[0]):
                best = (len(e), i)
    return None if best is None else best[1]


def _absolute(node: ast.ImportFrom, mod: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = mod.split(".") if is_package else mod.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(mod: str, path: Path, mods: dict[str, Path]) -> tuple[set[str], set[str]]:
    """(project modules `mod` imports, "module:symbol" for each private symbol it imports)."""
    deps, private = set(), set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            deps |= {a.name for a in node.names if a.name in mods}
        elif isinstance(node, ast.ImportFrom):
            src = _absolute(node, mod, path.name == "__init__.py")
            for a in node.names:
                sub = f"{src}.{a.name}"
                if sub in mods:  # `from package import submodule`
                    deps.add(sub)
                elif src in mods:
                    deps.add(src)
                    if a.name.startswith("_") and not a.name.startswith("__"):
                        private.add(f"{src}:{a.name}")
    deps.discard(mod)
    return deps, private


@lru_cache(maxsize=1)
def _scan() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    mods = module_files()
    edges, private = {}, {}
    for mod, path in mods.items():
        edges[mod], private[mod] = imports_of(mod, path, mods)
    return edges, private


def graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """({module: project modules it imports}, {module: "module:symbol" private imports}); a copy."""
    return copy.deepcopy(_scan())


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, on_stack, stack, out = {}, {}, set(), [], []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
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
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_every_module_has_a_layer():
    assert [m for m in module_files() if layer_of(m) is None] == []


def test_no_import_cycles():
    edges, _ = graph()
    for a, b in KNOWN:
        edges.get(a, set()).discard(b)
    assert cycles(edges) == []


def test_no_module_imports_a_higher_layer():
    edges, _ = graph()
    up = {(a, b) for a, deps in edges.items() for b in deps if layer_of(b) > layer_of(a)}
    assert up - KNOWN == set(), "imports reaching up the layer table"


def test_no_private_symbol_imported_from_another_module():
    _, private = graph()
    found = {(a, p) for a, ps in private.items() for p in ps}
    assert found - KNOWN == set()


def test_known_violations_still_exist():
    """KNOWN lists what is still to be fixed; a fixed entry must leave the list."""
    edges, private = graph()
    present = {(a, b) for a, deps in edges.items() for b in deps} | {(a, p) for a, ps in private.items() for p in ps}
    assert KNOWN - present == set()


def test_run_reader_imports_only_the_jsonl_reader():
    edges, _ = graph()
    assert edges["engine.analysis.runs"] <= RUNS_MAY_IMPORT
    for m in RUNS_MAY_IMPORT:
        assert edges[m] == set(), f"{m} must import nothing of the project"


def test_scanner_sees_imports_inside_functions(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from engine.analysis.runs import _hidden\n    import models.gpt\n")
    mods = {"engine.analysis.runs": src, "models.gpt": src, "x.m": src}
    deps, private = imports_of("x.m", src, mods)
    assert deps == {"engine.analysis.runs", "models.gpt"}
    assert private == {"engine.analysis.runs:_hidden"}
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
