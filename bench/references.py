"""scikit-learn's side of bench/quality.py: the reference models, fitted as mse-train sees the table.

They see what mse-train sees: the starter config's feature and categorical columns, numeric
columns filled with training means and standardised, categories one-hot (an empty cell is
its own category, as mse-train's "(missing)"). Only training rows are ever fitted on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from lightgbm import LGBMRegressor
from sklearn.compose import ColumnTransformer, TransformedTargetRegressor
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.impute import SimpleImputer
from sklearn.linear_model import RidgeCV
from sklearn.metrics import r2_score
from sklearn.neural_network import MLPRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler
from xgboost import XGBRegressor

SEED = 0
ALPHAS = np.logspace(-3, 3, 13)
NAMES = ("ridge", "hgb", "lgbm", "xgb", "sk_mlp")


@dataclass
class Result:
    """One method on one table: test R² (None when it did not run) and wall seconds."""

    r2: float | None
    seconds: float | None
    note: str = ""  # why there is no R², or what to know about this one

    def cell(self) -> str:
        if self.r2 is None:
            return self.note or "failed"
        return f"{self.r2:.3f}" if self.seconds is None else f"{self.r2:.3f} ({self.seconds:.1f} s)"


@dataclass(frozen=True)
class Columns:
    target: str
    numeric: list[str]
    categorical: list[str]

    @classmethod
    def of(cls, config: dict[str, Any]) -> Columns:
        data = config["data"]
        categorical = list(data["categorical"])
        numeric = [c for c in data["features"] if c not in categorical]
        return cls(data["target"], numeric, categorical)

    def read(self, csv: Path) -> tuple[pd.DataFrame, np.ndarray]:
        frame = pd.read_csv(csv)
        cats = self.categorical
        # object columns with NaN for empty cells, as SimpleImputer expects (not pandas' NA)
        frame[cats] = frame[cats].astype(object).where(frame[cats].notna(), np.nan)
        return frame[self.numeric + cats], frame[self.target].to_numpy(float)

    def prep(self, encoder: Any) -> ColumnTransformer:
        numbers = make_pipeline(SimpleImputer(strategy="mean"), StandardScaler())
        cats = make_pipeline(SimpleImputer(strategy="constant", fill_value="(missing)"), encoder)
        return ColumnTransformer([("num", numbers, self.numeric), ("cat", cats, self.categorical)])


def references(config: dict[str, Any], train_csv: Path, test_csv: Path, mlp_rows: int) -> dict[str, Result]:
    """RidgeCV, HistGradientBoosting, LightGBM and XGBoost (defaults, native categories:
    the ordinal codes declared categorical; a category unseen in training is missing) and
    MLPRegressor((64, 64))."""
    cols = Columns.of(config)
    x_train, y_train = cols.read(train_csv)
    x_test, y_test = cols.read(test_csv)
    onehot = OneHotEncoder(handle_unknown="ignore", sparse_output=False)
    ordinal = OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=np.nan)
    is_cat = [False] * len(cols.numeric) + [True] * len(cols.categorical)
    mlp = MLPRegressor(hidden_layer_sizes=(64, 64), early_stopping=True, max_iter=500, random_state=SEED)
    hgb = HistGradientBoostingRegressor(categorical_features=is_cat, random_state=SEED)
    cat_columns = [i for i, c in enumerate(is_cat) if c]
    lgbm = LGBMRegressor(random_state=SEED, verbose=-1)
    kinds = ["c" if c else "q" for c in is_cat]
    xgb = XGBRegressor(random_state=SEED, enable_categorical=True, feature_types=kinds)
    models: dict[str, tuple[Any, int | None]] = {
        "ridge": (make_pipeline(cols.prep(onehot), RidgeCV(alphas=ALPHAS)), None),
        "hgb": (make_pipeline(cols.prep(ordinal), hgb), None),
        "lgbm": (make_pipeline(cols.prep(ordinal), lgbm), None),
        "xgb": (make_pipeline(cols.prep(ordinal), xgb), None),
        # the target standardised too, as mse-train does: unscaled prices stall Adam at 1e-3
        "sk_mlp": (
            TransformedTargetRegressor(make_pipeline(cols.prep(onehot), mlp), transformer=StandardScaler()),
            mlp_rows,
        ),
    }
    results: dict[str, Result] = {}
    for name, (model, limit) in models.items():
        rows = np.arange(len(y_train))
        note = ""
        if limit is not None and len(rows) > limit:
            rows = np.random.default_rng(SEED).permutation(len(rows))[:limit]
            note = f"fit on {limit:,} of {len(y_train):,} training rows"
        started = time.perf_counter()
        # LightGBM takes its categorical columns (by position) at fit
        fit = {"lgbmregressor__categorical_feature": cat_columns} if name == "lgbm" else {}
        model.fit(x_train.iloc[rows], y_train[rows], **fit)
        r2 = float(r2_score(y_test, model.predict(x_test)))
        results[name] = Result(r2, time.perf_counter() - started, note)
    return results
