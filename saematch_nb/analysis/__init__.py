"""What a chain is used for, once matched: activation examples (``examples``), the hidden-state
evaluation and co-activation (``evaluate``), steering (``steering``), the feature finder
(``finder``) and Feature Flow's checks on data and by intervention (``flow_checks``). Apart from
the loaders in ``sources``, which it builds on (models, SAEs, activations, Neuronpedia); every call
takes the chain (or what was made from it: a steering plan, a Feature Flow) first, then the model,
then data (docs/ARCHITECTURE.md)."""
