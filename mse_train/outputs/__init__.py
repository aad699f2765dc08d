"""Stage 5, the outputs: everything a run leaves on disk, each file written atomically.

  fsio.py             temp file + fsync + rename, and the errors when that fails
  run_folder.py       one run per folder; `Saver` writes metrics.csv, best.pt, last.pt
  checkpoint.py       the checkpoint dict: build, save, load safely (weights_only=True)
  resume.py           --resume: check last.pt against the config and data, restore the loop
  metrics.py          metrics.csv and JSON files
  tables.py           cv.csv and a sweep's leaderboard.csv
  summary.py          summary.json, typed
  bags.py             a bagged run's best.pt (the bags' mean), out-of-bag score and
                      residuals, bags.csv and the bags' mean curve
  plots.py            loss.png and overlays (matplotlib, imported only when plotting)
  drawer.py           a run's loss.png drawn by a process beside the command, which imports
                      matplotlib while the command imports torch and trains
  tensorboard_log.py  TensorBoard scalars (an optional extra)
  mlflow_log.py       MLflow tracking of a run: params, per-epoch metrics, summary, artifacts
                      (an optional extra, imported only when used)
  mlflow_sweep.py     MLflow for a sweep: a parent run, a child run per trial

Imports config/, data/ (the preprocessor a checkpoint stores), models/ and training/.
"""
