"""`train.precision`: fp32 everywhere; tf32 and bf16 on CUDA only, refused on a CPU with the fix.

The tests marked `cuda` run wherever torch sees a CUDA device and are skipped, with the
reason, elsewhere; bench/gpu.py runs the whole CUDA path end to end.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from mse_train import config
from mse_train.training.stack import pack_key, why_alone

from conftest import HANG_GUARD, REPO, linear_rows, read_metrics, write_config, write_csv

no_cuda = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device; torch sees none here"
)


def _config(tmp_path: Path, name: str, **sections: Any) -> Path:
    header, values = linear_rows(400, n_features=4, seed=1)
    table = write_csv(tmp_path / "t.csv", header, values.round(5).tolist())
    cfg: dict[str, Any] = {
        "seed": 2,
        "data": {"train": str(table), "target": "y", "val_fraction": 0.2},
        "model": {"type": "mlp", "hidden": [64, 64]},
        "optimizer": {"name": "adam", "lr": 0.01},
        "train": {"epochs": 20, "batch_size": 64},
        "output": {"dir": str(tmp_path / name), "plot": False},
    }
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value}
    return write_config(tmp_path / f"{name}.yaml", cfg)


@pytest.mark.parametrize("precision", ["tf32", "bf16"])
@pytest.mark.parametrize("command", [["run"], ["cv", "-k", "2"]])
def test_tf32_and_bf16_on_a_cpu_are_refused_with_the_fix(cli, tmp_path, precision, command):
    cfg = _config(tmp_path, "p", train={"precision": precision, "device": "cpu"})
    result = cli(*command, cfg)
    assert result.code == 2, result
    assert f"train.precision: {precision} needs a CUDA device" in result.stderr
    assert "train.precision: fp32" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "p" / "best.pt").exists()


def test_bf16_trains_as_a_module_and_tf32_packs_apart_from_fp32(tmp_path):
    def load(**train: Any) -> config.Config:
        return config.load(_config(tmp_path, "p", train=train))

    assert why_alone(load(precision="bf16")) is not None
    assert why_alone(load(precision="tf32")) is None
    assert pack_key(load(precision="tf32")) != pack_key(load(precision="fp32"))


@pytest.mark.cuda
@no_cuda
@pytest.mark.parametrize("precision", ["tf32", "bf16"])
@pytest.mark.parametrize("pack", [True, False])
def test_a_cuda_run_in_reduced_precision_ends_near_fp32(cli, tmp_path, precision, pack):
    extra = [] if pack else ["--no-pack"]
    losses = {}
    for name in ("fp32", precision):
        cfg = _config(tmp_path, name, train={"precision": name, "device": "cuda"})
        result = cli("run", cfg, *extra)
        assert result.code == 0, result
        losses[name] = float(read_metrics(tmp_path / name / "metrics.csv")[-1]["val_loss"])
    assert losses[precision] == pytest.approx(losses["fp32"], rel=0.1), losses
    ckpt = torch.load(tmp_path / precision / "best.pt", weights_only=True)
    assert all(t.dtype == torch.float32 for t in ckpt["weights"].values())  # the master copy
    result = cli("eval", tmp_path / precision / "best.pt", tmp_path / "t.csv", "--json", "--device", "cuda")
    assert result.code == 0 and json.loads(result.stdout)["mse"] > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: bench/gpu.py would run")
def test_the_gpu_bench_says_no_cuda_here_and_checks_nothing():
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "gpu.py")], capture_output=True, text=True, timeout=HANG_GUARD
    )
    assert done.returncode == 1, done
    assert "no CUDA here" in done.stdout and "checked nothing" in done.stdout
