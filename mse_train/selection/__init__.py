"""Stage 6, choosing a model: cross-validation, hyper-parameter sweeps, and init's starter.

  fit.py    train one config on one split (no files) and score its best epoch
  cv.py     `mse-train cv`: K folds, each with preprocessing fitted on its own rows
  space.py  a `sweep:` section -> Optuna distributions, and each trial's checked config
  sweep.py  `mse-train sweep`: one worker's sweep, then leaderboard, best.yaml and the refit
  worker.py   a worker's search: ask the study for trials, train them (packed), tell them
  study.py    the study opened or created; the config and data its workers must share
  budget.py   sweep.time_limit for the whole command: the refit's time, measured, kept back
  storage.py  where studies live (sweep.journal, a database URL, a journal file), heartbeats, claims
  oof.py      each cross-validated trial's out-of-fold predictions, kept and checked
  ensemble.py greedy ensemble selection over them (sweep.ensemble), refit into one checkpoint
  race.py     the starter's candidates cross-validated on the table within a time budget
  choose.py   `mse-train init`'s starter model: the race's winner, and comments that say why;
              the linear starter's L2 from ridge (training/ridge.py)

Sits above recipe.py (it builds loops the way `run` does) and below cli/.
"""
