"""The data cache (`data.cache`): parsed once, read back the same, never trusted when damaged."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mse_train.data import cache, ingest, table
from mse_train.data.digest import Digest

from conftest import HANG_GUARD, linear_rows, read_json, read_metrics, write_config, write_csv

COLUMNS = ["x0", "colour", "size", "y"]


def mixed_rows(n: int = 60) -> list[list[str]]:
    """Numbers, a text column (inferred categorical), integer codes, empty cells, padding."""
    colours = ["red", " blue", "green ", "NA", ""]
    return [
        [f"{i * 0.25:.2f}", colours[i % 5], str(i % 3), "" if i == 7 else f"{i * 0.5 + (i % 3):.3f}"]
        for i in range(n)
    ]


@pytest.fixture
def mixed(tmp_path):
    return write_csv(tmp_path / "mixed.csv", COLUMNS, mixed_rows())


def store_at(folder: Path) -> cache.Store:
    store = cache.open_store(str(folder), [])
    assert store is not None
    return store


def entries(store: cache.Store) -> list[Path]:
    return sorted((store.root / "tables").iterdir())


def read_both(path: Path, store: cache.Store, **kwargs):
    args = dict(categorical=["size"], infer_from=["x0", "colour", "size"])
    args.update(kwargs)
    plain = table.read(path, COLUMNS, args["categorical"], infer_from=args["infer_from"])
    cached = ingest.read(path, COLUMNS, args["categorical"], infer_from=args["infer_from"], store=store)
    return plain, cached


def assert_same_table(plain: table.Table, cached: table.Table) -> None:
    pd.testing.assert_frame_equal(plain.frame, cached.frame)
    assert cached.frame.dtypes.tolist() == plain.frame.dtypes.tolist()
    assert cached.categorical == plain.categorical
    assert cached.header == plain.header
    assert cached.row_groups == plain.row_groups
    assert cached.hasher.result() == plain.hasher.result()


@pytest.fixture
def stat_trusted(monkeypatch) -> None:
    """Files written by a test are moments old, so their hash would not be recorded with
    their stat signature (a later read hashes them again, and meanwhile starts parsing):
    trust the signature at once, so that a second read goes straight to the cache."""
    monkeypatch.setattr(cache, "RACY_NS", 0)


def no_parse(monkeypatch) -> None:
    """Make any parse of a file fail: what follows must come from the cache (see `stat_trusted`)."""

    def refuse(*args, **kwargs):
        raise AssertionError("the file was parsed although the cache holds it")

    monkeypatch.setattr(ingest, "_parse_csv", refuse)
    monkeypatch.setattr(table, "read", refuse)


# ------------------------------------------------------------------ same frame
@pytest.mark.parametrize("chunk_rows", [7, 1 << 18])
def test_the_cache_gives_the_frame_the_parser_gives(mixed, tmp_path, monkeypatch, stat_trusted, chunk_rows):
    monkeypatch.setattr(ingest, "CHUNK_ROWS", chunk_rows)  # 7: categories met chunk by chunk
    store = store_at(tmp_path / "c")
    plain, built = read_both(mixed, store)
    assert built.categorical == ["colour", "size"]
    assert built.frame["colour"].isna().sum() == 24  # "NA" and "" are empty, as without a cache
    assert_same_table(plain, built)
    no_parse(monkeypatch)
    again = ingest.read(mixed, COLUMNS, ["size"], infer_from=["x0", "colour", "size"], store=store)
    assert_same_table(plain, again)
    assert len(entries(store)) == 1 and store.notes == []


def test_gzip_and_parquet_tables_are_cached(mixed, tmp_path, monkeypatch, stat_trusted):
    gz = tmp_path / "mixed.csv.gz"
    gz.write_bytes(gzip.compress(mixed.read_bytes()))
    plain = table.read(mixed, COLUMNS, ["size"], infer_from=["x0", "colour", "size"])
    parquet = tmp_path / "mixed.parquet"
    plain.frame.assign(size=plain.frame["size"].astype(object)).to_parquet(parquet, row_group_size=25)
    store = store_at(tmp_path / "c")
    for path in (gz, parquet):
        first = table.read(path, COLUMNS, ["size"], infer_from=["x0", "colour", "size"])
        built = ingest.read(path, COLUMNS, ["size"], infer_from=["x0", "colour", "size"], store=store)
        if path == parquet:  # pyarrow's nulls are None, the cache's empty cells NaN: both empty to pandas
            first.frame = first.frame.fillna(np.nan)
        assert_same_table(first, built)
    assert len(entries(store)) == 2
    assert ingest.read(
        parquet, COLUMNS, ["size"], infer_from=["x0", "colour", "size"], store=store
    ).row_groups == (
        25,
        25,
        10,
    )
    no_parse(monkeypatch)
    for path in (gz, parquet):
        ingest.read(path, COLUMNS, ["size"], infer_from=["x0", "colour", "size"], store=store)
    assert len(entries(store)) == 2 and store.notes == []


def test_entries_are_keyed_by_content_and_settings(mixed, tmp_path, monkeypatch):
    store = store_at(tmp_path / "c")
    ingest.read(mixed, COLUMNS, ["size"], infer_from=["x0", "colour", "size"], store=store)
    ingest.read(mixed, COLUMNS, [], infer_from=["x0", "colour"], store=store)  # size as numbers
    ingest.read(mixed, ["x0", "y"], [], store=store)  # other columns
    assert len(entries(store)) == 3
    copy = shutil.copy(mixed, tmp_path / "copy.csv")  # the same bytes elsewhere: the same entry

    def refuse(*args, **kwargs):
        raise AssertionError("published a second entry for the same bytes")

    monkeypatch.setattr(cache.Builder, "publish", refuse)
    got = ingest.read(Path(copy), ["x0", "y"], [], store=store)
    assert len(entries(store)) == 3
    assert got.path == Path(copy)


def test_a_changed_file_is_parsed_again_even_with_the_same_size_and_mtime(tmp_path, monkeypatch):
    monkeypatch.setattr(cache, "RACY_NS", 0)  # the file was just written: record its hash anyway
    path = write_csv(tmp_path / "t.csv", ["x", "y"], [[1, 2], [3, 4]])
    store = store_at(tmp_path / "c")
    assert ingest.read(path, ["x", "y"], store=store).frame["x"].tolist() == [1, 3]
    assert len(list((store.root / "files").iterdir())) == 1  # its hash and stat signature
    stat = path.stat()
    path.write_text("x,y\n5,2\n3,4\n")  # same size
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same mtime; ctime moves
    assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns
    again = ingest.read(path, ["x", "y"], store=store)
    assert again.frame["x"].tolist() == [5, 3]
    assert len(entries(store)) == 2


def test_a_recorded_hash_is_used_while_the_stat_signature_matches(tmp_path, monkeypatch, stat_trusted):
    path = write_csv(tmp_path / "t.csv", ["x", "y"], [[1, 2], [3, 4]])
    store = store_at(tmp_path / "c")
    sha = ingest.read(path, ["x", "y"], store=store).hasher.result()
    assert store.known_sha256(path.resolve(), path.stat()) == sha

    def refuse(*args, **kwargs):
        raise AssertionError("hashed again")

    monkeypatch.setattr(Digest, "__init__", refuse)
    assert ingest.read(path, ["x", "y"], store=store).hasher.result() == sha


def test_a_file_changed_moments_ago_is_not_trusted_by_its_stat(tmp_path):
    path = write_csv(tmp_path / "t.csv", ["x", "y"], [[1, 2], [3, 4]])
    store = store_at(tmp_path / "c")
    ingest.read(path, ["x", "y"], store=store)
    assert store.known_sha256(path.resolve(), path.stat()) is None  # hashed again next time


# -------------------------------------------------------------------- damage
def _column_file(entry: Path, name: str) -> Path:
    manifest = json.loads((entry / "manifest.json").read_text())
    return entry / str(next(c["file"] for c in manifest["columns"] if c["name"] == name))


def _edit_manifest(entry: Path, change) -> None:
    manifest = json.loads((entry / "manifest.json").read_text())
    change(manifest)
    (entry / "manifest.json").write_text(json.dumps(manifest))


def _set_column(key, value):
    def change(manifest):
        manifest["columns"][0][key] = value

    return change


DAMAGE = {
    "truncated column": lambda e: _column_file(e, "x0").write_bytes(_column_file(e, "x0").read_bytes()[:-3]),
    "column too long": lambda e: _column_file(e, "y").write_bytes(_column_file(e, "y").read_bytes() * 2),
    "flipped byte": lambda e: _column_file(e, "y").write_bytes(
        b"\x01" + _column_file(e, "y").read_bytes()[1:]
    ),
    "codes out of range": lambda e: _column_file(e, "colour").write_bytes(np.full(60, 9, "<i4").tobytes()),
    "wrong dtype": lambda e: _edit_manifest(e, _set_column("dtype", "<f8")),
    "wrong row count": lambda e: _edit_manifest(e, lambda m: m.update(rows=59)),
    "bad JSON": lambda e: (e / "manifest.json").write_text('{"format": 1, "rows": '),
    "no manifest": lambda e: (e / "manifest.json").unlink(),
    "source hash mismatch": lambda e: _edit_manifest(e, lambda m: m.update(sha256="0" * 64)),
    "other format version": lambda e: _edit_manifest(e, lambda m: m.update(format=cache.FORMAT + 1)),
    "no column file": lambda e: _column_file(e, "size").unlink(),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_entry_is_rebuilt_not_trusted(mixed, tmp_path, damage):
    store = store_at(tmp_path / "c")
    plain, _ = read_both(mixed, store)
    [entry] = entries(store)
    DAMAGE[damage](entry)
    if damage == "codes out of range":  # the CRC made right, so that the range check is what catches it
        crc = zlib.crc32(np.full(60, 9, "<i4").tobytes())
        _edit_manifest(
            entry, lambda m: next(c for c in m["columns"] if c["name"] == "colour").update(crc32=crc)
        )
    again = ingest.read(mixed, COLUMNS, ["size"], infer_from=["x0", "colour", "size"], store=store)
    assert_same_table(plain, again)
    assert len(store.notes) == 1 and "did not check out" in store.notes[0], store.notes
    assert entries(store) == [entry]  # rebuilt in the same place
    store.notes.clear()
    ingest.read(mixed, COLUMNS, ["size"], infer_from=["x0", "colour", "size"], store=store)
    assert store.notes == []  # and the new one checks out
    assert list((store.root / "building").iterdir()) == []


def test_a_damaged_entry_is_named_in_the_run_notes(cli, small_config, tmp_path, data_cache):
    assert cli("run", small_config(), "-q").code == 0
    [entry] = (data_cache / "tables").iterdir()
    (entry / "manifest.json").write_text("not json")
    result = cli("run", small_config(), "--overwrite")
    assert result.code == 0, result
    assert "did not check out (its manifest.json is not valid JSON)" in result.stderr
    assert any("did not check out" in n for n in read_json(tmp_path / "run" / "summary.json")["notes"])


# ----------------------------------------------------------- bad files, never cached
BAD = {
    "a word in a number column": ([["1", "2"], ["x", "3"], ["2", "4"], ["3", "5"]], "line 3: 'x'"),
    "a short row": ([["1", "2"], ["5"], ["2", "4"]], "line 3: 1 field"),
    "an infinite number": ([["1", "2"], ["1e39", "3"]], "infinite value(s) at line(s) 3"),
    "an extra field": ([["1", "2", "9"], ["2", "3"]], "line 2: 3 fields"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_file_with_problems_gives_the_same_message_and_is_never_cached(cli, tmp_path, data_cache, case):
    rows, expected = BAD[case]
    path = write_csv(tmp_path / "bad.csv", ["x", "y"], rows)
    messages = []
    for setting in ("off", "auto"):
        cfg = write_config(
            tmp_path / f"{setting}.yaml",
            {
                "data": {"train": str(path), "target": "y", "cache": setting},
                "output": {"dir": str(tmp_path / setting)},
            },
        )
        result = cli("run", cfg)
        assert result.code == 2, result
        messages.append(result.stderr)
    assert messages[0] == messages[1]
    assert expected in messages[1]
    assert list((data_cache / "tables").iterdir()) == []
    assert list((data_cache / "building").iterdir()) == []


def test_a_column_of_words_beyond_the_first_rows_is_inferred_as_the_exact_reader_does(tmp_path):
    rows = [[str(i), str(i)] for i in range(1100)] + [[f"w{i}", str(i)] for i in range(1200)]
    path = write_csv(tmp_path / "late.csv", ["c", "y"], rows)  # mostly words, but not in the first rows
    store = store_at(tmp_path / "c")
    plain = table.read(path, ["c", "y"], (), infer_from=["c"])
    assert plain.categorical == ["c"]
    assert_same_table(plain, ingest.read(path, ["c", "y"], (), infer_from=["c"], store=store))
    assert len(entries(store)) == 1


# -------------------------------------------------------------- runs end to end
def _run_outputs(out: Path) -> tuple[list[dict[str, str]], dict[str, torch.Tensor]]:
    rows = [{k: v for k, v in r.items() if k != "seconds"} for r in read_metrics(out / "metrics.csv")]
    return rows, torch.load(out / "best.pt", weights_only=True)["weights"]


def test_runs_with_and_without_the_cache_give_the_same_results(
    cli, tmp_path, mixed, data_cache, monkeypatch, stat_trusted
):
    val = write_csv(tmp_path / "val.csv", COLUMNS, mixed_rows(20))
    outs = {}
    for name, setting in (("off", "off"), ("built", "auto"), ("read", "auto")):
        if name == "read":
            no_parse(monkeypatch)
        cfg = write_config(
            tmp_path / f"{name}.yaml",
            {
                "seed": 3,
                "data": {
                    "train": str(mixed),
                    "val": str(val),
                    "target": "y",
                    "categorical": ["size"],
                    "missing": "mean",
                    "cache": setting,
                },
                "model": {"type": "mlp", "hidden": [8]},
                "optimizer": {"name": "adam", "lr": 0.01},
                "train": {"epochs": 4, "batch_size": 16},
                "output": {"dir": str(tmp_path / name), "plot": False},
            },
        )
        result = cli("run", cfg, "-q")
        assert result.code == 0, result
        outs[name] = _run_outputs(tmp_path / name)
        summary = read_json(tmp_path / name / "summary.json")
        assert set(summary["timings"]) == {"ingest_seconds", "train_seconds"}
        assert all(v >= 0 for v in summary["timings"].values())
    assert len(list((data_cache / "tables").iterdir())) == 2  # train and val
    for name in ("built", "read"):
        assert outs[name][0] == outs["off"][0]
        for key, weight in outs["off"][1].items():
            torch.testing.assert_close(outs[name][1][key], weight, rtol=0, atol=0)
    monkeypatch.undo()  # parsing allowed again (a checkpoint trained with `cache: off` evaluates without)
    monkeypatch.setenv("MSE_TRAIN_CACHE_DIR", str(data_cache))
    predictions = []
    for name in ("off", "read"):
        target = tmp_path / f"pred-{name}.csv"
        assert cli("predict", tmp_path / name / "best.pt", val, "--output", target).code == 0
        predictions.append(target.read_text())
    assert predictions[0] == predictions[1]
    scores = [
        json.loads(cli("eval", tmp_path / n / "best.pt", val, "--json").stdout) for n in ("off", "read")
    ]
    assert scores[0] == scores[1]


def test_resume_cv_and_eval_read_the_cache(
    cli, small_config, tmp_path, table, monkeypatch, data_cache, stat_trusted
):
    cfg = small_config(train={"epochs": 2})
    assert cli("run", cfg, "-q").code == 0
    no_parse(monkeypatch)
    resumed = cli("run", small_config(train={"epochs": 4}, data={"cache": "auto"}), "--resume", "-q")
    assert resumed.code == 0, resumed
    assert read_json(tmp_path / "run" / "summary.json")["epochs_run"] == 4
    assert cli("cv", cfg, "--folds", "2", "-q").code == 0
    # eval reads the training columns in a different role (no inference): one more entry, then reused
    monkeypatch.undo()
    monkeypatch.setenv("MSE_TRAIN_CACHE_DIR", str(data_cache))
    monkeypatch.setattr(cache, "RACY_NS", 0)
    assert cli("eval", tmp_path / "run" / "best.pt", table, "--json").code == 0
    no_parse(monkeypatch)
    assert cli("eval", tmp_path / "run" / "best.pt", table, "--json").code == 0
    assert len(list((data_cache / "tables").iterdir())) == 2


def test_a_relative_cache_folder_is_taken_from_the_config_folder(cli, small_config, tmp_path):
    result = cli("run", small_config(data={"cache": "tables-cache"}), "-q")
    assert result.code == 0, result
    assert len(list((tmp_path / "tables-cache" / "tables").iterdir())) == 1
    saved = (tmp_path / "run" / "config.yaml").read_text()
    assert f"cache: {tmp_path / 'tables-cache'}" in saved


# ------------------------------------------------------------ unwritable folders
def test_an_unwritable_auto_cache_is_a_note_and_the_run_goes_on(cli, small_config, tmp_path, monkeypatch):
    monkeypatch.setattr(cache, "_warned", set())
    monkeypatch.setenv("MSE_TRAIN_CACHE_DIR", "/proc/mse-train-cache")
    result = cli("run", small_config(), "--json")
    assert result.code == 0, result
    assert "the data cache folder /proc/mse-train-cache cannot be written" in result.stderr
    assert result.stderr.count("cannot be written") == 1
    assert read_json(tmp_path / "run" / "summary.json")["status"] == "completed"


@pytest.mark.parametrize("where", ["/proc/mse-train-cache", "FILE/cache"])
def test_an_unwritable_cache_folder_the_user_named_is_an_error_and_keeps_the_previous_run(
    cli, small_config, tmp_path, where
):
    assert cli("run", small_config(), "-q").code == 0
    before = (tmp_path / "run" / "best.pt").read_bytes()
    (tmp_path / "FILE").write_text("a file, not a folder")
    folder = where.replace("FILE", str(tmp_path / "FILE"))
    result = cli("run", small_config(data={"cache": folder}), "--overwrite")
    assert result.code == 2, result
    assert f"`data.cache`: {folder} cannot be used as the data cache folder" in result.stderr
    assert "Traceback" not in result.stderr
    assert (tmp_path / "run" / "best.pt").read_bytes() == before


def test_cache_off_writes_no_cache(cli, small_config, data_cache):
    assert cli("run", small_config(data={"cache": "off"}), "-q").code == 0
    assert list(data_cache.iterdir()) == []


# ------------------------------------------------------------------- concurrency
CHILD = """
import json, os, sys, time
from pathlib import Path
from mse_train.data import cache, ingest

ready = Path(sys.argv[2])
publish = cache.Builder.publish

def wait_then_publish(self, *args, **kwargs):
    (ready / str(os.getpid())).touch()
    deadline = time.monotonic() + 60
    while len(list(ready.iterdir())) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    return publish(self, *args, **kwargs)

cache.Builder.publish = wait_then_publish
store = cache.open_store("auto", [])
got = ingest.read(Path(sys.argv[1]), ["x0", "x1", "x2", "y"], store=store)
print(json.dumps({"sum": float(got.frame.to_numpy().sum()), "rows": got.n_rows, "notes": store.notes}))
"""


def test_two_processes_building_the_same_entry_at_once(tmp_path, data_cache):
    header, values = linear_rows(5000)
    path = write_csv(tmp_path / "t.csv", header, values.round(6).tolist())
    ready = tmp_path / "ready"
    ready.mkdir()
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    children = [
        subprocess.Popen(
            [sys.executable, str(script), str(path), str(ready)], stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    results = [json.loads(child.communicate(timeout=HANG_GUARD)[0]) for child in children]
    assert [child.returncode for child in children] == [0, 0]
    assert len(list(ready.iterdir())) == 2  # both built, and both were about to publish together
    assert results[0] == results[1]
    assert results[0]["rows"] == 5000 and results[0]["notes"] == []
    assert len(list((data_cache / "tables").iterdir())) == 1
    assert list((data_cache / "building").iterdir()) == []
    store = store_at(data_cache)
    again = ingest.read(path, ["x0", "x1", "x2", "y"], store=store)
    assert store.notes == [] and float(again.frame.to_numpy().sum()) == results[0]["sum"]
