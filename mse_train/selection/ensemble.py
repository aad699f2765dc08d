"""A sweep's ensemble: greedy ensemble selection with replacement (Caruana et al. 2004, as
AutoGluon builds its weighted ensembles) over the trials' out-of-fold predictions (oof.py),
and its refit into one checkpoint.

Selection: start from no model; at each of `sweep.ensemble` steps add (again, if it is
already in) the trial whose addition gives the mean prediction with the lowest out-of-fold
MSE, the sweep's objective; ties go to the lower trial number. A trial's weight is the
number of times it was chosen over the steps. Only trials whose predictions are of the
winner's data (the same `data:` section and targets, so one preprocessing serves them all)
take part, and no more than fit in `oof.MEMORY`: those of lowest out-of-fold MSE.

With `sweep.refit_seeds` S > 1 and no `sweep.ensemble`, the selection is the winner alone.

Refit: each chosen trial trains as `best.yaml` would, S times with seeds seed, seed + 1,
... (weight: its trial's / S): on all training rows, or, for a config that bags
(`train.bags` K), as S x K bags, copy j of every trial on bag j's rows as a bagged `run`
of S x K bags draws them; those that pack side by side in one stack (training/stack/).
The checkpoint holds the members as one `networks.WeightedMean`, its intervals calibrated
on the residuals of the ensemble's out-of-fold predictions (rows that no member's fold
trained on; of one seed each, so the seeds' mean can only do better).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mse_train import config, recipe
from mse_train.config.schema import Config
from mse_train.data import bags as data_bags
from mse_train.data import prepare
from mse_train.errors import TrainingDiverged, TrainingInterrupted
from mse_train.models import networks
from mse_train.outputs import checkpoint, fsio, metrics, run_folder
from mse_train.selection import oof, worker
from mse_train.training import signals
from mse_train.training.records import Status
from mse_train.training.stack import pack_key

FOLDER = "ensemble"  # <sweep folder>/ensemble/best.pt
REPORT = "ensemble.json"  # in the sweep folder: the selection; in FOLDER: the members trained


def _mse(predicted: np.ndarray, y: np.ndarray, w: np.ndarray | None) -> float:
    """The MSE the sweep scores trials by: weighted by `data.weight` ([rows]) when set."""
    squared = ((predicted - y) ** 2).mean(-1)
    return float(np.mean(squared) if w is None else np.average(squared, weights=w))


def greedy(predictions: np.ndarray, y: np.ndarray, steps: int, w: np.ndarray | None = None) -> list[int]:
    """How many times each of the M candidates ([M, rows, targets] predictions of `y`) is
    chosen in `steps` greedy steps with replacement, each minimising the MSE of the mean
    (weighted by the rows' sample weights `w` when given)."""
    total = np.zeros_like(y, dtype=np.float64)
    counts = [0] * len(predictions)
    for step in range(1, steps + 1):
        scores = [_mse((total + p) / step, y, w) for p in predictions]
        chosen = int(np.argmin(scores))  # the first of equal scores: the lower trial number
        counts[chosen] += 1
        total += predictions[chosen]
    return counts


def chooser(y: np.ndarray, w: np.ndarray | None, steps: int) -> Callable[[dict[int, np.ndarray]], list[int]]:
    """What `steps` greedy steps would choose among {trial: out-of-fold predictions of `y`}:
    the sweep's budget asks it as trials are told, to keep the time their refit needs."""

    def chosen(predictions: dict[int, np.ndarray]) -> list[int]:
        numbers = [n for n in sorted(predictions) if predictions[n].shape == y.shape]
        if not numbers:
            return []
        counts = greedy(np.stack([predictions[n] for n in numbers]), y, steps, w)
        return [n for n, c in zip(numbers, counts, strict=True) if c]

    return chosen


@dataclass
class Selection:
    """The chosen trials and how often, and the out-of-fold MSE of the mix and of the winner."""

    steps: int
    counts: dict[int, int]  # trial number -> times chosen (> 0)
    score: float  # the ensemble's out-of-fold MSE
    best_trial: int
    best_score: float  # the sweep's best single trial's out-of-fold MSE (all rows at once)
    candidates: int
    # |y - the ensemble's out-of-fold prediction|, sorted per target (None: folds 0, no such rows)
    residuals: np.ndarray | None = field(repr=False)
    left_out: list[int] = field(default_factory=list)  # trials whose predictions' file is gone
    seeds: int = 1  # sweep.refit_seeds: each chosen trial's trainings in the refit
    scored_on: str = "out_of_fold"  # what `score` is the MSE of: or "validation" (folds 0)

    def weights(self) -> dict[int, float]:
        return {trial: count / self.steps for trial, count in self.counts.items()}

    def as_json(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "members": [
                {"trial": t, "count": c, "weight": c / self.steps} for t, c in sorted(self.counts.items())
            ],
            "oof_mse": self.score,
            "best_trial": {"trial": self.best_trial, "oof_mse": self.best_score},
            "candidates": self.candidates,
            "left_out": self.left_out,
            "seeds": self.seeds,
            "scored_on": self.scored_on,
        }


def select(
    the_study: Any,
    out: Path,
    y_true: np.ndarray,
    steps: int,
    best_trial: int,
    fix: str,
    note: Callable[[str], None],
    w: np.ndarray | None = None,
    seeds: int = 1,
) -> Selection | None:
    """The ensemble of the study's trials (`steps` 0: the winner alone, for `seeds`), or None
    (said in a note) when the winner kept no out-of-fold predictions. A file that does not
    match its trial's record is refused."""
    results = {t.number: worker.result_of(t) for t in the_study.get_trials(deepcopy=False)}
    record = (results.get(best_trial) or {}).get(oof.KEY)
    if not isinstance(record, dict):
        note(f"no ensemble: the best trial ({best_trial}) kept no out-of-fold predictions")
        return None
    eligible = []
    for number in sorted(results):
        result = results[number] or {}
        kept = result.get(oof.KEY)
        if result.get("status") not in ("completed", "early_stopped") or not isinstance(kept, dict):
            continue
        if kept.get("data") != record.get("data") or kept.get("rows") != len(y_true):
            continue  # predictions of other rows or another preprocessing
        eligible.append(number)
    fits = oof.room(*y_true.shape)
    if len(eligible) > fits:  # the best that fit in MEMORY, the winner first
        ranked = sorted(eligible, key=lambda n: (n != best_trial, _score(results[n]), n))
        eligible = sorted(ranked[:fits])
        note(
            f"the ensemble chooses among the {fits} trials of lowest out-of-fold MSE, whose "
            f"predictions fit in {oof.MEMORY >> 20} MiB ({len(ranked) - fits} left out)"
        )
    numbers, arrays, left_out = [], [], []
    for number in eligible:
        kept = (results[number] or {})[oof.KEY]
        array = oof.read(out, kept, number, fix)
        if array is None:
            left_out.append(number)
            continue
        numbers.append(number)
        arrays.append(array)
    if best_trial not in numbers:
        note(f"no ensemble: the best trial's out-of-fold predictions ({out / oof.FOLDER}) are gone")
        return None
    if left_out:
        shown = ", ".join(map(str, left_out))
        note(f"trial(s) {shown} left out of the ensemble: their out-of-fold predictions are gone")
    predictions = np.stack(arrays)
    if steps:
        counts = greedy(predictions, y_true, steps, w)
    else:
        steps, counts = 1, [int(number == best_trial) for number in numbers]
    mixed = np.tensordot(np.array(counts, dtype=np.float64) / steps, predictions, axes=1)
    best = predictions[numbers.index(best_trial)]
    return Selection(
        steps,
        {numbers[i]: c for i, c in enumerate(counts) if c},
        _mse(mixed, y_true, w),
        best_trial,
        _mse(best, y_true, w),
        len(numbers),
        np.sort(np.abs(y_true - mixed), axis=0),
        left_out,
        seeds,
    )


def _score(result: dict[str, Any] | None) -> float:
    """A trial's out-of-fold MSE as its result records it (inf when it does not)."""
    mse = (result or {}).get("mse")
    return float(mse) if isinstance(mse, int | float) and not isinstance(mse, bool) else float("inf")


def winner(best_trial: int, score: float, seeds: int) -> Selection:
    """The winner alone, for `seeds`, where the trials kept no out-of-fold predictions
    (scored on validation rows): no residuals to calibrate intervals with."""
    return Selection(1, {best_trial: 1}, score, best_trial, score, 1, None, [], seeds, "validation")


def write_report(out: Path, selection: Selection) -> None:
    metrics.write_json(out / REPORT, selection.as_json())


def refit(
    members: dict[int, Config],
    selection: Selection,
    out: Path,
    device: torch.device,
    pack: bool,
    note: Callable[[str], None],
) -> Path:
    """Train each chosen trial's refit config (`members`, by trial) on all training rows,
    once per seed, and write their weighted mean as one checkpoint, `out`/best.pt; returns
    its path."""
    first = members[min(members)]
    bagged = all(bags_kept(c) for c in members.values())
    copies = selection.seeds * (first.train.bags if bagged else 1)
    numbers = [n for n in sorted(members) for _ in range(copies)]
    cfgs = [recipe.seeded(members[n], j % copies) for j, n in enumerate(numbers)]
    if bagged:  # copy j of every member trains on bag j's rows, as `run` trains bag j
        drawn = data_bags.prepare_bags(first.data, first.targets, first.seed, copies)
        prepared, rows = drawn.shared, [drawn.bags[j % copies] for j in range(len(cfgs))]
    else:
        prepared = prepare.prepare(first.data, first.targets, first.seed)
        rows = [prepared] * len(cfgs)
    fsio.ensure_writable_dir(out)
    with run_folder.lock(out):
        fix = f"the best single trial trains with: mse-train run {out.parent / 'best.yaml'}"
        trials = f"{len(members)} distinct trial(s)"
        what = trials if copies == 1 else f"{trials} x {copies} " + ("bags" if bagged else "seeds")
        modules, epochs = _train(cfgs, rows, numbers, device, pack, fix, note, what)
        weights = [selection.weights()[n] / copies for n in numbers]
        model = networks.WeightedMean(modules, weights).cpu()
        specs = [run_folder.model_spec(cfg, prepared) for cfg in cfgs]
        ckpt = checkpoint.build(
            "best",
            max(epochs),
            networks.ensemble_spec(specs, weights),
            model.state_dict(),
            prepared.pre,
            config.to_dict(members.get(selection.best_trial, first)),
            prepared.digests,
            {"epoch": max(epochs), "loss": None},
            residuals=None if selection.residuals is None else torch.from_numpy(selection.residuals),
            no_residuals="sweep_holdout" if selection.residuals is None else None,
            profile=prepared.profile,
            residuals_from="out_of_fold",
        )
        checkpoint.save(out / "best.pt", ckpt)
        described = [
            {"trial": n, "seed": c.seed, "weight": w, "epochs": e, "config": config.to_dict(c)}
            for n, w, e, c in zip(numbers, weights, epochs, cfgs, strict=True)
        ]
        metrics.write_json(out / REPORT, {**selection.as_json(), "trained": described})
    return out / "best.pt"


def bags_kept(cfg: Config) -> bool:
    """A refit of `cfg` trains its bags as `run` would: each stopped on its own validation
    rows, which together see every row (README, "A bagged run")."""
    return cfg.train.bags > 1 and cfg.data.val is None and cfg.data.val_fraction > 0


def _train(
    cfgs: list[Config],
    rows: list[prepare.Prepared],
    trials: list[int],
    device: torch.device,
    pack: bool,
    fix: str,
    note: Callable[[str], None],
    what: str,
) -> tuple[list[torch.nn.Module], list[int]]:
    """Each config trained on its rows: the copies of one trial (`trials[i]`: config i's)
    side by side in a stack where they pack, one trial after another. One stack per trial,
    not one for all: a stack trains every model until its last one stops, so a trial that
    stops early would wait for the slowest; and the sweep's budget times each trial's
    copies side by side, as they train here (budget.py)."""
    groups: dict[tuple[str | None, int], list[int]] = {}
    for i, cfg in enumerate(cfgs):
        groups.setdefault((pack_key(cfg) if pack else None, trials[i]), []).append(i)
    stacks = [len(g) for key, g in groups.items() if key[0] is not None and len(g) > 1]
    how = f" (side by side: {' then '.join(map(str, stacks))})" if stacks else ""
    note(f"the ensemble's {what} train on all training rows{how}")
    modules: dict[int, torch.nn.Module] = {}
    epochs: dict[int, int] = {}
    with signals.on_signals() as stop:
        for key, group in groups.items():
            if key[0] is not None and len(group) > 1:
                loop = recipe.stack_loop([(cfgs[i], rows[i]) for i in group], device)
                status = loop.run(lambda record: None, stop.requested)
                _check(status, [loop.status_of(j) for j in range(len(group))], fix)
                for j, i in enumerate(group):
                    modules[i], epochs[i] = loop.models.best_model(j), loop.best_epoch_of(j)
                continue
            for i in group:
                one = recipe.build_loop(cfgs[i], rows[i], device, stack=pack)
                status = one.run(lambda record: None, stop.requested)
                _check(status, [one.status_of(0)], fix)
                modules[i], epochs[i] = one.models.best_model(0), one.progress.best_epoch
    return [modules[i] for i in range(len(cfgs))], [epochs[i] for i in range(len(cfgs))]


def _check(status: Status, ends: list[tuple[Status, int, str]], fix: str) -> None:
    if status is Status.INTERRUPTED:
        raise TrainingInterrupted(
            "interrupted while the ensemble's members trained: the sweep's leaderboard and "
            "ensemble.json are kept, and no ensemble checkpoint was written",
            [fix],
        )
    for end, epoch, reason in ends:
        if end is Status.DIVERGED:
            raise TrainingDiverged(
                f"a member of the ensemble diverged at epoch {epoch} on all training rows: {reason}",
                [
                    "set sweep.ensemble: 0 and sweep.refit_seeds: 1 to refit the best trial alone "
                    "once, or narrow the sweep's ranges"
                ],
            )
