"""One error family: every exception and warning class of the package derives from SaematchError
(found by walking the modules, so a new class cannot escape) and keeps the built-in base users
already catch."""

from __future__ import annotations

import importlib
import pkgutil
import warnings

import pytest

import saematch_nb
from saematch_nb.errors import SaematchError, SaematchWarning


def _modules():
    for m in pkgutil.walk_packages(saematch_nb.__path__, "saematch_nb."):
        if m.name.endswith("__main__"):  # the CLI entry point defines no classes
            continue
        yield importlib.import_module(m.name)


def _exception_classes():
    found = {}
    for mod in _modules():
        for name, obj in vars(mod).items():
            if (isinstance(obj, type) and issubclass(obj, BaseException)
                    and obj.__module__ == mod.__name__):
                found[f"{mod.__name__}.{name}"] = obj
    return found


CLASSES = _exception_classes()

# The built-in base each class had before the family existed: kept as a mixin, so code that
# catches it keeps working.
BUILTIN_BASE = {
    "saematch_nb.core.cache.CacheWarning": UserWarning,
    "saematch_nb.core.results.ResultMismatchError": ValueError,
    "saematch_nb.core.results.ResultFileError": ValueError,
    "saematch_nb.core.results.ResultVersionError": ValueError,
    "saematch_nb.display.figures.FigureExportError": RuntimeError,
    "saematch_nb.sources.saes.SourceError": ValueError,
    "saematch_nb.sources.saes.HubUnavailableError": ValueError,
    "saematch_nb.sources.saes.SAELoadError": ValueError,
    "saematch_nb.sources.saes.UnknownReleaseError": ValueError,
    "saematch_nb.sources.saes.UnknownSAEIdError": ValueError,
    "saematch_nb.sources.saes.LayerOutOfRangeError": ValueError,
    "saematch_nb.sources.saes.SAEHubUnavailableError": ValueError,
    "saematch_nb.sources.models.ModelLoadError": ValueError,
    "saematch_nb.sources.models.ModelAccessError": ValueError,
    "saematch_nb.sources.models.ModelHubUnavailableError": ValueError,
    "saematch_nb.sources.activations.ActivationError": ValueError,
    "saematch_nb.sources.neuronpedia.NeuronpediaUnavailableError": RuntimeError,
    "saematch_nb.sources.demo_assets.MissingAssetsError": FileNotFoundError,
    "saematch_nb.sources.demo_assets.BrokenAssetsError": FileNotFoundError,
    "saematch_nb.errors.InvalidArgumentError": ValueError,
    "saematch_nb.errors.ArgumentTypeError": TypeError,
}


def test_the_walk_finds_the_known_classes():
    # the walk is what keeps new classes honest: it must see at least every class named above
    missing = sorted(set(BUILTIN_BASE) - set(CLASSES))
    assert not missing, f"not found by walking the package: {missing}"


@pytest.mark.parametrize("qualname", sorted(CLASSES))
def test_every_exception_class_is_in_the_family(qualname):
    cls = CLASSES[qualname]
    assert issubclass(cls, SaematchError), (
        f"{qualname} does not derive from saematch_nb.errors.SaematchError: add it as the first base "
        "(keep the built-in base as a mixin)")
    if issubclass(cls, Warning):
        assert issubclass(cls, SaematchWarning) and cls.__name__.endswith("Warning"), qualname
    else:
        assert cls.__name__.endswith("Error"), f"{qualname}: error class names end with 'Error'"


@pytest.mark.parametrize("qualname", sorted(BUILTIN_BASE))
def test_builtin_bases_are_kept(qualname):
    cls = CLASSES[qualname]
    assert issubclass(cls, BUILTIN_BASE[qualname]), qualname
    with pytest.raises(BUILTIN_BASE[qualname]):  # old except clauses still catch it
        raise cls("x")


def test_top_level_exports_and_a_caught_example(tmp_path):
    assert saematch_nb.SaematchError is SaematchError
    assert saematch_nb.SaematchWarning is SaematchWarning
    assert {"SaematchError", "SaematchWarning"} <= set(saematch_nb.__all__)
    from saematch_nb.core.results import LayerMatch

    bad = tmp_path / "not_a_result.npz"
    bad.write_bytes(b"no zip here")
    with pytest.raises(SaematchError, match="not_a_result"):
        LayerMatch.load(bad)
    # an escalated warning is caught by the same except clause as the errors
    from saematch_nb.core.cache import CacheWarning

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(SaematchError):
            warnings.warn("x", CacheWarning)


def test_errors_module_is_a_leaf():
    import ast
    from pathlib import Path

    tree = ast.parse(Path(saematch_nb.errors.__file__).read_text())
    imported = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert all(isinstance(n, ast.ImportFrom) and n.module == "__future__" for n in imported)


def test_the_pre_family_neuronpedia_name_is_gone():
    # a 0.1.0 package keeps no compatibility aliases: NeuronpediaUnavailableError is the one name
    from saematch_nb.sources import neuronpedia

    assert not hasattr(neuronpedia, "NeuronpediaUnavailable")
    with pytest.raises(ImportError):
        from saematch_nb.sources.neuronpedia import NeuronpediaUnavailable  # noqa: F401
    assert issubclass(neuronpedia.NeuronpediaUnavailableError, RuntimeError)


def _warn_calls():
    """Every ``warnings.warn(...)`` / ``warn(...)`` (from warnings) in the package, with the module,
    the enclosing function and the category as written (None when left out: a UserWarning)."""
    import ast
    from pathlib import Path

    root = Path(saematch_nb.__file__).resolve().parent
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root.parent).with_suffix("")
        mod = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        tree = ast.parse(path.read_text(), str(path))
        bare_warn = any(isinstance(n, ast.ImportFrom) and n.module == "warnings"
                        and any(a.name == "warn" for a in n.names) for n in ast.walk(tree))

        def visit(node, func):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                func = node.name
            if isinstance(node, ast.Call):
                f = node.func
                if ((isinstance(f, ast.Attribute) and f.attr == "warn" and isinstance(f.value, ast.Name)
                     and f.value.id == "warnings") or (bare_warn and isinstance(f, ast.Name) and f.id == "warn")):
                    cat = next((k.value for k in node.keywords if k.arg == "category"), None)
                    if cat is None and len(node.args) > 1:
                        cat = node.args[1]
                    if cat is None and node.args and isinstance(node.args[0], ast.Call):
                        cat = node.args[0].func  # warn(SomeWarning("...")): the instance's class
                    yield mod, func, node.lineno, cat
            for child in ast.iter_child_nodes(node):
                yield from visit(child, func)

        yield from visit(tree, None)


def _category_class(mod: str, cat):
    """The class a category expression names, looked up in the module (module-level names) or
    among the package's classes (names imported inside a function); None when unknown."""
    import ast

    if cat is None:
        return UserWarning
    name = cat.attr if isinstance(cat, ast.Attribute) else getattr(cat, "id", None)
    if name is None:
        return None
    obj = getattr(importlib.import_module(mod), name, None)
    if isinstance(obj, type):
        return obj
    if name == "SaematchWarning":
        return SaematchWarning
    found = [c for q, c in CLASSES.items() if q.rsplit(".", 1)[1] == name]
    if found:
        return found[0]
    return getattr(__import__("builtins"), name, None)


def test_every_warning_the_package_raises_is_in_the_family():
    calls = list(_warn_calls())
    assert len(calls) >= 5, "the scan found too few warnings.warn calls: is it still looking?"
    bad = []
    for mod, func, line, cat in calls:
        cls = _category_class(mod, cat)
        if isinstance(cls, type) and issubclass(cls, SaematchWarning):
            continue
        shown = "no category (UserWarning)" if cat is None else getattr(cls, "__name__", "an unknown class")
        bad.append(f"{mod}:{line} (in {func}): {shown}")
    assert not bad, ("warnings.warn with a category outside saematch_nb.errors.SaematchWarning's family "
                     "(use SaematchWarning or a subclass: users filter and catch them as one):\n" + "\n".join(bad))
