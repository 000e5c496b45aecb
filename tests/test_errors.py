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
    "saematch_nb.demo.MissingAssetsError": FileNotFoundError,
    "saematch_nb.demo.BrokenAssetsError": FileNotFoundError,
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


def test_old_neuronpedia_name_is_the_same_class_with_a_warning():
    from saematch_nb.sources import neuronpedia

    with pytest.warns(DeprecationWarning, match="NeuronpediaUnavailableError"):
        old = neuronpedia.NeuronpediaUnavailable
    assert old is neuronpedia.NeuronpediaUnavailableError
    with pytest.warns(DeprecationWarning):
        from saematch_nb.sources.neuronpedia import NeuronpediaUnavailable  # noqa: F401
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        neuronpedia.nothing_here  # noqa: B018
