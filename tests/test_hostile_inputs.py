"""Hostile inputs, by the classes of issue 14, driven through the real CLI.

Each test pins one promise (exit code, message key words, strict JSON, files on disk).
Where a test needs the behaviour a user sees outside pytest (numpy warnings that
`filterwarnings = error` would turn into exceptions, a memory cap, a process that
may hang), it runs `python -m mse_train` in a subprocess.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import shutil
import stat
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from mse_train.cli import app
from mse_train.config.yamlio import MAX_VALUES

from conftest import (
    DATA,
    HANG_GUARD,
    Result,
    linear_rows,
    run_process,
    start_process,
    write_config,
    write_csv,
)

LINEAR = DATA / "linear.csv"  # x = 1, 2, 3; y = 2x


# ----------------------------------------------------------------- helpers
def strict_json(text: str) -> Any:
    """json.loads that refuses NaN, Infinity and -Infinity, as any strict JSON reader does."""

    def refuse(constant: str) -> Any:
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def no_crash(result: Result) -> None:
    assert "internal error" not in result.stderr, result
    assert "Traceback" not in result.stderr, result


def user(*args: Any, timeout: float = HANG_GUARD) -> Result:
    """`python -m mse_train ARGS...` as a user runs it (no pytest warning filters)."""
    done = run_process(*args, timeout=timeout)
    return Result(done.returncode, done.stdout, done.stderr)


@contextlib.contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def linear_config(tmp_path: Path, name: str = "cfg.yaml", **sections: Any) -> Path:
    """data/linear.csv, no standardisation (so losses are in target units), no plot."""
    config: dict[str, Any] = {
        "data": {"train": str(LINEAR), "target": "y", "standardize": False},
        "optimizer": {"name": "sgd", "lr": 0.01},
        "train": {"epochs": 3},
        "output": {"dir": str(tmp_path / "run"), "plot": False},
    }
    for key, value in sections.items():
        config[key] = {**config[key], **value} if isinstance(config.get(key), dict) else value
    return write_config(tmp_path / name, config)


def _invoke(*args: Any) -> Result:
    """The `cli` fixture's call, for module-scoped fixtures that train once."""
    result = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    return Result(result.exit_code, result.stdout, result.stderr)


@pytest.fixture(scope="module")
def _linear_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("linear")
    # standardised: x has std 0.816, so a feature of 3e38 overflows float32 once scaled
    result = _invoke("run", linear_config(folder, data={"standardize": True}), "-q")
    assert result.code == 0, result
    return folder / "run"


@pytest.fixture
def trained(_linear_run: Path, tmp_path: Path) -> Path:
    """best.pt of a 3-epoch run on data/linear.csv, standardised (a fresh copy of the run folder)."""
    shutil.copytree(_linear_run, tmp_path / "run")
    return tmp_path / "run" / "best.pt"


PENGUINS = [
    ("Adelie", 1.0, 2.0),
    ("Gentoo", 2.0, 5.0),
    ("Adelie", 3.0, 6.0),
    ("Gentoo", 4.0, 9.0),
    ("Chinstrap", 5.0, 10.0),
    ("Chinstrap", 6.0, 13.0),
    ("Adelie", 7.0, 14.0),
    ("Gentoo", 8.0, 17.0),
]


@pytest.fixture(scope="module")
def trained_categories(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """best.pt of a run with a text category (sp), a standardised number (x) and
    unknown_category: ignore; read-only for the tests that share it."""
    folder = tmp_path_factory.mktemp("species")
    data = write_csv(folder / "species.csv", ["sp", "x", "y"], PENGUINS)
    cfg = write_config(
        folder / "species.yaml",
        {
            "data": {"train": str(data), "target": "y", "unknown_category": "ignore"},
            "optimizer": {"name": "adam", "lr": 0.05},
            "train": {"epochs": 5},
            "output": {"dir": str(folder / "species_run"), "plot": False},
        },
    )
    result = _invoke("run", cfg, "-q")
    assert result.code == 0, result
    return folder / "species_run" / "best.pt"


def predictions(stdout: str, column: str = "y_pred") -> list[str]:
    lines = stdout.splitlines()
    index = lines[0].split(",").index(column)
    return [line.split(",")[index] for line in lines[1:]]


# ------------------------------------- 1. the loss named best is best.pt's loss
@pytest.mark.parametrize(
    "lr, epochs",
    [(0.2, 6), (0.01, 20)],
    ids=["diverging-ish", "converging"],
)
def test_best_loss_is_the_loss_of_the_weights_in_best_pt(cli, tmp_path, lr, epochs):
    """Without validation rows the best loss must be measured on the weights best.pt holds."""
    cfg = linear_config(tmp_path, optimizer={"lr": lr}, train={"epochs": epochs}, loss={"reduction": "mean"})
    result = cli("run", cfg, "--json")
    assert result.code == 0, result
    summary = strict_json(result.stdout)
    assert summary["best"]["watched"] == "train_end_loss"
    scored = cli("eval", tmp_path / "run" / "best.pt", LINEAR, "--json")
    assert scored.code == 0, scored
    best = summary["best"]["train_end_loss"]
    assert strict_json(scored.stdout)["mse"] == pytest.approx(best, rel=1e-5), (
        f"summary says best train_end_loss {best} at epoch {summary['best']['epoch']}, "
        f"but best.pt scores {strict_json(scored.stdout)['mse']}"
    )
    on_disk = strict_json((tmp_path / "run" / "summary.json").read_text())
    assert on_disk["best"]["train_end_loss"] == pytest.approx(best)


# ------------------------------------------------ 2. never NaN/Infinity in JSON
def test_eval_json_with_a_huge_feature_is_strict_json_or_an_error(trained, tmp_path):
    """3e38 is a legitimate float32, but standardising it (std 0.816) overflows to inf."""
    rows = write_csv(tmp_path / "huge.csv", ["x", "y"], [[1, 2], ["3e38", 4]])
    result = user("eval", trained, rows, "--json")
    assert result.code in (0, 1, 2), result
    no_crash(result)
    if result.code == 0:
        report = strict_json(result.stdout)  # raises on NaN / Infinity
        assert all(v is None or math.isfinite(v) for v in report.values() if isinstance(v, float))
    else:
        assert result.stdout.strip() == "", result
        assert result.stderr.strip(), result


def test_predict_with_a_huge_feature_does_not_write_inf_or_empty_silently(trained, tmp_path):
    rows = write_csv(tmp_path / "huge.csv", ["x"], [[1], ["3e38"]])
    result = user("predict", trained, rows)
    no_crash(result)
    if result.code == 0:
        values = predictions(result.stdout)
        bad = [v for v in values if v == "" or not math.isfinite(float(v))]
        assert not bad or "line 3" in result.stderr, result
    else:
        assert result.code in (1, 2) and result.stderr.strip(), result


def test_a_run_with_an_infinite_init_leaves_no_infinite_weight(cli, tmp_path):
    cfg = linear_config(tmp_path, init={"scheme": "xavier_normal", "gain": 1e300})
    result = cli("run", cfg, "-q")
    assert result.code in (1, 2), result
    no_crash(result)
    run = tmp_path / "run"
    for name in ("last.pt", "best.pt"):
        if (run / name).exists():
            weights = torch.load(run / name, weights_only=True)["weights"]
            bad = [k for k, w in weights.items() if not torch.isfinite(w).all()]
            assert not bad, f"{name} holds non-finite {bad}: {weights}"
    if "best.pt keep" in result.stderr or "and best.pt" in result.stderr:
        assert (run / "best.pt").exists(), f"the message promises a best.pt: {result.stderr}"


# ---------------------------------- 3. predict reads cells like eval and run
def test_predict_and_eval_accept_header_names_with_spaces(cli, trained_categories, tmp_path):
    plain = write_csv(tmp_path / "plain.csv", ["sp", "x", "y"], PENGUINS[:3])
    spaced = tmp_path / "spaced.csv"
    spaced.write_text("sp ,x , y \n" + "".join(f"{s},{x},{y}\n" for s, x, y in PENGUINS[:3]))
    expected = cli("predict", trained_categories, plain)
    assert expected.code == 0, expected
    got = cli("predict", trained_categories, spaced)
    assert got.code == 0, got
    assert predictions(got.stdout, "y_pred") == predictions(expected.stdout, "y_pred")
    a = cli("eval", trained_categories, plain, "--json")
    b = cli("eval", trained_categories, spaced, "--json")
    assert a.code == b.code == 0, (a, b)
    assert strict_json(a.stdout) == strict_json(b.stdout)


@pytest.mark.parametrize("cell", ["Adelie ", " Adelie", '"Adelie "'], ids=["trailing", "leading", "quoted"])
def test_a_category_with_spaces_predicts_like_the_bare_category(cli, trained_categories, tmp_path, cell):
    """unknown_category: ignore must not silently encode "Adelie " as all zeros in predict only."""
    plain = tmp_path / "plain.csv"
    plain.write_text("sp,x,y\nAdelie,1,2\n")
    spaced = tmp_path / "spaced.csv"
    spaced.write_text(f"sp,x,y\n{cell},1,2\n")
    expected = cli("predict", trained_categories, plain)
    got = cli("predict", trained_categories, spaced)
    assert expected.code == got.code == 0, (expected, got)
    assert predictions(got.stdout) == predictions(expected.stdout)
    a = cli("eval", trained_categories, plain, "--json")
    b = cli("eval", trained_categories, spaced, "--json")
    assert a.code == b.code == 0, (a, b)
    assert strict_json(a.stdout)["mse"] == strict_json(b.stdout)["mse"]


# ------------------------------- 4. a loss that explodes but stays finite
def test_a_loss_growing_by_orders_of_magnitude_is_not_a_silent_success(cli, small_config):
    """Summed loss with a large lr: 382 -> 3e15 in 6 epochs, every value finite."""
    cfg = small_config(loss={"reduction": "sum"}, optimizer={"name": "sgd", "lr": 0.05}, train={"epochs": 6})
    result = cli("run", cfg, "--json")
    no_crash(result)
    if result.code == 1:
        assert "diverg" in result.stderr.lower(), result
        return
    assert result.code == 0, result
    strict_json(result.stdout)
    text = result.stderr.lower()
    assert "warning" in text or "diverg" in text, f"a 1e13x growth ended silently: {result}"


# -------------------------------------- 5. two runs into one folder at once
@pytest.fixture(scope="class")
def running(tmp_path_factory):
    """A long run in a real process, checkpointing into its run folder; shared by the
    variants of TestBusyFolder (and stopped after them), each of which must leave it alone."""
    folder = tmp_path_factory.mktemp("busy")
    cfg = linear_config(folder, train={"epochs": 1_000_000}, output={"checkpoint_every": 1000})
    run = folder / "run"
    process = start_process("run", cfg, "-q")
    deadline = time.monotonic() + HANG_GUARD
    while not (run / "last.pt").exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the first run never wrote last.pt"
        time.sleep(0.05)
    yield cfg, run, process
    if process.poll() is None:
        process.terminate()
    process.communicate(timeout=HANG_GUARD)


class TestBusyFolder:
    @pytest.mark.parametrize(
        "extra",
        [[], ["--overwrite"], ["--resume"], ["--resume", "--force"]],
        ids=["plain", "overwrite", "resume", "resume-force"],
    )
    def test_a_second_run_into_a_busy_folder_is_refused(self, cli, running, extra):
        cfg, run, process = running
        assert process.poll() is None, "the first run stopped"
        config_before = (run / "config.yaml").read_bytes()
        result = cli("run", cfg, "-q", "--set", "train.epochs=2", *extra)
        assert result.code == 2, result
        assert str(run) in result.stderr, result
        no_crash(result)
        assert (run / "config.yaml").read_bytes() == config_before, "the busy run's config.yaml changed"


def test_two_runs_started_together_one_is_refused(tmp_path):
    cfg = linear_config(tmp_path, train={"epochs": 1_000_000}, output={"checkpoint_every": 100})
    run = tmp_path / "run"
    processes = [start_process("run", cfg, "-q") for _ in range(2)]
    try:
        # The loser exits as soon as it meets the lock; the deadline only bounds a failure,
        # and must allow for starting Python and torch on a loaded machine.
        deadline = time.monotonic() + HANG_GUARD
        while all(p.poll() is None for p in processes) and time.monotonic() < deadline:
            time.sleep(0.1)
        finished = [p for p in processes if p.poll() is not None]
        assert len(finished) == 1, "both runs went on training into one folder"
        _, err = finished[0].communicate(timeout=HANG_GUARD)
        assert finished[0].returncode == 2, err
        assert str(run) in err
    finally:
        for p in processes:
            if p.poll() is None:
                p.terminate()
            p.communicate(timeout=HANG_GUARD)


# ----------------------------------------------------- 6. -o output safety
def test_predict_output_onto_a_symlink_writes_through_it(cli, trained, tmp_path):
    target = tmp_path / "real.csv"
    target.write_text("old\n")
    link = tmp_path / "link.csv"
    link.symlink_to(target)
    result = cli("predict", trained, LINEAR, "-o", link)
    assert result.code == 0, result
    assert link.is_symlink(), "the symlink was replaced by a file"
    assert "y_pred" in target.read_text()


def test_predict_output_onto_its_input_csv_is_refused(cli, trained, tmp_path):
    rows = tmp_path / "rows.csv"
    rows.write_bytes(LINEAR.read_bytes())
    result = cli("predict", trained, rows, "-o", rows)
    assert result.code == 2, result
    assert "rows.csv" in result.stderr
    assert rows.read_bytes() == LINEAR.read_bytes()


@pytest.mark.parametrize("which", ["best.pt", "last.pt"], ids=["the-model", "another-checkpoint"])
def test_predict_output_onto_a_checkpoint_is_refused(cli, trained, which):
    victim = trained.parent / which
    before = victim.read_bytes()
    result = cli("predict", trained, LINEAR, "-o", victim)
    assert result.code == 2, result
    assert which in result.stderr
    assert victim.read_bytes() == before


@pytest.mark.parametrize("existing", [0o644, 0o640, 0o664], ids=["0644", "0640", "0664"])
def test_a_replaced_output_keeps_its_mode(cli, trained, tmp_path, existing):
    out = tmp_path / "out.csv"
    out.write_text("old\n")
    out.chmod(existing)
    with umask(0o077):  # a new file would be 0600; a replaced one keeps what it had
        result = cli("predict", trained, LINEAR, "-o", out)
    assert result.code == 0, result
    assert "y_pred" in out.read_text()
    assert oct(mode(out)) == oct(existing)


@pytest.mark.parametrize("mask", [0o022, 0o027], ids=["umask-022", "umask-027"])
def test_new_outputs_follow_the_umask(cli, tmp_path, mask):
    expected = 0o666 & ~mask
    with umask(mask):
        ran = cli("run", linear_config(tmp_path), "-q")
        assert ran.code == 0, ran
        best = tmp_path / "run" / "best.pt"
        predicted = cli("predict", best, LINEAR, "-o", tmp_path / "new.csv")
        started = cli("init", LINEAR, "--target", "y", "-o", tmp_path / "new.yaml")
    assert predicted.code == 0 and started.code == 0, (predicted, started)
    written = [tmp_path / "new.csv", tmp_path / "new.yaml"]
    written += [
        tmp_path / "run" / n for n in ("best.pt", "last.pt", "metrics.csv", "summary.json", "config.yaml")
    ]
    modes = {p.name: oct(mode(p)) for p in written}
    assert modes == {p.name: oct(expected) for p in written}


def test_a_read_only_output_is_not_replaced(cli, trained, tmp_path):
    out = tmp_path / "locked.csv"
    out.write_text("keep me\n")
    out.chmod(0o444)
    result = cli("predict", trained, LINEAR, "-o", out)
    assert result.code == 2, result
    assert "locked.csv" in result.stderr
    assert out.read_text() == "keep me\n"
    assert mode(out) == 0o444


def test_predict_output_onto_a_fifo_writes_into_it(cli, trained, tmp_path):
    """A FIFO (like a device) is written to directly, not replaced by a regular file."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # a reader, so opening to write does not block
    try:
        result = cli("predict", trained, LINEAR, "-o", fifo)
        assert stat.S_ISFIFO(os.lstat(fifo).st_mode), "the FIFO was replaced by a regular file"
        assert result.code == 0, result
        try:
            data = os.read(reader, 65536)
        except BlockingIOError:
            data = b""
        assert b"y_pred" in data
    finally:
        os.close(reader)


# --------------------------- 7. a failed --overwrite keeps the good run's best.pt
def test_a_diverging_overwrite_keeps_the_previous_best_pt(cli, tmp_path):
    cfg = linear_config(tmp_path, train={"epochs": 20})
    assert cli("run", cfg, "-q").code == 0
    best = tmp_path / "run" / "best.pt"
    before = best.read_bytes()
    # lr 1e38: the first update already makes the weight infinite, so no epoch is finite
    result = cli("run", cfg, "-q", "--overwrite", "--set", "optimizer.lr=1e38")
    assert result.code == 1, result
    assert best.exists(), "the good run's best.pt was deleted by a run that never had a better one"
    assert best.read_bytes() == before
    scored = cli("eval", best, LINEAR, "--json")
    assert scored.code == 0 and math.isfinite(strict_json(scored.stdout)["mse"]), scored


# ---------------------------------------------- 8. system folders as output.dir
@pytest.mark.parametrize("folder", ["/", "/etc", "/usr"])
def test_validate_refuses_a_system_folder_as_output_dir(cli, tmp_path, folder):
    cfg = linear_config(tmp_path, output={"dir": folder})
    result = cli("validate", cfg)
    assert result.code == 2, result
    assert "output.dir" in result.stderr
    no_crash(result)


@pytest.mark.parametrize("folder", ["/", "/etc", "/usr"])
def test_run_refuses_a_system_folder_before_reading_data(cli, tmp_path, folder):
    # The target column does not exist: a run that accepted the folder stops on the data
    # (before writing anything), so the test never writes into a system folder.
    cfg = linear_config(tmp_path, data={"target": "no_such_column"})
    for args in (["--output-dir", folder], ["--set", f"output.dir={folder}"]):
        result = cli("run", cfg, "-q", *args)
        assert result.code == 2, result
        assert "no_such_column" not in result.stderr, f"{folder} was accepted as a run folder: {result}"
        no_crash(result)


@pytest.mark.parametrize("folder", ["/", "/etc", "/usr"])
def test_cv_refuses_a_system_folder_as_output_dir_before_reading_data(cli, tmp_path, folder):
    # cv's folder is <output.dir>-cv: /etc is still refused, not made into /etc-cv.
    cfg = linear_config(tmp_path, data={"target": "no_such_column"})
    for args in (["--output-dir", folder], ["--set", f"output.dir={folder}"]):
        result = cli("cv", cfg, "-q", "--folds", "2", *args)
        assert result.code == 2, result
        assert "no_such_column" not in result.stderr, f"{folder} was accepted for cv: {result}"
        no_crash(result)
    if folder != "/":
        assert not Path(f"{folder}-cv").exists()


@pytest.mark.parametrize("folder", ["/", "/etc", "/usr"])
def test_sweep_refuses_a_system_folder_as_output_dir_before_reading_data(cli, tmp_path, folder):
    # The sweep's folder is <output.dir>-sweep: /etc is still refused, not made into /etc-sweep.
    sweep = {"method": "grid", "folds": 2, "params": {"optimizer.lr": [0.01, 0.1]}}
    cfg = linear_config(tmp_path, data={"target": "no_such_column"}, sweep=sweep)
    for args in (["--output-dir", folder], ["--set", f"output.dir={folder}"]):
        result = cli("sweep", cfg, "-q", *args)
        assert result.code == 2, result
        assert "no_such_column" not in result.stderr, f"{folder} was accepted for sweep: {result}"
        no_crash(result)
    if folder != "/":
        assert not Path(f"{folder}-sweep").exists()


# ------------------------------------ 9. a missing folder is called missing
@pytest.mark.parametrize("command", ["init", "predict", "plot"])
def test_an_output_in_a_missing_folder_says_the_folder_does_not_exist(cli, trained, tmp_path, command):
    missing = tmp_path / "no_such_folder"
    args = {
        "init": ["init", LINEAR, "--target", "y", "-o", missing / "cfg.yaml"],
        "predict": ["predict", trained, LINEAR, "-o", missing / "pred.csv"],
        "plot": ["plot", trained.parent, "-o", missing / "loss.png"],
    }[command]
    result = cli(*args)
    assert result.code != 0, result
    no_crash(result)
    assert "no_such_folder" in result.stderr
    assert "exist" in result.stderr.lower(), result
    assert "disk space" not in result.stderr
    assert "--resume" not in result.stderr
    assert not missing.exists()


# ---------------------------------------------------------- 10. YAML alias bombs
def alias_bomb(levels: int = 7) -> str:
    """A flow mapping whose last entry expands to 10**levels scalars."""
    names = [f"l{i}" for i in range(levels + 1)]
    parts = [f"{names[0]}: &{names[0]} [{', '.join(['lol'] * 10)}]"]
    for prev, name in itertools.pairwise(names):
        parts.append(f"{name}: &{name} [{', '.join(['*' + prev] * 10)}]")
    return "{" + ", ".join(parts) + "}"


# The loader's own bound, checked as work done rather than time taken (a loaded machine makes
# any clock limit fail): the walk stops after MAX_VALUES nodes and builds nothing.
@pytest.mark.parametrize("way", ["file", "set"])
def test_an_alias_bomb_is_refused_after_a_bounded_walk(tmp_path, monkeypatch, way):
    from mse_train import config
    from mse_train.config import yamlio
    from mse_train.errors import ConfigError

    visits: dict[int, int] = {}  # nodes visited, per document (per walk)
    real_node = yamlio._Walk.node

    def counted(self, node, path):
        visits[id(self)] = visits.get(id(self), 0) + 1
        return real_node(self, node, path)

    real_build = yamlio._Loader.construct_document

    def build(self, node):
        assert max(visits.values()) <= yamlio.MAX_VALUES, "the loader built a document past the bound"
        return real_build(self, node)

    monkeypatch.setattr(yamlio._Walk, "node", counted)
    monkeypatch.setattr(yamlio._Loader, "construct_document", build)
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(f"data:\n  train: {LINEAR}\n  target: y\n  categorical: {alias_bomb()}\n")
    plain = tmp_path / "plain.yaml"
    plain.write_text(f"data:\n  train: {LINEAR}\n  target: y\n")
    with pytest.raises(ConfigError) as refused:
        if way == "file":
            config.load(bomb)
        else:
            config.load(plain, [f"data.categorical={alias_bomb()}"])
    assert f"more than {yamlio.MAX_VALUES:,} values" in str(refused.value)
    assert max(visits.values()) == yamlio.MAX_VALUES + 1  # the walk stopped at the bound


BOMB_MEMORY = 512 * 2**20  # bytes of address space: twice what refusing takes; expanding needs GBs


def _cap_memory() -> None:
    """In the child: an address-space cap, so that a loader that expands the bomb dies of
    MemoryError (exit 1) instead of taking time (a clock limit fails on a loaded machine)."""
    import resource

    with contextlib.suppress(ValueError, OSError):  # not enforced on every platform
        resource.setrlimit(resource.RLIMIT_AS, (BOMB_MEMORY, BOMB_MEMORY))


@pytest.fixture(scope="module")
def bombs(tmp_path_factory):
    """The ways in, started at once (a loaded machine makes them slow, not wrong)."""
    folder = tmp_path_factory.mktemp("bombs")
    bomb = folder / "bomb.yaml"
    bomb.write_text(
        f"data:\n  train: {LINEAR}\n  target: y\n  categorical: {alias_bomb()}\n"
        f"output:\n  dir: {folder / 'run'}\n"
    )
    plain = linear_config(folder, "plain.yaml")
    commands = {
        "validate": ["validate", bomb],
        "config": ["config", bomb],
        "run": ["run", bomb],
        "cv": ["cv", bomb],
        "sweep": ["sweep", bomb],
        "set": ["validate", plain, "--set", f"data.categorical={alias_bomb()}"],
    }
    cap = {"preexec_fn": _cap_memory} if os.name == "posix" else {}
    processes = {name: start_process(*args, **cap) for name, args in commands.items()}
    yield processes
    for process in processes.values():
        if process.poll() is None:
            process.kill()
        process.communicate()


@pytest.mark.parametrize("way", ["validate", "config", "run", "cv", "sweep", "set"])
def test_an_alias_bomb_is_refused_by_every_command(bombs, way):
    process = bombs[way]
    try:
        out, err = process.communicate(timeout=HANG_GUARD)  # only a hang takes this long
    except subprocess.TimeoutExpired:
        process.kill()  # it would go on eating memory under the tests that follow
        process.communicate()
        pytest.fail(f"{way}: still running after {HANG_GUARD} s")
    result = Result(process.returncode, out, err)
    assert result.code == 2, result  # 1 with MemoryError: it expanded the bomb
    assert ("data.categorical" if way == "set" else "bomb.yaml") in result.stderr, result
    assert f"more than {MAX_VALUES:,} values" in result.stderr, result
    no_crash(result)


@pytest.mark.parametrize("command", ["validate", "config", "run", "cv", "sweep"])
def test_a_self_referencing_alias_is_refused(cli, tmp_path, command):
    path = tmp_path / "loop.yaml"
    path.write_text(f"data: &d\n  train: {LINEAR}\n  target: y\n  again: *d\n")
    result = cli(command, path)
    assert result.code == 2, result
    assert "loop.yaml" in result.stderr
    no_crash(result)
    on_set = cli(command, linear_config(tmp_path), "--set", "data.features=&f [x, *f]")
    assert on_set.code == 2, on_set
    no_crash(on_set)


# ------------------------------------------- 11. validate passes => run starts
CANNOT_START = {
    "nesterov-without-momentum": {"optimizer": {"name": "sgd", "nesterov": True}},
    "nesterov-with-dampening": {
        "optimizer": {"name": "sgd", "nesterov": True, "momentum": 0.9, "dampening": 0.5}
    },
    "uniform-a-above-b": {"init": {"scheme": "uniform", "a": 2.0, "b": 1.0}},
    "trunc-normal-a-above-b": {"init": {"scheme": "trunc_normal", "a": 2.0, "b": -2.0}},
    "seed-2**64": {"seed": 2**64},
    "seed-2**70": {"seed": 2**70},
    "no-features": {"data": {"features": []}},
    "model-too-large": {"model": {"type": "mlp", "hidden": [1_000_000, 1_000_000]}},
}


@pytest.mark.parametrize("sections", CANNOT_START.values(), ids=CANNOT_START.keys())
def test_validate_refuses_what_run_cannot_start(cli, tmp_path, sections):
    cfg = linear_config(tmp_path, **sections)
    checked = cli("validate", cfg)
    assert checked.code == 2, checked
    no_crash(checked)
    ran = cli("run", cfg, "-q")
    assert ran.code == 2, ran
    no_crash(ran)
    assert not (tmp_path / "run" / "last.pt").exists()


def test_validate_names_the_size_of_a_model_too_large(cli, tmp_path):
    cfg = linear_config(tmp_path, model={"type": "mlp", "hidden": [1_000_000, 1_000_000]})
    result = cli("validate", cfg)
    assert result.code == 2, result
    assert "model.hidden" in result.stderr or "parameters" in result.stderr, result


def test_a_column_whose_spread_underflows_float32_is_not_a_divergence(cli, tmp_path):
    """Column b's std (7e-46) is 0 in float32: validate says ok, run then 'diverges' at
    epoch 1 and advises `data.standardize: true`, which is already on."""
    data = write_csv(
        tmp_path / "flat.csv", ["a", "b", "y"], [[1, "1e-45", 2], [2, 0, 4], [3, "1e-45", 5], [4, 0, 9]]
    )
    cfg = write_config(
        tmp_path / "cfg.yaml",
        {"data": {"train": str(data), "target": "y"}, "train": {"epochs": 2}, "output": {"plot": False}},
    )
    checked = cli("validate", cfg)
    ran = cli("run", cfg, "-q", "-o", tmp_path / "run")
    no_crash(checked)
    no_crash(ran)
    assert ran.code in (0, 2), ran
    assert checked.code == ran.code, (checked, ran)
    if ran.code == 2:
        assert "`b`" in ran.stderr or "b:" in ran.stderr, ran


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_validate_refuses_a_cuda_device_that_run_refuses(cli, tmp_path):
    cfg = linear_config(tmp_path, train={"device": "cuda"})
    ran = cli("run", cfg, "-q")
    assert ran.code == 2, ran
    checked = cli("validate", cfg)
    assert checked.code == 2, checked
    assert "train.device" in checked.stderr or "cuda" in checked.stderr


# ------------------------------------------- 12. bad input is exit 2, not 1
@pytest.mark.parametrize("command", ["eval", "predict"])
@pytest.mark.parametrize("device", ["tpu", "cuda:abc", "cuda", "cuda:7"])
def test_a_bad_device_is_exit_2(cli, trained, command, device):
    if device.startswith("cuda") and device != "cuda:abc" and torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    result = cli(command, trained, LINEAR, "--device", device)
    assert result.code == 2, result
    assert device in result.stderr
    no_crash(result)


def _numeric_options() -> list[tuple[str, str, str]]:
    """(command, option, a value out of range) for every number-taking option of every command."""
    import typing

    found = []
    for command in app.registered_commands:
        assert command.callback is not None
        name = command.name or command.callback.__name__
        for param, hint in typing.get_type_hints(command.callback, include_extras=True).items():
            if typing.get_origin(hint) is not typing.Annotated:
                continue
            base, info, *_ = typing.get_args(hint)
            kinds = set(typing.get_args(base) or (base,))
            if not kinds & {int, float}:
                continue
            first = info.default if isinstance(info.default, str) and info.default.startswith("--") else None
            option = first or "--" + param.replace("_", "-")
            found.append((name, option, "-1" if int in kinds else "-0.5"))
    return found


NUMERIC_OPTIONS = _numeric_options()


def test_the_numeric_options_found_are_the_ones_we_know():
    """The next test covers every number-taking option; this one fails when one is added
    without the arguments its command needs being known below."""
    assert {(c, o) for c, o, _ in NUMERIC_OPTIONS} >= {
        ("explain", "--seed"),
        ("explain", "--repeats"),
        ("cv", "--folds"),
        ("sweep", "--trials"),
        ("sweep", "--folds"),
        ("eval", "--interval"),
        ("predict", "--interval"),
        ("init", "--budget"),
    }


@pytest.mark.parametrize(("command", "option", "bad"), NUMERIC_OPTIONS)
def test_every_numeric_option_out_of_range_is_exit_2_naming_it(cli, trained, tmp_path, command, option, bad):
    needs = {
        "eval": [trained, LINEAR],
        "predict": [trained, LINEAR],
        "explain": [trained, LINEAR],
        "cv": [linear_config(tmp_path)],
        "sweep": [linear_config(tmp_path)],
        "init": [LINEAR, "-t", "y", "-o", tmp_path / "c.yaml"],
    }
    result = cli(command, *needs[command], option, bad)
    assert result.code == 2, result
    assert option in result.stderr
    no_crash(result)


@pytest.mark.parametrize("delimiter", [";;", "", "tab"])
def test_init_refuses_a_delimiter_that_is_not_one_character(cli, tmp_path, delimiter):
    result = cli("init", LINEAR, "-t", "y", "-o", tmp_path / "c.yaml", "--quick", "--delimiter", delimiter)
    assert result.code == 2, result
    assert "--delimiter" in result.stderr
    no_crash(result)
    assert not (tmp_path / "c.yaml").exists()


def test_init_takes_backslash_t_as_a_tab(cli, tmp_path):
    data = tmp_path / "t.tsv"
    data.write_text("x\ty\n1\t2\n2\t4\n3\t6\n")
    result = cli("init", data, "-t", "y", "-o", tmp_path / "c.yaml", "--quick", "--delimiter", "\\t")
    assert result.code == 0, result
    assert yaml.safe_load((tmp_path / "c.yaml").read_text())["data"]["delimiter"] == "\t"


@pytest.mark.parametrize("what", ["missing", "folder"])
@pytest.mark.parametrize("command", ["eval", "predict", "explain", "export", "init"])
def test_a_table_named_on_the_command_line_is_named_as_the_argument(cli, trained, tmp_path, command, what):
    """Not "check `data.train`/`data.val`": the file came from the command line."""
    bad = tmp_path / "nope.csv"
    if what == "folder":
        bad.mkdir()
    args = {
        "eval": [trained, bad],
        "predict": [trained, bad],
        "explain": [trained, bad],
        "export": [trained, "--check", bad],
        "init": [bad, "-t", "y", "-o", tmp_path / "c.yaml"],
    }[command]
    result = cli(command, *args)
    assert result.code == 2, result
    assert ("'--check'" if command == "export" else "'CSV'") in result.stderr
    assert "nope.csv" in result.stderr and "data.train" not in result.stderr
    no_crash(result)


HEADER = "epoch,train_loss,val_loss,lr,penalty,seconds\n"
DAMAGED_METRICS = {
    "truncated-row": HEADER + "1,0.5,,0.01,,0.1\n2,0.4",
    "cut-mid-number": HEADER + "1,14.78",
    "short-row": HEADER + "1,2\n",
    "not-a-number": HEADER + "1,abc,,0.1,,0.1\n",
    "epoch-not-a-number": HEADER + "x,1,,0.1,,0.1\n",
    "foreign-columns": "a,b,c\n1,2,3\n4,5,6\n",
    "non-utf8": b"\xff\xfe\x00garbage\x80\x81\n1,2\n",
    "binary": bytes(range(256)) * 4,
}


@pytest.mark.parametrize("content", DAMAGED_METRICS.values(), ids=DAMAGED_METRICS.keys())
def test_plot_on_a_damaged_metrics_csv_is_exit_2(cli, tmp_path, content):
    run = tmp_path / "somerun"
    run.mkdir()
    metrics = run / "metrics.csv"
    if isinstance(content, bytes):
        metrics.write_bytes(content)
    else:
        metrics.write_text(content)
    result = cli("plot", run, "-o", tmp_path / "out.png")
    assert result.code == 2, result
    assert "metrics.csv" in result.stderr
    no_crash(result)


def _set_epoch(c):
    c["epoch"] = "three"


def _set_config(c):
    c["config"] = [1, 2]


def _set_delimiter(c):
    c["config"]["data"]["delimiter"] = ""


def _set_std_zero(c):
    c["preprocess"]["numeric"][0]["std"] = 0.0


def _set_std_text(c):
    c["preprocess"]["numeric"][0]["std"] = "wide"


def _set_target_std_zero(c):
    c["preprocess"]["targets"][0]["std"] = 0.0


def _set_no_features(c):
    c["preprocess"]["features"] = []


def _set_int_weights(c):
    c["weights"] = {k: v.round().to(torch.int64) for k, v in c["weights"].items()}


def _set_categories_text(c):
    c["preprocess"]["categorical"][0]["categories"] = "Adelie"


def _set_nan_weight(c):
    c["weights"]["bias"] = torch.full_like(c["weights"]["bias"], float("nan"))


EDITS = {
    "epoch-text": _set_epoch,
    "config-list": _set_config,
    "delimiter-empty": _set_delimiter,
    "std-zero": _set_std_zero,
    "std-text": _set_std_text,
    "target-std-zero": _set_target_std_zero,
    "features-empty": _set_no_features,
    "int-weights": _set_int_weights,
    "categories-text": _set_categories_text,
    "nan-weight": _set_nan_weight,
}


@pytest.mark.parametrize("command", ["eval", "predict"])
@pytest.mark.parametrize("edit", EDITS.values(), ids=EDITS.keys())
def test_a_hand_edited_checkpoint_is_exit_2_naming_it(cli, trained_categories, tmp_path, edit, command):
    ckpt = torch.load(trained_categories, weights_only=True)
    edit(ckpt)
    edited = tmp_path / "edited.pt"
    torch.save(ckpt, edited)
    rows = write_csv(tmp_path / "rows.csv", ["sp", "x", "y"], PENGUINS)
    result = cli(command, edited, rows, *(["--json"] if command == "eval" else []))
    assert result.code == 2, result
    assert "edited.pt" in result.stderr
    no_crash(result)


# ------------------------------------------------------------ 13. messages
def test_a_fifo_as_data_is_not_called_empty(tmp_path):
    """A named pipe with a writer behind it: read it, or refuse it for what it is."""
    fifo = tmp_path / "data_pipe"
    os.mkfifo(fifo)
    text = "x,y\n1,2\n2,4\n3,6\n4,8\n"

    def feed() -> None:
        with contextlib.suppress(OSError), open(fifo, "w") as f:  # blocks until a reader opens
            f.write(text)

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    cfg = write_config(tmp_path / "cfg.yaml", {"data": {"train": str(fifo), "target": "y"}})
    try:
        result = user("validate", cfg)  # a blocking open() would hang until HANG_GUARD
    finally:
        unblock = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # lets a still-waiting writer finish
        writer.join(timeout=10)
        os.close(unblock)
    assert result.code in (0, 2), result
    no_crash(result)
    if result.code == 2:
        assert "data_pipe" in result.stderr
        assert "0 bytes" not in result.stderr and "empty" not in result.stderr, result


@pytest.mark.parametrize(
    "text, line",
    [
        ('x,y\n1,2\n3,"4\n', 3),
        ('x,y\n1,"2\n3,4\n5,6\n7,8\n', 2),
        ('x,"y\n1,2\n', 1),
    ],
    ids=["last-line", "swallows-rows", "in-header"],
)
def test_an_unterminated_quote_names_the_line_it_opens_on(cli, tmp_path, text, line):
    data = tmp_path / "quoted.csv"
    data.write_text(text)
    cfg = write_config(tmp_path / "cfg.yaml", {"data": {"train": str(data), "target": "y"}})
    result = cli("validate", cfg)
    assert result.code == 2, result
    assert f"line {line}" in result.stderr, result
    assert "quot" in result.stderr.lower(), result
    no_crash(result)


@pytest.mark.parametrize("value", ["5", "[1, 2]", '""', "{a: 1}", "[[y]]"])
def test_config_messages_use_no_pydantic_type_names(cli, tmp_path, value):
    cfg = linear_config(tmp_path)
    result = cli("validate", cfg, "--set", f"data.target={value}")
    assert result.code == 2, result
    assert "data.target" in result.stderr
    for jargon in ("constrained-", "list[", "str]"):
        assert jargon not in result.stderr, (jargon, result.stderr)


def test_a_numeric_yaml_key_gets_a_line(cli, tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"data: {{train: {LINEAR}, target: y}}\n123: 4\n")
    result = cli("validate", cfg)
    assert result.code == 2, result
    assert "line 2" in result.stderr, result
    assert "123" in result.stderr


def test_a_category_only_in_the_validation_split_says_so(cli, tmp_path):
    """'Rare' is on one row; for some seeds val_fraction moves it to the validation rows."""
    rows = [("A" if i % 2 else "B", i, 2 * i) for i in range(19)] + [("Rare", 5, 10)]
    data = write_csv(tmp_path / "rare.csv", ["sp", "x", "y"], rows)
    mentioned = 0
    for seed in range(8):
        cfg = write_config(
            tmp_path / "cfg.yaml",
            {"seed": seed, "data": {"train": str(data), "target": "y", "val_fraction": 0.2}},
        )
        result = cli("validate", cfg)
        assert result.code in (0, 2), result
        no_crash(result)
        lines = [line for line in (result.stdout + result.stderr).splitlines() if "Rare" in line]
        if not lines and result.code == 0:
            continue
        mentioned += 1
        text = result.stderr if result.code == 2 else "\n".join(lines)
        assert "validation" in text or "val_fraction" in text, (seed, result)
    assert mentioned, "no seed put 'Rare' only in the validation rows, or it went unmentioned"


# ---------------------------------------------------------------- 14. init
def test_init_on_paths_with_yaml_syntax_writes_a_config_that_validates(cli, tmp_path):
    folder = tmp_path / "we: ird #dir"
    folder.mkdir()
    header, values = linear_rows(20, n_features=2)
    data = write_csv(folder / "da: ta #1.csv", header, values.round(6).tolist())
    cfg = folder / "con: fig #x.yaml"
    written = cli("init", data, "--target", "y", "-o", cfg)
    assert written.code == 0, written
    checked = cli("validate", cfg)
    assert checked.code == 0, checked
    resolved = cli("config", cfg)
    assert resolved.code == 0, resolved
    config = yaml.safe_load(resolved.stdout)
    assert Path(config["data"]["train"]) == data
    assert Path(config["output"]["dir"]).name == "con: fig #x"


@pytest.mark.parametrize("n_rows", [1, 2])
def test_init_on_a_tiny_table_writes_a_config_that_validates(cli, tmp_path, n_rows):
    data = write_csv(tmp_path / "tiny.csv", ["x", "y"], [[i, 2 * i] for i in range(1, n_rows + 1)])
    cfg = tmp_path / "tiny.yaml"
    written = cli("init", data, "--target", "y", "-o", cfg)
    assert written.code == 0, written
    checked = cli("validate", cfg)
    assert checked.code == 0, checked


# ----------------------------------------- 15. predict to stdout is not partial
def test_predict_to_stdout_does_not_stream_rows_before_a_late_bad_cell(cli, trained, tmp_path):
    x = np.arange(100_050, dtype=np.float64) % 7
    data = tmp_path / "late_bad.csv"
    with open(data, "w") as f:
        f.write("x,y\n")
        np.savetxt(f, np.column_stack([x, 2 * x]), fmt="%g", delimiter=",")
        f.write("oops,1\n")
    result = cli("predict", trained, data)
    assert result.code == 2, result.stderr
    assert "line 100052" in result.stderr
    rows_out = max(0, len(result.stdout.splitlines()) - 1)
    assert rows_out == 0 or "partial" in result.stderr.lower(), (
        f"{rows_out} rows went to stdout before the error, with no word that they are partial"
    )


def test_predict_to_a_file_with_a_late_bad_cell_writes_nothing(cli, trained, tmp_path):
    x = np.arange(100_050, dtype=np.float64) % 7
    data = tmp_path / "late_bad.csv"
    with open(data, "w") as f:
        f.write("x\n")
        np.savetxt(f, x[:, None], fmt="%g")
        f.write("oops\n")
    out = tmp_path / "pred.csv"
    result = cli("predict", trained, data, "-o", out)
    assert result.code == 2, result
    assert not out.exists()
    assert list(tmp_path.glob(".pred.csv*")) == []


def _take_the_folder(folder: str, start: Any, said: Any) -> None:
    """In a forked process: try the run folder's lock the moment the other process does."""
    from mse_train.errors import OutputError
    from mse_train.outputs import run_folder

    start.wait()
    try:
        with run_folder.lock(Path(folder)):
            said.put("held")
            time.sleep(0.3)  # longer than the other one waits (CONTENTION, lowered below)
    except OutputError:
        said.put("refused")


def test_of_two_processes_that_lock_a_folder_at_once_exactly_one_holds_it(tmp_path, monkeypatch):
    """The lock's database opened by two processes at the same moment: one holds the folder
    and the other is refused, every time (a lock that never waited refused both about once
    in ten pairs)."""
    import multiprocessing

    from mse_train.outputs import run_folder

    monkeypatch.setattr(run_folder, "CONTENTION", 0.1)  # the children inherit it
    context = multiprocessing.get_context("fork")
    for pair in range(30):
        folder = tmp_path / f"run{pair}"
        folder.mkdir()
        start, said = context.Barrier(2), context.SimpleQueue()
        takers = [context.Process(target=_take_the_folder, args=(str(folder), start, said)) for _ in range(2)]
        for taker in takers:
            taker.start()
        for taker in takers:
            taker.join(HANG_GUARD)
        assert sorted([said.get(), said.get()]) == ["held", "refused"], f"pair {pair}"
