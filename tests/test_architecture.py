"""The package's map (docs/ARCHITECTURE.md) checked against its imports.

Every module of saematch_nb is parsed (ast; imports at module level and inside functions, plus
``importlib.import_module("saematch_nb...")`` with a literal name) and each import is checked
against the layer rules below. The rules are data, next to the map in the docs: a new module
falls under its folder's rules without being named here.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

import saematch_nb

PKG_DIR = Path(saematch_nb.__file__).resolve().parent
DOC = PKG_DIR.parent / "docs" / "ARCHITECTURE.md"

# Bottom to top. A layer imports its own modules and the layers listed for it, at import time
# or inside functions alike; everything else is an upward (or sideways) import and fails,
# except the lazy imports in LAZY below.
LAYERS = ("leaf", "display", "core", "sources", "analysis", "demo", "widgets", "cli")
ALLOWED = {
    "face": {"leaf"},  # saematch_nb/__init__.py: the lazy table, nothing else at import time
    "leaf": set(),  # saematch_nb/_version.py, saematch_nb/errors.py, saematch_nb/_atomic.py
    "display": {"leaf"},
    "core": {"leaf"},
    "sources": {"leaf", "core"},
    "analysis": {"leaf", "core", "sources"},
    "demo": {"leaf", "core", "sources", "analysis", "display", "face"},
    "widgets": {"leaf", "core", "sources", "analysis", "display", "face"},
    "cli": {"leaf", "core", "demo"},  # saematch_nb/__main__.py: python -m saematch_nb warmup | demo
}
# Lazy imports (inside a function, never at import time) allowed across the layers:
# (importing layer, imported layer) -> which functions may hold them.
REPR_METHODS = {"__repr__", "_repr_html_"}
LAZY = {
    # result classes call display's pure functions for their reprs (as xarray's data classes
    # call formatting_html)
    ("core", "display"): ("repr methods", REPR_METHODS),
    ("sources", "display"): ("repr methods", REPR_METHODS),
    ("analysis", "display"): ("repr methods", REPR_METHODS),
}
# Named exceptions: (importing module, function) -> imported module prefix. Each must still
# be in use (test_named_exceptions_are_still_needed), so a fixed one cannot linger.
EXCEPTIONS: dict[tuple[str, str], str] = {
    # none left: load_model("demo") reads the demo's files through sources.demo_assets
}
# Third-party packages a layer must never import (at any level); the notebook-only ones come
# in through sources (sae-lens, TransformerLens), display (plotly) and widgets (ipywidgets).
NOTEBOOK = {"IPython", "ipywidgets", "plotly", "sae_lens", "transformer_lens", "transformers", "anywidget"}
FORBIDDEN_THIRD_PARTY = {
    "leaf": NOTEBOOK | {"torch", "numpy", "numba"},
    "face": NOTEBOOK | {"torch", "numpy", "numba"},
    "core": NOTEBOOK,
    # analysis works on the models and SAEs sources loaded, by duck typing
    "analysis": {"sae_lens", "transformer_lens", "transformers", "IPython", "ipywidgets", "plotly", "anywidget"},
    "display": NOTEBOOK - {"plotly"} | {"torch"},
    "demo": {"sae_lens", "transformer_lens", "IPython", "ipywidgets", "plotly"},
}
# Imported at module level nowhere but here (these modules are themselves imported lazily), so
# that `import saematch_nb` and any core / sources / display module stays light.
HEAVY = NOTEBOOK | {"numba"}
HEAVY_AT_IMPORT_TIME_ONLY_IN = {"saematch_nb.widgets.explorer", "saematch_nb.widgets.finder",
                                "saematch_nb.widgets.overview", "saematch_nb.widgets.steering",
                                "saematch_nb.core.lap._numba", "saematch_nb.core.lap._jv"}


@dataclass(frozen=True)
class Imp:
    src: str  # importing module
    target: str  # imported module (resolved; a name imported from a package resolves to the package)
    line: int
    func: str | None  # innermost enclosing function, None at import time
    type_checking: bool  # under `if TYPE_CHECKING:` (never executed)

    @property
    def internal(self) -> bool:
        return self.target == "saematch_nb" or self.target.startswith("saematch_nb.")

    @property
    def where(self) -> str:
        return f"{self.src}:{self.line}" + (f" (in {self.func})" if self.func else "")


def _modname(path: Path) -> str:
    rel = path.relative_to(PKG_DIR.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_modname(p): p for p in sorted(PKG_DIR.rglob("*.py"))}


def _is_module(name: str) -> bool:
    return name in MODULES


def _resolve(src: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    is_pkg = MODULES[src].name == "__init__.py"
    base = src.split(".") if is_pkg else src.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(src: str) -> list[Imp]:
    tree = ast.parse(MODULES[src].read_text(), str(MODULES[src]))
    out: list[Imp] = []

    def visit(node: ast.AST, func: str | None, tc: bool) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for d in node.decorator_list:
                visit(d, func, tc)
            for child in node.body:
                visit(child, node.name, tc)
            return
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                visit(child, func, True)
            for child in node.orelse:
                visit(child, func, tc)
            return
        if isinstance(node, ast.Import):
            out.extend(Imp(src, a.name, node.lineno, func, tc) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            mod = _resolve(src, node)
            if mod != "__future__":
                for a in node.names:
                    sub = f"{mod}.{a.name}"
                    out.append(Imp(src, sub if _is_module(sub) else mod, node.lineno, func, tc))
        elif (isinstance(node, ast.Call) and ast.unparse(node.func) in ("importlib.import_module", "import_module")
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            out.append(Imp(src, node.args[0].value, node.lineno, func, tc))
        for child in ast.iter_child_nodes(node):
            visit(child, func, tc)

    for child in tree.body:
        visit(child, None, False)
    return out


IMPORTS = [imp for m in MODULES for imp in _imports(m)]


def layer(mod: str) -> str:
    parts = mod.split(".")
    if mod == "saematch_nb":
        return "face"
    if parts[1] in ("_version", "errors", "_atomic"):
        return "leaf"
    if parts[1] == "__main__":
        return "cli"
    if parts[1] == "gemma3":  # the Gemma 3 bundle: a demo-like bundle of shipped assets
        return "demo"
    if parts[1] in LAYERS:
        return parts[1]
    raise AssertionError(f"{mod} is in no layer: put it in one of {LAYERS} (docs/ARCHITECTURE.md)")


def _exception_for(imp: Imp) -> bool:
    prefix = EXCEPTIONS.get((imp.src, imp.func))
    return prefix is not None and (imp.target == prefix or imp.target.startswith(prefix + "."))


def _violation(imp: Imp) -> str | None:
    """Why this internal import breaks the map, or None."""
    a, b = layer(imp.src), layer(imp.target)
    if a == b or b in ALLOWED[a]:
        return None
    if imp.func is not None and _exception_for(imp):
        return None
    lazy = LAZY.get((a, b))
    if lazy is not None and imp.func is not None:
        what, funcs = lazy
        if imp.func in funcs:
            return None
        return f"{a} may import {b} only inside {what} ({', '.join(sorted(funcs))}), not in {imp.func}"
    when = "at import time" if imp.func is None else "even lazily"
    return f"{a} must not import {b} ({when}): it is not below {a} in the map"


# -- the tests ------------------------------------------------------------------------------------
def test_the_walk_sees_the_package():
    # the checks below mean something only if the parser found the imports they are about
    for mod in ("saematch_nb.core.match", "saematch_nb.core.lap", "saematch_nb.core.lap.sparse",
                "saematch_nb.sources.saes", "saematch_nb.display.html", "saematch_nb.widgets.explorer",
                "saematch_nb.demo", "saematch_nb.errors", "saematch_nb._version"):
        assert mod in MODULES, mod
    pairs = {(i.src, i.target, i.func is None) for i in IMPORTS}
    assert ("saematch_nb.core.match", "saematch_nb.core.lap", True) in pairs
    assert ("saematch_nb.core.results", "saematch_nb.display.text", False) in pairs
    assert ("saematch_nb.core.lap.sparse", "saematch_nb.core.lap._numba", False) in pairs
    assert ("saematch_nb.widgets.explorer", "ipywidgets", True) in pairs
    assert {layer(m) for m in MODULES} == set(LAYERS) | {"face"}


def test_every_module_has_a_layer():
    for mod in MODULES:
        layer(mod)


def test_no_import_breaks_the_map():
    bad = [f"{i.where}: imports {i.target}: {why}" for i in IMPORTS
           if i.internal and (why := _violation(i)) is not None]
    assert not bad, "imports against docs/ARCHITECTURE.md:\n" + "\n".join(bad)


def test_the_rule_catches_what_it_is_for():
    """The checker itself: an upward import, a lazy import outside a repr, and the allowed ones."""
    up = Imp("saematch_nb.core.fake", "saematch_nb.sources.saes", 1, None, False)
    assert "core must not import sources" in _violation(up)
    lazy_elsewhere = Imp("saematch_nb.core.fake", "saematch_nb.display.html", 1, "summary", False)
    assert "only inside repr methods" in _violation(lazy_elsewhere)
    assert _violation(Imp("saematch_nb.core.fake", "saematch_nb.display.html", 1, "_repr_html_", False)) is None
    at_import = Imp("saematch_nb.core.fake", "saematch_nb.display.html", 1, None, False)
    assert "at import time" in _violation(at_import)
    assert "even lazily" in _violation(Imp("saematch_nb.display.fake", "saematch_nb.core.weights", 1, "f", False))
    assert _violation(Imp("saematch_nb.sources.fake", "saematch_nb.core.cache", 1, None, False)) is None


def test_named_exceptions_are_still_needed():
    for (src, func), prefix in EXCEPTIONS.items():
        used = [i for i in IMPORTS if i.src == src and i.func == func and _exception_for(i)]
        assert used, (f"EXCEPTIONS[{src}, {func}] -> {prefix} is no longer used: remove it here and from "
                      "docs/ARCHITECTURE.md")


def test_nothing_outside_display_imports_its_private_helpers():
    bad = [f"{i.where}: {i.target}" for i in IMPORTS
           if i.target.startswith("saematch_nb.display._") and layer(i.src) != "display"]
    assert not bad, "use the public names of saematch_nb.display (escape, wrap_output, ...):\n" + "\n".join(bad)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    cycles: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            strong(v)
    return cycles


def _graph(at_import_time_only: bool) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for i in IMPORTS:
        if i.internal and not i.type_checking and i.target in MODULES and i.target != i.src \
                and (i.func is None or not at_import_time_only):
            graph[i.src].add(i.target)
    return graph


def test_no_import_cycle_at_import_time():
    cycles = _cycles(_graph(at_import_time_only=True))
    assert not cycles, f"modules importing each other at import time: {cycles}"


def test_no_import_cycle_at_all():
    """Not even through imports inside functions (a lazy import hides a circle, it does not remove
    it): the chain and the runner, the demo and load_model, the solvers and their warm-up each
    share a module below them instead."""
    graph = _graph(at_import_time_only=False)
    cycles = _cycles(graph)
    where = [f"{a} -> {b}" for c in cycles for a in c for b in sorted(graph[a]) if b in c]
    assert not cycles, "modules importing each other (inside functions too):\n" + "\n".join(where)


def test_the_cycle_check_sees_a_lazy_circle():
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": set()}) == [["a", "b"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("lyr", sorted(FORBIDDEN_THIRD_PARTY))
def test_forbidden_third_party_packages(lyr):
    bad = [f"{i.where}: {i.target}" for i in IMPORTS if not i.internal and layer(i.src) == lyr
           and i.target.split(".")[0] in FORBIDDEN_THIRD_PARTY[lyr]]
    assert not bad, f"{lyr} imports what it must not:\n" + "\n".join(bad)


def test_heavy_packages_load_only_when_used():
    bad = [f"{i.where}: {i.target}" for i in IMPORTS
           if not i.internal and i.func is None and not i.type_checking
           and i.target.split(".")[0] in HEAVY and i.src not in HEAVY_AT_IMPORT_TIME_ONLY_IN]
    assert not bad, "import these inside the functions that need them:\n" + "\n".join(bad)
    # and the modules allowed to import them at import time are themselves imported lazily
    eager = [f"{i.where}: {i.target}" for i in IMPORTS
             if i.target in HEAVY_AT_IMPORT_TIME_ONLY_IN and i.func is None and not i.type_checking
             and i.src not in HEAVY_AT_IMPORT_TIME_ONLY_IN]  # one lazy kernel module may use another
    assert not eager, eager


def test_the_doc_names_every_module():
    text = DOC.read_text()
    missing = []
    for mod, path in MODULES.items():
        rel = path.relative_to(PKG_DIR).as_posix()
        if path.name == "__init__.py" and mod.count(".") <= 1:  # saematch_nb/, core/, ...: the layer itself
            continue
        if rel not in text:
            missing.append(rel)
    assert not missing, f"docs/ARCHITECTURE.md does not mention {missing}"
