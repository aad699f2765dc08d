"""Training under torchrun (2 processes, CPU, gloo) gives what one process gives; rank 0 alone writes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from conftest import HANG_GUARD, linear_rows, read_metrics, write_config, write_csv

BIN = Path(sys.executable).parent
RANK_ENV = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in RANK_ENV}
    return {**env, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def _torchrun(logs: Path, *args: Any) -> list[str]:
    """torchrun with 2 local processes, each rank's stdout/stderr in its own file under `logs`."""
    return [
        str(BIN / "torchrun"),
        "--standalone",
        "--nproc-per-node",
        "2",
        "--log-dir",
        str(logs),
        "--redirects",
        "3",
        "--no-python",
        str(BIN / "mse-train"),
        *map(str, args),
    ]


def run2(logs: Path, *args: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _torchrun(logs, *args), capture_output=True, text=True, timeout=HANG_GUARD, env=_env()
    )


def run1(*args: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "mse-train"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=HANG_GUARD,
        env=_env(),
    )


def rank_output(logs: Path, rank: int) -> str:
    """Everything rank `rank` printed (stdout and stderr)."""
    files = sorted(logs.rglob(f"attempt_*/{rank}/*.log"))
    assert files, f"no logs of rank {rank} under {logs}"
    return "".join(f.read_text() for f in files)


def best_weights(run: Path) -> dict[str, torch.Tensor]:
    ckpt = torch.load(run / "best.pt", weights_only=True)
    return dict(ckpt["weights"])


@pytest.fixture
def config(tmp_path: Path) -> Any:
    """A two-target MLP config on 203 rows: batch 32 leaves a short last batch of 11 rows."""
    header, values = linear_rows(203)
    values = np.column_stack([values, np.sin(values[:, 0])])
    table = write_csv(tmp_path / "t.csv", [*header, "z"], values.round(6).tolist())

    def make(name: str, **sections: Any) -> Path:
        cfg: dict[str, Any] = {
            "data": {"train": str(table), "target": ["y", "z"], "val_fraction": 0.0},
            "model": {"type": "mlp", "hidden": [16, 8]},
            "optimizer": {"name": "adam", "lr": 0.01},
            "regularization": {"l2": 0.001},
            "train": {"epochs": 3, "batch_size": 32},
            "output": {"dir": str(tmp_path / name), "plot": False},
        }
        for key, value in sections.items():
            cfg[key] = {**cfg.get(key, {}), **value}
        return write_config(tmp_path / f"{name}.yaml", cfg)

    return make


@pytest.mark.parametrize(
    ("optimizer", "reduction"),
    [
        ({"name": "adam", "lr": 0.01}, "mean"),
        ({"name": "sgd", "lr": 0.0005, "momentum": 0.9}, "sum"),
    ],
    ids=["adam-mean", "sgd-momentum-sum"],
)
def test_two_processes_train_as_one(tmp_path, config, optimizer, reduction):
    one = config("one", optimizer=optimizer, loss={"reduction": reduction})
    two = config("two", optimizer=optimizer, loss={"reduction": reduction})
    assert run1("run", one, "-q").returncode == 0
    logs = tmp_path / "logs"
    result = run2(logs, "run", two)
    assert result.returncode == 0, result.stderr[-3000:]

    a, b = read_metrics(tmp_path / "one" / "metrics.csv"), read_metrics(tmp_path / "two" / "metrics.csv")
    assert len(a) == len(b) == 3
    for row_a, row_b in zip(a, b, strict=True):
        for key in ("train_loss", "train_end_loss", "penalty", "train_mse_y", "train_mse_z"):
            assert float(row_b[key]) == pytest.approx(float(row_a[key]), rel=1e-4), key
    wa, wb = best_weights(tmp_path / "one"), best_weights(tmp_path / "two")
    assert wa.keys() == wb.keys()
    for name in wa:
        torch.testing.assert_close(wb[name], wa[name], atol=1e-5, rtol=0)

    # Rank 0 wrote what one process writes, and nothing else; rank 1 printed nothing.
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(
        p.name for p in (tmp_path / "one").iterdir()
    )
    assert "epoch 3/3" in rank_output(logs, 0)
    assert rank_output(logs, 1) == ""


def test_two_processes_train_as_one_with_sample_weights(tmp_path, config):
    """Each rank's share of a weighted batch is its rows' weighted SSE over the global batch's
    sum of weights (times targets): the two ranks' gradients add up to one process's."""
    header, values = linear_rows(203)
    w = np.random.default_rng(5).integers(0, 4, size=len(values))
    values = np.column_stack([values, np.sin(values[:, 0]), w])
    table = write_csv(tmp_path / "tw.csv", [*header, "z", "w"], values.round(6).tolist())
    data = {"train": str(table), "weight": "w"}
    one, two = config("one", data=data), config("two", data=data)
    assert run1("run", one, "-q").returncode == 0
    result = run2(tmp_path / "logs", "run", two)
    assert result.returncode == 0, result.stderr[-3000:]
    a, b = read_metrics(tmp_path / "one" / "metrics.csv"), read_metrics(tmp_path / "two" / "metrics.csv")
    for row_a, row_b in zip(a, b, strict=True):
        for key in ("train_loss", "train_end_loss", "train_mse_y", "train_mse_z"):
            assert float(row_b[key]) == pytest.approx(float(row_a[key]), rel=1e-4), key
    wa, wb = best_weights(tmp_path / "one"), best_weights(tmp_path / "two")
    for name in wa:
        torch.testing.assert_close(wb[name], wa[name], atol=1e-5, rtol=0)


def test_a_batch_the_processes_cannot_share_is_a_config_error(tmp_path, config):
    cfg = config("odd", train={"batch_size": 33})
    logs = tmp_path / "logs"
    result = run2(logs, "run", cfg)
    assert result.returncode != 0
    for rank in (0, 1):
        text = rank_output(logs, rank)
        assert "train.batch_size is 33" in text and "multiple of 2" in text, text
        assert "Traceback" not in text
    assert "exitcode  : 2" in result.stderr  # torchrun's report of each rank's exit code
    assert not (tmp_path / "odd").exists()


def test_lbfgs_is_refused_under_torchrun(tmp_path, config):
    cfg = config("lbfgs", optimizer={"name": "lbfgs", "lr": 1.0}, train={"batch_size": None})
    logs = tmp_path / "logs"
    assert run2(logs, "run", cfg).returncode != 0
    assert "lbfgs" in rank_output(logs, 0) and "one process" in rank_output(logs, 0)


def test_resume_under_torchrun_continues_exactly(tmp_path, config):
    straight = config("straight")
    assert run2(tmp_path / "l1", "run", straight).returncode == 0
    split = config("split")
    assert run2(tmp_path / "l2", "run", split, "--set", "train.epochs=2").returncode == 0
    result = run2(tmp_path / "l3", "run", split, "--resume")
    assert result.returncode == 0, result.stderr[-3000:]
    a = read_metrics(tmp_path / "straight" / "metrics.csv")
    b = read_metrics(tmp_path / "split" / "metrics.csv")
    assert [r["train_loss"] for r in a] == [r["train_loss"] for r in b]
    assert [r["train_end_loss"] for r in a] == [r["train_end_loss"] for r in b]
    ckpt = torch.load(tmp_path / "split" / "last.pt", weights_only=True)
    assert ckpt["training"]["world_size"] == 2


def test_resume_in_one_process_notes_the_change(tmp_path, config):
    cfg = config("mixed")
    assert run2(tmp_path / "l1", "run", cfg, "--set", "train.epochs=2").returncode == 0
    result = run1("run", cfg, "--resume")
    assert result.returncode == 0, result.stderr
    assert "trained in 2 process(es) and continues in 1" in result.stderr
    one = config("one")
    assert run1("run", one, "-q").returncode == 0
    a = read_metrics(tmp_path / "one" / "metrics.csv")
    b = read_metrics(tmp_path / "mixed" / "metrics.csv")
    assert float(b[-1]["train_loss"]) == pytest.approx(float(a[-1]["train_loss"]), rel=1e-4)


def _interrupt(tmp_path: Path, config: Any, name: str) -> tuple[Path, dict[str, Any]]:
    """A torchrun `run` of 2 ranks, Ctrl-C'd (SIGINT to its process group) after its first
    epoch: its config and the progress its last.pt keeps."""
    cfg = config(name, train={"epochs": 40, "batch_size": 2})
    logs = tmp_path / f"logs-{name}"
    process = subprocess.Popen(
        _torchrun(logs, "run", cfg),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        start_new_session=True,  # its own process group, as a terminal's Ctrl-C reaches it
    )
    metrics = tmp_path / name / "metrics.csv"
    deadline = time.monotonic() + HANG_GUARD
    while not metrics.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGINT)
    _, err = process.communicate(timeout=HANG_GUARD)
    # torchrun itself got the signal: it reports SignalException and exits 1 (rank 0 exits 130)
    assert process.returncode == 1, err[-3000:]
    assert "interrupted at epoch" in rank_output(logs, 0)
    # Rank 1 says nothing, and exits cleanly: no C++ "terminate called" at its exit
    # (distributed._KEPT is why).
    assert rank_output(logs, 1) == ""
    return cfg, torch.load(tmp_path / name / "last.pt", weights_only=True)["training"]["progress"]


def test_ctrl_c_stops_every_rank_and_leaves_a_resumable_last_pt(tmp_path, config):
    # Batches of 2 rows: ~100 steps an epoch, so the signal lands inside an epoch, except
    # when it meets the epoch's last batch or its end (metrics, checkpoint): then the epoch
    # finishes and last.pt is at its end. So up to three tries for a stop inside an epoch.
    for attempt in range(3):
        name = f"stopped{attempt}"
        cfg, progress = _interrupt(tmp_path, config, name)
        if progress["batch"] > 0:  # stopped inside an epoch
            break
    assert progress["batch"] > 0, "three Ctrl-Cs all met an epoch's end"
    epochs = progress["epoch"] + 1  # finish the interrupted epoch (train.epochs may change on resume)

    result = run2(tmp_path / "l2", "run", cfg, "--resume", "--set", f"train.epochs={epochs}")
    assert result.returncode == 0, result.stderr[-3000:]
    straight = config("straight", train={"epochs": epochs, "batch_size": 2})
    assert run2(tmp_path / "l3", "run", straight).returncode == 0
    done = read_metrics(tmp_path / name / "metrics.csv")
    reference = read_metrics(tmp_path / "straight" / "metrics.csv")
    assert len(done) == len(reference) == epochs
    assert [r["train_loss"] for r in done] == [r["train_loss"] for r in reference]
    assert [r["train_end_loss"] for r in done] == [r["train_end_loss"] for r in reference]


def test_batch_norm_is_refused_under_torchrun(tmp_path, config):
    cfg = config("bn")
    resnet = {"type": "resnet", "width": 16, "blocks": 1}
    cfg.write_text(yaml.safe_dump({**yaml.safe_load(cfg.read_text()), "model": resnet}))
    logs = tmp_path / "logs"
    assert run2(logs, "run", cfg).returncode != 0
    text = rank_output(logs, 0)
    assert "model.norm is batch_norm" in text and "layer_norm" in text and "Traceback" not in text
    assert not (tmp_path / "bn").exists()


def test_cv_is_refused_under_torchrun(tmp_path, config):
    cfg = config("cv")
    logs = tmp_path / "logs"
    assert run2(logs, "cv", cfg, "--folds", "2").returncode != 0
    assert "runs in one process, not under torchrun" in rank_output(logs, 0)
    assert not (tmp_path / "cv").exists()


def _rank_pid(root: int, rank: int) -> int | None:
    """The process under `root` (torchrun) that torchrun started as RANK=`rank` (Linux /proc)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == root and f"RANK={rank}".encode() in environ:
            return int(entry.name)
    return None


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the rank's process in /proc")
@pytest.mark.parametrize("victim", [1, 0], ids=["rank-1-killed", "rank-0-killed"])
def test_a_rank_killed_outright_is_reported_with_the_intact_last_pt_and_the_resume(tmp_path, config, victim):
    # Batches of 2 rows and a checkpoint every epoch: last.pt exists while training goes on.
    cfg = config("killed", train={"epochs": 200, "batch_size": 2}, output={"checkpoint_every": 1})
    logs = tmp_path / "logs"
    process = subprocess.Popen(
        _torchrun(logs, "run", cfg), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env()
    )
    last = tmp_path / "killed" / "last.pt"
    deadline = time.monotonic() + 90
    while not last.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    pid = _rank_pid(process.pid, victim)
    assert pid is not None and process.poll() is None, f"rank {victim} is not running"
    os.kill(pid, signal.SIGKILL)
    _, err = process.communicate(timeout=120)
    assert process.returncode != 0

    said = rank_output(logs, 1 - victim)  # the rank that lived
    assert "internal error" not in said and "Traceback" not in said, said
    assert "another process of this torchrun job died" in said, said
    epoch = torch.load(last, weights_only=True)["epoch"]
    assert f"is intact: it holds the training state of epoch {epoch}" in said, said
    assert "--resume" in said
    # The living rank's exit code is the peer-lost code, not the internal-error code.
    assert "exitcode  : 3" in err, err[-3000:]

    result = run2(tmp_path / "l2", "run", cfg, "--resume", "--set", f"train.epochs={epoch + 1}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(read_metrics(tmp_path / "killed" / "metrics.csv")) == epoch + 1


@pytest.mark.parametrize(
    "text",
    [
        "[../gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:1: Connection reset by peer. This is ...",
        "[../gloo/transport/tcp/pair.cc:598] Connection closed by peer [127.0.0.1]:2",
        "[../gloo/transport/tcp/unbound_buffer.cc:81] Timed out waiting 1800000ms for recv operation",
        "NCCL communicator was aborted on rank 1",
    ],
)
def test_collective_failures_from_a_lost_peer_are_recognised(text):
    from mse_train.training import distributed

    assert distributed.peer_lost(RuntimeError(text))
    lost = distributed.lost_peer(RuntimeError(text), ["last.pt is intact"])
    assert lost.exit_code == 3 and "another process of this torchrun job" in lost.summary
    assert "last.pt is intact" in lost.problems and "[../" not in lost.summary


def test_other_errors_are_not_taken_for_a_lost_peer():
    from mse_train.training import distributed

    assert not distributed.peer_lost(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not distributed.peer_lost(ValueError("connection reset"))


def test_a_lost_peer_before_any_checkpoint_says_to_start_again(tmp_path):
    from mse_train import recipe

    options = recipe.Options(resume_command="mse-train run c.yaml --resume")
    options.overwrite_command = "mse-train run c.yaml --overwrite"
    said = recipe._what_is_kept(tmp_path, options)
    assert said == ["no checkpoint was written yet; start again with: mse-train run c.yaml --overwrite"]


@pytest.mark.parametrize(("world", "after"), [("2", "ignored"), ("1", "as before")])
def test_a_rank_ignores_sigterm_from_its_last_words_to_its_exit(monkeypatch, world, after):
    # torchrun's agent sends SIGTERM to the survivors as they report a dead peer: one that
    # arrived between the report and the exit made a survivor exit -15, not 3, in CI
    from mse_train.training import signals

    monkeypatch.setenv("WORLD_SIZE", world)
    before = signal.getsignal(signal.SIGTERM)
    try:
        with signals.report_first():
            pass
        kept = signal.getsignal(signal.SIGTERM)
    finally:
        signal.signal(signal.SIGTERM, before)
    assert (kept is before) == (after == "as before")
    if after == "ignored":
        assert callable(kept) and kept(signal.SIGTERM, None) is None  # a SIGTERM does nothing
