"""`mse-train init`'s choice of starter model: a race of the real candidates on the table.

The rule (the README's "The starter model"):
- fewer than MIN_ROWS rows: a linear model (too few rows to race, or to fit more);
- a file over CHECK_MAX_BYTES: an MLP without numeric embeddings, which can stream;
- else the race (race.py): the linear model (L-BFGS, with the L2 penalty ridge's
  leave-one-out error picks), the MLP with piecewise-linear numeric embeddings and, on
  tables of at most TABM_MOST_ROWS rows, a small TabM with the same embeddings, each
  written as init would write it and scored by 5-fold CV within `budget` seconds (the
  networks with the batches of a table as large as the raced rows; the linear model on
  all of each fold's training rows, as `run` trains it). The network with the higher
  mean CV R² races the linear model; a candidate that did not finish cannot win. TabM,
  when it finished, replaces the MLP in that choice: the MLP races as its stand-in, should
  the budget cut TabM. The linear model wins only when its CV error (1 - R²) is below the
  network's by more than LINEAR_EDGE of it: CV understates the network that `run` trains
  (its bags, and the rows a fold leaves out, help a network more). If none finished, the
  MLP, as `--quick` writes it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from mse_train import runtime
from mse_train.config import loading, yamlio
from mse_train.config.schema import Config
from mse_train.config.starter import BAG_MOST_ROWS, BAGS, MLP, TABM_K, Choice
from mse_train.data import prepare
from mse_train.errors import UserError
from mse_train.selection import race
from mse_train.training import ridge

CHECK_MAX_BYTES = 256 << 20  # a larger file is not read by init (it may need streaming)
MIN_ROWS = 20  # fewer rows: no race (5 folds of 4 rows say nothing); the starter is linear
TABM_MOST_ROWS = 600  # TabM races on tables up to this many rows: its 5 unpacked folds took 9-28 s on
# 157-410 rows and were cut by the 60 s budget on 772 (bench/quality_results.md, "TabM")
CANDIDATES = {  # what the comments call each candidate
    "linear": "linear, L-BFGS (ridge)",
    "mlp": "MLP, piecewise-linear embedding",
    "tabm": f"TabM ({TABM_K} MLPs in one), piecewise-linear",
}
RACED_AS = {"linear": "a linear model", "mlp": "an MLP", "tabm": "TabM"}  # init's line on stderr
LINEAR_EDGE = 0.1  # the linear model's CV error must be below the network's by this share of it:
# +0.002 mean test R² on 13 bench tables x 5 splits, and the share chosen on the other 12 for each
# table left out (bench/quality_results.md, "The linear model's edge")


def starter_model(
    render: Callable[[Choice], str],
    table: Path,
    config_path: Path,
    targets: Sequence[str],
    budget: float,
    say: Callable[[str], None] = lambda line: None,
) -> tuple[Choice, str | None]:
    """The model for the starter config of `table` (to be saved at `config_path`; `render`
    writes its text for a choice), and a note for the user when the table could not be read.
    The race takes at most `budget` seconds (`init --budget`); `say` hears one line before it."""
    size = table.stat().st_size
    if size > CHECK_MAX_BYTES:
        return (
            Choice(
                False,
                (
                    f"init did not read {table.name} ({size >> 20} MiB) to choose the model: with this",
                    "many rows an MLP has data to learn from. numeric_embedding: piecewise_linear often",
                    "fits better, but needs the table's arrays in memory (it cannot stream).",
                ),
                numeric_embedding="none",
            ),
            None,
        )

    def config(choice: Choice) -> Config:
        return loading.from_document(
            yamlio.parse(render(choice), str(config_path)), config_path.resolve().parent
        )

    cfg = config(MLP)
    try:
        loaded = prepare.load_training(cfg.data, list(targets))
    except UserError as exc:
        note = (
            f"init could not read the whole table to choose the model ({exc.summary}); "
            f"it wrote the MLP starter. `mse-train validate {config_path}` says what to fix."
        )
        return MLP, note
    n = loaded.table.n_rows
    if n < MIN_ROWS:
        why = (
            f"a linear model: {n} row{'s' if n != 1 else ''} are too few to learn more (or to race",
            f"models on: init races them on tables of {MIN_ROWS} rows or more).",
        )
        return Choice(True, why), None
    rows = race.sample(loaded, race.MAX_ROWS, cfg.seed)
    m = rows.table.n_rows
    linear = Choice(True, (), l2=ridge_l2(rows, cfg, n))
    # the networks race with the batches their config would have on the raced rows
    candidates = {"linear": linear, "mlp": dataclasses.replace(MLP, rows=m)}
    if n <= TABM_MOST_ROWS:  # small tables, where an MLP's own variance costs most
        candidates["tabm"] = dataclasses.replace(MLP, rows=m, network="tabm")
    named = [RACED_AS[name] for name in candidates]
    say(
        f"init: racing {', '.join(named[:-1])} and {named[-1]} by {race.FOLDS}-fold CV on "
        + (f"{m:,} of {n:,} rows" if m < n else f"{n:,} rows")
        + f", within {budget:g} s (--budget)"
    )
    runtime.use_threads(cfg.train.threads)
    device = runtime.resolve_device(cfg.train.device)
    raced = [(name, config(c)) for name, c in candidates.items()]
    entries = race.run(raced, rows, budget, device)
    # On small tables TabM, when it finished, stands for the networks: the MLP's score is one
    # network's, as noisy as the gap between them on a few hundred rows (README).
    stands_in = any(e.name == "tabm" and e.r2 is not None for e in entries)
    network = race.winner([e for e in entries if e.name != "linear" and not (stands_in and e.name == "mlp")])
    best, closer = _winner(next(e for e in entries if e.name == "linear"), network)
    head = (
        f"init's race: {race.FOLDS}-fold CV R² on "
        + (f"a seeded sample of {m:,} of the {n:,} rows" if m < n else f"all {n:,} rows")
        + f", within {budget:g} s:",
        *(_line(e, stands_in and e.name == "mlp") for e in entries),
    )
    bags = BAGS if n <= BAG_MOST_ROWS else 1  # for a network: what it gains shrinks with the rows
    if best is None:
        return Choice(False, (*head, *_verdict(None)), bags=bags), None
    chosen = candidates[best.name]
    reasons = (*head, *(_closer(network.name) if closer and network else ()), *_verdict(best.name))
    bags = 1 if chosen.linear else bags
    return Choice(chosen.linear, reasons, l2=chosen.l2, network=chosen.network, bags=bags), None


def _winner(linear: race.Entry, network: race.Entry | None) -> tuple[race.Entry | None, bool]:
    """The race's winner (None if neither finished), and whether the network won with a CV
    R² below the linear model's (within LINEAR_EDGE of its error)."""
    if linear.r2 is None or network is None or network.r2 is None:
        return (network if linear.r2 is None else linear), False
    if 1 - linear.r2 < (1 - network.r2) * (1 - LINEAR_EDGE):
        return linear, False
    return network, network.r2 < linear.r2


def _closer(network: str) -> tuple[str, ...]:
    return (
        f"The linear model scored higher, but its CV error (1 - R²) is not {LINEAR_EDGE:.0%} below",
        f"{RACED_AS[network]}'s, and CV understates the network `run` trains: its bags, and the",
        'rows each fold leaves out, help a network more (the README\'s "The starter model").',
    )


def ridge_l2(loaded: prepare.Loaded, cfg: Config, n: int) -> float:
    """`regularization.l2` for the linear model: ridge's penalty by leave-one-out error on
    `loaded` (preprocessed as `cfg.data` says), per element of the mean loss over the `n`
    rows `run` trains the linear starter on: all of the table's (it holds none out)."""
    whole = prepare.whole_table(loaded, cfg.data)
    y = whole.y.astype(np.float64).reshape(len(whole.y), -1)
    alpha = ridge.Ridge(whole.x.astype(np.float64), y).alpha
    return alpha / (max(n, 1) * y.shape[1])


def _line(entry: race.Entry, stand_in: bool = False) -> str:
    name = f"{CANDIDATES[entry.name]}{', folds packed' if entry.packed else ''}:"
    score = f"{entry.r2:.4f}" if entry.r2 is not None else entry.note
    aside = ", TabM's stand-in" if stand_in else ""
    return f"  {name:<52} {score} ({entry.seconds:.1f} s){aside}"


def _verdict(name: str | None) -> tuple[str, ...]:
    if name is None:
        return (
            "No candidate finished, so the MLP, as `init --quick` writes it. A longer",
            "`init --budget` lets the race finish.",
        )
    if name == "linear":
        return (
            "So the linear model, solved as ridge regression is (L-BFGS on all rows at once), with",
            "the L2 penalty that ridge's leave-one-out error picked. `init --quick` writes the MLP.",
        )
    if name == "tabm":
        return (
            f"So TabM: {TABM_K} MLPs in one network, each trained on its own loss, their predictions",
            "averaged, which steadies a network on few rows; numeric inputs embedded",
            "piecewise-linearly. On tables this small TabM, once it finished, races for the",
            'networks, and the MLP only stands in for it; the README\'s "The starter model" says why.',
        )
    return (
        "So the MLP, its numeric inputs embedded piecewise-linearly (bins from training-row",
        'quantiles). The README\'s "The starter model" says how the race runs.',
    )
