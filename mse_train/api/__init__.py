"""Stage 8, the Python API: the commands' work as functions and objects, without a console.

  train.py      `train(config)`, `cv(config)`, `sweep(config)`: run's, cv's and sweep's work, returning result
                objects; a config from a path, a dict or a Config, with settings on top
  model.py      `load(path)` -> `Model`: predict on a DataFrame (intervals, drift), save, export
  estimator.py  `Regressor`: a scikit-learn estimator (fit/predict/score) over `run`;
                needs scikit-learn (the sklearn extra), imported only when asked for

Sits above selection/ (it calls recipe, use and selection as the CLI does) and below cli/.
"""

from typing import Any

from mse_train.api.model import Model, load
from mse_train.api.train import CVResult, SweepResult, TrainResult, cv, sweep, train

__all__ = ["CVResult", "Model", "Regressor", "SweepResult", "TrainResult", "cv", "load", "sweep", "train"]


def __getattr__(name: str) -> Any:
    if name == "Regressor":  # scikit-learn is optional: imported when the estimator is asked for
        from mse_train.api.estimator import Regressor

        return Regressor
    raise AttributeError(f"module 'mse_train.api' has no attribute {name!r}")
