"""Where SAEs, models and data come from: sae-lens releases and folders (``saes``), TransformerLens
models (``models``), residual-stream activations (``activations``), activation examples
(``examples``), the hidden-state evaluation (``evaluate``), steering (``steering``) and
Neuronpedia (``neuronpedia``). The only layer that imports sae-lens or TransformerLens (inside
functions) or reaches the network; it builds on core (docs/ARCHITECTURE.md)."""
