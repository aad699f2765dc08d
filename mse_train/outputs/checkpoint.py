"""Checkpoints: plain dicts of tensors, numbers, strings, lists and dicts.

A checkpoint describes itself (model spec, column schema, preprocessing statistics,
resolved config) so that `eval` and `predict` need nothing else, and `last.pt` also
holds the full training state for an exact resume. Loading uses
`torch.load(weights_only=True)`, which refuses any pickle that would run code.
"""

from __future__ import annotations

import io
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mse_train import __version__
from mse_train.data.preprocess import Preprocessor
from mse_train.errors import CheckpointError
from mse_train.models import networks
from mse_train.outputs import fsio

FORMAT = "mse-train-checkpoint"
FORMAT_VERSION = 1
# Keys of the checkpoint dict.
K_FORMAT = "format"
K_FORMAT_VERSION = "format_version"
K_VERSIONS = "versions"
K_KIND = "kind"  # "last" (resumable) or "best" (weights of the best epoch)
K_EPOCH = "epoch"
K_MODEL = "model"  # networks.spec(): type, layer sizes, ...
K_WEIGHTS = "weights"
K_PREPROCESS = "preprocess"  # Preprocessor.to_dict(): columns, statistics, categories
K_CONFIG = "config"  # the resolved config, as plain data
K_DIGESTS = "data_digests"  # CSV path -> sha256 when the run started
K_TRAINING = "training"  # Loop.state_dict(): optimizer, scheduler, progress, RNG, history
K_BEST = "best"  # {"epoch": int, "loss": float}

MIN_TORCH = (2, 6)  # earlier releases let weights_only=True be bypassed (CVE-2025-32434)


def build(
    kind: str,
    epoch: int,
    model_spec: dict[str, Any],
    weights: dict[str, torch.Tensor],
    pre: Preprocessor,
    config: dict[str, Any],
    digests: dict[str, str],
    best: dict[str, Any],
    training: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Assemble a checkpoint dict."""
    return {
        K_FORMAT: FORMAT,
        K_FORMAT_VERSION: FORMAT_VERSION,
        K_VERSIONS: {"mse_train": __version__, "torch": str(torch.__version__)},
        K_KIND: kind,
        K_EPOCH: epoch,
        K_MODEL: model_spec,
        K_WEIGHTS: {k: v.detach().cpu() for k, v in weights.items()},
        K_PREPROCESS: pre.to_dict(),
        K_CONFIG: config,
        K_DIGESTS: dict(digests),
        K_BEST: best,
        K_TRAINING: training,
    }


def save(path: Path, checkpoint: dict[str, Any]) -> None:
    """Write atomically: the previous file stays whole until the new one is complete."""
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    fsio.write_bytes(path, buffer.getvalue())


def load(path: Path) -> dict[str, Any]:
    """Load and check a checkpoint; every failure is a CheckpointError (exit 2)."""
    _check_torch()
    if not path.exists():
        raise CheckpointError(
            f"{path}: checkpoint not found", ["check the path; a run writes runs/NAME/best.pt and last.pt"]
        )
    if path.is_dir():
        raise CheckpointError(
            f"{path}: is a folder, not a checkpoint file", [f"did you mean {path / 'best.pt'}?"]
        )
    try:
        size = path.stat().st_size
        if size == 0:
            raise CheckpointError(
                f"{path}: the file is empty (0 bytes)",
                ["it was never written completely; use another checkpoint"],
            )
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read: {exc.strerror}") from None
    if head != b"PK\x03\x04":
        raise CheckpointError(
            f"{path}: not a PyTorch checkpoint (it does not start like one)",
            ["point at a .pt file written by `mse-train run`"],
        )
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path}: refused: the file holds Python objects that could run code when loaded",
            [
                f"only tensors, numbers, strings, lists and dicts are accepted; {_refused_global(exc)}",
                "use a checkpoint written by mse-train, from a source you trust",
            ],
        ) from None
    except (RuntimeError, zipfile.BadZipFile, EOFError, ValueError, OSError) as exc:
        raise CheckpointError(
            f"{path}: damaged or truncated checkpoint: {_first_line(exc)}",
            ["use another checkpoint (last.pt and best.pt are written atomically by mse-train)"],
        ) from None
    _check_structure(path, data)
    return data  # type: ignore[no-any-return]


def _check_structure(path: Path, data: Any) -> None:
    if not isinstance(data, dict) or data.get(K_FORMAT) != FORMAT:
        raise CheckpointError(
            f"{path}: a PyTorch file, but not an mse-train checkpoint",
            ["mse-train reads the best.pt/last.pt it writes; a bare state_dict lacks the column schema"],
        )
    version = data.get(K_FORMAT_VERSION)
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format {version}, this mse-train reads format {FORMAT_VERSION}",
            ["use the mse-train version that wrote it"],
        )
    missing = [k for k in (K_MODEL, K_WEIGHTS, K_PREPROCESS, K_CONFIG, K_EPOCH) if k not in data]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {', '.join(missing)}")


def preprocessor(path: Path, data: dict[str, Any]) -> Preprocessor:
    try:
        return Preprocessor.from_dict(data[K_PREPROCESS])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: the column schema in the checkpoint is damaged ({exc})") from None


def model(path: Path, data: dict[str, Any]) -> nn.Module:
    """Rebuild the model and load its weights; a mismatch is a clear error."""
    try:
        net = networks.from_spec(data[K_MODEL])
    except Exception as exc:
        raise CheckpointError(
            f"{path}: the model description in the checkpoint is invalid ({_first_line(exc)})"
        ) from None
    try:
        net.load_state_dict(data[K_WEIGHTS])
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise CheckpointError(
            f"{path}: the weights do not match the model described in the checkpoint",
            [_first_line(exc), "the file was edited or assembled by hand; use one written by mse-train"],
        ) from None
    return net


def _check_torch() -> None:
    version = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2])
    if version < MIN_TORCH:
        raise CheckpointError(
            f"torch {torch.__version__} cannot load checkpoints safely (CVE-2025-32434)",
            ["install torch >= 2.6"],
        )


def _refused_global(exc: BaseException) -> str:
    match = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
    return f"it references `{match.group(1)}`" if match else _first_line(exc)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
