"""How many CPU threads torch uses: `train.threads`, MSE_TRAIN_THREADS, and `auto` from the CPUs
the process may use (affinity, cgroup quota, torchrun's ranks). See runtime.py, Threads."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from mse_train import runtime

from conftest import DATA, HANG_GUARD, REPO, read_json, run_process, write_config

THREAD_VARIABLES = ("MSE_TRAIN_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "LOCAL_WORLD_SIZE")


@pytest.fixture(autouse=True)
def plain_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No thread variables from the caller, and torch's thread count put back afterwards
    (the in-process CLI sets it for the whole pytest process)."""
    for name in THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES}
    return {**env, **extra}


def config(tmp_path: Path, **train: object) -> Path:
    return write_config(
        tmp_path / "cfg.yaml",
        {
            "data": {"train": str(DATA / "linear.csv"), "target": "y"},
            "train": {"epochs": 2, **train},
            "output": {"dir": str(tmp_path / "run"), "plot": False},
        },
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("threads")
    done = run_process("run", config(folder), "-q", env=environment())
    assert done.returncode == 0, done.stderr
    return folder / "run" / "best.pt"


# ------------------------------------------------------------- what a run uses
@pytest.mark.parametrize("threads", [1, 3])
def test_train_threads_is_the_count_the_run_trains_with(tmp_path, threads):
    done = run_process("run", config(tmp_path, threads=threads), env=environment())
    assert done.returncode == 0, done.stderr
    assert read_json(tmp_path / "run" / "summary.json")["threads"] == threads
    assert f"{threads} thread" in done.stderr  # the start line (progress goes to stderr) says it


def test_the_environment_variable_overrides_the_config(tmp_path):
    done = run_process("run", config(tmp_path, threads=1), "-q", env=environment(MSE_TRAIN_THREADS="3"))
    assert done.returncode == 0, done.stderr
    assert read_json(tmp_path / "run" / "summary.json")["threads"] == 3


def test_auto_follows_an_explicit_omp_num_threads_and_train_threads_wins_over_it(tmp_path):
    done = run_process("run", config(tmp_path), "-q", env=environment(OMP_NUM_THREADS="3"))
    assert done.returncode == 0, done.stderr
    assert read_json(tmp_path / "run" / "summary.json")["threads"] == 3
    done = run_process(
        "run", config(tmp_path, threads=2), "-q", "--overwrite", env=environment(OMP_NUM_THREADS="3")
    )
    assert done.returncode == 0, done.stderr
    assert read_json(tmp_path / "run" / "summary.json")["threads"] == 2


def test_auto_trains_with_the_measured_default(tmp_path):
    done = run_process("run", config(tmp_path), "-q", env=environment())
    assert done.returncode == 0, done.stderr
    assert read_json(tmp_path / "run" / "summary.json")["threads"] == runtime.auto_threads()


@pytest.mark.parametrize("command", ["eval", "predict", "explain"])
def test_the_environment_variable_applies_to_commands_that_take_a_checkpoint(
    cli, trained, monkeypatch, command
):
    torch.set_num_threads(1)
    monkeypatch.setenv("MSE_TRAIN_THREADS", "3")
    result = cli(command, trained, DATA / "linear.csv")
    assert result.code == 0, result
    assert torch.get_num_threads() == 3


# -------------------------------------------------------------- bad values: exit 2
BAD_SETTINGS = [0, -1, 100_000, "many", "auto ", "2", 1.5, True, None]


@pytest.mark.parametrize(
    ("command", "value"),
    [("run", v) for v in BAD_SETTINGS] + [(c, "many") for c in ("validate", "cv", "sweep")],
)
def test_a_bad_train_threads_is_a_config_error(cli, tmp_path, command, value):
    cfg = config(tmp_path, threads=value)
    if command == "sweep":
        text = cfg.read_text() + "sweep: {trials: 1, params: {optimizer.lr: [0.01]}}\n"
        cfg.write_text(text)
    result = cli(command, cfg)
    assert result.code == 2, result
    assert "train.threads" in result.stderr and "auto or a whole number" in result.stderr, result
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    assert not (tmp_path / "run").exists()


BAD_VARIABLES = ["0", "-1", "5000", "1" * 5000, "many", "auto ", " 2", "1.5", "2x"]


@pytest.mark.parametrize(
    ("command", "value"),
    [("run", v) for v in BAD_VARIABLES] + [(c, "0") for c in ("validate", "eval", "predict", "explain")],
    ids=lambda v: v if len(v) < 20 else f"{len(v)}-digits",
)
def test_a_bad_environment_variable_is_named(cli, tmp_path, trained, monkeypatch, command, value):
    monkeypatch.setenv("MSE_TRAIN_THREADS", value)
    args = [config(tmp_path)] if command in ("validate", "run") else [trained, DATA / "linear.csv"]
    result = cli(command, *args)
    assert result.code == 2, result
    assert f"MSE_TRAIN_THREADS is {value[:30]!r}"[:-1] in result.stderr, result
    assert "unset MSE_TRAIN_THREADS" in result.stderr
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    assert not (tmp_path / "run").exists()


def test_an_empty_environment_variable_is_unset(tmp_path):
    done = run_process("run", config(tmp_path, threads=3), "-q", env=environment(MSE_TRAIN_THREADS=""))
    assert done.returncode == 0, done.stderr
    assert read_json(tmp_path / "run" / "summary.json")["threads"] == 3


# ------------------------------------------- auto: the CPUs this process may use
needs_two_cpus = pytest.mark.skipif(
    not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
    reason="needs CPU affinity and at least two CPUs",
)

AUTO_IN_A_CHILD = """
import os, sys
from pathlib import Path
from mse_train import runtime
if sys.argv[1] != "all":
    os.sched_setaffinity(0, {int(sys.argv[1])})
runtime.AUTO_MAX_THREADS = 64  # lift the measured cap: what is left is the machine's share
print(runtime.auto_threads(Path(sys.argv[2])))
"""


def auto_in_a_child(cpu: str, root: Path, **env: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", AUTO_IN_A_CHILD, cpu, str(root)],
        capture_output=True,
        text=True,
        timeout=HANG_GUARD,
        cwd=REPO,
        env=environment(**env),
        check=True,
    )
    return int(done.stdout)


@needs_two_cpus
def test_auto_honours_a_restricted_cpu_affinity(tmp_path):
    cpus = sorted(os.sched_getaffinity(0))
    assert auto_in_a_child("all", tmp_path) == len(cpus)
    assert auto_in_a_child(str(cpus[-1]), tmp_path) == 1


@needs_two_cpus
def test_auto_gives_each_torchrun_rank_its_share(tmp_path):
    cpus = len(os.sched_getaffinity(0))
    assert auto_in_a_child("all", tmp_path, LOCAL_WORLD_SIZE="2") == cpus // 2
    assert auto_in_a_child("all", tmp_path, LOCAL_WORLD_SIZE=str(cpus * 4)) == 1


def test_the_measured_cap_holds_on_any_machine(tmp_path):
    assert 1 <= runtime.auto_threads(tmp_path) <= runtime.AUTO_MAX_THREADS


def no_groups(tmp_path: Path) -> Path:
    own = tmp_path / "self-cgroup"
    own.write_text("")
    return own


@pytest.mark.parametrize(
    ("text", "cpus"),
    [("50000 100000", 0.5), ("150000 100000", 1.5), ("200000 50000", 4.0), ("max 100000", None)],
)
def test_a_cgroup_v2_quota_is_read(tmp_path, text, cpus):
    (tmp_path / "cpu.max").write_text(text + "\n")
    assert runtime.cpu_quota(tmp_path, no_groups(tmp_path)) == cpus


@pytest.mark.parametrize(("quota", "cpus"), [("50000", 0.5), ("300000", 3.0), ("-1", None)])
def test_a_cgroup_v1_quota_is_read(tmp_path, quota, cpus):
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text(quota + "\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert runtime.cpu_quota(tmp_path, no_groups(tmp_path)) == cpus


def test_the_quota_of_the_process_own_group_counts(tmp_path):
    group = tmp_path / "system.slice" / "docker-1.scope"
    group.mkdir(parents=True)
    (group / "cpu.max").write_text("100000 100000\n")
    (tmp_path / "cpu.max").write_text("max 100000\n")
    own = tmp_path / "self-cgroup"
    own.write_text("0::/system.slice/docker-1.scope\n")
    assert runtime.cpu_quota(tmp_path, own) == 1.0


@pytest.mark.parametrize("text", ["", "garbage", "max", "100 0"])
def test_an_unreadable_quota_is_no_quota(tmp_path, text):
    (tmp_path / "cpu.max").write_text(text)
    assert runtime.cpu_quota(tmp_path, no_groups(tmp_path)) is None


@needs_two_cpus
def test_auto_honours_a_cgroup_quota(tmp_path, monkeypatch):
    monkeypatch.setattr(runtime, "AUTO_MAX_THREADS", 64)
    monkeypatch.setattr(runtime, "cpu_quota", lambda root=None: 0.5)
    assert runtime.auto_threads(tmp_path) == 1
    monkeypatch.setattr(runtime, "cpu_quota", lambda root=None: None)
    assert runtime.auto_threads(tmp_path) == len(os.sched_getaffinity(0))


# ------------------------------------------------------------- denormal numbers
_DENORMAL_PROBE = """
import sys, torch
from mse_train import runtime
def kept():
    tiny = torch.full((4_000_000,), 1e-39)  # below float32's normal range; large: torch splits it
    return int(((tiny * 1.0) != 0).sum())
if sys.argv[1] == "command":  # before any torch work, as every command calls it
    runtime.use_threads(2)
    print(kept(), torch.get_num_threads())
else:  # the Python API (one thread, `auto`): flushed while it trains, the caller's mode after
    runtime.use_threads(1, flush_denormals=False)
    before = kept()
    with runtime.denormals_flushed():
        inside = kept()
    print(before, inside, kept(), torch.get_num_threads())
"""


@pytest.mark.parametrize(("caller", "kept"), [("command", [0]), ("api", [4_000_000, 0, 4_000_000])])
def test_denormal_numbers_are_computed_as_zero_where_mse_train_trains(caller, kept):
    # A long training's weights reach them (units no data reaches, shrunk by the L2 penalty),
    # and arithmetic on them is several times slower on x86: every command flushes them, in
    # torch's worker threads too; the Python API only while it trains.
    done = subprocess.run(
        [sys.executable, "-c", _DENORMAL_PROBE, caller],
        capture_output=True,
        text=True,
        env=environment(),
        timeout=HANG_GUARD,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    *found, threads = map(int, done.stdout.split())
    assert threads == (2 if caller == "command" else 1) and found == kept


def test_a_command_run_in_process_puts_the_callers_floating_point_mode_back(cli, tmp_path):
    assert (torch.tensor([1e-39]) * 1.0).item() != 0.0  # pytest's process: gradual underflow
    assert cli("run", config(tmp_path)).code == 0
    assert (torch.tensor([1e-39]) * 1.0).item() != 0.0  # as it was (hypothesis refuses otherwise)
