"""`mse-train init`: a commented starter config for a table, every section present.

The table is looked at by the caller (data/ reads it); this module only writes text. The
comments that list choices are generated from the schema, so they name every option.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mse_train.config.schema import choices

MIN_ROWS_TO_HOLD_OUT = 10  # below this, a 20% validation split leaves too little of either


@dataclass(frozen=True)
class Choice:
    """The starter's model, as `init` chose it by a race on the table (selection/choose.py).

    `why` is written above the model section as comment lines. A linear choice is trained
    as ridge regression is solved: L-BFGS on the whole table, L2 penalty `l2`. Otherwise
    `network` is the network: "mlp", or "tabm" (TABM_*: a small TabM, 16 MLPs in one).
    """

    linear: bool
    why: tuple[str, ...]
    l2: float = 0.0
    numeric_embedding: str = "piecewise_linear"
    rows: int | None = None  # rows the network's batches are sized for (None: the table's)
    network: str = "mlp"
    bags: int = 1  # train.bags: the network's bags (init: BAGS on tables of up to BAG_MOST_ROWS rows)


@dataclass(frozen=True)
class Survey:
    """Every row of the table as `init` read it (data/prepare.py `survey`): what the data
    settings must allow so that `run`, and `eval` on rows held out of it, work unedited."""

    rows: int
    categories: dict[str, int]  # categorical feature -> distinct values (empty cells aside)
    ids: list[str]  # features with a different value in every row: text, or a row counter
    stray: dict[str, int]  # numeric feature -> cells that are not numbers (read as empty)
    empty: list[str]  # features or targets with empty cells anywhere
    blank: list[str] = field(default_factory=list)  # features with no value in any row
    # text feature -> ("numbers" written with signs or separators, or "dates"; one of its values)
    looks: dict[str, tuple[str, str]] = field(default_factory=dict)
    far: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # target -> (data row, value)
    constant: dict[str, float] = field(default_factory=dict)  # target -> its one value in every row


def far_out_targets(survey: Survey | None) -> list[str]:
    """A sentence per target with values far from all the others (`far`): the squared error
    follows them, so one typing slip can wreck the model."""
    if survey is None:
        return []
    out = [
        f"`{name}` is {value:g} in every row: there is nothing to learn (R² is undefined); "
        "check that it is the column to predict"
        for name, value in sorted(survey.constant.items())
    ]
    for name, found in sorted(survey.far.items()):
        out.append(
            f"`{name}` has value(s) over 1000 median absolute deviations from its median ("
            + ", ".join(f"data row {row}: {value:g}" for row, value in found)
            + "): check them; squared error follows them (a slip: drop the row; real: a log may learn better)"
        )
    return out


def text_that_is_not_words(survey: Survey | None, features: Sequence[str]) -> list[str]:
    """A sentence per text feature whose values are numbers in a format or dates (`looks`):
    read as categories (or left out as IDs), a model cannot use them as quantities."""
    if survey is None:
        return []
    out = []
    for name, (kind, example) in sorted(survey.looks.items()):
        how = "left out as an ID" if name in survey.ids or name not in features else "read as categories"
        if kind == "numbers":
            what = f"numbers with signs or separators ({example!r}), {how}; write plain numbers there"
        else:
            what = f"dates or times ({example!r}), {how}; add a column of numbers (days since, year, hour)"
        out.append(f"`{name}` holds {what} for a model to use it as a quantity")
    return out


MLP = Choice(False, ("an MLP: the default when the table has not been looked at",))
BAGS = 5  # the network starter's bags, each on its own validation rows (bench/quality_results.md)
BAG_MOST_ROWS = 10_000  # above: 1 (diamonds' 43k rows: 3.5x the time for +0.0006 R²)
TABM_K = 16  # the TabM starter's members (bench/quality_results.md, "TabM on small tables")
TABM_WIDTH = 128


def _options(key: str, limit: int = 0) -> str:
    names = choices(key)
    shown = names[:limit] if limit else names
    return " | ".join(shown) + (" | ..." if len(shown) < len(names) else "")


def render(
    csv_path: Path,
    features: Sequence[str],
    targets: list[str],
    text_columns: Sequence[str],
    empty_columns: Sequence[str],
    config_path: Path,
    delimiter: str = ",",
    rows: int | None = None,
    choice: Choice = MLP,
    survey: Survey | None = None,
) -> str:
    """The text of a starter config for `csv_path`, to be saved at `config_path`.

    `text_columns` hold text in their first rows (so they are categorical), and
    `empty_columns` hold empty cells there (so missing values get filled). `rows`, when
    known and below MIN_ROWS_TO_HOLD_OUT, turns the validation split off. `choice` is the
    model, with the reasons for it. `survey`, when init could read every row, sets what
    the first rows cannot tell: IDs left out, room for every category, stray words.
    """
    data = _data_section(list(features), text_columns, empty_columns, survey)
    train = os.path.relpath(csv_path.resolve(), config_path.resolve().parent)
    target = targets[0] if len(targets) == 1 else targets

    def flow(value: object) -> str:
        return json.dumps(value, ensure_ascii=False)  # JSON is YAML: quoting stays exact

    if rows is not None and rows < MIN_ROWS_TO_HOLD_OUT:
        val_fraction = (
            f"0.0           # only {rows} row{'s' if rows != 1 else ''}: too few to hold some out "
            "for validation"
        )
    elif choice.linear:  # solved, not stopped: every row fits it
        val_fraction = (
            "0.0           # none held out: L-BFGS solves the ridge problem on every row, and there is\n"
            "                              # no epoch to choose (intervals: leave-one-out residuals)"
        )
    else:
        val_fraction = "0.2           # hold out 20% of the rows to choose the best epoch"
    folds = 5 if rows is None or rows >= MIN_ROWS_TO_HOLD_OUT else (2 if rows >= 2 else 0)
    counted = survey.rows if survey is not None else None  # every row (`rows`: the first ones read)
    scored = "score each trial by K-fold CV; 0 = on the validation rows"
    uncounted = counted is None and folds == 5  # a table too large (or odd) to read whole here
    if uncounted or (counted is not None and counted > SWEEP_HOLDOUT_ROWS):
        folds = 0
        scored = "score each trial on the validation rows: plenty here, and 5x less work than 5 folds"
    return f"""\
# Starter config for {csv_path.name}, written by `mse-train init`.
# Every section is here with its default; change what you need, delete what you don't.
# Check it with `mse-train validate {config_path.name}`, train with `mse-train run {config_path.name}`.
# All keys: the README's config reference.
seed: 0                       # seeds init, shuffling, dropout and the validation split

data:
  train: {flow(train)}              # relative to this file's folder
  target: {flow(target)}
  features: {flow(data.features)}
  weight: null                # a column of per-row sample weights (not a feature); init picks none
{data.left_out}  categorical: {flow(data.categorical)}
{data.categorical_note}
{data.encoding}  val_fraction: {val_fraction}
  standardize: true           # z-score numeric features (and targets) on training rows
{data.policies}  delimiter: {flow(delimiter)}

{_model(choice)}
loss:
  reduction: mean             # {_options("loss.reduction")}

train:
{_epochs(choice)}
  {_batch_size(choice, choice.rows if choice.rows is not None else counted)}
{_bags(choice)}
  device: auto                # auto | cpu | cuda
{_early_stopping(choice)}

output:
  dir: {flow(f"runs/{config_path.stem}")}
  checkpoint_every: 0         # also write last.pt every N epochs (0 = only at the end)
  plot: true                  # loss.png
  tensorboard: false          # needs: pip install 'mse-train[tensorboard]'
  mlflow: false               # log to MLflow ($MLFLOW_TRACKING_URI); needs: pip install 'mse-train[mlflow]'
  mlflow_experiment: null     # null = this config's name

sweep:                        # what `mse-train sweep` searches; run and cv ignore it
  method: tpe                 # {_options("sweep.method")}
  trials: 20
  folds: {folds}                    # {scored}
  time_limit: {SWEEP_SECONDS}             # seconds for the whole sweep, the refit of the winner included:
                              # trials still training when only the refit's time is left stop
                              # and are kept as `cut`
  refit: true                 # retrain the winner (or the ensemble below) on all training rows
{_ensemble(choice, folds)}
  refit_seeds: {REFIT_SEEDS}              # > 1: the mean of that many trainings of each refit model, seeds
                              # apart (into .../ensemble/; 5 measured a wash against 1 on small tables)
  params:                     # a list = the choices; a mapping = a range; choice: {{its own keys}}
{_sweep_params(counted, choice)}
"""


ONEHOT_MOST = 1000  # more categories than this in a column: embeddings (see _encoding)


@dataclass(frozen=True)
class _Data:
    """The lines of the data section that depend on the table."""

    features: list[str]
    left_out: str
    categorical: list[str]
    categorical_note: str
    encoding: str
    policies: str


def _data_section(
    features: list[str], text_columns: Sequence[str], empty_columns: Sequence[str], survey: Survey | None
) -> _Data:
    """Settings that let `run` read every row, and `eval`/`predict` read rows it never saw.

    The starter is forgiving where `run`'s defaults are strict, as scikit-learn's
    OneHotEncoder(handle_unknown="ignore") is: an unseen category is encoded as all zeros,
    a word in a numeric column is read as an empty cell, and empty cells are filled.
    """
    left_out = ""
    if survey is not None:
        ids = [f for f in survey.ids if f in features]
        blank = [f for f in survey.blank if f in features]
        if ids and len(ids) + len(blank) < len(features):
            left_out = (
                f"  # left out: {', '.join(ids)}: a different value in each of the {survey.rows:,} rows,\n"
                "  # an ID (row number, name) a model cannot learn from; add it back if it is not\n"
            )
        else:
            ids = []
        if blank and len(ids) + len(blank) < len(features):
            left_out += f"  # left out: {', '.join(blank)}: empty in every row\n"
            ids = [*ids, *blank]
        features = [f for f in features if f not in ids]
        text = sorted(c for c in survey.categories if c in features)
        empty = sorted(set(survey.empty) - set(ids))
        where = "the table"
    else:
        text = sorted(set(text_columns) & set(features))
        empty = sorted(empty_columns)
        where = "its first rows"
    categorical_note = (
        f"  # these hold text, so they are categories: {', '.join(text)}"
        if text
        else "  # columns of integer codes to treat as categories, e.g. [zip_code]"
    )
    encoding = _encoding({c: n for c, n in (survey.categories if survey else {}).items() if c in text})
    filled = (
        f"  # empty cells in {where}: {', '.join(empty)}; {_options('data.missing')}\n"
        if empty
        else f"  # no empty cells in {where}; mean fills any in other files; {_options('data.missing')}\n"
    )
    stray = survey.stray if survey is not None else {}
    words = (
        "  # words among numbers in "
        + ", ".join(f"{c} ({n} cell{'s' if n != 1 else ''})" for c, n in sorted(stray.items()))
        + ": read as empty, then filled\n"
        if stray
        else ""
    )
    policies = (
        f"  missing: mean\n{filled}"
        "  unknown_category: ignore    # a category training never saw (as in held-out rows): all zeros;\n"
        "                              # error refuses the file instead\n"
        "  non_numeric: missing        # a word in a numeric column (`rotary` among numbers): an empty\n"
        f"                              # cell; error refuses the file instead\n{words}"
    )
    looks = text_that_is_not_words(survey, features)
    if looks:
        categorical_note += "".join(f"\n  # {sentence}" for sentence in looks)
    return _Data(features, left_out, text, categorical_note, encoding, policies)


def _encoding(categories: dict[str, int]) -> str:
    """`categorical_encoding` and `max_categories` lines that take every column's categories.

    One-hot stays up to ONEHOT_MOST categories: a linear model then learns one coefficient
    per category, as ridge regression on dummies does, and `cv`/`sweep` train one-hot configs
    packed as one stack (embeddings train one model at a time). Above that, one-hot inputs
    would outnumber the rest of the network many times over, and a learned embedding takes any
    number of categories in a few columns, for the linear model as for the MLP.
    """
    default = "  categorical_encoding: onehot  # " + _options("data.categorical_encoding") + "\n"
    # +1: under `missing: mean` each column also gets a `(missing)` category
    need = max(categories.values(), default=0) + 1
    if need <= 100:
        return default + "  max_categories: 100\n"
    widest = max(categories, key=lambda c: categories[c])
    if need <= ONEHOT_MOST:
        most = -(-need // 100) * 100
        return (
            default
            + f"  max_categories: {most:<14}# `{widest}` has {categories[widest]} values (+1: empty cells); "
            f"one-hot up to {ONEHOT_MOST}\n"
            "                              # keeps a coefficient per category and packed cv/sweep\n"
        )
    return (
        "  categorical_encoding: embedding  # "
        f"`{widest}` has {categories[widest]:,} values: one-hot would be that many inputs;\n"
        "                              # a learned vector per category takes any number\n"
        "  max_categories: 100         # applies to onehot only\n"
    )


def _model(choice: Choice) -> str:
    """The model, init, optimizer and regularization sections for `choice`."""
    why = "\n".join(f"# {line}" for line in choice.why)
    if choice.linear:
        model = f"""model:
  type: linear                # {_options("model")}"""
        optimizer = f"""optimizer:
  name: lbfgs                 # whole-table steps solve a linear model to convergence; {_options("optimizer")}
  lr: 1.0"""
        return _sections(why, model, optimizer, choice.l2)
    if choice.network == "tabm":
        model = f"""model:
  type: tabm                  # {_options("model")}
  k: {TABM_K:<24}# MLPs trained at once in one network, each on its own loss; predictions averaged
  sharing: tabm               # {_options("model.sharing")}
  width: {TABM_WIDTH:<20}# of each hidden layer
  blocks: 2
  activation: relu            # {_options("model.activation")}
  dropout: 0.1
  numeric_embedding: {choice.numeric_embedding}  # {_options("model.numeric_embedding")}"""
    else:
        model = f"""model:
  type: mlp                   # {_options("model")}
  hidden: [64, 64]
  activation: relu            # {_options("model.activation")}
  dropout: 0.0
  numeric_embedding: {choice.numeric_embedding}  # {_options("model.numeric_embedding")}"""
    optimizer = f"""optimizer:
  name: adam                  # {_options("optimizer")}
  lr: 0.001
  weight_decay: 0.0"""
    return _sections(why, model, optimizer, choice.l2)


def _sections(why: str, model: str, optimizer: str, l2: float) -> str:
    """The model, init, optimizer and regularization sections around `model` and `optimizer`."""
    return f"""{why}
{model}

init:
  scheme: default             # {_options("init", 4)}
  bias: default               # {_options("init.bias")}

{optimizer}

scheduler:
  name: none                  # {_options("scheduler")}

regularization:
  l1: 0.0                     # added to the loss: l1 * sum|w| over weights
  l2: {_number(l2):<24}# added to the loss: l2 * sum w^2 over weights
"""


MLP_EPOCHS = 200  # the MLP starter's epochs (and the sweep trials')
MLP_PATIENCE = 20  # and its early stopping's patience, on validation rows
LBFGS_EPOCHS = 20  # the linear starter's epochs: L-BFGS converged within 5 on 12 bench tables
LBFGS_PATIENCE = 3  # epochs without a lower training loss that end the linear starter's run


def _epochs(choice: Choice) -> str:
    if choice.linear:  # bench: housing 3, diabetes 2, salaries 4, caschool 5, penguins 3, mpg 5
        return (
            f"  epochs: {LBFGS_EPOCHS:<20}# L-BFGS (20 iterations an epoch) reached its final training "
            "loss\n                              # within 5 epochs on the bench tables; 4x that"
        )
    return f"  epochs: {MLP_EPOCHS}"


def _early_stopping(choice: Choice) -> str:
    if choice.linear:
        return (
            "  early_stopping:             # no validation rows: it watches the training loss\n"
            f"    patience: {LBFGS_PATIENCE:<16}# stop after {LBFGS_PATIENCE} epochs without a lower one: "
            "L-BFGS has converged\n"
            "    min_delta: 0.0"
        )
    return (
        "  early_stopping:\n"
        f"    patience: {MLP_PATIENCE:<16}# stop after {MLP_PATIENCE} epochs without a better val loss\n"
        "    min_delta: 0.0"
    )


def _bags(choice: Choice) -> str:
    if choice.linear:
        return "  bags: 1                     # a linear model solved on every row: nothing to bag"
    if choice.bags > 1:
        return (
            f"  bags: {choice.bags:<22}# {choice.bags} networks, each stopping on its own 20% of the rows "
            "(seeds\n"
            f"                              # seed..seed+{choice.bags - 1}); best.pt predicts their mean"
        )
    return (
        "  bags: 1                     # > 1: that many networks, each stopping on its own validation\n"
        f"                              # rows, best.pt their mean (init's race writes {BAGS} up to "
        f"{BAG_MOST_ROWS:,} rows)"
    )


def _batch_size(choice: Choice, rows: int | None) -> str:
    if choice.linear:
        return "batch_size: null            # all rows in each step, as L-BFGS needs"
    batch = mlp_batch_size(rows)
    if batch == SMALL_BATCH:
        return f"batch_size: {SMALL_BATCH}              # null = all rows in one batch"
    return (
        f"batch_size: {batch:<16}# {STEPS_PER_EPOCH}+ steps an epoch on these rows; "
        f"{SMALL_BATCH} on small tables\n"
        "                              # (null = all rows in one batch)"
    )


SMALL_BATCH = 64  # the MLP's batch size up to SMALL_BATCH * 2 * STEPS_PER_EPOCH fitted rows
STEPS_PER_EPOCH = 32  # larger tables: the batch doubles while an epoch keeps this many steps
LARGEST_BATCH = 256  # measured on diamonds (bench/time_to_quality_results.md): larger lost R²
VAL_SHARE = 0.2  # the starter's data.val_fraction


def mlp_batch_size(rows: int | None) -> int:
    """The MLP starter's batch size for a table of `rows` rows (None: not counted).

    Batches of SMALL_BATCH on small tables; on larger ones the batch doubles while an epoch
    of the fitted rows keeps STEPS_PER_EPOCH steps, up to LARGEST_BATCH, at the same Adam lr.
    On diamonds (34,522 fitted rows) batches of 256 reach the test R² of batches of 64 in
    about 0.6x the training time; 512 and 1024, even with lr scaled up, lost 0.003 on one
    seed of five (bench/time_to_quality_results.md)."""
    fitted = round((rows or 0) * (1 - VAL_SHARE))
    batch = SMALL_BATCH
    while batch * 2 * STEPS_PER_EPOCH <= fitted and batch < LARGEST_BATCH:
        batch *= 2
    return batch


ENSEMBLE = 20  # init's sweep.ensemble for a bagged network starter (bench/results.md, "A sweep's
# ensemble of bagged trials": +0.0038 test R² over the best trial's bagged refit, 24 of 34 splits)


def _ensemble(choice: Choice, folds: int) -> str:
    """The sweep's ensemble: on for a bagged network starter scored by K-fold CV (measured
    there); off for the linear starter and on tables too large to bag or to score by folds."""
    if not choice.linear and choice.bags > 1 and folds >= 2:
        return (
            f"  ensemble: {ENSEMBLE:<18}# greedy selection over the trials' out-of-fold predictions: "
            "the refit\n"
            "                              # trains the chosen trials (their bags) into .../ensemble/"
            "best.pt,\n"
            "                              # their weighted mean; 0 = the best trial alone, into best/"
        )
    return (
        "  ensemble: 0                 # > 0: greedy selection of that many steps over the trials' "
        "out-of-fold\n"
        "                              # predictions (needs folds >= 2), refit into .../ensemble/best.pt"
    )


SWEEP_SECONDS = 300  # init's sweep.time_limit (bench/sweep_budget.py measures what it buys)
REFIT_SEEDS = 1  # init's sweep.refit_seeds: 5 measured a wash against 1 (bench/results.md)
SWEEP_BATCH = 256  # every trial's batch above SWEEP_SMALL rows: fewer steps per epoch on large tables
SWEEP_SMALL = 4096  # up to this many rows, batches of 64 (a batch of 256 would be most of the table)
SWEEP_HOLDOUT_ROWS = 10_000  # above this many rows, trials are scored on the 20% validation rows


def _sweep_params(rows: int | None, choice: Choice = MLP) -> str:
    """The starter's search: every trial trains in a stack (packed), whatever the starter's
    model. Each model type brings its own optimizer settings, Adam for both: L-BFGS (the
    linear starter's solver) trains one model at a time and needs every row in each step.
    Two MLP widths: trials of one shape share a pack, and the packs of a batch of trials
    train one after another, so each shape more is a pack that the time limit may not reach.
    A TabM starter (small tables only) adds TabM trials, which do not pack (their folds
    train in processes side by side, training/apart.py): a search without them could end
    below the starter. `rows`: the table's (None: not counted, a
    large one). Under the linear starter, which holds no rows out, the trials hold out the
    MLP starter's share: Adam in batches needs validation rows to choose its epoch and stop
    early (the refit then trains on every row)."""
    batch = 64 if rows is not None and rows <= SWEEP_SMALL else SWEEP_BATCH
    tabm = choice.network == "tabm" and not choice.linear
    mlp_dropout = (
        "\n        model.dropout: [0.0]    # the TabM starter's dropout off: MLPs with it do not pack"
        if tabm
        else ""
    )
    tabm_branch = (
        """
      tabm:                   # no pack: its folds train in processes side by side
        optimizer.name: [adam]
        optimizer.lr: {low: 3.0e-4, high: 3.0e-3, log: true}"""
        if tabm
        else ""
    )
    comment = "both" if not tabm else "linear and MLP"
    held = (
        "\n    # the trials' own training, not the linear starter's (L-BFGS on every row): Adam needs"
        "\n    # validation rows to stop early, and epochs; the refit, like the starter, uses every row"
        f"\n    data.val_fraction: [{VAL_SHARE}]"
        f"\n    train.epochs: [{MLP_EPOCHS}]"
        f"\n    train.early_stopping.patience: [{MLP_PATIENCE}]"
        if choice.linear
        else ""
    )
    return f"""    model.type:               # each type with settings of its own: Adam in batches for
                              # {comment}, so trials train side by side (L-BFGS: one at a time)
      linear:
        optimizer.name: [adam]
        optimizer.lr: {{low: 1.0e-3, high: 0.3, log: true}}
      mlp:
        model.hidden: [[64, 64], [256, 256]]{mlp_dropout}
        optimizer.name: [adam]
        optimizer.lr: {{low: 1.0e-4, high: 1.0e-2, log: true}}{tabm_branch}
    regularization.l2: {{low: 1.0e-6, high: 1.0e-2, log: true}}
    train.batch_size: [{batch}]        # every trial's; trials of one shape share a pack{held}"""


def _number(value: float) -> str:
    """A float in two significant digits, written with a dot so that YAML 1.1 reads a float."""
    return "0.0" if value == 0 else f"{value:.1e}"
