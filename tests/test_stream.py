"""A table larger than `data.memory_budget` is streamed: same statistics, a sensible fit,
exact resume inside an epoch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mse_train import config, recipe
from mse_train.data import cache, fitting, prepare, stream_fit
from mse_train.data.stream import BLOCK_ROWS, Rows
from mse_train.errors import DataError

from conftest import read_metrics, signal_at_step, write_config


@pytest.fixture
def mixed(tmp_path: Path) -> Path:
    """Numbers, a category, empty cells in both, an empty target; more than one block."""
    rng = np.random.default_rng(1)
    n = BLOCK_ROWS + 5000
    frame = pd.DataFrame(rng.normal(size=(n, 3)) * [1.0, 100.0, 0.01] + [0, 1e4, 5], columns=["a", "b", "c"])
    frame["kind"] = rng.choice(["red", "green", "blue"], n)
    frame["y"] = frame["a"] * 2 + frame["c"] * 50 + (frame["kind"] == "red") + 0.1 * rng.normal(size=n)
    frame.loc[rng.choice(n, 40, replace=False), "a"] = np.nan
    frame.loc[rng.choice(n, 30, replace=False), "kind"] = np.nan
    frame.loc[rng.choice(n, 5, replace=False), "y"] = np.nan
    path = tmp_path / "mixed.csv"
    frame.to_csv(path, index=False)
    return path


def data_config(tmp_path: Path, table: Path, **data) -> Path:
    return write_config(
        tmp_path / "cfg.yaml",
        {
            "seed": 5,
            "data": {"train": str(table), "target": "y", "val_fraction": 0.25, **data},
            "model": {"type": "mlp", "hidden": [16]},
            "optimizer": {"name": "adam", "lr": 0.01},
            "train": {"epochs": 3, "batch_size": 512},
            "output": {"plot": False},
        },
    )


@pytest.mark.parametrize(
    ("missing", "encoding"),
    [("mean", "onehot"), ("median", "onehot"), ("drop", "onehot"), ("mean", "embedding")],
)
def test_streamed_statistics_equal_the_in_memory_ones(tmp_path, mixed, missing, encoding):
    cfg = config.load(data_config(tmp_path, mixed, missing=missing, categorical_encoding=encoding))
    memory = prepare.prepare(cfg.data, cfg.targets, cfg.seed)
    cfg.data.memory_budget = "1KiB"
    streamed = stream_fit.prepare_run(cfg.data, cfg.targets, cfg.seed, 512)
    assert isinstance(streamed, stream_fit.Streamed)
    assert any("streams it from the data cache" in n for n in streamed.notes)
    a, b = memory.pre, streamed.pre
    assert [c.categories for c in a.categorical] == [c.categories for c in b.categorical]
    assert a.input_names == b.input_names
    pairs = [
        (x.name, x.mean, x.std, y.name, y.mean, y.std) for x, y in zip(a.numeric, b.numeric, strict=True)
    ]
    pairs += [
        (x.name, x.mean, x.std, y.name, y.mean, y.std) for x, y in zip(a.targets, b.targets, strict=True)
    ]
    for name, mean, std, other, other_mean, other_std in pairs:
        assert name == other
        assert mean == pytest.approx(other_mean, rel=1e-12, abs=1e-12)
        assert std == pytest.approx(other_std, rel=1e-12)
    for x, y in zip(a.numeric, b.numeric, strict=True):
        assert (x.fill is None) == (y.fill is None) == (missing == "drop")
        assert x.fill is None or x.fill == pytest.approx(y.fill, rel=1e-12)
    assert memory.profile == streamed.profile
    assert (len(memory.train), len(memory.val or [])) == (len(streamed.train), len(streamed.val or []))
    assert isinstance(streamed.train, Rows) and streamed.val is not None
    # The same rows, encoded the same way: compare as sets of rows (the order differs).
    x_stream = np.concatenate([x for x, _ in streamed.val.blocks()])
    assert memory.val is not None
    np.testing.assert_array_equal(np.sort(memory.val.x, axis=0), np.sort(x_stream, axis=0))


def test_a_table_within_the_budget_stays_in_memory(tmp_path, mixed):
    cfg = config.load(data_config(tmp_path, mixed, missing="mean", memory_budget="4GiB"))
    assert isinstance(stream_fit.prepare_run(cfg.data, cfg.targets, cfg.seed, 512), prepare.Prepared)


def test_streamed_run_fits_about_as_well_as_in_memory(cli, tmp_path, mixed):
    cfg = data_config(tmp_path, mixed, missing="mean")
    assert cli("run", cfg, "-q", "-o", tmp_path / "memory").code == 0
    result = cli("run", cfg, "-o", tmp_path / "streamed", "--set", "data.memory_budget=1KiB")
    assert result.code == 0, result
    assert "streams it from the data cache" in result.stdout + result.stderr
    memory = float(read_metrics(tmp_path / "memory" / "metrics.csv")[-1]["val_loss"])
    streamed = float(read_metrics(tmp_path / "streamed" / "metrics.csv")[-1]["val_loss"])
    first = float(read_metrics(tmp_path / "streamed" / "metrics.csv")[0]["val_loss"])
    assert streamed < 0.1 and streamed < 2 * memory + 0.01 and streamed < first
    scored = cli("eval", tmp_path / "streamed" / "best.pt", mixed, "--json")
    assert scored.code == 0, scored
    # a streamed run keeps no residuals: --interval says so, not "written before its run ended"
    for command in ("eval", "predict"):
        refused = cli(command, tmp_path / "streamed" / "best.pt", mixed, "--interval", "0.9")
        assert refused.code == 2, refused
        assert "streamed its table" in refused.stderr and "data.memory_budget" in refused.stderr
        assert "--resume" not in refused.stderr and "before its run ended" not in refused.stderr


def test_full_batch_training_cannot_stream(cli, tmp_path, mixed):
    cfg = data_config(tmp_path, mixed, missing="mean", memory_budget="1KiB")
    result = cli("run", cfg, "-q", "-o", tmp_path / "run", "--set", "train.batch_size=null")
    assert result.code == 2
    assert "train.batch_size" in result.stderr and "memory_budget" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_bad_budget_is_a_config_error(cli, tmp_path, mixed):
    cfg = data_config(tmp_path, mixed, memory_budget="lots")
    result = cli("run", cfg, "-q", "-o", tmp_path / "run")
    assert result.code == 2 and "data.memory_budget" in result.stderr and "not a size" in result.stderr


def test_empty_cells_under_error_are_named_by_line_when_streaming(cli, tmp_path, mixed):
    cfg = data_config(tmp_path, mixed, memory_budget="1KiB")
    result = cli("run", cfg, "-q", "-o", tmp_path / "run")
    assert result.code == 2 and "empty cell(s), at line(s)" in result.stderr, result


def test_interrupted_streamed_epoch_resumes_exactly(tmp_path, mixed, monkeypatch):
    from mse_train.errors import TrainingInterrupted

    cfg = config.load(data_config(tmp_path, mixed, missing="median", memory_budget="1KiB"))
    cfg.output.dir = str(tmp_path / "a")
    per_epoch = -(-round((BLOCK_ROWS + 5000 - 5) * 0.75) // 512)
    restore = signal_at_step(monkeypatch, per_epoch + 7)  # inside epoch 2, past the first block's
    with pytest.raises(TrainingInterrupted):
        recipe.run(cfg, recipe.Options(), recipe.Silent())
    restore()
    progress = torch.load(tmp_path / "a" / "last.pt", weights_only=True)["training"]["progress"]
    assert (progress["epoch"], progress["batch"]) == (1, 7)
    recipe.run(cfg, recipe.Options(resume=True), recipe.Silent())
    cfg.output.dir = str(tmp_path / "b")
    recipe.run(cfg, recipe.Options(), recipe.Silent())
    a, b = read_metrics(tmp_path / "a" / "metrics.csv"), read_metrics(tmp_path / "b" / "metrics.csv")
    assert [(r["train_loss"], r["val_loss"]) for r in a] == [(r["train_loss"], r["val_loss"]) for r in b]
    wa = torch.load(tmp_path / "a" / "last.pt", weights_only=True)["weights"]
    wb = torch.load(tmp_path / "b" / "last.pt", weights_only=True)["weights"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_the_epoch_order_is_a_seeded_shuffle_of_blocks_and_rows(tmp_path, mixed):
    cfg = config.load(data_config(tmp_path, mixed, missing="mean", memory_budget="1KiB", val_fraction=0.0))
    streamed = stream_fit.prepare_run(cfg.data, cfg.targets, cfg.seed, 512)
    assert isinstance(streamed, stream_fit.Streamed)

    def targets(seed: int, start: int = 0) -> np.ndarray:
        g = torch.Generator()
        g.manual_seed(seed)
        return np.concatenate([y for _, y in streamed.train.epoch(g, 512, start)])[:, 0]

    plain = np.concatenate([y for _, y in streamed.train.epoch(None, 512, 0)])[:, 0]
    first = targets(1)
    assert len(first) == len(plain) == len(streamed.train)
    np.testing.assert_array_equal(np.sort(first), np.sort(plain))  # every row once
    assert not np.array_equal(first, plain) and not np.array_equal(first, targets(2))
    np.testing.assert_array_equal(first, targets(1))
    np.testing.assert_array_equal(first[512 * 130 :], targets(1, 130))  # resuming at batch 130


def count_streamed_evals(monkeypatch) -> list[int]:
    """A list that gets an item each time eval takes its streamed branch (stream_fit.eval_blocks)."""
    calls: list[int] = []
    blocks = stream_fit.eval_blocks

    def spy(*args):
        calls.append(1)
        return blocks(*args)

    monkeypatch.setattr(stream_fit, "eval_blocks", spy)
    return calls


def test_eval_of_a_table_over_the_budget_streams_and_equals_the_in_memory_eval(
    cli, tmp_path, mixed, monkeypatch
):
    cfg = data_config(tmp_path, mixed, missing="mean")
    run = cli("run", cfg, "-q", "-o", tmp_path / "s", "--set", "data.memory_budget=1KiB")
    assert run.code == 0, run
    calls = count_streamed_evals(monkeypatch)
    streamed = cli("eval", tmp_path / "s" / "best.pt", mixed, "--json")
    assert streamed.code == 0, streamed
    assert calls == [1]  # the checkpoint's budget (1KiB) made eval stream
    monkeypatch.setattr(stream_fit, "mapped_if_too_big", lambda *args: None)
    memory = cli("eval", tmp_path / "s" / "best.pt", mixed, "--json")
    assert memory.code == 0, memory
    assert calls == [1]
    a, b = json.loads(streamed.stdout), json.loads(memory.stdout)
    assert a["n"] == b["n"] == len(pd.read_csv(mixed).dropna(subset=["y"]))
    # each block's targets are read as written (not unscale(scale(y)), float32), as in memory
    for key in ("mse", "rmse", "mae", "r2"):
        assert a[key] == pytest.approx(b[key], rel=1e-9)
    assert a["drift"] == b["drift"]
    refused = cli("eval", tmp_path / "s" / "best.pt", mixed, "--interval", "0.9")
    assert refused.code == 2
    # A prediction that is not a finite number is named as in memory: the file's line and
    # the feature furthest out, wherever its block lies.
    monkeypatch.undo()  # streamed again
    calls = count_streamed_evals(monkeypatch)
    far = pd.read_csv(mixed)
    far.loc[BLOCK_ROWS + 10, ["c", "y"]] = [3e38, 1.0]  # 3e40 standard deviations out
    far.to_csv(tmp_path / "far.csv", index=False)
    bad = cli("eval", tmp_path / "s" / "best.pt", tmp_path / "far.csv")
    assert bad.code == 2, bad
    assert f"line {BLOCK_ROWS + 12}" in bad.stderr and "`c` is 3e+38" in bad.stderr, bad.stderr
    assert "Traceback" not in bad.stderr and calls == [1], calls
    # So is a category training never saw: the one transform names its value and line.
    unseen = pd.read_csv(mixed)
    unseen.loc[BLOCK_ROWS + 20, "kind"] = "purple"
    unseen.to_csv(tmp_path / "unseen.csv", index=False)
    bad = cli("eval", tmp_path / "s" / "best.pt", tmp_path / "unseen.csv")
    assert bad.code == 2, bad
    assert "`kind`: 1 row(s) of a block hold categories that training never saw" in bad.stderr, bad.stderr
    assert f"values: 'purple'; first at line(s) {BLOCK_ROWS + 22}" in bad.stderr, bad.stderr


@pytest.mark.parametrize("missing", ["mean", "median"])
def test_one_fitter_gives_in_blocks_what_it_gives_in_one_block(mixed, missing):
    """fitting.fit over a table in column form: blocks of 1,000 rows (weighted too,
    which streaming does not offer yet) agree with one block to ~1e-12; the vocabularies,
    fill medians and the drift profile exactly."""
    cfg = config.schema.DataConfig(train=str(mixed), target="y", missing=missing)
    data = pd.read_csv(mixed).dropna(subset=["y"])
    entry = cache.Entry.of_frame(
        data.astype({"a": "float32", "b": "float32", "c": "float32", "y": "float32"}),
        ["a", "b", "c", "kind", "y"],
        ["kind"],
    )
    rng = np.random.default_rng(0)
    rows = rng.random(entry.rows) < 0.8
    w = rng.integers(0, 3, entry.rows).astype(np.float64)
    for weights in (None, w):
        whole = fitting.fit(
            mixed, entry, rows, ["a", "b", "c", "kind"], ["y"], cfg, block_rows=entry.rows, weights=weights
        )
        blocks = fitting.fit(
            mixed, entry, rows, ["a", "b", "c", "kind"], ["y"], cfg, block_rows=1000, weights=weights
        )
        assert whole[1] == blocks[1]
        one, many = whole[0], blocks[0]
        assert one.categorical == many.categorical
        pairs = [(a.mean, a.std, b.mean, b.std) for a, b in zip(one.numeric, many.numeric, strict=True)]
        pairs += [(a.mean, a.std, b.mean, b.std) for a, b in zip(one.targets, many.targets, strict=True)]
        for mean_a, std_a, mean_b, std_b in pairs:
            assert (mean_a, std_a) == pytest.approx((mean_b, std_b), rel=1e-12)
        if missing == "median":
            assert [c.fill for c in one.numeric] == [c.fill for c in many.numeric]
    # integer weights fit what repeating the rows fits
    picked = np.flatnonzero(rows)
    repeated = np.repeat(picked, w[picked].astype(int))
    weighted = fitting.fit(
        mixed, entry, rows, ["a", "b", "c", "kind"], ["y"], cfg, block_rows=1000, weights=w
    )[0]
    plain = fitting.fit(mixed, entry, repeated, ["a", "b", "c", "kind"], ["y"], cfg, block_rows=entry.rows)[0]
    for a, b in zip(weighted.numeric, plain.numeric, strict=True):
        assert (a.mean, a.std, a.fill) == pytest.approx((b.mean, b.std, b.fill), rel=1e-9)
    assert (weighted.targets[0].mean, weighted.targets[0].std) == pytest.approx(
        (plain.targets[0].mean, plain.targets[0].std), rel=1e-9
    )


def test_a_category_only_in_validation_rows_is_named_alike_streamed_and_in_memory(tmp_path, mixed):
    cfg = config.load(data_config(tmp_path, mixed, missing="mean", memory_budget="1KiB"))
    streamed = stream_fit.prepare_run(cfg.data, cfg.targets, cfg.seed, 512)
    assert isinstance(streamed, stream_fit.Streamed) and streamed.val is not None
    assert streamed.val.mask is not None
    row = int(np.flatnonzero(streamed.val.mask)[-1])  # a validation row in the second block
    rare = pd.read_csv(mixed)
    rare.loc[row, "kind"] = "rare"
    rare.to_csv(mixed, index=False)
    with pytest.raises(DataError) as in_blocks:
        stream_fit.prepare_run(cfg.data, cfg.targets, cfg.seed, 512)
    cfg.data.memory_budget = "1GiB"
    with pytest.raises(DataError) as in_memory:
        stream_fit.prepare_run(cfg.data, cfg.targets, cfg.seed, 512)
    assert str(in_blocks.value) == str(in_memory.value)
    assert "'rare' only in 1 row(s) that fell in the validation split" in str(in_blocks.value)
    assert f"(line(s) {row + 2})" in str(in_blocks.value)


def test_eval_of_a_gzip_table_over_the_budget_streams(cli, tmp_path, monkeypatch):
    """A .gz file's size bounds nothing about its rows: eval maps it and measures, as run does."""
    import gzip

    n = BLOCK_ROWS + 5000
    a = (np.arange(n) % 10) * 0.5
    frame = pd.DataFrame({"a": a, "b": a[::-1], "y": a + 2 * a[::-1]})
    path = tmp_path / "rep.csv.gz"
    with gzip.open(path, "wt") as f:
        frame.to_csv(f, index=False)
    bound = stream_fit.in_memory_bytes(path.stat().st_size // 3, 3, 3, 1)
    need = stream_fit.in_memory_bytes(n, 3, 2, 1)
    budget = (bound >> 10) + 1  # KiB: the compressed size says it fits; it does not
    assert budget << 10 < need
    cfg = data_config(tmp_path, path, memory_budget=f"{budget}KiB", val_fraction=0.0)
    assert cli("run", cfg, "-q", "-o", tmp_path / "s").code == 0
    calls = count_streamed_evals(monkeypatch)
    result = cli("eval", tmp_path / "s" / "best.pt", path, "--json")
    assert result.code == 0, result
    assert calls == [1]
