"""`mse-train init`'s choice of starter model: the table read as the starter config reads it,
then linearity.py's check, and comment lines that say what it found.

The rule (the README's "The starter model"):
- fewer than linearity.MIN_ROWS rows: a linear model (too few rows to check, or to fit more);
- a file over CHECK_MAX_BYTES: an MLP without numeric embeddings, which can stream;
- else the check: random ReLU features add at least linearity.MARGIN to ridge's CV R² ->
  an MLP with piecewise-linear numeric embeddings; less -> a linear model with the L2
  penalty ridge chose, solved by L-BFGS on the whole table.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from mse_train.config import loading, yamlio
from mse_train.config.starter import MLP, Choice
from mse_train.data import prepare
from mse_train.errors import UserError
from mse_train.selection import linearity

CHECK_MAX_BYTES = 256 << 20  # a larger file is not read by init (it may need streaming)


def starter_model(
    text: str, table: Path, config_path: Path, targets: Sequence[str]
) -> tuple[Choice, str | None]:
    """The model for the starter config `text` (to be saved at `config_path`) of `table`,
    and a note for the user when the table could not be looked at."""
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
    cfg = loading.from_document(yamlio.parse(text, str(config_path)), config_path.resolve().parent)
    try:
        rows = prepare.whole_table(cfg.data, list(targets))
    except UserError as exc:
        note = (
            f"init could not read the whole table to choose the model ({exc.summary}); "
            f"it wrote the MLP starter. `mse-train validate {config_path}` says what to fix."
        )
        return MLP, note
    n = len(rows.x)
    why: tuple[str, ...]
    if n < linearity.MIN_ROWS:
        why = (
            f"a linear model: {n} row{'s' if n != 1 else ''} are too few to learn more (or to check",
            f"for more: init checks tables of {linearity.MIN_ROWS} rows or more).",
        )
        return Choice(True, why), None
    found = linearity.check(rows.x, rows.y, cfg.seed)
    head = (
        f"init's check on {found.rows:,} rows: ridge regression scores 5-fold CV R² "
        f"{found.ridge_r2:.3f}, and {linearity.UNITS}",
        f"random ReLU features of the inputs add {found.gain:+.3f} to it (an MLP from "
        f"{linearity.MARGIN:+.2f}; see the README's",
        '"The starter model").',
    )
    if found.nonlinear:
        why = (
            *head,
            "So an MLP, its numeric inputs embedded piecewise-linearly (bins from training-row",
            "quantiles): on tables with sharp, threshold-like effects this beats the plain MLP by",
            "0.03-0.04 R² (bench/quality_results.md).",
        )
        return Choice(False, why), None
    fit_rows = n - round(n * cfg.data.val_fraction)  # the rows `run` will train on
    l2 = found.alpha / (fit_rows * rows.y.shape[1])  # ridge's penalty, per element of the mean loss
    why = (
        *head,
        "So a linear model, solved as ridge regression is (L-BFGS on all rows at once), with the",
        f"L2 penalty that ridge's leave-one-out error picked (alpha {found.alpha:.3g} / training rows).",
        "`mse-train init --quick` writes the MLP instead.",
    )
    return Choice(True, why, l2=l2), None
