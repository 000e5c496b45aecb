"""saematch_nb: match, trace and steer SAE features across the layers of a language model.

Light at import: the heavy packages (sae-lens, TransformerLens, plotly) load only when a function
that needs them is called. Names below resolve lazily on first access.
"""

from __future__ import annotations

import importlib
from typing import Any

from ._version import __version__

# public name -> "module:attribute" (relative to this package)
_LAZY = {
    # core
    "SAEWeights": "core.weights:SAEWeights",
    "SAEInfo": "core.weights:SAEInfo",
    "as_weights": "core.weights:as_weights",
    "fold": "core.fold:fold",
    "match": "core.match:match",
    "MatchOptions": "core.options:MatchOptions",
    "LayerMatch": "core.results:LayerMatch",
    "FeatureTrace": "core.results:FeatureTrace",
    "match_chain": "core.runner:match_chain",
    "SAEStack": "core.stack:SAEStack",
    "MatchChain": "core.chain:MatchChain",
    "feature_flow": "core.flow:feature_flow",
    "FeatureFlow": "core.flow:FeatureFlow",
    "FlowGraph": "core.flow:FlowGraph",
    # sources: loaders
    "load_saes": "sources.saes:load_saes",
    "SAEHandle": "sources.saes:SAEHandle",
    "SAEList": "sources.saes:SAEList",
    "list_releases": "sources.saes:list_releases",
    "load_model": "sources.models:load_model",
    "collect_activations": "sources.activations:collect_activations",
    "fetch_feature": "sources.neuronpedia:fetch_feature",
    "attention_out_proj": "sources.flow:attention_out_proj",
    # analysis: what a chain is used for (the chain, or what was made from it, comes first)
    "evaluate": "analysis.evaluate:evaluate",
    "coactivation": "analysis.evaluate:coactivation",
    "collect_examples": "analysis.examples:collect_examples",
    "find_features": "analysis.finder:find_features",
    "plan_steering": "analysis.steering:plan_steering",
    "steer": "analysis.steering:steer",
    "SteeringPlan": "analysis.steering:SteeringPlan",
    "flow_labels": "analysis.flow_checks:flow_labels",
    "deactivate": "analysis.flow_checks:deactivate",
    "plan_flow_steering": "analysis.flow_checks:plan_flow_steering",
    "FlowLabels": "analysis.flow_checks:FlowLabels",
    "FlowDeactivation": "analysis.flow_checks:FlowDeactivation",
    # display
    "save_figure": "display.figures:save_figure",
    # widgets
    "FeatureExplorer": "widgets.explorer:FeatureExplorer",
    "SteeringPanel": "widgets.steering:SteeringPanel",
    "FeatureFinder": "widgets.finder:FeatureFinder",
    "ChainOverview": "widgets.overview:ChainOverview",
    # errors: the base of every error and warning the package raises
    "SaematchError": "errors:SaematchError",
    "SaematchWarning": "errors:SaematchWarning",
}

__all__ = sorted(_LAZY) + ["demo", "gemma3", "__version__"]


def __getattr__(name: str) -> Any:
    if name in ("demo", "gemma3"):  # the bundled demo; Gemma 3 270M with its shipped SAEs
        return importlib.import_module(f".{name}", __name__)
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'saematch_nb' has no attribute {name!r}")
    mod, attr = target.split(":")
    value = getattr(importlib.import_module(f".{mod}", __name__), attr)
    globals()[name] = value  # cache: next access is a plain attribute lookup
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
