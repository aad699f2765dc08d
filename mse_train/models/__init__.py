"""Stage 3, the models: networks and weight-init schemes, built by name from registries.

  networks.py   MODELS (linear, mlp) and ACTIVATIONS; a model's spec for checkpoints
  init.py       SCHEMES: the weight-init schemes
  inference.py  scoring many rows in chunks, in eval mode (validation, eval, predict)

Imports only config/ (schema classes and the registry entry type).
"""
