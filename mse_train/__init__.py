"""mse-train: train regression models on tables from a YAML config.

Kept free of heavy imports so that `mse-train --help` and `--version` stay fast: the
Python API (`Regressor`, `load`, `train`, `cv`, `sweep`; mse_train/api/) is imported on first use.
"""

import time
from typing import Any

__version__ = "0.1.0"
STARTED = time.time()  # when this process began using mse-train: a sweep's time_limit counts from it

_API = ("Regressor", "Model", "load", "train", "cv", "sweep")
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        from mse_train import api

        return getattr(api, name)
    raise AttributeError(f"module 'mse_train' has no attribute {name!r}")
