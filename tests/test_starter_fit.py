"""Every config `init` writes runs, and its checkpoint scores its own table's held-out rows.

The starter's data settings come from every row (data/prepare.py `survey`): IDs left out,
room for every category, and the forgiving policies for cells training never saw
(`unknown_category: ignore`, `non_numeric: missing`, `missing: mean`). `run`'s own
defaults stay strict, and their refusals name the key to change.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from mse_train.config import starter
from mse_train.data import stored

from conftest import write_config, write_csv

HEADER = ["name", "x", "zip", "cyl", "grp", "y"]
FAST = ("--set", "train.epochs=3", "--set", "output.plot=false")


def rows(n: int, zips: int, seed: int = 0) -> list[list[Any]]:
    """`name` unique per row (an ID), `zip` with `zips` categories, `cyl` small counts."""
    rng = np.random.default_rng(seed)
    out: list[list[Any]] = []
    for i in range(n):
        x, zip_code, cyl = float(rng.normal()), int(rng.integers(0, zips)), int(rng.choice([4, 6, 8]))
        y = 2 * x + 0.1 * cyl + 0.01 * zip_code + 0.1 * float(rng.normal())
        out.append([f"car {i:05d}", round(x, 4), f"z{zip_code}", cyl, "abc"[i % 3], round(y, 4)])
    return out


def split(tmp_path: Path, table: list[list[Any]], held: int = 40) -> tuple[Path, Path]:
    train = write_csv(tmp_path / "train.csv", HEADER, table[:-held])
    test = write_csv(tmp_path / "test.csv", HEADER, table[-held:])
    return train, test


def init_run_eval(cli: Any, tmp_path: Path, train: Path, test: Path, *extra: str) -> dict[str, Any]:
    """`init` then `run` then `eval` on the held-out rows, each exit code 0; the config written."""
    out = tmp_path / "starter.yaml"
    made = cli("init", train, "-t", "y", "-o", out, *extra)
    assert made.code == 0, made
    ran = cli("run", out, "-q", "-o", tmp_path / "run", *FAST)
    assert ran.code == 0, ran
    scored = cli("eval", tmp_path / "run" / "best.pt", test)
    assert scored.code == 0, scored
    written: dict[str, Any] = yaml.safe_load(out.read_text())
    return written


def test_a_category_only_in_the_held_out_rows(cli, tmp_path):
    table = rows(200, 5)
    table[-1][4] = "new"  # `grp` never has this value in training
    cfg = init_run_eval(cli, tmp_path, *split(tmp_path, table))
    assert cfg["data"]["unknown_category"] == "ignore"


def test_a_column_of_150_categories_stays_one_hot_with_room(cli, tmp_path):
    train, test = split(tmp_path, rows(1500, 150))
    cfg = init_run_eval(cli, tmp_path, train, test, "--quick")
    assert cfg["data"]["categorical_encoding"] == "onehot" and cfg["data"]["max_categories"] >= 151
    assert "`zip` has 150 values" in (tmp_path / "starter.yaml").read_text()


def test_more_categories_than_one_hot_should_take_are_embedded():
    assert "categorical_encoding: onehot" in starter._encoding({"a": 99})
    raised = starter._encoding({"a": 150, "b": 3})
    assert "max_categories: 200" in raised and "`a` has 150 values" in raised
    embedded = starter._encoding({"a": starter.ONEHOT_MOST})
    assert "categorical_encoding: embedding" in embedded


def test_a_word_in_a_numeric_column_of_the_eval_file(cli, tmp_path):
    table = rows(200, 5)
    table[-3][3] = "rotary"
    cfg = init_run_eval(cli, tmp_path, *split(tmp_path, table))
    assert cfg["data"]["non_numeric"] == "missing" and cfg["data"]["missing"] == "mean"
    predicted = cli("predict", tmp_path / "run" / "best.pt", tmp_path / "test.csv", "-o", tmp_path / "p.csv")
    assert predicted.code == 0, predicted
    assert "rotary" in (tmp_path / "p.csv").read_text()  # the row is predicted, its cell echoed
    # read as empty, but said: on stderr and in eval's drift, naming the column, place and word
    said = "`cyl`: 1 of 40 cell(s) hold words where training had numbers ("
    assert said + "row 38: 'rotary'); read as empty cells" in predicted.stderr
    scored = cli("eval", tmp_path / "run" / "best.pt", tmp_path / "test.csv", "--json")
    assert scored.code == 0 and said + "line 39: 'rotary')" in scored.stderr, scored
    drift = json.loads(scored.stdout)["drift"]
    assert {"column": "cyl", "kind": "words", "rows": 1, "of": 40, "examples": {"line 39": "rotary"}} in drift


def test_words_among_numbers_in_the_training_file_are_read_as_empty(cli, tmp_path):
    table = rows(200, 5)
    table[5][3] = "rotary"
    table[150][3] = "n/a?"
    cfg = init_run_eval(cli, tmp_path, *split(tmp_path, table))
    assert cfg["data"]["categorical"] == ["grp", "zip"]  # `cyl` is still a number
    assert "words among numbers in cyl (2 cells)" in (tmp_path / "starter.yaml").read_text()


def test_an_id_column_is_left_out_with_a_comment(cli, tmp_path):
    table = rows(200, 5)
    for i, row in enumerate(table):
        row[:0] = [i + 1, ""]  # a row counter, numbers this time; a column empty in every row
    header = ["row", "note", *HEADER]
    train = write_csv(tmp_path / "train.csv", header, table[:-40])
    test = write_csv(tmp_path / "test.csv", header, table[-40:])
    cfg = init_run_eval(cli, tmp_path, train, test)
    assert cfg["data"]["features"] == ["x", "zip", "cyl", "grp"]
    assert (
        "# left out: row, name: a different value in each of the 160 rows"
        in (tmp_path / "starter.yaml").read_text()
    )
    assert "# left out: note: empty in every row" in (tmp_path / "starter.yaml").read_text()


def hand_written(tmp_path: Path, train: Path, **data: Any) -> Path:
    config = {"data": {"train": str(train), "target": "y", "features": ["x", "zip", "cyl", "grp"], **data}}
    config["train"] = {"epochs": 2, "batch_size": 32}
    config["output"] = {"plot": False}
    return write_config(tmp_path / "hand.yaml", config)


def test_strict_defaults_still_refuse_many_categories_naming_the_keys(cli, tmp_path):
    train, _ = split(tmp_path, rows(1500, 150))
    result = cli("run", hand_written(tmp_path, train), "-q", "-o", tmp_path / "run")
    assert result.code == 2 and "data.max_categories" in result.stderr and "Traceback" not in result.stderr
    assert "data.categorical_encoding: embedding" in result.stderr


@pytest.mark.parametrize("streamed", [False, True])
def test_strict_defaults_refuse_a_word_at_eval_and_the_policy_reads_it_as_empty(cli, tmp_path, streamed):
    table = rows(200, 5)
    table[-3][3] = "rotary"
    train, test = split(tmp_path, table)
    budget = {"memory_budget": "1KiB"} if streamed else {}
    strict = hand_written(tmp_path, train, **budget)
    assert cli("run", strict, "-q", "-o", tmp_path / "strict").code == 0
    refused = cli("eval", tmp_path / "strict" / "best.pt", test)
    assert refused.code == 2 and "data.non_numeric: missing" in refused.stderr, refused
    assert "rotary" in refused.stderr and "cyl" in refused.stderr
    kind = hand_written(tmp_path, train, non_numeric="missing", missing="mean", **budget)
    ran = cli("run", kind, "-o", tmp_path / "kind")
    assert ran.code == 0, ran
    assert ("streams it from the data cache" in ran.stdout + ran.stderr) == streamed
    scored = cli("eval", tmp_path / "kind" / "best.pt", test, "--json")
    assert scored.code == 0, scored
    # read as empty, and said, whether eval reads the file whole or a block at a time
    assert ("scored a block at a time" in scored.stderr) == streamed, scored.stderr
    drift = json.loads(scored.stdout)["drift"]
    assert {"column": "cyl", "kind": "words", "rows": 1, "of": 40, "examples": {"line 39": "rotary"}} in drift


def test_strict_run_refuses_a_word_in_the_training_file_naming_the_key(cli, tmp_path):
    table = rows(200, 5)
    table[5][3] = "rotary"
    train, _ = split(tmp_path, table)
    result = cli("run", hand_written(tmp_path, train), "-q", "-o", tmp_path / "run")
    assert result.code == 2 and "line 7: 'rotary'" in result.stderr, result
    assert "data.non_numeric: missing" in result.stderr


def test_a_stored_non_numeric_policy_is_checked():
    base = {
        "features": ["x"],
        "missing": "error",
        "unknown_category": "error",
        "numeric": [{"name": "x", "mean": 0.0, "std": 1.0, "fill": None}],
        "categorical": [],
        "targets": [{"name": "y", "mean": 0.0, "std": 1.0}],
    }
    assert stored.problems(base) == []  # written before the key existed: strict
    assert stored.problems({**base, "non_numeric": "missing"}) == []
    assert (
        "`preprocess.non_numeric` must be one of error, missing"
        in stored.problems({**base, "non_numeric": "maybe"})[0]
    )


# ------------------------------------------------ a target that is not numbers
@pytest.mark.parametrize(
    ("cell", "hint"),
    [
        (lambda y: f"${y * 1000:,.0f}", "currency signs, % or thousands separators"),
        (lambda y: f"{y:.2f}".replace(".", ","), "decimal commas"),
        (lambda y: "high" if y > 0 else "low", "write plain numbers there, or drop those rows"),
    ],
)
def test_init_refuses_a_target_of_words_naming_it_and_how_to_write_it(cli, tmp_path, cell, hint):
    """No setting reads a target's words (a row without one teaches nothing): `init` writes no
    config that `run` would refuse, and `run` of a config that reads stray words as empty
    still names the target's cells, not "no rows left"."""
    table = [[r[1], r[3], cell(r[5] + 100)] for r in rows(60, 3)]
    train = write_csv(tmp_path / "train.csv", ["x", "cyl", "y"], table)
    out = tmp_path / "starter.yaml"
    made = cli("init", train, "-t", "y", "-o", out)
    assert made.code == 2, made
    assert "column `y`: not a number at line 2" in made.stderr and hint in made.stderr
    assert "Traceback" not in made.stderr and not out.exists()
    cfg = write_config(
        tmp_path / "loose.yaml",
        {"data": {"train": str(train), "target": "y", "non_numeric": "missing"}, "train": {"epochs": 2}},
    )
    ran = cli("run", cfg, "-o", tmp_path / "run")
    assert ran.code == 2 and "column `y`: not a number at line 2" in ran.stderr, ran
    assert "no rows left" not in ran.stderr


@pytest.mark.parametrize("streamed", [False, True])
def test_a_word_in_the_target_of_data_val_or_an_eval_file_is_an_error_under_the_policy(
    cli, tmp_path, streamed
):
    """`data.non_numeric: missing` reads a feature's stray words as empty, never a target's:
    in `data.val` and in the file `eval` scores, as in the training file, the word is named
    (before, the row was dropped as one "with an empty target")."""
    table = rows(200, 5)
    table[-3][3] = "rotary"  # a feature's word: read as empty
    table[-5][5] = "unknown"  # a target's word: line 37 of the held-out file
    train, test = split(tmp_path, table)
    budget = {"memory_budget": "1KiB"} if streamed else {}
    kind = hand_written(tmp_path, train, non_numeric="missing", missing="mean", **budget)
    assert cli("run", kind, "-q", "-o", tmp_path / "run").code == 0
    scored = cli("eval", tmp_path / "run" / "best.pt", test)
    assert scored.code == 2, scored
    assert "column `y`: not a number at line 37: 'unknown'" in scored.stderr, scored.stderr
    assert "write plain numbers there, or drop those rows" in scored.stderr and "cyl" not in scored.stderr
    with_val = hand_written(tmp_path, train, non_numeric="missing", missing="mean", val=str(test), **budget)
    ran = cli("run", with_val, "-q", "-o", tmp_path / "val")
    assert ran.code == 2 and "column `y`: not a number at line 37: 'unknown'" in ran.stderr, ran
    assert "empty target" not in ran.stderr and "Traceback" not in ran.stderr


def test_a_features_stray_words_still_read_as_empty_beside_a_numeric_target(cli, tmp_path):
    table = rows(80, 3)
    table[5][3] = "rotary"  # among `cyl`'s counts
    cfg = init_run_eval(cli, tmp_path, *split(tmp_path, table))
    assert cfg["data"]["non_numeric"] == "missing"


# ------------------------------------------------ columns with no name
@pytest.mark.parametrize("layout", ["pandas index", "spreadsheet"])
def test_columns_with_no_name_are_left_out_and_said(cli, tmp_path, layout):
    """`DataFrame.to_csv()` writes its index as a first column with no name; a spreadsheet
    leaves empty columns at the end of each row (`x,y,,`). init leaves them out, says so, and
    the config it writes runs and scores its held-out rows (which have them too)."""
    table = rows(120, 3)
    header = ["name", "x", "zip", "cyl", "grp", "y"]
    if layout == "pandas index":
        header, table = ["", *header], [[i, *row] for i, row in enumerate(table)]
        said = "left out column(s) 1: no name in the header"
    else:
        header, table = [*header, "", ""], [[*row, "", ""] for row in table]
        said = "left out column(s) 7, 8: no name in the header"
    train = write_csv(tmp_path / "train.csv", header, table[:-30])
    test = write_csv(tmp_path / "test.csv", header, table[-30:])
    out = tmp_path / "starter.yaml"
    made = cli("init", train, "-t", "y", "-o", out)
    assert made.code == 0 and said in made.stderr, made
    cfg = yaml.safe_load(out.read_text())
    assert "" not in cfg["data"]["features"] and "x" in cfg["data"]["features"]
    assert cli("run", out, "-q", "-o", tmp_path / "run", *FAST).code == 0
    for command in (
        ("eval", tmp_path / "run" / "best.pt", test),
        ("predict", tmp_path / "run" / "best.pt", test),
    ):
        done = cli(*command)
        assert done.code == 0, done


# ------------------------------------------------ text that is numbers or dates
def test_init_says_which_text_columns_hold_formatted_numbers_or_dates(cli, tmp_path):
    """Read as categories (or left out as IDs), such columns are lost as quantities: init
    says which, with one of their values, on stderr and in the config's comments."""
    rng = np.random.default_rng(0)
    table = []
    for i in range(120):
        income, day = float(rng.uniform(500, 50_000)), int(rng.integers(0, 700))
        table.append(
            [f"{income:,.0f}", f"2022-{1 + day % 12:02d}-{1 + day % 28:02d}", i % 7, income / 1e4 + day / 100]
        )
    train = write_csv(tmp_path / "train.csv", ["income", "sold", "grp", "y"], table)
    out = tmp_path / "starter.yaml"
    made = cli("init", train, "-t", "y", "-o", out, "--quick")
    assert made.code == 0, made
    assert "`income` holds numbers with signs or separators (" in made.stderr
    assert "`sold` holds dates or times ('2022-" in made.stderr
    assert "`grp`" not in made.stderr  # integer codes: numbers already
    written = out.read_text()
    assert "# `income` holds numbers" in written and "# `sold` holds dates" in written


def test_init_names_a_target_value_far_from_all_the_others_and_not_a_heavy_tail(cli, tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=200)
    for name, y, said in [
        ("slip", np.where(np.arange(200) == 7, 1e9, 2 * x), "data row 8: 1e+09"),
        ("incomes", np.exp(1.5 * rng.normal(size=200)), None),  # lognormal: a real heavy tail
    ]:
        train = write_csv(tmp_path / f"{name}.csv", ["x", "y"], [[a, b] for a, b in zip(x, y, strict=True)])
        made = cli("init", train, "-t", "y", "-o", tmp_path / f"{name}.yaml", "--quick")
        assert made.code == 0, made
        if said:
            assert (
                "`y` has value(s) over 1000 median absolute deviations from its median (" + said
                in made.stderr
            )
        else:
            assert "median absolute deviations" not in made.stderr


def test_init_says_a_target_of_one_value_has_nothing_to_learn(cli, tmp_path):
    train = write_csv(tmp_path / "const.csv", ["x", "y"], [[i, 3] for i in range(40)])
    made = cli("init", train, "-t", "y", "-o", tmp_path / "const.yaml", "--quick")
    assert made.code == 0, made
    assert "`y` is 3 in every row: there is nothing to learn" in made.stderr


def test_eval_json_says_on_stderr_which_rows_it_did_not_score(cli, tmp_path):
    table = rows(120, 3)
    train, test = split(tmp_path, table)
    lines = test.read_text().splitlines()
    lines[3] = ",".join([*lines[3].split(",")[:-1], ""])  # a held-out row without its target
    test.write_text("\n".join(lines) + "\n")
    init_run_eval(cli, tmp_path, train, train)
    scored = cli("eval", tmp_path / "run" / "best.pt", test, "--json")
    assert scored.code == 0, scored
    assert json.loads(scored.stdout)["n"] == 39
    assert "test.csv: dropped 1 row(s) with an empty target" in scored.stderr
