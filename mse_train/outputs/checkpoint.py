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

import pydantic
import torch
from torch import nn

from mse_train import __version__
from mse_train.data import drift, files, stored
from mse_train.data.preprocess import Preprocessor
from mse_train.errors import CheckpointError
from mse_train.models import categorical, embeddings, networks
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
# Optional (older checkpoints lack them):
K_RESIDUALS = "residuals"  # |actual - predicted| of the validation rows, target units, sorted per target
# Which rows' residuals those are: one of RESIDUALS_FROM's keys (absent: validation rows).
K_RESIDUALS_FROM = "residuals_from"
RESIDUALS_FROM = {
    "validation": "validation rows",
    "leave_one_out": "training rows, exact leave-one-out residuals",  # a linear model on every row
    "out_of_fold": "training rows, out-of-fold residuals",  # a sweep's ensemble
    "out_of_bag": "training rows, out-of-bag residuals",  # a bagged run (train.bags)
}
K_PROFILE = "profile"  # fitting.fit's profile: each feature's training range and empty cells
# Why the run's end stored no residuals: one of NO_RESIDUALS' keys. Absent with no residuals:
# the checkpoint was written before its run ended (killed), or by an older mse-train.
K_NO_RESIDUALS = "no_residuals"
NO_RESIDUALS = {
    "no_validation": "the model was trained without validation rows",
    "streamed": "the run streamed its table (larger than `data.memory_budget`), and a streamed run "
    "keeps no validation residuals",
    "not_finite": "the model's predictions overflowed on some validation rows, so its residuals "
    "are not finite numbers",
    "weighted": "the linear model was trained on weighted rows (`data.weight`) without validation "
    "rows, and leave-one-out residuals, which would stand in for them, are kept for unweighted rows only",
    "not_solved": "the model was trained without validation rows, and its weights are not the "
    "ridge solution that leave-one-out residuals are exact for (an L1 penalty, or training "
    "stopped short of it)",
    "too_large": "the model was trained without validation rows, and its training rows are too many "
    "for exact leave-one-out residuals to be computed",
    "sweep_holdout": "the sweep that refit this model on every row scored its trials on validation "
    "rows (folds 0), so it kept no out-of-fold residuals",
}

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
    residuals: torch.Tensor | None = None,
    profile: dict[str, Any] | None = None,
    no_residuals: str | None = None,
    residuals_from: str = "validation",
) -> dict[str, Any]:
    """Assemble a checkpoint dict; `no_residuals` says why the end of a run stored none,
    `residuals_from` whose residuals it stored (a key of RESIDUALS_FROM)."""
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
        K_RESIDUALS: residuals,
        K_PROFILE: profile,
        K_NO_RESIDUALS: no_residuals,
        K_RESIDUALS_FROM: residuals_from if residuals is not None else None,
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
    kind = files.irregular_kind(path)
    if kind is not None:  # opening a FIFO would wait for a writer; its size says nothing
        raise CheckpointError(
            files.not_regular_message(path, kind), ["point at a .pt file written by `mse-train run`"]
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
    problems = _check_values(data)
    if problems:
        raise CheckpointError(
            f"{path}: the checkpoint holds {len(problems)} value(s) that mse-train never writes "
            "(edited by hand, or written by something else)",
            [*problems, "use a checkpoint written by mse-train (best.pt or last.pt of a run)"],
        )
    problems = _check_shapes(data)
    if problems:
        raise CheckpointError(
            f"{path}: the weights do not match the model described in the checkpoint",
            [*problems, "the file was edited or assembled by hand; use one written by mse-train"],
        )
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


def _check_values(data: dict[str, Any]) -> list[str]:
    """Every field against what `build` writes, like a config against its schema."""
    problems = []
    epoch = data[K_EPOCH]
    if not _whole(epoch, 0):
        problems.append(f"`{K_EPOCH}` must be a whole number >= 0, got {_short(epoch)}")
    if data.get(K_KIND, "best") not in ("best", "last"):
        problems.append(f"`{K_KIND}` must be 'best' or 'last', got {_short(data[K_KIND])}")
    problems += _check_config(data[K_CONFIG])
    digests = data.get(K_DIGESTS, {})
    if not isinstance(digests, dict) or not all(isinstance(v, str) for v in [*digests, *digests.values()]):
        problems.append(f"`{K_DIGESTS}` must map file paths to sha256 strings, got {_short(digests)}")
    if not isinstance(data.get(K_TRAINING), (dict, type(None))):
        problems.append(f"`{K_TRAINING}` must be a mapping or null, got {_short(data[K_TRAINING])}")
    problems += stored.problems(data[K_PREPROCESS], K_PREPROCESS)
    weights = data[K_WEIGHTS]
    if not isinstance(weights, dict) or not weights:
        return [*problems, f"`{K_WEIGHTS}` must be a non-empty mapping of names to tensors"]
    for name, value in weights.items():
        if not isinstance(name, str):
            problems.append(f"`{K_WEIGHTS}` keys must be parameter names, got {_short(name)}")
        elif not isinstance(value, torch.Tensor) or not value.is_floating_point():
            kind = f"a {value.dtype} tensor" if isinstance(value, torch.Tensor) else type(value).__name__
            problems.append(f"`{K_WEIGHTS}.{name}` must be a floating-point tensor, got {kind}")
        elif value.layout != torch.strided or value.device.type != "cpu":  # sparse, meta, ...
            problems.append(
                f"`{K_WEIGHTS}.{name}` must be a dense tensor, got {value.layout} on {value.device}"
            )
        elif not bool(torch.isfinite(value).all()):
            problems.append(f"`{K_WEIGHTS}.{name}` holds NaN or infinite values")
    problems += _check_model_spec(data[K_MODEL])
    if problems:
        return problems
    pre = Preprocessor.from_dict(data[K_PREPROCESS])
    spec = data[K_MODEL]
    sizes = {"n_inputs": len(pre.input_names), "n_outputs": len(pre.targets), "n_numeric": len(pre.numeric)}
    problems += [
        f"`{K_MODEL}.{key}` is {spec[key]}, but the stored preprocessing makes {size}"
        for key, size in sizes.items()
        if key in spec and spec[key] != size  # checkpoints before numeric embeddings lack n_numeric
    ]
    counts = spec.get("categories", [])
    if counts != pre.category_counts:
        problems.append(
            f"`{K_MODEL}.categories` is {_short(counts)}, but the stored preprocessing "
            f"({pre.categorical_encoding} encoding) makes {_short(pre.category_counts)}: each embedded "
            "categorical column's number of categories"
        )
    if data.get(K_PROFILE) is not None:
        problems += drift.problems(data[K_PROFILE], pre, K_PROFILE)
    why = data.get(K_NO_RESIDUALS)
    if why is not None and why not in NO_RESIDUALS:
        problems.append(f"`{K_NO_RESIDUALS}` must be one of {', '.join(NO_RESIDUALS)}, got {_short(why)}")
    source = data.get(K_RESIDUALS_FROM)
    if source is not None and source not in RESIDUALS_FROM:
        problems.append(
            f"`{K_RESIDUALS_FROM}` must be one of {', '.join(RESIDUALS_FROM)}, got {_short(source)}"
        )
    return problems + _check_residuals(data.get(K_RESIDUALS), len(pre.targets))


def _check_residuals(value: Any, n_targets: int) -> list[str]:
    if value is None:
        return []
    where = f"`{K_RESIDUALS}`"
    if not isinstance(value, torch.Tensor) or value.dtype != torch.float64 or value.layout != torch.strided:
        return [f"{where} must be a float64 tensor, got {_short(value)}"]
    if value.dim() != 2 or value.shape[0] < 1 or value.shape[1] != n_targets:
        return [f"{where} must have shape [rows >= 1, {n_targets}], got {list(value.shape)}"]
    if not bool(torch.isfinite(value).all()) or bool((value < 0).any()):
        return [f"{where} must hold finite numbers >= 0"]
    if bool((value[1:] < value[:-1]).any()):
        return [f"{where} must be sorted per target, as mse-train writes them"]
    return []


def _check_shapes(data: dict[str, Any]) -> list[str]:
    """The weights against the shapes the model spec implies (after `_check_values`)."""
    problems = []
    with torch.device("meta"):  # the shapes the spec implies, without allocating them
        expected = {k: tuple(v.shape) for k, v in networks.from_spec(data[K_MODEL]).state_dict().items()}
    got = {k: tuple(v.shape) for k, v in data[K_WEIGHTS].items()}
    for name in sorted(set(expected) | set(got)):
        if name not in got:
            problems.append(f"`{K_WEIGHTS}` lacks `{name}` of shape {list(expected[name])}")
        elif name not in expected:
            problems.append(f"`{K_WEIGHTS}.{name}` is not a parameter of the model described in `{K_MODEL}`")
        elif got[name] != expected[name]:
            problems.append(
                f"`{K_WEIGHTS}.{name}` has shape {list(got[name])}; the model described in "
                f"`{K_MODEL}` needs {list(expected[name])}"
            )
    if not problems:
        with torch.device("meta"):
            model = networks.from_spec(data[K_MODEL])
        problems = embeddings.stored_problems(model, data[K_WEIGHTS], K_WEIGHTS)
        problems += categorical.stored_problems(model, data[K_WEIGHTS], K_WEIGHTS)
    return problems


def _check_config(config: Any) -> list[str]:
    if not isinstance(config, dict):
        return [f"`{K_CONFIG}` must be a mapping (the resolved config), got {_short(config)}"]
    data = config.get("data", {})
    if not isinstance(data, dict):
        return [f"`{K_CONFIG}.data` must be a mapping, got {_short(data)}"]
    delimiter = data.get("delimiter", ",")
    if not isinstance(delimiter, str) or len(delimiter) != 1:
        return [f"`{K_CONFIG}.data.delimiter` must be one character, got {_short(delimiter)}"]
    setting = data.get("cache", "auto")  # absent from checkpoints made before `data.cache`
    if not isinstance(setting, str) or not setting:
        return [f"`{K_CONFIG}.data.cache` must be auto, off or a folder path, got {_short(setting)}"]
    return []


def _check_model_spec(spec: Any, where: str = K_MODEL) -> list[str]:
    if not isinstance(spec, dict):
        return [f"`{where}` must be a mapping, got {_short(spec)}"]
    if spec.get("type") == networks.ENSEMBLE and where == K_MODEL:
        return _check_ensemble(spec)
    problems = [
        f"`{where}.{key}` must be a whole number >= 1, got {_short(spec.get(key))}"
        for key in ("n_inputs", "n_outputs")
        if not _whole(spec.get(key), 1)
    ]
    if "n_numeric" in spec and not _whole(spec["n_numeric"], 0):
        problems.append(f"`{where}.n_numeric` must be a whole number >= 0, got {_short(spec['n_numeric'])}")
    problems += _check_categories(spec, where)
    fields = {k: v for k, v in spec.items() if k not in networks.SIZE_KEYS}
    name = fields.get("type")
    entry = networks.MODELS.get(name) if isinstance(name, str) else None
    if entry is None:
        names = ", ".join(networks.MODELS)
        return [*problems, f"`{where}.type` must be one of {names}, got {_short(fields.get('type'))}"]
    try:
        entry.schema.model_validate(fields)
    except pydantic.ValidationError as exc:
        for error in exc.errors():
            at = ".".join(str(part) for part in (where, *error["loc"]))
            problems.append(f"`{at}`: {error['msg']}, got {_short(error.get('input'))}")
    return problems


def _check_ensemble(spec: dict[str, Any]) -> list[str]:
    """An ensemble's spec: its members' specs, each as a model's, with the same sizes, and one
    weight per member (> 0, summing to 1: the counts of the greedy selection over its steps)."""
    members, weights = spec.get("members"), spec.get("weights")
    if not isinstance(members, list) or not members:
        return [f"`{K_MODEL}.members` must be a non-empty list of model descriptions, got {_short(members)}"]
    problems = []
    if (
        not isinstance(weights, list)
        or len(weights) != len(members)
        or not all(isinstance(w, float) and 0 < w <= 1 for w in weights)
        or abs(sum(weights) - 1) > 1e-6
    ):
        problems.append(
            f"`{K_MODEL}.weights` must hold one weight in (0, 1] per member, summing to 1, "
            f"got {_short(weights)}"
        )
    for i, member in enumerate(members):
        where = f"{K_MODEL}.members.{i}"
        found = _check_model_spec(member, where)  # another ensemble: not a model type
        problems += found
        if not found and any(member.get(k) != spec.get(k) for k in networks.SIZE_KEYS):
            problems.append(f"`{where}` must have the ensemble's sizes ({', '.join(networks.SIZE_KEYS)})")
    return problems


def _check_categories(spec: dict[str, Any], where: str = K_MODEL) -> list[str]:
    """`categories` and `category_widths`: both or neither, equal-length lists of whole numbers >= 1."""
    if "categories" not in spec and "category_widths" not in spec:
        return []
    counts, widths = spec.get("categories"), spec.get("category_widths")
    if not (_counts(counts) and _counts(widths)):
        return [
            f"`{where}.categories` and `{where}.category_widths` must both be non-empty lists of "
            f"whole numbers >= 1, got {_short(counts)} and {_short(widths)}"
        ]
    assert isinstance(counts, list) and isinstance(widths, list)
    if len(counts) != len(widths):
        return [f"`{where}.categories` and `{where}.category_widths` must have one entry per column each"]
    n_inputs, n_numeric = spec.get("n_inputs"), spec.get("n_numeric")
    if isinstance(n_inputs, int) and (not isinstance(n_numeric, int) or n_inputs != n_numeric + len(counts)):
        return [f"`{where}.n_inputs` must be `n_numeric` plus one code column per entry of `categories`"]
    return []


def _counts(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(_whole(n, 1) for n in value)


def _whole(value: Any, least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


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
