"""mse-train: train regression models on tables from a YAML config.

Kept free of heavy imports so that `mse-train --help` and `--version` stay fast.
"""

__version__ = "0.1.0"
