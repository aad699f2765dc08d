"""The MLflow Model that a run logs with `output.mlflow: true`: a pyfunc over `predict`.

It holds the run's best.pt as an artifact and predicts with `predict`'s own code
(`predict.predict_frame`), so `mlflow.pyfunc.load_model(...).predict(frame)`, `mlflow
models predict` and `mlflow models serve` answer with `mse-train predict`'s numbers. Its
input is a DataFrame of the raw feature columns, by name: numbers as double (NaN an empty
cell), categories as strings; its output a `<target>_pred` column per target. The signature
and an input example (a row of training means and first categories) are built from the
checkpoint, so no training row is copied into the store.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pandas as pd

from mse_train import __version__
from mse_train.data.preprocess import Preprocessor
from mse_train.outputs import checkpoint
from mse_train.use import predict

ARTIFACT = "checkpoint"  # the artifact key of best.pt inside the MLflow Model
MODEL_FOLDER = "model"  # where the run's artifacts hold the MLflow Model: runs:/<id>/model


# MLflow warns as mlflow.pyfunc is first imported, and as a PythonModel class is defined,
# that type hints it cannot check by (its own, a DataFrame) are not checked: the signature
# saved with the model is what inputs are checked against.
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import mlflow.pyfunc
    from mlflow.pyfunc.model import PythonModel

    class MseTrainModel(PythonModel):
        """Predicts with the checkpoint it was saved with, through `mse-train predict`'s code."""

        def load_context(self, context: Any) -> None:
            self.path = Path(context.artifacts[ARTIFACT])
            checkpoint.load(self.path)  # a damaged artifact fails when loaded, not at the first call

        def predict(
            self, context: object, model_input: pd.DataFrame, params: dict[str, object] | None = None
        ) -> pd.DataFrame:
            values, _ = predict.predict_frame(self.path, model_input)
            return values


def example(pre: Preprocessor) -> pd.DataFrame:
    """One row in the model's input form: each numeric column's training mean, each
    categorical column's first category."""
    row: dict[str, Any] = {col.name: float(col.mean) for col in pre.numeric}
    row.update({col.name: col.categories[0] if col.categories else "" for col in pre.categorical})
    return pd.DataFrame([{name: row[name] for name in pre.features}])


def signature(pre: Preprocessor) -> Any:
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    categorical = set(pre.categorical_names)
    inputs: list[Any] = [
        ColSpec("string" if name in categorical else "double", name) for name in pre.features
    ]
    outputs: list[Any] = [ColSpec("double", f"{name}_pred") for name in pre.target_names]
    return ModelSignature(inputs=Schema(inputs), outputs=Schema(outputs))


def save(ckpt_path: Path, folder: Path) -> None:
    """Write the MLflow Model of `ckpt_path` into `folder` (which must not exist yet)."""
    pre = checkpoint.preprocessor(ckpt_path, checkpoint.load(ckpt_path))
    mlflow.pyfunc.save_model(
        str(folder),
        python_model=MseTrainModel(),
        artifacts={ARTIFACT: str(ckpt_path)},
        signature=signature(pre),
        input_example=example(pre),
        pip_requirements=[f"mse-train=={__version__}"],
        metadata={"mse_train.version": __version__, "targets": pre.target_names},
    )
