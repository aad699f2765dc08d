"""Stage 3, the models: networks and weight-init schemes, built by name from registries.

  networks.py    MODELS (linear, mlp, resnet, tabm) and ACTIVATIONS; a model's spec for
                 checkpoints; which parameters L1/L2 regularization counts as weights
  blocks.py      residual blocks, TabM's weight-sharing ensemble layers, and the wrapper
                 that puts numeric and categorical embeddings in front of a network
  embeddings.py  numeric-feature embeddings: periodic (PLR) and piecewise-linear, with
                 quantile bins from training rows
  categorical.py categorical-column embeddings (`data.categorical_encoding: embedding`):
                 one table per column, a fixed zero row for unseen categories
  init.py        SCHEMES: the weight-init schemes
  inference.py   scoring many rows in chunks, in eval mode (validation, eval, predict)

Imports only config/ (schema classes and the registry entry type).
"""
