"""MLflow for model selection: `mse-train sweep` (one parent run for the sweep, one child
run per trial) and `mse-train cv` (one run: the folds' metrics, their mean and std).

A trial is logged as a whole when its result is known (packed trials finish together):
its swept params, its score and metrics, status and epochs; there are no per-epoch curves
for trials, which train without files. The refit of the winner is a normal tracked run,
nested under the parent too; an ensemble's refit (sweep.ensemble, sweep.refit_seeds) is
logged on the parent, as its MLflow Model. `--resume` continues the parent run that the sweep folder's
mlflow.json names, and logs any finished trial it does not yet have.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from mse_train.config import Config
from mse_train.outputs import mlflow_log

TRIAL_TAG = "mse_train.trial"
TRIAL_METRICS = ("score_mean", "score_std", "rmse", "mae", "r2", "epochs", "seconds")
SWEEP_FILES = ("leaderboard.csv", "best.yaml", "sweep.png", "ensemble.json", mlflow_log.RECORD)
ENSEMBLE_MODEL = "ensemble-model"  # the parent run's artifact folder: the ensemble refit's MLflow Model


class Tracked:
    """A sweep's parent run, started once its study is open (None until then, or without MLflow)."""

    def __init__(self, store: mlflow_log.Store | None) -> None:
        self.store = store
        self.parent: mlflow_log.Run | None = None
        self._logged: set[int] = set()

    def start(self, folder: Path, cfg: Config, folds: int, resume: bool, note: mlflow_log.Note) -> None:
        if self.store is None:
            return
        params = {**mlflow_log.config_params(cfg), "sweep.folds": str(folds)}
        tags = {"mse_train.kind": "sweep"}
        self.parent = self.store.start(folder, params, tags, resume, note)
        if self.parent.continued:
            self._logged = {int(n) for n in self.parent.children(TRIAL_TAG) if n.isdigit()}

    def trial(self, number: int, params: dict[str, Any], row: dict[str, Any]) -> None:
        """Log one finished trial (once): `params` its swept values, `row` its leaderboard row."""
        if self.parent is None or number in self._logged:
            return
        self._logged.add(number)
        self.parent.child(
            f"trial-{number}",
            mlflow_log.flatten(params),
            {key: row.get(key) for key in TRIAL_METRICS},
            {TRIAL_TAG: str(number), "mse_train.status": str(row["status"])},
            "FAILED" if row["status"] == "diverged" else "FINISHED",
        )

    def refit_tags(self, trial: int) -> dict[str, str]:
        """Tags for the refit's run: nested under the sweep, naming the trial it retrains."""
        if self.parent is None:
            return {}
        return {mlflow_log.PARENT_TAG: self.parent.run_id, "mse_train.refit_of_trial": str(trial)}

    def finish(
        self,
        folder: Path,
        best: dict[str, Any],
        trials: int,
        ensemble: Callable[[Path], None] | None = None,
    ) -> None:
        """The best trial and score, the sweep's files, and with `ensemble` (which saves the
        ensemble refit's MLflow Model into a folder: that refit is no run of its own) its
        model as ENSEMBLE_MODEL; the parent run FINISHED."""
        if self.parent is None:
            return
        self.parent.metrics({"best.score": best["score"], "trials": trials})
        self.parent.tags({"mse_train.best_trial": str(best["trial"])})
        self.parent.artifacts(folder, SWEEP_FILES)
        if ensemble is not None:
            self.parent.model(ensemble, ENSEMBLE_MODEL)
        self.parent.end("FINISHED")

    def abort(self, exc: BaseException) -> None:
        if self.parent is not None:
            self.parent.abort(exc)


CV_METRICS = ("mse", "rmse", "mae", "r2")
CV_FILES = ("cv.csv", "cv.json", mlflow_log.RECORD)


def log_cv(
    store: mlflow_log.Store, folder: Path, cfg: Config, summary: dict[str, Any], note: mlflow_log.Note
) -> None:
    """One finished cross-validation as one run: the config and fold count as params, each
    metric's mean and std over the folds (`mse_mean`, ...), each fold's as a step of
    `fold_mse`, ... (step = fold number), and cv.csv and cv.json as artifacts."""
    params = {**mlflow_log.config_params(cfg), "cv.folds": str(summary["folds"])}
    run = store.start(folder, params, {"mse_train.kind": "cv"}, False, note)
    run.metrics(
        {
            f"{name}_{stat}": summary[name][stat]
            for name in CV_METRICS
            for stat in ("mean", "std")
            if summary[name][stat] is not None
        }
    )
    for fold, row in enumerate(summary["per_fold"], start=1):
        run.metrics({f"fold_{name}": row[name] for name in CV_METRICS if row[name] is not None}, step=fold)
    run.artifacts(folder, CV_FILES)
    run.end("FINISHED")
