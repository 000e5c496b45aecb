"""Pure numerics: folding, costs, assignment, chains, metrics. No IPython, ipywidgets, plotly,
sae-lens or TransformerLens imports in this package."""
