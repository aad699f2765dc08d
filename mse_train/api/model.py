"""`mse_train.load(path)`: a trained model that predicts on DataFrames, as `predict` does.

A `Model` is a checkpoint (best.pt or last.pt) held as its bytes. Each call goes through
the command's own code with the rows as a table file in a private temporary folder:
`predict` (intervals, drift), `export`; so a Model and `mse-train predict` on the same
rows give the same numbers, and a Model pickles as its checkpoint.
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from mse_train.data import frames
from mse_train.data.drift import Finding
from mse_train.outputs import checkpoint, fsio
from mse_train.use import evaluate, export, predict


@dataclass
class Prediction:
    """What `Model.predict` found: the predictions, and the drift `predict` warns about."""

    frame: pd.DataFrame  # <target>_pred (and _lo, _hi) per target, indexed like the rows
    drift: list[Finding] = field(default_factory=list)


class Model:
    """A trained mse-train model: `predict(frame)`, `save(path)`, `export(path)`."""

    def __init__(self, data: bytes, source: str = "checkpoint") -> None:
        self._data = data
        self.source = source
        self._folder: str | None = None
        ckpt = checkpoint.load(self._path())  # checked as the CLI checks it
        self.pre = checkpoint.preprocessor(self._path(), ckpt)
        self.epoch = int(ckpt.get("epoch", 0))

    @classmethod
    def load(cls, path: str | Path) -> Model:
        """The checkpoint at `path` (a run's best.pt or last.pt); a CheckpointError as `predict` gives."""
        path = Path(path)
        checkpoint.load(path)  # every check, with the file's own name in the message
        return cls(path.read_bytes(), str(path))

    @property
    def features(self) -> list[str]:
        """The input columns, in the order the model was trained on."""
        return list(self.pre.features)

    @property
    def targets(self) -> list[str]:
        return list(self.pre.target_names)

    def predict(self, rows: Any, interval: float | None = None, device: str = "cpu") -> pd.DataFrame:
        """`<target>_pred` per target (with `interval`, `<target>_lo` and `_hi`), indexed like
        `rows` (a DataFrame, or an array in the order of `features`)."""
        return self.predict_with_drift(rows, interval, device).frame

    def predict_with_drift(self, rows: Any, interval: float | None = None, device: str = "cpu") -> Prediction:
        """The predictions and the drift findings that `mse-train predict` warns about."""
        frame = frames.frame_of(rows, names=self.features)
        values, drift = predict.predict_frame(self._path(), frame, interval, device)
        return Prediction(values, drift)

    def save(self, path: str | Path) -> Path:
        """Write the checkpoint to `path` (atomically), for `mse-train predict` and `mse_train.load`."""
        path = Path(path)
        fsio.write_bytes(path, self._data)
        return path

    def export(self, path: str | Path, check_rows: Any = None) -> export.Exported:
        """`mse-train export`: the ONNX graph, compared with predict before it is written."""
        check = None
        if check_rows is not None:
            check = frames.write(
                frames.frame_of(check_rows, names=self.features), Path(self._scratch()) / "check.csv"
            )
        try:
            return export.export(self._path(), Path(path), check)
        finally:
            if check is not None:
                check.unlink(missing_ok=True)

    def torch_module(self) -> Any:
        """The network itself (a torch.nn.Module on the CPU), for inspection."""
        return evaluate.load(self._path())[2]

    # ---------------------------------------------------------------- the file
    def _scratch(self) -> str:
        """A private folder for the checkpoint file, removed with the Model (or at exit)."""
        if self._folder is None:
            self._folder = tempfile.mkdtemp(prefix="mse-train-model-")
            weakref.finalize(self, shutil.rmtree, self._folder, True)
        return self._folder

    def _path(self) -> Path:
        path = Path(self._scratch()) / "model.pt"
        if not path.exists():
            path.write_bytes(self._data)
        return path

    def __getstate__(self) -> dict[str, Any]:
        return {"data": self._data, "source": self.source}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["data"], state["source"])  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"Model(features={self.features}, targets={self.targets}, epoch={self.epoch})"


def load(path: str | Path) -> Model:
    """A trained model from a checkpoint file (a run's best.pt or last.pt)."""
    return Model.load(path)
