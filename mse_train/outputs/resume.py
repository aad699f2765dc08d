"""`--resume`: load the run folder's last.pt, refuse changed settings or data, restore the loop."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mse_train import config
from mse_train.config import Config
from mse_train.errors import CheckpointError
from mse_train.outputs import checkpoint
from mse_train.training.loop import Loop

DATA_ROLES = ("train", "val")  # config keys naming data files, compared by content
# Settings that cannot change what is trained: where and how the run is recorded. Several are
# resolved from the config's name and location (output.dir = runs/<name>, the MLflow experiment
# = <name>, paths made absolute), so a renamed or moved config, or another run folder, would
# otherwise read as changed settings. A resumed MLflow log that lands in a new MLflow run gets
# the restored epochs first, so even output.mlflow* may change. `run` ignores `sweep:`.
NOT_TRAINING = ("output", "sweep", "data.cache", "train.epochs")


def load(out: Path, cfg: Config, digests: dict[str, str], force: bool) -> dict[str, Any]:
    """last.pt of the run folder, if the run's settings and data match (or `force`)."""
    path = out / "last.pt"
    ckpt = checkpoint.load(path)
    if ckpt.get(checkpoint.K_TRAINING) is None:
        # Only a best.pt is written without it (the weights of its best epoch, no optimizer).
        kind = ckpt.get(checkpoint.K_KIND)
        what = "it is a best.pt (kind 'best'), which" if kind == "best" else "it"
        raise CheckpointError(
            f"{path}: holds no training state to resume from: {what} keeps the weights but not "
            "the optimizer, schedule and epoch that --resume continues",
            [
                "put back the run's own last.pt, or train again with --overwrite "
                "(predict and eval can still use this checkpoint)"
            ],
        )
    changes = _config_changes(ckpt[checkpoint.K_CONFIG], config.to_dict(cfg))
    data_changes = _data_changes(ckpt, cfg, digests)
    if (changes or data_changes) and not force:
        raise CheckpointError(
            f"{path}: cannot resume: the run was made with other settings or data",
            [
                *changes,
                *data_changes,
                "only train.epochs, the output and sweep settings and the path of an unchanged data "
                "file may change on --resume; "
                "add --force to resume anyway, "
                "or start a new run in another folder",
            ],
        )
    return ckpt


def _data_changes(ckpt: dict[str, Any], cfg: Config, digests: dict[str, str]) -> list[str]:
    """Data compared by role (train, val) and content: the same bytes at a new path are the same data."""
    old_data = ckpt[checkpoint.K_CONFIG].get("data", {})
    old_digests = ckpt.get(checkpoint.K_DIGESTS, {})
    changes = []
    for role in DATA_ROLES:
        old, new = old_data.get(role), getattr(cfg.data, role)
        key = f"data.{role}"
        if old is None and new is None:
            continue
        if not isinstance(old, str) or new is None:
            changes.append(f"`{key}`: {old!r} in the run, {new!r} now")
            continue
        old_sha, new_sha = old_digests.get(str(Path(old))), digests.get(str(Path(new)))
        moved = Path(old) != Path(new)
        if old_sha is None:
            changes.append(
                f"`{key}`: the run recorded no sha256 for {old}, so {new} cannot be compared with it"
            )
        elif old_sha != new_sha and not moved:
            changes.append(f"`{key}`: {new} changed since the run started (its sha256 differs)")
        elif old_sha != new_sha:
            changes.append(
                f"`{key}`: {new} holds other data than {old}, which the run was trained on "
                "(their sha256 differ); the same bytes at a new path would be accepted"
            )
    return changes


def _config_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    # data files are compared by their contents, in _data_changes
    skip = {*NOT_TRAINING, *(f"data.{role}" for role in DATA_ROLES)}
    return config_changes(old, new, skip, "run")


def config_changes(old: dict[str, Any], new: dict[str, Any], skip: set[str], was: str) -> list[str]:
    """Each dotted key whose value differs, as `key: old in the <was>, new now`; `skip` keys
    (and what is under them) are not compared."""
    changes = []

    def walk(a: dict[str, Any], b: dict[str, Any], prefix: str) -> None:
        for key in sorted(set(a) | set(b)):
            path = f"{prefix}{key}"
            if path in skip:
                continue
            x, y = a.get(key), b.get(key)
            if isinstance(x, dict) and isinstance(y, dict):
                walk(x, y, path + ".")
            elif x != y:
                changes.append(f"{path}: {x!r} in the {was}, {y!r} now")

    walk(old, new, "")
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
                state = {**state, "optimizer": loop.models.state_dict()["optimizer"]}
            if old.get("scheduler") != new["scheduler"]:
                state = {**state, "scheduler": None}
        _check_finite(state.get("optimizer"), cfg)
        loop.load_state_dict(state)
    except (RuntimeError, KeyError, ValueError, TypeError, AttributeError, IndexError) as exc:
        # A hand-edited state (an optimizer that is a number, ...) fails in torch's own loaders.
        raise CheckpointError(
            f"{cfg.output.dir}/last.pt: its training state does not fit this config "
            f"({(str(exc).splitlines() or [type(exc).__name__])[0]})",
            ["the model shape must stay the same to resume; start a new run instead"],
        ) from None


def _check_finite(optimizer: Any, cfg: Config) -> None:
    """An optimizer's moments with NaN or inf in them would silently poison every update."""
    states = optimizer.get("state") if isinstance(optimizer, dict) else None
    if not isinstance(states, dict):
        return  # the loaders refuse what is not a state at all
    for index, values in states.items():
        for key, value in values.items() if isinstance(values, dict) else ():
            if (
                isinstance(value, torch.Tensor)
                and value.is_floating_point()
                and not bool(torch.isfinite(value).all())
            ):
                raise CheckpointError(
                    f"{cfg.output.dir}/last.pt: `training.optimizer.state.{index}.{key}` holds NaN or "
                    "infinite values",
                    ["the file was edited or damaged; start a new run instead"],
                )
