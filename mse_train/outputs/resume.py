"""`--resume`: load the run folder's last.pt, refuse changed settings or data, restore the loop."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mse_train import config
from mse_train.config import Config
from mse_train.errors import CheckpointError
from mse_train.outputs import checkpoint
from mse_train.training.loop import Loop


def load(out: Path, cfg: Config, digests: dict[str, str], force: bool) -> dict[str, Any]:
    """last.pt of the run folder, if the run's settings and data match (or `force`)."""
    path = out / "last.pt"
    ckpt = checkpoint.load(path)
    if ckpt.get(checkpoint.K_TRAINING) is None:
        raise CheckpointError(f"{path}: holds no training state to resume from")
    changes = _config_changes(ckpt[checkpoint.K_CONFIG], config.to_dict(cfg))
    old_digests = ckpt.get(checkpoint.K_DIGESTS, {})
    data_changes = [
        f"{p} changed since the run started (its sha256 differs)"
        for p, d in digests.items()
        if old_digests.get(p) != d
    ]
    if (changes or data_changes) and not force:
        raise CheckpointError(
            f"{path}: cannot resume: the run was made with other settings or data",
            [
                *changes,
                *data_changes,
                "only train.epochs may change on --resume; add --force to resume anyway, "
                "or start a new run in another folder",
            ],
        )
    return ckpt


def _config_changes(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    changes = []
    for key in sorted(set(old) | set(new)):
        path = f"{prefix}{key}"
        if path == "train.epochs":
            continue
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changes += _config_changes(a, b, path + ".")
        elif a != b:
            changes.append(f"{path}: {a!r} in the run, {b!r} now")
    return changes


def restore(loop: Loop, ckpt: dict[str, Any], cfg: Config, force: bool) -> None:
    """Put the checkpoint's training state into the loop."""
    state = {**ckpt[checkpoint.K_TRAINING], "model": ckpt[checkpoint.K_WEIGHTS]}
    old = ckpt[checkpoint.K_CONFIG]
    new = config.to_dict(cfg)
    try:
        if force:
            # Keep weights and progress; settings that changed start from the new config.
            if old.get("optimizer") != new["optimizer"]:
                state = {**state, "optimizer": loop.optimizer.state_dict()}
            if old.get("scheduler") != new["scheduler"]:
                state = {**state, "scheduler": None}
        loop.load_state_dict(state)
    except (RuntimeError, KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(
            f"{cfg.output.dir}/last.pt: its training state does not fit this config "
            f"({str(exc).splitlines()[0]})",
            ["the model shape must stay the same to resume; start a new run instead"],
        ) from None
