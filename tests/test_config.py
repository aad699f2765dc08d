"""Config mistakes: every problem reported at once, with key, line and fix; nothing written."""

from __future__ import annotations

import textwrap

import pytest

from conftest import CONFIGS, REPO

GOOD_DATA = f"""\
data:
  train: {REPO / "data" / "linear.csv"}
  target: y
"""


def check(cli, tmp_path, text: str, *expected: str, extra: tuple[str, ...] = ()) -> str:
    """Run the config; assert exit 2, each expected fragment in stderr, no output folder, no traceback."""
    path = tmp_path / "cfg.yaml"
    path.write_text(textwrap.dedent(text))
    out = tmp_path / "out"
    result = cli("run", path, "-o", out, *extra)
    assert result.code == 2, result
    for fragment in expected:
        assert fragment in result.stderr, (fragment, result.stderr)
    assert "Traceback" not in result.stderr
    assert not out.exists()
    return str(result.stderr)


def test_unknown_key_suggests_the_closest_name(cli, tmp_path):
    check(
        cli,
        tmp_path,
        GOOD_DATA + "optimzer:\n  lr: 0.1\n",
        "line 4",
        "`optimzer`",
        "did you mean `optimizer`?",
    )


def test_unknown_nested_key(cli, tmp_path):
    check(
        cli, tmp_path, GOOD_DATA + "train:\n  epoch: 3\n", "line 5", "`train.epoch`", "did you mean `epochs`?"
    )


def test_every_problem_in_one_message(cli, tmp_path):
    err = check(
        cli,
        tmp_path,
        GOOD_DATA
        + 'train:\n  epochs: "ten"\n  batch_size: 0\noptimizer:\n  lr: -1\nloss:\n  reduction: meen\n',
        "problems in the config",
        "`train.epochs` must be a whole number, got 'ten'",
        "`train.batch_size` must be >= 1, got 0",
        "`optimizer.lr` must be > 0, got -1",
        "`loss.reduction` is 'meen'",
        "did you mean `mean`?",
    )
    assert "4 problems" in err


@pytest.mark.parametrize(
    ("snippet", "fragment"),
    [
        ("optimizer:\n  lr: .nan\n", "`optimizer.lr` must be a finite number"),
        ("optimizer:\n  lr: 0\n", "`optimizer.lr` must be > 0"),
        ("train:\n  epochs: 0\n", "`train.epochs` must be >= 1"),
        ("train:\n  epochs: 2.5\n", "`train.epochs` must be a whole number, got 2.5"),
        ('train:\n  epochs: "10"\n', "write it without quotes: 10"),
        ("data2: 1\n", "unknown key `data2`"),
        ("scheduler:\n  name: step\n  gamma: 0\n", "`scheduler.gamma` must be > 0"),
        ("scheduler:\n  name: step\n  gamma: -0.5\n", "`scheduler.gamma` must be > 0"),
        ("model:\n  type: mlp\n  dropout: 1.0\n", "`model.dropout` must be < 1"),
        ("model:\n  type: mlp\n  dropout: -0.1\n", "`model.dropout` must be >= 0"),
        ("regularization:\n  l1: -1\n", "`regularization.l1` must be >= 0"),
        ("regularization:\n  l2: -0.5\n", "`regularization.l2` must be >= 0"),
        ("optimizer:\n  weight_decay: -0.1\n", "`optimizer.weight_decay` must be >= 0"),
        ("train:\n  device: gpu\n", "use auto, cpu, cuda or cuda:N"),
        ("init:\n  scheme: xavier\n", "did you mean `xavier_normal`?"),
        ("optimizer:\n  name: adamm\n", "did you mean `adam`?"),
        ("model:\n  type: linear\n  hidden: [8]\n", "set `model.type: mlp` or remove it"),
        (
            "scheduler:\n  step_size: 10\n",
            "does not apply to scheduler.name 'none'; set `scheduler.name: step`",
        ),
        (
            "optimizer:\n  name: adam\n  momentum: 0.9\n",
            "`optimizer.momentum` does not apply to optimizer.name 'adam'",
        ),
        ("optimizer:\n  name: lbfgs\n  weight_decay: 0.1\n", "`optimizer.weight_decay` does not apply"),
        ("init:\n  scheme: normal\n  gain: 2\n", "`init.gain` does not apply"),
        ("train:\n  early_stopping:\n    patience: 0\n", "`train.early_stopping.patience` must be >= 1"),
        ("seed: -1\n", "`seed` must be >= 0"),
        ("train:\n  batch_size: true\n", "`train.batch_size` must be a whole number, got true"),
    ],
)
def test_out_of_range_and_ill_fitting_values(cli, tmp_path, snippet, fragment):
    check(cli, tmp_path, GOOD_DATA + snippet, fragment)


@pytest.mark.parametrize("fraction", [1.0, -0.1, 1.5])
def test_val_fraction_outside_0_1(cli, tmp_path, fraction):
    check(cli, tmp_path, GOOD_DATA + f"  val_fraction: {fraction}\n", "`data.val_fraction` must be")


def test_missing_required_keys(cli, tmp_path):
    check(cli, tmp_path, "data:\n  features: [x]\n", "`data.train` is required", "`data.target` is required")
    check(cli, tmp_path, "seed: 1\n", "`data` is required")


def test_target_also_a_feature(cli, tmp_path):
    check(cli, tmp_path, GOOD_DATA + "  features: [x, y]\n", "`y` is the target and cannot also be a feature")


def test_val_file_and_fraction_together(cli, tmp_path):
    check(cli, tmp_path, GOOD_DATA + "  val: v.csv\n  val_fraction: 0.2\n", "give either `data.val`")


def test_scientific_notation_is_a_number(cli, tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text(GOOD_DATA + "optimizer:\n  lr: 1e-3\ntrain:\n  epochs: 1\noutput:\n  plot: false\n")
    assert cli("run", path, "-o", tmp_path / "out", "-q").code == 0
    assert "lr: 0.001" in (tmp_path / "out" / "config.yaml").read_text()


def test_duplicate_keys_are_refused(cli, tmp_path):
    check(
        cli,
        tmp_path,
        GOOD_DATA + "optimizer:\n  lr: 0.1\n  lr: 0.2\n",
        "line 6",
        "`optimizer.lr` is given twice (first at line 5)",
    )


def test_yaml_syntax_error_names_the_line(cli, tmp_path):
    check(cli, tmp_path, GOOD_DATA + "optimizer:\n  lr: [0.1\n", "YAML syntax error", "line")


def test_empty_file_and_non_mapping(cli, tmp_path):
    check(cli, tmp_path, "", "the config is empty")
    check(cli, tmp_path, "# only a comment\n", "the config is empty")
    check(cli, tmp_path, "- a\n- b\n", "must be a mapping of keys to values, not a list")
    check(cli, tmp_path, "just text\n", "must be a mapping of keys to values")


def test_missing_config_file(cli, tmp_path):
    result = cli("run", tmp_path / "nope.yaml")
    assert result.code == 2 and "config file not found" in result.stderr


def test_set_overrides_are_validated_like_the_file(cli, tmp_path):
    err = check(
        cli,
        tmp_path,
        GOOD_DATA,
        "--set optimizer.lrr",
        "did you mean `lr`?",
        extra=("--set", "optimizer.lrr=0.1"),
    )
    assert "line" not in err.split("--set")[1].split("\n")[0]
    check(cli, tmp_path, GOOD_DATA, "expected KEY=VALUE", extra=("--set", "optimizer.lr"))


def test_set_override_lands_in_resolved_config(cli, tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text(GOOD_DATA + "output:\n  plot: false\n")
    result = cli(
        "run",
        path,
        "-o",
        tmp_path / "out",
        "-q",
        "--set",
        "optimizer.lr=0.05",
        "-s",
        "train.epochs=2",
        "--set",
        "model={type: mlp, hidden: [4]}",
    )
    assert result.code == 0, result
    text = (tmp_path / "out" / "config.yaml").read_text()
    assert "lr: 0.05" in text and "epochs: 2" in text and "- 4" in text


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_is_valid(path):
    from mse_train import config

    cfg = config.load(path)
    assert cfg.data.train and cfg.targets


# ---------------------------------------------- YAML 1.1's yes/no words in keys that take text
@pytest.mark.parametrize(
    ("written", "meant"),
    [("off", "off"), ("Off", "off"), ("false", "off"), ("NO", "off"), ('"False"', "off"), ("on", "auto")],
)
@pytest.mark.parametrize("way", ["file", "--set"])
def test_cache_off_as_the_readme_writes_it_means_off(tmp_path, written, meant, way):
    from mse_train import config

    path = tmp_path / "cfg.yaml"
    overrides = []
    if way == "file":
        path.write_text(GOOD_DATA + f"  cache: {written}\n")
    else:
        path.write_text(GOOD_DATA)
        overrides = [f"data.cache={written}"]
    assert config.load(path, overrides).data.cache == meant


def test_a_cache_folder_whose_name_is_a_yes_no_word_is_written_with_a_dot(tmp_path):
    from mse_train import config

    path = tmp_path / "cfg.yaml"
    path.write_text(GOOD_DATA + "  cache: ./off\n")
    assert config.load(path).data.cache == str(tmp_path / "off")


@pytest.mark.parametrize("key", ["data.train", "data.val", "output.dir"])
@pytest.mark.parametrize("written", ["off", "'False'", "Yes"])
def test_a_path_key_given_a_yes_no_word_is_refused_not_made_a_folder(cli, tmp_path, key, written):
    text = f"data:\n  train: {REPO / 'data' / 'linear.csv'}\n  target: y\n"
    if key == "data.train":
        text = f"data:\n  train: {written}\n  target: y\n"
    elif key == "data.val":
        text += f"  val: {written}\n"
    else:
        text += f"output:\n  dir: {written}\n"
    work = tmp_path / "work"
    work.mkdir()
    (work / "cfg.yaml").write_text(text)
    result = cli("validate", work / "cfg.yaml")
    assert result.code == 2, result
    shown = written.strip("'")
    assert f"`{key}`: '{shown}' is a yes/no word" in result.stderr
    assert f"./{shown}" in result.stderr and "quote it" not in result.stderr
    assert list(work.iterdir()) == [work / "cfg.yaml"]


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ("data:\n  missing: no", "`data.missing` is 'no', which is not one of: error, drop"),
        ("train:\n  epochs: on", "`train.epochs` must be a whole number, got true; YAML reads an unquoted"),
        ("model:\n  type: mlp\n  activation: Yes", "`model.activation` is 'Yes', which is not one of"),
        ("train:\n  device: off", "`train.device` is 'off'; use auto"),
    ],
)
def test_a_yes_no_word_where_a_word_is_wanted_is_named_as_written(cli, tmp_path, line, fragment):
    text = GOOD_DATA + "\n" + line + "\n" if not line.startswith("data:") else GOOD_DATA + line[5:] + "\n"
    err = check(cli, tmp_path, text, fragment)
    assert "quote it" not in err


def test_a_column_named_yes_is_the_column_yes(tmp_path):
    from mse_train import config

    table = tmp_path / "t.csv"
    table.write_text("no,yes\n1,2\n2,4\n")
    path = tmp_path / "cfg.yaml"
    path.write_text(f"data:\n  train: {table}\n  target: yes\n  features: [no]\n")
    cfg = config.load(path)
    assert cfg.data.target == "yes" and cfg.data.features == ["no"]
    assert config.load(path, ["data.target=Yes"]).data.target == "Yes"


def test_a_true_or_false_without_its_written_word_says_how_yaml_reads_them(tmp_path):
    from mse_train.config import loading, yamlio
    from mse_train.errors import ConfigError

    doc = yamlio.parse(GOOD_DATA, "cfg.yaml")
    with pytest.raises(ConfigError) as caught:  # a sweep's value: no word as written
        loading.from_document(doc, tmp_path, values={"output.mlflow_experiment": False})
    text = " ".join(caught.value.problems)
    assert "YAML reads an unquoted yes, no, on, off" in text and 'quote it: "False"' not in text
