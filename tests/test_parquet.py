"""Parquet and .csv.gz input: the same table gives the same results as a CSV; bad files
get a message naming the file, the column and the row, exit 2."""

from __future__ import annotations

import csv
import gzip
import re
import sys
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import linear_rows, write_config, write_csv


def _columns(n: int = 120, seed: int = 0) -> dict[str, list[Any]]:
    """Three numeric features, a text category and a target, as Python lists."""
    header, values = linear_rows(n, seed=seed)
    values = values.round(6)
    rng = np.random.default_rng(seed)
    cols = {name: values[:, i].tolist() for i, name in enumerate(header)}
    cols["c"] = rng.choice(["red", "green", "blue"], n).tolist()
    cols["y"] = [
        y + {"red": 1.0, "green": 0.0, "blue": -1.0}[c] for y, c in zip(cols["y"], cols["c"], strict=True)
    ]
    return cols


def _as_csv(path, cols: dict[str, list[Any]]):
    names = list(cols)
    rows = [["" if cols[n][i] is None else cols[n][i] for n in names] for i in range(len(cols[names[0]]))]
    return write_csv(path, names, rows)


def _as_parquet(path, cols: dict[str, list[Any]], row_group_size: int = 50, **types):
    arrays = {n: pa.array(v, type=types.get(n)) for n, v in cols.items()}
    pq.write_table(pa.table(arrays), path, row_group_size=row_group_size)
    return path


def _config(tmp_path, train, name: str, **data):
    return write_config(
        tmp_path / f"{name}.yaml",
        {
            "data": {"train": str(train), "target": "y", **data},
            "optimizer": {"name": "adam", "lr": 0.05},
            "train": {"epochs": 4},
            "output": {"dir": str(tmp_path / name), "plot": False},
        },
    )


def _gzip(path, text_path):
    path.write_bytes(gzip.compress(text_path.read_bytes()))
    return path


@pytest.fixture
def three(tmp_path):
    """One table as .csv, .csv.gz and .parquet (several row groups)."""
    cols = _columns()
    csv_path = _as_csv(tmp_path / "t.csv", cols)
    return {
        "csv": csv_path,
        "gz": _gzip(tmp_path / "t.csv.gz", csv_path),
        "parquet": _as_parquet(tmp_path / "t.parquet", cols),
    }


def _losses(path) -> list[str]:
    """metrics.csv without its wall-clock column."""
    lines = path.read_text().splitlines()
    cut = lines[0].split(",").index("seconds") if "seconds" in lines[0] else None
    return [",".join(f for i, f in enumerate(line.split(",")) if i != cut) for line in lines]


def test_same_table_same_results_in_every_format(cli, tmp_path, three):
    losses, evals, preds = {}, {}, {}
    for kind, path in three.items():
        cfg = _config(tmp_path, path, f"run_{kind}")
        assert cli("validate", cfg).code == 0
        result = cli("run", cfg, "-q")
        assert result.code == 0, result
        losses[kind] = _losses(tmp_path / f"run_{kind}" / "metrics.csv")
        # every checkpoint scored on every format: identical numbers
        ckpt = tmp_path / "run_csv" / "best.pt"
        result = cli("eval", ckpt, path, "--json")
        assert result.code == 0, result
        evals[kind] = result.stdout
        out = tmp_path / f"pred_{kind}.csv"
        result = cli("predict", ckpt, path, "-o", out)
        assert result.code == 0, result
        preds[kind] = out.read_text()
    assert losses["csv"] == losses["gz"] == losses["parquet"]
    assert len(losses["csv"]) == 5  # header and 4 epochs
    assert evals["csv"] == evals["gz"] == evals["parquet"]
    assert preds["csv"] == preds["gz"] == preds["parquet"]
    assert preds["csv"].splitlines()[0] == "x0,x1,x2,y,c,y_pred"


def test_explain_reads_parquet(cli, tmp_path, three):
    assert cli("run", _config(tmp_path, three["csv"], "r"), "-q").code == 0
    results = [cli("explain", tmp_path / "r" / "best.pt", three[k], "--json").stdout for k in three]
    assert results[0] == results[1] == results[2] and '"c"' in results[0]


def test_init_writes_the_same_working_config(cli, tmp_path, three):
    texts = {}
    for kind, path in three.items():
        out = tmp_path / f"init_{kind}.yaml"
        result = cli("init", path, "--target", "y", "-o", out)
        assert result.code == 0, result
        text = out.read_text().replace(path.name, "TABLE").replace(out.stem, "OUT")
        texts[kind] = re.sub(r"\([0-9.]+ s\)", "(SECONDS)", text)  # the race's times vary
        assert cli("validate", out).code == 0
        ran = cli("run", out, "-q", "--set", "train.epochs=2", "-o", tmp_path / f"ran_{kind}")
        assert ran.code == 0, ran
    assert texts["csv"] == texts["gz"] == texts["parquet"]
    assert 'categorical: ["c"]' in texts["parquet"]


def test_a_bagged_run_reads_every_format_alike(cli, tmp_path, three):
    """A bagged run holds its rows in memory: a Parquet footer's row count and a .gz file's
    decompressed size show that they fit (their file sizes bound nothing), as a CSV's size does."""
    losses = {}
    for kind, path in three.items():
        cfg = _config(tmp_path, path, f"bag_{kind}", val_fraction=0.25)
        result = cli("run", cfg, "-q", "--set", "train.bags=3")
        assert result.code == 0, result
        losses[kind] = _losses(tmp_path / f"bag_{kind}" / "metrics.csv")
    assert losses["csv"] == losses["gz"] == losses["parquet"]


@pytest.mark.parametrize("kind", ["csv", "gz", "parquet"])
def test_a_bagged_run_of_a_table_beyond_the_memory_budget_is_refused_in_every_format(
    cli, tmp_path, three, kind
):
    cfg = _config(tmp_path, three[kind], f"b_{kind}", memory_budget="1KB", val_fraction=0.25)
    result = cli("run", cfg, "--set", "train.bags=3")
    assert result.code == 2, result
    assert "may need more memory than `data.memory_budget`" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / f"b_{kind}" / "best.pt").exists()


def test_only_needed_columns_are_read(cli, tmp_path):
    cols = _columns()
    cols["when"] = [[1, 2]] * len(cols["y"])  # a list column: unreadable, but not used
    path = _as_parquet(tmp_path / "t.parquet", cols)
    result = cli("run", _config(tmp_path, path, "r", features=["x0", "x1", "c"]), "-q")
    assert result.code == 0, result
    # predict writes every input column back, the unused one included
    out = tmp_path / "p.csv"
    assert cli("predict", tmp_path / "r" / "best.pt", path, "-o", out).code == 0
    rows = list(csv.reader(out.read_text().splitlines()))
    assert rows[0][5] == "when" and rows[1][5] == "[1, 2]"


def test_a_nested_column_used_as_a_feature_is_named(cli, tmp_path):
    cols = _columns()
    cols["when"] = [[1, 2]] * len(cols["y"])
    path = _as_parquet(tmp_path / "t.parquet", cols)
    result = cli("run", _config(tmp_path, path, "r"), "-q")
    assert result.code == 2, result
    assert "column `when`: Parquet type `list<" in result.stderr
    assert "cast `when`" in result.stderr and "Traceback" not in result.stderr
    # init leaves it out so that the starter config works
    out = tmp_path / "init.yaml"
    result = cli("init", path, "-t", "y", "-o", out)
    assert result.code == 0 and "left out column `when`" in result.stderr
    assert cli("validate", out).code == 0


def test_dictionary_encoded_strings_are_categories(cli, tmp_path, three):
    cols = _columns()
    path = tmp_path / "d.parquet"
    arrays = {n: pa.array(v) for n, v in cols.items()}
    arrays["c"] = pa.array(cols["c"]).dictionary_encode()
    pq.write_table(pa.table(arrays), path)
    assert cli("run", _config(tmp_path, three["csv"], "a"), "-q").code == 0
    assert cli("run", _config(tmp_path, path, "b"), "-q").code == 0
    assert _losses(tmp_path / "a" / "metrics.csv") == _losses(tmp_path / "b" / "metrics.csv")


def test_numeric_codes_listed_as_categorical_match_csv(cli, tmp_path):
    cols = _columns()
    cols["code"] = [i % 4 for i in range(len(cols["y"]))]
    csv_path = _as_csv(tmp_path / "t.csv", cols)
    pq_path = _as_parquet(tmp_path / "t.parquet", cols)
    for name, path in (("a", csv_path), ("b", pq_path)):
        assert cli("run", _config(tmp_path, path, name, categorical=["code"]), "-q").code == 0
    assert _losses(tmp_path / "a" / "metrics.csv") == _losses(tmp_path / "b" / "metrics.csv")
    result = cli("eval", tmp_path / "a" / "best.pt", pq_path, "--json")
    assert (
        result.code == 0
        and result.stdout == cli("eval", tmp_path / "a" / "best.pt", csv_path, "--json").stdout
    )


def _with_gaps(tmp_path):
    cols = _columns()
    cols["x1"][7] = None  # null in row 8 (group 0)
    cols["x2"][61] = float("nan")  # NaN is empty too: row 62, group 1
    cols["c"][99] = None
    return _as_parquet(tmp_path / "g.parquet", cols), _as_csv(tmp_path / "g.csv", cols)


def test_nulls_under_missing_error_name_column_row_and_group(cli, tmp_path):
    path, _ = _with_gaps(tmp_path)
    result = cli("run", _config(tmp_path, path, "r"), "-q")
    assert result.code == 2, result
    assert "`x1` (feature): 1 empty cell(s), at row(s) 8 (row group 0)" in result.stderr
    assert "`x2` (feature): 1 empty cell(s), at row(s) 62 (row group 1)" in result.stderr
    assert "`c` (feature): 1 empty cell(s), at row(s) 100 (row group 1)" in result.stderr


@pytest.mark.parametrize("policy", ["mean", "drop"])
def test_nulls_under_mean_and_drop_match_csv(cli, tmp_path, policy):
    pq_path, csv_path = _with_gaps(tmp_path)
    for name, path in (("a", csv_path), ("b", pq_path)):
        result = cli("run", _config(tmp_path, path, name, missing=policy), "-q")
        assert result.code == 0, result
    assert _losses(tmp_path / "a" / "metrics.csv") == _losses(tmp_path / "b" / "metrics.csv")


def test_infinite_and_beyond_float32_values_are_named(cli, tmp_path):
    cols = _columns()
    cols["x0"][3] = float("inf")
    cols["x1"][70] = 1e300  # a float64 beyond float32's range
    path = _as_parquet(tmp_path / "t.parquet", cols)
    result = cli("run", _config(tmp_path, path, "r"), "-q")
    assert result.code == 2, result
    assert "column `x0`: 1 infinite value(s) at row(s) 4 (row group 0)" in result.stderr
    assert "column `x1`: 1 infinite value(s) at row(s) 71 (row group 1)" in result.stderr


@pytest.mark.parametrize(
    ("kind", "huge"), [(pa.int64(), 2**60), (pa.uint64(), 2**64 - 1), (pa.int64(), -(2**62) - 1)]
)
def test_integers_beyond_2_53_are_read_as_the_same_digits_in_a_csv(cli, tmp_path, kind, huge):
    """pyarrow's exact cast to float64 refused these (an internal error); a CSV reads them
    as the nearest float32, and so does Parquet now, with and without empty cells."""
    cols = _columns(n=60)
    codes: list[int | None] = [i % 7 for i in range(60)]
    codes[5], codes[9] = huge, None
    cols["x0"] = codes
    pq_path = _as_parquet(tmp_path / "t.parquet", cols, x0=kind)
    csv_path = _as_csv(tmp_path / "t.csv", cols)
    from mse_train.data import table

    read = {p.suffix: table.read(p, ["x0", "y"]).frame["x0"].to_numpy() for p in (pq_path, csv_path)}
    np.testing.assert_array_equal(read[".parquet"], read[".csv"])
    assert read[".parquet"][5] == np.float32(huge) and np.isnan(read[".parquet"][9])
    for name, path in (("a", csv_path), ("b", pq_path)):
        result = cli("run", _config(tmp_path, path, name, missing="mean", features=["x0", "x1"]), "-q")
        assert result.code == 0, result
    assert _losses(tmp_path / "a" / "metrics.csv") == _losses(tmp_path / "b" / "metrics.csv")
    out = tmp_path / "p.csv"
    result = cli("predict", tmp_path / "b" / "best.pt", pq_path, "-o", out)
    assert result.code == 0, result
    assert out.read_text().splitlines()[6].split(",")[0] == str(huge)  # written back as it is
    assert cli("init", pq_path, "-t", "y", "-o", tmp_path / "i.yaml", "--quick").code == 0


@pytest.mark.parametrize(
    ("array", "words"),
    [
        (pa.array([0] * 120, pa.timestamp("us")), "seconds since 1970"),
        (pa.array([0] * 120, pa.date32()), "seconds since 1970"),
        (pa.array([5] * 120, pa.duration("s")), "e.g. seconds"),
        (pa.array([{"a": 1}] * 120, pa.struct([("a", pa.int64())])), "cast `x2`"),
        (pa.array([b"x"] * 120, pa.binary()), "cast `x2`"),
    ],
    ids=["timestamp", "date", "duration", "struct", "binary"],
)
def test_a_column_of_a_type_that_is_not_a_number_or_text_is_named_with_the_fix(cli, tmp_path, array, words):
    cols: dict[str, Any] = _columns()
    arrays = {n: pa.array(v) for n, v in cols.items()}
    arrays["x2"] = array
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table(arrays), path)
    result = cli("run", _config(tmp_path, path, "r"), "-q")
    assert result.code == 2, result
    assert f"{path}, column `x2`: Parquet type `{array.type}`" in result.stderr
    assert words in result.stderr and "Traceback" not in result.stderr


def test_a_string_view_column_reads_as_a_string_column(cli, tmp_path, three):
    if not hasattr(pa, "string_view"):
        pytest.skip("pyarrow without string_view")
    cols = _columns()
    arrays = {n: pa.array(v) for n, v in cols.items()}
    arrays["c"] = pa.array(cols["c"], pa.string_view())
    path = tmp_path / "v.parquet"
    pq.write_table(pa.table(arrays), path, store_schema=True)
    assert cli("run", _config(tmp_path, three["csv"], "a"), "-q").code == 0
    result = cli("run", _config(tmp_path, path, "b"), "-q")
    assert result.code == 0, result
    assert _losses(tmp_path / "a" / "metrics.csv") == _losses(tmp_path / "b" / "metrics.csv")


def test_text_in_a_numeric_string_column_is_named(cli, tmp_path):
    cols = _columns()
    cols["y"] = [str(v) for v in cols["y"]]  # numbers stored as strings: read as a CSV reads them
    cols["y"][55] = "oops"
    path = _as_parquet(tmp_path / "t.parquet", cols)
    result = cli("run", _config(tmp_path, path, "r"), "-q")
    assert result.code == 2, result
    assert "column `y`: not a number at row 56 (row group 1): 'oops'" in result.stderr


def test_a_csv_named_parquet_is_named(cli, tmp_path, three):
    fake = tmp_path / "fake.parquet"
    fake.write_bytes(three["csv"].read_bytes())
    result = cli("run", _config(tmp_path, fake, "r"), "-q")
    assert result.code == 2, result
    assert f"{fake}: cannot be read as Parquet" in result.stderr and "name it .csv" in result.stderr


def test_a_truncated_csv_gz_is_named(cli, tmp_path, three):
    data = three["gz"].read_bytes()
    cut = tmp_path / "cut.csv.gz"
    cut.write_bytes(data[: len(data) // 2])
    result = cli("run", _config(tmp_path, cut, "r"), "-q")
    assert result.code == 2, result
    assert f"{cut}: the compressed data ends early" in result.stderr and "Traceback" not in result.stderr


def test_a_gz_that_is_not_gzip_is_named(cli, tmp_path, three):
    fake = tmp_path / "plain.csv.gz"
    fake.write_bytes(three["csv"].read_bytes())
    result = cli("run", _config(tmp_path, fake, "r"), "-q")
    assert result.code == 2, result
    assert f"{fake}: not valid gzip data" in result.stderr


def test_csv_gz_problems_keep_their_line_numbers(cli, tmp_path):
    cols = _columns()
    cols["x0"][40] = "abc"
    gz = _gzip(tmp_path / "t.csv.gz", _as_csv(tmp_path / "t.csv", cols))
    result = cli("run", _config(tmp_path, gz, "r"), "-q")
    assert result.code == 2 and "line 42: 'abc'" in result.stderr, result


def test_csv_gz_long_row_found_when_reading_some_columns(cli, tmp_path, three):
    text = three["csv"].read_text().splitlines()
    text[10] += ",9"
    gz = tmp_path / "long.csv.gz"
    gz.write_bytes(gzip.compress(("\n".join(text) + "\n").encode()))
    result = cli("run", _config(tmp_path, gz, "r", features=["x0"]), "-q")
    assert result.code == 2 and "line 11: 6 fields" in result.stderr, result


def test_missing_pyarrow_gives_the_install_hint(cli, tmp_path, three, monkeypatch):
    cfg = _config(tmp_path, three["parquet"], "r")
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # `import pyarrow` now raises ImportError
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    result = cli("run", cfg, "-q")
    assert result.code == 2, result
    assert "pip install 'mse-train[parquet]'" in result.stderr
    assert not (tmp_path / "r" / "last.pt").exists()
    result = cli("init", three["parquet"], "-t", "y", "-o", tmp_path / "i.yaml")
    assert result.code == 2 and "mse-train[parquet]" in result.stderr


def test_predict_refuses_an_output_named_parquet(cli, tmp_path, three):
    assert cli("run", _config(tmp_path, three["csv"], "r"), "-q").code == 0
    result = cli("predict", tmp_path / "r" / "best.pt", three["parquet"], "-o", tmp_path / "p.parquet")
    assert result.code == 2 and "predict writes CSV text" in result.stderr
    assert not (tmp_path / "p.parquet").exists()


def test_resume_sees_the_same_parquet_file_as_unchanged(cli, tmp_path, three):
    cfg = _config(tmp_path, three["parquet"], "r")
    assert cli("run", cfg, "-q").code == 0
    assert cli("run", cfg, "-q", "--resume", "--set", "train.epochs=5").code == 0
    # a changed file is refused: the digest covers Parquet bytes too
    cols = _columns(seed=1)
    _as_parquet(three["parquet"], cols)
    result = cli("run", cfg, "-q", "--resume", "--set", "train.epochs=6")
    assert result.code == 2 and "t.parquet" in result.stderr, result
