"""Generated configs and CSV cells: every outcome is a clean exit, never a crash.

Configs start from the two required keys and get random known and unknown keys, wrong
types, nested sections where values belong, huge, negative and non-finite numbers.
Tables get random text, unicode, stray quotes, huge numbers and empty cells. For each,
`validate`, a 2-epoch `run --json` and (after a run) `eval --json` must exit 0, 1, 2 or
130, never print an internal error or a traceback, and `--json` stdout, when there is
any, must be strict JSON. A config that `validate` passes must not fail `run` as bad input.

Generated sizes stay small on purpose: model widths are either tiny or far too large to
allocate on any machine (so the refusal is immediate), `train.epochs` is set to 2 on the
command line, and L-BFGS's `max_iter`, `output.tensorboard` and `output.mlflow` are left alone.
"""

from __future__ import annotations

import csv
import io
import json
import math
import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

# ---------------------------------------------------------------- configs
KNOWN_PATHS: list[tuple[str, ...]] = [
    ("seed",),
    ("data",),
    ("data", "target"),
    ("data", "val"),
    ("data", "val_fraction"),
    ("data", "features"),
    ("data", "categorical"),
    ("data", "max_categories"),
    ("data", "unknown_category"),
    ("data", "missing"),
    ("data", "standardize"),
    ("data", "standardize_target"),
    ("data", "delimiter"),
    ("model",),
    ("model", "type"),
    ("model", "hidden"),
    ("model", "activation"),
    ("model", "dropout"),
    ("init",),
    ("init", "scheme"),
    ("init", "gain"),
    ("init", "a"),
    ("init", "b"),
    ("init", "mean"),
    ("init", "std"),
    ("init", "mode"),
    ("init", "nonlinearity"),
    ("init", "bias"),
    ("optimizer",),
    ("optimizer", "name"),
    ("optimizer", "lr"),
    ("optimizer", "momentum"),
    ("optimizer", "dampening"),
    ("optimizer", "nesterov"),
    ("optimizer", "weight_decay"),
    ("optimizer", "betas"),
    ("optimizer", "eps"),
    ("optimizer", "amsgrad"),
    ("optimizer", "alpha"),
    ("optimizer", "centered"),
    ("optimizer", "history_size"),
    ("optimizer", "line_search"),
    ("optimizer", "tolerance_grad"),
    ("optimizer", "tolerance_change"),
    ("scheduler",),
    ("scheduler", "name"),
    ("scheduler", "step_size"),
    ("scheduler", "gamma"),
    ("scheduler", "milestones"),
    ("scheduler", "t_max"),
    ("scheduler", "eta_min"),
    ("scheduler", "factor"),
    ("scheduler", "patience"),
    ("scheduler", "threshold"),
    ("scheduler", "min_lr"),
    ("regularization",),
    ("regularization", "l1"),
    ("regularization", "l2"),
    ("loss",),
    ("loss", "reduction"),
    ("train",),
    ("train", "batch_size"),
    ("train", "shuffle"),
    ("train", "device"),
    ("train", "early_stopping"),
    ("train", "early_stopping", "patience"),
    ("train", "early_stopping", "min_delta"),
    ("output",),
    ("output", "dir"),
    ("output", "checkpoint_every"),
    ("output", "plot"),
]
KEY_WORDS = ["bogus", "optimzer", "data", "model", "lr", "hidden", "name", "ñ", "1", "x y", "早"]
CHOICES = [
    "linear", "mlp", "default", "xavier_normal", "kaiming_uniform", "normal", "trunc_normal",
    "uniform", "zeros", "orthogonal", "sgd", "adam", "adamw", "rmsprop", "lbfgs", "none", "step",
    "multistep", "exponential", "cosine", "plateau", "relu", "tanh", "gelu", "fan_out", "mean",
    "sum", "drop", "median", "ignore", "error", "strong_wolfe", "cpu", "cuda", "cuda:abc", "tpu",
    "auto",
]  # fmt: skip
TEXTS = [
    "", " ", "x", "y", "a", "b", "ñ", "💥", "a: b", " #c", "'", '"', "\\", "\n", "*a", "&a",
    "!!python/object/apply:os.system", "1e3", "10", "null", "true", "~", "data.csv", "../nope.csv",
]  # fmt: skip
INTS = [-(2**64), -1, 0, 1, 2, 3, 7, 10, 1000, 10**12, 2**63, 2**64, 10**30]
FLOATS = [0.0, -0.0, 0.5, -1.5, 0.99, 1e-300, 1e300, -1e300, 3e38, 1e39, math.nan, math.inf, -math.inf]

safe_text = st.text(alphabet=st.characters(codec="utf-8"), max_size=8)
scalars = st.one_of(
    st.sampled_from(INTS),
    st.sampled_from(FLOATS),
    st.sampled_from(CHOICES),
    st.sampled_from(TEXTS),
    safe_text,
    st.booleans(),
    st.none(),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.sampled_from([*KEY_WORDS, "type", "name", "scheme", "a", "b"]), inner, max_size=3),
    ),
    max_leaves=6,
)
WORD_KEYS = {
    "type", "scheme", "name", "activation", "mode", "nonlinearity", "bias", "reduction", "missing",
    "unknown_category", "line_search", "device", "model", "init", "optimizer", "scheduler",
}  # fmt: skip
LIST_KEYS = {"hidden", "milestones", "betas", "features", "categorical"}
BOOL_KEYS = {"nesterov", "amsgrad", "centered", "shuffle", "plot", "standardize", "standardize_target"}
NUMBERS = [0, 1, 2, 3, 10, 0.0, 0.1, 0.5, 0.9, 1e-3]


def plausible(path: tuple[str, ...]) -> st.SearchStrategy[Any]:
    """A value of the right kind for a known key (not always a valid one)."""
    key = path[-1]
    if key in WORD_KEYS:
        return st.sampled_from(CHOICES)
    if key in LIST_KEYS:
        items = (
            st.sampled_from(["a", "b", "y"])
            if key in ("features", "categorical")
            else st.sampled_from([1, 2, 4, 0.9])
        )
        return st.lists(items, min_size=1, max_size=2)
    if key in BOOL_KEYS:
        return st.booleans()
    return st.sampled_from(NUMBERS)


paths = st.one_of(
    st.sampled_from(KNOWN_PATHS),
    st.lists(st.sampled_from(KEY_WORDS), min_size=1, max_size=3).map(tuple),
    st.tuples(st.sampled_from([p[0] for p in KNOWN_PATHS]), st.sampled_from(KEY_WORDS)),
)


BASE: dict[str, Any] = {"data": {"train": "data.csv", "target": "y"}}
PLAIN = "a,b,y\n1,2,3\n2,1,5\n3,3,6\n4,0,4\n"


def put(config: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = config
    for key in path[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[path[-1]] = value


@st.composite
def configs(draw: Any) -> dict[str, Any]:
    config: dict[str, Any] = {"data": {"train": "data.csv", "target": "y"}}
    # mostly known keys with plausible values, some wrong types, unknown keys and odd numbers
    mutation = st.one_of(
        st.sampled_from(KNOWN_PATHS).flatmap(lambda p: st.tuples(st.just(p), plausible(p))),
        st.tuples(st.sampled_from(KNOWN_PATHS), st.sampled_from(INTS + FLOATS)),
        st.tuples(paths, values),
    )
    for path, value in draw(st.lists(mutation, max_size=3)):
        put(config, path, value)
    return config


# ----------------------------------------------------------------- tables
numbers = st.floats(-1e6, 1e6, allow_nan=False).map(lambda v: f"{v:.6g}")
odd_cells = st.one_of(
    st.sampled_from(
        [
            "", "NA", "nan", "inf", "-inf", "1e999", "3e38", "-3e38", "1e308", "0x10", "1,5", '"',
            '""', "'", 'a"b', "\n", " 1 ", "１", "١", "💥", "NULL", "true", "1e-320", "-0", "Adelie ",
        ]
    ),
    safe_text,
)  # fmt: skip
cells = st.one_of(numbers, numbers, numbers, numbers, numbers, numbers, odd_cells)
HEADERS = [
    ["a", "b", "y"],
    ["a ", " b", "y"],
    ["a", "a", "y"],
    ["", "b", "y"],
    ["ä", "b", "y"],
    ['"a', "b", "y"],
]


@st.composite
def tables(draw: Any) -> str:
    clean = draw(st.booleans())  # half the tables are plain numbers, so that runs get going
    header = HEADERS[0] if clean else draw(st.sampled_from(HEADERS[:1] * 4 + HEADERS))
    row = st.lists(numbers if clean else cells, min_size=3, max_size=3)
    rows = draw(st.lists(row, min_size=1, max_size=12))
    if draw(st.booleans()):  # properly quoted
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
        return out.getvalue()
    return "\n".join(",".join(r) for r in [header, *rows]) + "\n"  # quotes and commas as they come


# ------------------------------------------------------------------ checks
def strict_json(text: str) -> Any:
    def refuse(constant: str) -> Any:
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def sane(result: Any) -> None:
    assert result.code in (0, 1, 2, 130), result
    for text in (result.stdout, result.stderr):
        assert "internal error" not in text, result
        assert "Traceback" not in text, result


@settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],  # no shrinking: keeps a failing run short
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(config=configs(), table=tables())
# Inputs of the kinds issue 14 lists, pinned so that every run tries them:
@example(config={**BASE, "seed": 2**64}, table=PLAIN)
@example(config={**BASE, "optimizer": {"name": "sgd", "nesterov": True}}, table=PLAIN)
@example(config=BASE, table="a,b,y\n1,1e308,2\n2,3,4\n3,4,5\n")  # overflows float32
@example(config=BASE, table="a,b,y\n-692604,-1.4013e-45,-572095\n247083,-4.94066e-324,901404\n")
def test_generated_configs_and_cells_never_crash(cli, tmp_path, config, table):
    folder = Path(tempfile.mkdtemp(dir=tmp_path))
    (folder / "data.csv").write_text(table, encoding="utf-8")
    cfg = folder / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True), encoding="utf-8")

    checked = cli("validate", cfg)
    sane(checked)

    ran = cli(
        "run", cfg, "--json",
        "--set", "train.epochs=2",
        "--set", "output.plot=false",
        "--output-dir", folder / "run",
    )  # fmt: skip
    sane(ran)
    if checked.code == 0:  # validate passing means run starts: no input error left to find
        assert ran.code != 2, (checked, ran)
    if ran.stdout.strip():
        strict_json(ran.stdout)
    if ran.code == 0:  # the run's own checkpoint on its own table
        scored = cli("eval", folder / "run" / "best.pt", folder / "data.csv", "--json")
        sane(scored)
        if scored.stdout.strip():
            strict_json(scored.stdout)


# ------------------------------------------------------------------ sweeps
range_specs = st.fixed_dictionaries(
    {"low": st.sampled_from([0.0, 1e-4, 0.01, 1, 5, -1.0]), "high": st.sampled_from([0.0, 0.1, 1, 4, 1e3])},
    optional={
        "log": st.booleans(),
        "step": st.sampled_from([0.5, 1, 0.0, -1]),
        "integer": st.booleans(),
        "bogus": st.just(1),
    },
)
sweep_paths = st.one_of(
    st.sampled_from([".".join(p) for p in KNOWN_PATHS if len(p) == 2]),
    st.sampled_from(["bogus", "model", "sweep.trials", "output.dir", "model.hiden", ""]),
)
sweep_values = st.one_of(
    st.lists(scalars, min_size=0, max_size=3),
    st.lists(st.sampled_from([[4], [8, 8], "mlp", "linear", "adam", "sgd"]), min_size=1, max_size=3),
    range_specs,
    scalars,
)
sweeps = st.fixed_dictionaries(
    {"params": st.dictionaries(sweep_paths, sweep_values, min_size=0, max_size=3)},
    optional={
        "method": st.sampled_from(["grid", "random", "tpe", "bayes", 3]),
        "trials": st.sampled_from([1, 2, 0, -1, "2"]),
        "folds": st.sampled_from([0, 1, 2, 3, -2, 1000]),
        "refit": st.booleans(),
    },
)


@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(sweep=sweeps, val_fraction=st.sampled_from([0.0, 0.25]))
@example(
    sweep={"method": "grid", "params": {"optimizer.lr": {"low": 0.1, "high": 0.01, "step": 0.01}}},
    val_fraction=0.25,
)
@example(
    sweep={"params": {"model.type": ["linear", "mlp"], "model.hidden": [[4]]}, "folds": 2}, val_fraction=0.0
)
def test_generated_sweeps_never_crash(cli, tmp_path, sweep, val_fraction):
    folder = Path(tempfile.mkdtemp(dir=tmp_path))
    (folder / "data.csv").write_text(PLAIN * 1 + "5,1,7\n6,2,9\n7,3,11\n8,1,10\n", encoding="utf-8")
    config = {
        "data": {"train": "data.csv", "target": "y", "val_fraction": val_fraction},
        "model": {"type": "mlp", "hidden": [4]},
        "sweep": sweep,
    }
    cfg = folder / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True), encoding="utf-8")
    checked = cli("validate", cfg)
    sane(checked)
    ran = cli(
        "sweep", cfg, "--json", "--trials", "2",
        "--set", "train.epochs=1",
        "--set", "output.plot=false",
        "--output-dir", folder / "sweep",
    )  # fmt: skip
    sane(ran)
    if ran.stdout.strip():
        strict_json(ran.stdout)
