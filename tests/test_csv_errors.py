"""Bad CSV input: a clear message naming file, line, column and value; exit 2; nothing lost."""

from __future__ import annotations

import pytest

from mse_train.data import csvscan

from conftest import write_config


def run_on(cli, tmp_path, text: str | bytes, *expected: str, target="y", extra_data=None, code=2):
    path = tmp_path / "data.csv"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    cfg = write_config(
        tmp_path / "cfg.yaml",
        {
            "data": {"train": str(path), "target": target, **(extra_data or {})},
            "train": {"epochs": 1},
            "output": {"dir": str(tmp_path / "out"), "plot": False},
        },
    )
    result = cli("run", cfg, "-q")
    assert result.code == code, result
    for fragment in expected:
        assert fragment in result.stderr, (fragment, result.stderr)
    if code == 2:
        assert "Traceback" not in result.stderr
        assert not (tmp_path / "out" / "last.pt").exists()
    return result


def test_missing_file(cli, tmp_path):
    cfg = write_config(tmp_path / "cfg.yaml", {"data": {"train": "nope.csv", "target": "y"}})
    result = cli("run", cfg)
    assert result.code == 2 and "nope.csv: file not found" in result.stderr


def test_zero_byte_file(cli, tmp_path):
    run_on(cli, tmp_path, "", "the file is empty (0 bytes)")


def test_header_without_rows(cli, tmp_path):
    run_on(cli, tmp_path, "x,y\n", "has a header but no data rows")


def test_short_row_is_an_error_not_nan(cli, tmp_path):
    run_on(cli, tmp_path, "a,b,y\n1,2,3\n4,5\n7,8,9\n", "do not have 3 fields", "line 3: 2 fields")


def test_long_row(cli, tmp_path):
    run_on(cli, tmp_path, "a,b,y\n1,2,3\n4,5,6,7\n", "do not have 3 fields", "line 3: 4 fields")


def test_long_row_when_only_some_columns_are_used(cli, tmp_path):
    run_on(cli, tmp_path, "a,b,y\n1,2,3\n4,5,6,7\n", "line 3: 4 fields", extra_data={"features": ["a"]})


def test_every_row_one_field_too_long(cli, tmp_path):
    # pandas would silently take the first column as an index here
    run_on(cli, tmp_path, "a,y\n1,2,3\n4,5,6\n", "do not have 2 fields", "line 2: 3 fields")


def test_non_numeric_cell_names_line_column_value(cli, tmp_path):
    rows = "".join(f"{i},{i * 2}\n" for i in range(20))
    run_on(cli, tmp_path, "x,y\n" + rows + "oops,5\n", "column `x`", "line 22: 'oops'", "data.categorical")


def test_non_numeric_target(cli, tmp_path):
    run_on(cli, tmp_path, "x,y\n1,2\n2,abc\n3,4\n", "column `y`", "line 3: 'abc'")


def test_empty_cells_are_counted_per_column(cli, tmp_path):
    result = run_on(cli, tmp_path, "a,b,y\n1,,3\n,NA,6\n7,8,NaN\n1,2,null\n", "empty cells")
    assert "`a` (feature): 1 empty cell(s), at line(s) 3" in result.stderr
    assert "`b` (feature): 2 empty cell(s), at line(s) 2, 3" in result.stderr
    assert "`y` (target): 2 empty cell(s), at line(s) 4, 5" in result.stderr
    assert "data.missing" in result.stderr


def test_infinite_values(cli, tmp_path):
    run_on(cli, tmp_path, "x,y\n1,2\ninf,3\n2,-Infinity\n", "infinite value", "column `x`", "line(s) 3")


def test_utf8_bom_on_the_header(cli, tmp_path):
    for index, text in enumerate(["\ufeffx,y\n1,2\n2,4\n3,6\n", "\ufeffy,x\n2,1\n4,2\n6,3\n"]):
        folder = tmp_path / str(index)
        folder.mkdir()
        run_on(cli, folder, text.encode(), target="y", code=0)
        assert (folder / "out" / "last.pt").is_file()


def test_not_utf8(cli, tmp_path):
    run_on(cli, tmp_path, b"x,y\n1,\xff\n", "not UTF-8")


def test_duplicate_column_names(cli, tmp_path):
    run_on(cli, tmp_path, "x,x,y\n1,2,3\n", "duplicate column names", "`x` is column 1 and column 2")


def test_configured_column_missing_suggests_closest(cli, tmp_path):
    run_on(
        cli,
        tmp_path,
        "price,size\n1,2\n",
        "`prices` (target) is not a column",
        "did you mean `price`?",
        target="prices",
    )
    run_on(
        cli,
        tmp_path,
        "price,size\n1,2\n",
        "`sise` (feature)",
        extra_data={"features": ["sise"]},
        target="price",
    )


def test_too_few_rows_for_the_validation_split(cli, tmp_path):
    run_on(cli, tmp_path, "x,y\n1,2\n2,4\n", "too few to hold out", extra_data={"val_fraction": 0.1})


def train_on(cli, tmp_path, table):
    """A finished 2-epoch run on `table` in tmp_path/out; returns its config."""
    cfg = write_config(
        tmp_path / "cfg.yaml",
        {
            "data": {"train": str(table), "target": "y"},
            "train": {"epochs": 2},
            "output": {"dir": str(tmp_path / "out"), "plot": False},
        },
    )
    assert cli("run", cfg, "-q").code == 0
    return cfg


def test_failed_run_leaves_previous_results_alone(cli, tmp_path):
    good = tmp_path / "good.csv"
    good.write_text("x,y\n1,2\n2,4\n3,6\n")
    cfg = train_on(cli, tmp_path, good)
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    good.write_text("x,y\n1,2\n2\n")
    result = cli("run", cfg, "-q", "--overwrite")
    assert result.code == 2
    after = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    assert after == before


def test_eval_csv_missing_a_trained_column(cli, tmp_path):
    good = tmp_path / "good.csv"
    good.write_text("a,b,y\n1,2,3\n2,3,5\n3,4,7\n")
    train_on(cli, tmp_path, good)
    (tmp_path / "other.csv").write_text("a,y\n1,3\n")
    result = cli("eval", tmp_path / "out" / "best.pt", tmp_path / "other.csv")
    assert result.code == 2
    assert "`b` (feature the model was trained on) is not a column" in result.stderr


def test_output_folder_that_cannot_be_written(cli, tmp_path):
    good = tmp_path / "good.csv"
    good.write_text("x,y\n1,2\n2,4\n")
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    cfg = write_config(
        tmp_path / "cfg.yaml",
        {
            "data": {"train": str(good), "target": "y"},
            "output": {"dir": str(blocker / "run")},
        },
    )
    result = cli("run", cfg)
    assert result.code == 2
    assert "the output folder cannot be written" in result.stderr


def test_spaces_after_delimiters_and_in_the_header_are_fine(cli, tmp_path):
    run_on(cli, tmp_path, "x, y\n1, 2\n 2,4\n3 , 6\n", code=0)
    assert (tmp_path / "out" / "last.pt").is_file()


def test_semicolon_delimiter(cli, tmp_path):
    run_on(cli, tmp_path, "x;y\n1;2\n2;4\n3;6\n", code=0, extra_data={"delimiter": ";"})
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    run_on(cli, wrong, "x;y\n1;2\n2;4\n", "`y` (target) is not a column", "columns in the file: x;y")


@pytest.mark.parametrize(
    ("values", "said"),
    [
        (["$12,345.50", "$7.00", "(1,200)"], "currency signs"),
        (["45%", "3.5 %"], "currency signs, %"),
        (["1,5", "-12,25"], "decimal commas"),
        (["-1,129", "0,594", "-3,371"], "decimal commas"),  # 0,594 is no thousands separator
        (["1,234", "5,678"], "thousands separators"),  # three digits after the comma: thousands
        (["rotary", "12"], ""),
        (["inf", "1,0"], ""),
        ([], ""),
    ],
)
def test_numbers_written_with_signs_or_separators_are_recognised(values, said):
    found = csvscan.formatted_numbers(values)
    assert (said in found and found != "") if said else found == ""


@pytest.mark.parametrize(("separator", "typed", "said"), [(";", ";", "';'"), ("\t", "\\t", "tab")])
def test_a_header_read_as_one_column_names_the_separator_to_pass(cli, tmp_path, separator, typed, said):
    path = tmp_path / "t.csv"
    path.write_text(
        separator.join(["a", "b", "y"]) + "\n" + "".join(f"{i}{separator}1{separator}2\n" for i in range(9))
    )
    result = cli("init", path, "--target", "y", "-o", tmp_path / "c.yaml")
    assert result.code == 2, result
    assert f"the header looks {said}-separated: pass --delimiter '{typed}'" in result.stderr
    assert "Traceback" not in result.stderr


def test_eval_and_predict_read_a_file_with_another_separator_than_trainings(
    cli, small_config, table, tmp_path
):
    """Trained on a comma CSV, scored on the same rows written with `;`: `--delimiter ';'`
    gives the comma file's numbers; without it the error says to pass it."""
    assert cli("run", small_config(), "-q").code == 0
    best = tmp_path / "run" / "best.pt"
    semicolons = tmp_path / "semi.csv"
    semicolons.write_text(table.read_text().replace(",", ";"))
    plain = cli("eval", best, table, "--json")
    assert plain.code == 0, plain
    refused = cli("eval", best, semicolons)
    assert refused.code == 2 and "pass --delimiter ';'" in refused.stderr, refused
    scored = cli("eval", best, semicolons, "--json", "--delimiter", ";")
    assert scored.code == 0 and scored.stdout == plain.stdout, scored
    out = tmp_path / "p.csv"
    predicted = cli("predict", best, semicolons, "--delimiter", ";", "-o", out)
    assert predicted.code == 0, predicted
    assert out.read_text().splitlines()[0] == "x0;x1;x2;y;y_pred"
    bad = cli("eval", best, semicolons, "--delimiter", ";;")
    assert bad.code == 2 and "give one" in bad.stderr
