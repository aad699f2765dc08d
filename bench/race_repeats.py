"""Does repeating init's race (K-fold CV under several shuffles) pick better on small tables?

    OMP_NUM_THREADS=1 .venv/bin/python bench/race_repeats.py \
        --tables clothing,cpus,salaries,diabetes,housing --splits 5 --repeats 3

For each table and split (bench/quality.py's seeded 75/25 splits): init's two candidates,
each as init writes it, scored by 5-fold CV on the training rows under `--repeats` seeds
(the folds and the training shuffled with seed 0, 1, ...), and each trained on all the
training rows (`mse-train run`) and scored on the split's test rows (`mse-train eval`).
Prints per split the CV R² per seed, the test R², and which model the race would pick
from one seed and from the mean over all; then per table the mean test R² of each rule's
pick and of the better candidate per split (an oracle that looks at the test rows).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from quality import WORK, split
from race_sample import _render
from tables import TABLES


def _cli(*args: str | Path) -> str:
    exe = Path(sys.executable).with_name("mse-train")
    done = subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, check=True)
    return done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tables", default="clothing,cpus,salaries,diabetes,housing")
    parser.add_argument("--splits", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import dataclasses

    from mse_train.config import loading, yamlio
    from mse_train.config.starter import MLP, Choice
    from mse_train.data import prepare
    from mse_train.selection import choose, cv, race

    head = ["table", "split", "linear CV R² per seed", "MLP CV R² per seed", "test R² linear / MLP"]
    print("| " + " | ".join([*head, "one seed", "mean"]) + " |")
    print("|---|---|---|---|---|---|---|")
    summary: dict[str, dict[str, list[float]]] = {}
    for name in args.tables.split(","):
        table = TABLES[name]
        rows_out = summary.setdefault(name, {"one": [], "mean": [], "better": [], "linear": [], "mlp": []})
        for seed in range(args.splits):
            work = WORK / f"repeats-{name}-{seed}"
            train_csv, test_csv = split(table, work, seed)
            render = _render(train_csv, table.target, work / "starter.yaml")
            base = loading.from_document(yamlio.parse(render(MLP), "c.yaml"), work)
            loaded = prepare.load_training(base.data, base.targets)
            n = loaded.table.n_rows
            linear = Choice(True, (), l2=choose.ridge_l2(loaded, base, n))
            texts = {"linear": render(linear), "mlp": render(dataclasses.replace(MLP, rows=n))}
            cvs: dict[str, list[float]] = {}
            test: dict[str, float] = {}
            for kind, text in texts.items():
                (work / f"{kind}.yaml").write_text(text)
                cfg = loading.load(work / f"{kind}.yaml")
                scores = []
                for repeat in range(args.repeats):
                    c = cfg.model_copy(deep=True)
                    c.seed = repeat
                    result = cv.cross_validate(c, race.FOLDS, torch.device("cpu"), loaded=loaded)
                    r2 = cv.mean_std(result.per_fold)["r2"]["mean"]
                    scores.append(float("nan") if r2 is None else r2)
                cvs[kind] = scores
                out = work / f"run-{kind}"
                _cli(
                    "run", work / f"{kind}.yaml", "-q", "--set", "output.plot=false", "-o", out, "--overwrite"
                )
                test[kind] = float(json.loads(_cli("eval", out / "best.pt", test_csv, "--json"))["r2"])
            one = "linear" if cvs["linear"][0] >= cvs["mlp"][0] else "mlp"
            mean = "linear" if np.mean(cvs["linear"]) >= np.mean(cvs["mlp"]) else "mlp"
            rows_out["one"].append(test[one])
            rows_out["mean"].append(test[mean])
            rows_out["better"].append(max(test.values()))
            rows_out["linear"].append(test["linear"])
            rows_out["mlp"].append(test["mlp"])
            cells = [
                name,
                str(seed),
                " ".join(f"{x:.3f}" for x in cvs["linear"]),
                " ".join(f"{x:.3f}" for x in cvs["mlp"]),
                f"{test['linear']:.3f} / {test['mlp']:.3f}",
                one,
                mean,
            ]
            print("| " + " | ".join(cells) + " |", flush=True)
    print("\n| table | linear | MLP | one seed's pick | mean's pick | better per split |")
    print("|---|---|---|---|---|---|")
    for name, r in summary.items():
        cells = [f"{np.mean(r[k]):.4f}" for k in ("linear", "mlp", "one", "mean", "better")]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print(f"\nload average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
