"""`mse_train.Regressor`: a scikit-learn estimator that trains as `mse-train run` does.

`fit(X, y)` writes the rows as a table file (frames.py) and calls recipe.run on a config
that names it: the same reader, preprocessing, loop and checkpoint as the command, so a
config gives the same weights through either door. The fitted model is the run's best.pt
(a `Model`), and predictions go through `predict`'s code.

Parameters are the config's keys: `Regressor(config="cfg.yaml", **{"optimizer.lr": 0.01})`,
or `optimizer__lr=0.01` (scikit-learn's nesting, as GridSearchCV and Pipeline pass them),
or whole sections (`model={"type": "mlp", "hidden": [64]}`). `__init__` only stores them;
`fit` validates the whole config at once (a ConfigError naming every problem).

Arrays are checked by scikit-learn's own `validate_data` (its messages for NaN, infinity,
sparse or complex input, as every scikit-learn estimator gives); a DataFrame goes to the
table reader as it is, categorical columns named by their dtype (category, string,
object, bool) or by `data.categorical`.
"""

from __future__ import annotations

import importlib.util
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mse_train import config as configs
from mse_train import recipe, runtime
from mse_train.api.model import Model
from mse_train.api.train import Callbacks, ConfigLike, Progress, dotted, resolve
from mse_train.data import frames
from mse_train.errors import DataError, EnvironmentProblem, MseTrainError

if importlib.util.find_spec("sklearn") is None:
    raise EnvironmentProblem(
        "mse_train.Regressor needs scikit-learn, which is not installed",
        ["install it with: pip install 'mse-train[sklearn]'"],
    )

from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data

LABEL = "Regressor"  # how messages name a keyword setting: `Regressor.optimizer.lr = 0.1`
_OWN = ("config", "progress")  # parameters that are not config keys
_ROWS_TO_COME = {"data.train": "-", "data.target": "-", "data.features": None}
# scikit-learn's estimator checks that a regression trainer cannot pass, and why
# (`check_array_api_input` is skipped by scikit-learn unless SCIPY_ARRAY_API is set).
EXPECTED_FAILED_CHECKS: dict[str, str] = {
    "check_sample_weight_equivalence_on_dense_data": (
        "weight 2 equals a repeated row, and weight 0 a removed one, only when the rows "
        "that train are the same: the validation split (data.val_fraction) and the "
        "mini-batches are drawn from the rows as given, so a table with a row repeated or "
        "removed splits and shuffles differently. With data.val_fraction 0 and full "
        "batches they are equal (tests/test_api.py)"
    ),
}


class Regressor(RegressorMixin, BaseEstimator):  # type: ignore[misc]
    """Train an mse-train model with fit(X, y); predict(X); score(X, y) is R²."""

    def __init__(
        self, config: ConfigLike = None, *, progress: Progress | None = None, **settings: Any
    ) -> None:
        self.config = config
        self.progress = progress
        self._settings = {dotted(k): v for k, v in settings.items()}

    # ------------------------------------------------------------- parameters
    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {"config": self.config, "progress": self.progress, **self._settings}

    def set_params(self, **params: Any) -> Regressor:
        for key, value in params.items():
            if key in _OWN:
                setattr(self, key, value)
            else:
                self._settings[dotted(key)] = value
        return self

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.input_tags.allow_nan = self._missing() != "error"  # empty cells, as data.missing says
        tags.non_deterministic = False
        return tags

    def _missing(self) -> str:
        """`data.missing` as configured ("error" when the config cannot be read: fit says why)."""
        try:
            return str(resolve(self.config, {**self._settings, **_ROWS_TO_COME}, LABEL).data.missing)
        except MseTrainError:
            return "error"

    def __repr__(self, N_CHAR_MAX: int = 700) -> str:
        shown = [f"{k}={getattr(self, k)!r}" for k in _OWN if getattr(self, k) is not None]
        if self._settings:
            shown.append("**" + repr(self._settings))
        return f"Regressor({', '.join(shown)})"

    # ------------------------------------------------------------- fit
    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> Regressor:
        """Train as `mse-train run` would on these rows; the fitted model is its best epoch.

        `sample_weight`: one non-negative weight per row, as `data.weight` takes them from a
        column (weighted loss, validation loss and preprocessing statistics)."""
        # A bad config answers before any work (the rows are named below).
        cfg = resolve(self.config, {**self._settings, **_ROWS_TO_COME}, LABEL)
        features, targets, single = self._frames(X, y, cfg.data.missing, reset=True)
        columns = [features, targets]
        weight = None
        if sample_weight is not None:
            weights = _check_sample_weight(sample_weight, features, ensure_non_negative=True)
            weight = _fresh_name("sample_weight", [*features.columns, *targets.columns])
            columns.append(pd.DataFrame({weight: weights}, index=features.index))
        folder = tempfile.TemporaryDirectory(prefix="mse-train-fit-")
        path = Path(folder.name) / "table.csv"
        with folder, frames.named(path):
            frames.write(pd.concat(columns, axis=1), path)
            categorical = [c for c in frames.categorical_columns(features) if c not in cfg.data.categorical]
            run = {
                "data.train": str(path),
                "data.target": list(targets.columns) if len(targets.columns) > 1 else targets.columns[0],
                "data.features": list(features.columns),
                "data.categorical": [*cfg.data.categorical, *categorical],
                "data.weight": weight,
                "data.cache": "off",  # a private file, read once: nothing to keep
                "output.dir": str(Path(folder.name) / "run"),
                "output.plot": False,
            }
            cfg = resolve(self.config, {**self._settings, **run}, LABEL)
            runtime.use_threads(cfg.train.threads, flush_denormals=False)
            options = recipe.Options(
                resume_command="fit again (a fit has no resume)",
                overwrite_command="fit again",
            )
            reporter = Callbacks(self.progress)
            with runtime.denormals_flushed():
                summary = recipe.run(cfg, options, reporter)
            out = Path(str(cfg.output.dir))
            self.model_ = Model((out / "best.pt").read_bytes(), "Regressor.fit")
            self.history_ = pd.read_csv(out / "metrics.csv")
        self.summary_ = dict(summary)
        self.notes_ = reporter.notes
        self.config_ = configs.to_dict(cfg)
        self.single_target_ = single
        return self

    def _frames(self, X: Any, y: Any, missing: str, reset: bool) -> tuple[pd.DataFrame, pd.DataFrame, bool]:
        if isinstance(X, pd.DataFrame):
            validate_data(self, X, y, reset=reset, skip_check_array=True)
            features = frames.frame_of(X)
        else:
            X, y = validate_data(
                self,
                X,
                y,
                reset=reset,
                multi_output=True,
                y_numeric=True,
                ensure_all_finite="allow-nan" if missing != "error" else True,
            )
            features = frames.frame_of(X)
        single = np.ndim(y) == 1 or isinstance(y, pd.Series)
        targets = frames.target_frame(y, list(features.columns))
        if len(targets) != len(features):
            raise DataError(f"{frames.SOURCE}: X has {len(features)} rows but y has {len(targets)}")
        targets.index = features.index
        return features, targets, single

    # ------------------------------------------------------------- predict
    def predict(self, X: Any) -> np.ndarray:
        """The model's predictions: one column per target, or a vector for a 1-D y."""
        check_is_fitted(self, "model_")
        if isinstance(X, pd.DataFrame):
            validate_data(self, X, reset=False, skip_check_array=True)
            rows = frames.frame_of(X)
        else:
            allow = "allow-nan" if self.config_["data"]["missing"] != "error" else True
            X = validate_data(self, X, reset=False, ensure_all_finite=allow)
            rows = frames.frame_of(X, names=self.model_.features)
        values = self.model_.predict(rows).to_numpy(dtype=np.float64)
        return values.ravel() if self.single_target_ else values


def _fresh_name(name: str, taken: list[str]) -> str:
    """`name`, or `name_1`, `name_2`, ... if a column already has it."""
    found, n = name, 0
    while found in taken:
        n += 1
        found = f"{name}_{n}"
    return found
