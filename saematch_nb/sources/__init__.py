"""Where SAEs, models and data come from: sae-lens releases and folders (``saes``), TransformerLens
models (``models``, ``gemma3``), residual-stream activations (``activations``), the model side of
Feature Flow (``flow``) and Neuronpedia (``neuronpedia``). The only layer that imports sae-lens or
TransformerLens (inside functions) or reaches the network; it builds on core. What a chain is used
for once matched (examples, evaluation, steering, the finder) is in ``saematch_nb.analysis``
(docs/ARCHITECTURE.md)."""
