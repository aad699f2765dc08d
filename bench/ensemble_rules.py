"""Test R² of two ensemble-selection rules over the same finished sweeps: one greedy selection
over all trials (Caruana et al. 2004's basic rule, mse-train's: `ensemble.greedy`) against
bagged ensemble selection (the same paper, section 4.3: 20 greedy selections over seeded
random halves of the trials, their counts summed; here also trials under 1 / steps of
weight dropped, so the refit trains no trial for a sliver). Measured 2026-12-08 to decide
whether mse-train should select that way (bench/results.md, "Bagged ensemble selection").

    OMP_NUM_THREADS=1 .venv/bin/python bench/ensemble_rules.py [--tables concrete,cpus] [--rows FILE...]

It reads the sweep folders bench/ensemble.py left in bench/out/ensemble/<table>-split<k>/
(`--config starter --ensemble 20`: init's sweep of the training rows of bench/quality.py's
seeded split). For each: both selections from the trials' out-of-fold predictions, by
`ensemble.select` (the bagged rule by handing it `bagged` below in place of
`ensemble.greedy`); every trial either rule chooses refit alone exactly as the ensemble's
refit trains it (`ensemble.refit` of that one member: its bags on the rows a bagged run
draws), its test predictions from `mse-train predict`; each rule's ensemble is the weighted
mean of its members' predictions (the ensemble checkpoint's prediction, as
tests/test_ensemble.py and tests/test_bags.py hold it to). The best single trial is scored
the same way. `--rows` names bench/ensemble.py's printed rows, to read each split's best
reference from.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from mse_train.config import loading, yamlio
from mse_train.selection import ensemble, oof, space, sweep, worker
from mse_train.selection import storage as sweep_storage

HERE = Path(__file__).resolve().parent
ROOT_OUT = HERE / "out" / "ensemble"
STEPS = 20
BAGS = 20  # greedy selections whose counts are summed (Caruana et al. 2004 use 20)
SHARE = 0.5  # of the trials, drawn for each


def bagged(predictions: np.ndarray, y: np.ndarray, steps: int, w: np.ndarray | None = None) -> list[int]:
    """Each of the M candidates' count over BAGS greedy selections of `steps` steps, each over
    a seeded random SHARE of them, those under BAGS (a weight below 1 / steps) set to 0; one
    greedy selection when M <= 2."""
    m = len(predictions)
    if m <= 2:
        return GREEDY(predictions, y, steps, w)
    rng = np.random.default_rng(0)
    total = np.zeros(m, dtype=np.int64)
    for _ in range(BAGS):
        some = np.sort(rng.choice(m, size=max(2, round(m * SHARE)), replace=False))
        total[some] += GREEDY(predictions[some], y, steps, w)
    kept = np.where(total >= BAGS, total, 0)
    if not kept.any():
        kept[int(np.argmax(total))] = 1
    return [int(c) for c in kept]


GREEDY = ensemble.greedy


def _r2(y: np.ndarray, p: np.ndarray) -> float:
    return float(1 - np.sum((y - p) ** 2) / np.sum((y - y.mean()) ** 2))


def _references(files: list[str]) -> dict[tuple[str, int], float]:
    out = {}
    for file in files:
        for line in Path(file).read_text().splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) >= 5 and cells[1].isdigit():
                out[(cells[0], int(cells[1]))] = float(cells[4].split()[0])
    return out


def _predict(ckpt: Path, test: Path, target: str) -> np.ndarray:
    exe = Path(sys.executable).with_name("mse-train")
    out = ckpt.parent / "test_pred.csv"
    done = subprocess.run(
        [str(exe), "predict", str(ckpt), str(test), "-o", str(out)], capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-500:])
    return pd.read_csv(out)[f"{target}_pred"].to_numpy(float)


def measure(folder: Path) -> dict[str, object]:
    config_path = folder / "starter.yaml"
    out = folder / "sweep"
    doc = yamlio.read(config_path)
    base, name = config_path.resolve().parent, config_path.stem
    cfg = loading.from_document(doc, base, [], name)
    assert cfg.sweep is not None
    the_space = space.space_of(cfg.sweep, doc, cfg.sweep.method)
    where = sweep_storage.connect(None, out, cfg.sweep.heartbeat)
    import optuna

    the_study = optuna.load_study(study_name=cfg.sweep.study, storage=where.storage)
    target = cfg.targets[0]
    y_train = pd.read_csv(config_path.parent / "train.csv")[target].to_numpy(float)[:, None]
    test = config_path.parent / "test.csv"
    y_test = pd.read_csv(test)[target].to_numpy(float)
    best_trial = json.loads((out / "ensemble.json").read_text())["best_trial"]["trial"]

    def config_of(values: dict[str, object]) -> object:
        return space.trial_config(doc, base, [], values, name)[0]

    def quiet(message: str) -> None:
        pass

    plain = ensemble.select(the_study, out, y_train, STEPS, best_trial, "", quiet)
    ensemble.greedy = bagged
    try:
        mixed_rule = ensemble.select(the_study, out, y_train, STEPS, best_trial, "", quiet)
    finally:
        ensemble.greedy = GREEDY
    assert mixed_rule is not None and plain is not None
    # counts summed over the selections: a weight is a count over their total
    by_bags = ensemble.Selection(
        sum(mixed_rule.counts.values()), mixed_rule.counts, 0.0, best_trial, 0.0, 0, None
    )
    trials = sorted(set(by_bags.counts) | set(plain.counts) | {best_trial})
    predicted = {}
    for n in trials:
        member = sweep._member_config(the_study, n, the_space, config_of, out)  # type: ignore[arg-type]
        alone = folder / "rules" / f"trial-{n}"
        member.output.dir = str(alone)
        if not (alone / "best.pt").exists():
            one = ensemble.Selection(1, {n: 1}, 0.0, n, 0.0, 1, None)
            import torch

            ensemble.refit({n: member}, one, alone, torch.device("cpu"), True, quiet)
        predicted[n] = _predict(alone / "best.pt", test, target)

    def mixed(selection: ensemble.Selection) -> np.ndarray:
        return sum(w * predicted[n] for n, w in selection.weights().items())  # type: ignore[return-value]

    oof_mix = np.zeros_like(y_train)
    for n, w in by_bags.weights().items():
        kept = oof.read(out, _record(the_study, n), n, "")
        assert kept is not None
        oof_mix += w * kept
    oof_bagged = float(np.mean((oof_mix - y_train) ** 2))
    return {
        "plain": _r2(y_test, mixed(plain)),
        "bagged": _r2(y_test, mixed(by_bags)),
        "best": _r2(y_test, predicted[best_trial]),
        "plain_members": len(plain.counts),
        "bagged_members": len(by_bags.counts),
        "oof": (plain.score, oof_bagged, plain.best_score),
    }


def _record(the_study: object, number: int) -> object:
    return (worker.result_of(worker.trial_of(the_study, number)) or {}).get(oof.KEY)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tables", default="", help="comma-separated (default: every folder)")
    parser.add_argument("--rows", nargs="*", default=[], help="bench/ensemble.py's printed rows")
    args = parser.parse_args(argv)
    refs = _references(args.rows)
    folders = sorted(p for p in ROOT_OUT.glob("*-split*") if (p / "sweep" / "ensemble.json").exists())
    if args.tables:
        wanted = set(args.tables.split(","))
        folders = [p for p in folders if p.name.rsplit("-split", 1)[0] in wanted]
    print(f"load average at start: {os.getloadavg()}", flush=True)
    print(
        "| table | split | greedy | bagged | best trial | best reference "
        "| members greedy / bagged | OOF MSE greedy / bagged / best |"
    )
    print("|---|---|---:|---:|---:|---:|---|---|", flush=True)
    rows = []
    for folder in folders:
        table, split = folder.name.rsplit("-split", 1)
        row = measure(folder)
        ref = refs.get((table, int(split)))
        rows.append({**row, "ref": ref})
        oof = row["oof"]
        print(
            f"| {table} | {split} | {row['plain']:.4f} | {row['bagged']:.4f} | {row['best']:.4f} | "
            f"{'-' if ref is None else f'{ref:.4f}'} | {row['plain_members']} / {row['bagged_members']} | "
            f"{oof[0]:.4g} / {oof[1]:.4g} / {oof[2]:.4g} |",  # type: ignore[index]
            flush=True,
        )
    diff = np.array([r["bagged"] - r["plain"] for r in rows])  # type: ignore[operator]
    print(
        f"\nbagged - greedy: mean {diff.mean():+.4f} (se {diff.std(ddof=1) / np.sqrt(len(diff)):.4f}), "
        f"ahead on {int((diff > 0).sum())} of {len(diff)}"
    )
    for rule in ("plain", "bagged", "best"):
        gaps = [r[rule] - r["ref"] for r in rows if r["ref"] is not None]  # type: ignore[operator]
        if gaps:
            print(f"{rule} - best reference: mean {np.mean(gaps):+.4f} over {len(gaps)} splits")
    print(f"load average at end: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
