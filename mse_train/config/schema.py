"""The config schema: every key, its type, its default, its range and its meaning.

This is the public contract of a YAML config. Choices that change which keys apply
(model type, init scheme, optimizer, scheduler) are tagged unions, so a key that does
not belong to the chosen variant is an error rather than silently ignored. Numbers are
strict: `"10"` is not `10`. The README's config reference is generated from this file.
"""

from __future__ import annotations

import re
import typing
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Strict,
    Tag,
)
from pydantic_core import PydanticCustomError
from typing_extensions import TypeAliasType

from mse_train.runtime import MAX_THREADS, THREADS_CHOICES

Float = Annotated[float, Strict(), Field(allow_inf_nan=False)]
Int = Annotated[int, Strict()]
Bool = Annotated[bool, Strict()]
Str = Annotated[str, Strict(), Field(min_length=1)]
PositiveFloat = Annotated[Float, Field(gt=0)]
NonNegFloat = Annotated[Float, Field(ge=0)]
Fraction = Annotated[Float, Field(ge=0, lt=1)]
PositiveInt = Annotated[Int, Field(ge=1)]

# Which key picks the variant of each tagged section, and the variant when it is left out.
TAG_KEYS = {"model": "type", "init": "scheme", "optimizer": "name", "scheduler": "name"}
TAG_DEFAULTS = {"model": "linear", "init": "default", "optimizer": "sgd", "scheduler": "none"}


class Section(BaseModel):
    """A config section: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    def fill_defaults(self, config: Config) -> None:
        """Set defaults that depend on other keys (null meaning "derive it"); called once."""


def _shorthand(section: str) -> BeforeValidator:
    """Let `optimizer: adam` stand for `optimizer: {name: adam}`."""
    key = TAG_KEYS[section]

    def expand(value: Any) -> Any:
        return {key: value} if isinstance(value, str) else value

    return BeforeValidator(expand)


def _tagged(section: str) -> Discriminator:
    """Pick a union member by the section's tag key, with its default when left out."""
    key, default = TAG_KEYS[section], TAG_DEFAULTS[section]

    def tag(value: Any) -> Any:
        if isinstance(value, dict):
            return value.get(key, default)
        return getattr(value, key, None)

    return Discriminator(tag)


# ---------------------------------------------------------------------------- data
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
_UNITS.update({"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40})
_SIZE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*")


def size_in_bytes(text: str) -> int | None:
    """`512MiB` -> 536870912; None for `auto`. ValueError names the accepted forms."""
    if text == "auto":
        return None
    match = _SIZE.fullmatch(text)
    unit = match.group(2).upper() if match else ""
    if match is None or unit not in _UNITS:
        raise ValueError(
            f"{text!r} is not a size: write auto, or a number with B, KB, MB, GB, KiB, MiB or GiB"
        )
    size = int(float(match.group(1)) * _UNITS[unit])
    if size < 1:
        raise ValueError(f"{text!r} is not a positive size")
    return size


def _check_size(value: str) -> str:
    size_in_bytes(value)
    return value


MemorySize = Annotated[Str, AfterValidator(_check_size)]


# The words YAML 1.1 reads as true or false. A file or folder key given one is refused (an
# unquoted `off` used to reach the check as false, and a quoted "False" became ./False).
SWITCH_WORDS = {"yes": True, "on": True, "true": True, "no": False, "off": False, "false": False}


def _not_a_switch(value: str) -> str:
    if value.strip().lower() in SWITCH_WORDS:
        raise ValueError(
            f"{value!r} is a yes/no word, not a file or folder name; write null to leave it "
            f"unset, or ./{value.strip()} for a file or folder that really has that name"
        )
    return value


def _cache_switch(value: Any) -> Any:
    """`cache: off` (false, no, in any case) is off; true, yes, on are auto."""
    if isinstance(value, bool):
        return "auto" if value else "off"
    if isinstance(value, str) and value.strip().lower() in SWITCH_WORDS:
        return "auto" if SWITCH_WORDS[value.strip().lower()] else "off"
    return value


PathText = Annotated[Str, AfterValidator(_not_a_switch)]


class DataConfig(Section):
    train: PathText = Field(description="CSV with the training rows; relative to the YAML file's folder.")
    target: Str | Annotated[list[Str], Field(min_length=1)] = Field(
        description="Column to predict, or a list of columns for several targets."
    )
    val: PathText | None = Field(
        None, description="Optional CSV with validation rows (same columns as train)."
    )
    val_fraction: Fraction = Field(
        0.0, description="Hold out this share of train rows for validation, shuffled with `seed`."
    )
    features: Annotated[list[Str], Field(min_length=1)] | None = Field(
        None, description="Input columns; null = every column except the target(s)."
    )
    weight: Str | None = Field(
        None,
        description="Column of per-row sample weights (non-negative numbers, not all zero): "
        "not a feature. Weights the loss, validation, early stopping, the best epoch, `cv` and "
        "`sweep` scores and `eval`'s metrics (when the evaluated file has the column). "
        "null = every row weighs 1.",
    )
    categorical: list[Str] = Field(
        [], description="Columns to treat as categories even if they hold numbers (e.g. integer codes)."
    )
    categorical_encoding: Literal["onehot", "embedding"] = Field(
        "onehot",
        description="How a categorical column enters the model: onehot (one 0/1 input per category) "
        "or embedding (a learned vector per category, fitted with the network; lifts "
        "`max_categories`). Exported to ONNX as a lookup table; trains as a module, not as a "
        "stack (`cv`/`sweep` train such configs one at a time).",
    )
    category_embedding_size: PositiveInt | None = Field(
        None,
        description="embedding: width of each column's vectors; null = fastai's rule, "
        "round(1.6 * (categories + 1) ** 0.56), at most 16.",
    )
    max_categories: PositiveInt = Field(
        100,
        description="A categorical column with more distinct values than this is an error "
        "(onehot only: embeddings take any number).",
    )
    unknown_category: Literal["error", "ignore"] = Field(
        "error",
        description="A category at eval/predict time that training never saw: error, or "
        "ignore (encode as all zeros: the one-hot row, or the embedding's fixed zero vector).",
    )
    non_numeric: Literal["error", "missing"] = Field(
        "error",
        description="A cell that is not a number (e.g. `rotary`) in a numeric column, in any file "
        "(train, val, eval, predict): error, naming the cells; or missing (read it as an empty "
        "cell, then handled by `missing`); a target's or weight's words are errors either way. "
        "Stored in the checkpoint. A column mostly of words is categorical either way.",
    )
    missing: Literal["error", "drop", "mean", "median"] = Field(
        "error",
        description="Empty cells: error; drop the row; or fill features with the training "
        "rows' mean/median. Rows with an empty target are dropped unless `error`.",
    )
    standardize: Bool = Field(
        True, description="Z-score numeric features with statistics of the training rows only."
    )
    standardize_target: Bool | None = Field(
        None,
        description="Z-score each target with training-row statistics; null = same as "
        "`standardize`. Predictions and eval metrics are always in the target's own units.",
    )
    delimiter: Annotated[str, Strict(), Field(min_length=1, max_length=1)] = Field(
        ",", description="Field separator of the CSV files."
    )
    cache: Annotated[Str, BeforeValidator(_cache_switch)] = Field(
        "auto",
        description="Binary cache of parsed tables: auto (~/.cache/mse-train, or "
        "$MSE_TRAIN_CACHE_DIR; also true, yes, on), off (also false, no), or a folder "
        "(relative to the YAML file's folder; ./off for a folder named off).",
    )

    memory_budget: MemorySize = Field(
        "auto",
        description="Memory the training table's arrays may take: auto (half of the available "
        "memory) or a size such as 512MiB or 8GB. `run` streams a table that does not fit from "
        "the data cache, in shuffled blocks of rows.",
    )

    def fill_defaults(self, config: Config) -> None:
        if self.standardize_target is None:
            self.standardize_target = self.standardize


# --------------------------------------------------------------------------- model
Activation = Literal["relu", "tanh", "sigmoid", "gelu", "leaky_relu", "elu"]


class LinearModel(Section):
    type: Literal["linear"] = Field("linear", description="A single `nn.Linear` layer.")


NumericEmbedding = Literal["none", "periodic", "piecewise_linear"]
# Keys that only one `numeric_embedding` reads: setting one for another is a config error.
EMBEDDING_KEYS: dict[str, str] = {
    "frequencies": "periodic",
    "frequency_scale": "periodic",
    "periodic_lite": "periodic",
    "bins": "piecewise_linear",
}
# `embedding_size: null` -> this size (the reference package's starting points).
EMBEDDING_SIZES: dict[str, int] = {"periodic": 24, "piecewise_linear": 16}


class EmbeddedModel(Section):
    """Settings of the numeric-feature embeddings that mlp, resnet and tabm share.

    Defaults follow Gorishniy, Rubachev & Babenko, "On Embeddings for Numerical Features in
    Tabular Deep Learning" (NeurIPS 2022) and its reference package `rtdl_num_embeddings`.
    """

    numeric_embedding: NumericEmbedding = Field(
        "none",
        description="How each numeric feature enters the network: none (its standardised value); "
        "periodic (PLR: learned frequencies, sin/cos, linear, ReLU); piecewise_linear (bins from "
        "training-row quantiles, then a linear map; the bins are stored in the checkpoint).",
    )
    embedding_size: PositiveInt | None = Field(
        None,
        description="Width of each numeric feature's embedding; null = 24 (periodic), 16 (piecewise_linear).",
    )
    frequencies: PositiveInt = Field(48, description="periodic: frequencies per feature (k in the paper).")
    frequency_scale: PositiveFloat = Field(
        0.01,
        description="periodic: std of the initial frequencies (sigma). Small is safe; too large overfits.",
    )
    periodic_lite: Bool = Field(
        False,
        description="periodic: one linear layer shared by all features (fewer weights) instead of one each.",
    )
    bins: Annotated[Int, Field(ge=2)] = Field(
        48, description="piecewise_linear: quantile bins per feature (fewer where values repeat)."
    )

    def fill_defaults(self, config: Config) -> None:
        if self.embedding_size is None and self.numeric_embedding in EMBEDDING_SIZES:
            self.embedding_size = EMBEDDING_SIZES[self.numeric_embedding]


class MLPModel(EmbeddedModel):
    type: Literal["mlp"] = Field(description="Hidden layers with an activation, then a linear head.")
    hidden: Annotated[list[PositiveInt], Field(min_length=1)] = Field(
        [64, 64], description="Widths of the hidden layers."
    )
    activation: Activation = Field("relu", description="Activation after each hidden layer.")
    dropout: Fraction = Field(0.0, description="Dropout probability after each hidden activation.")


class ResNetModel(EmbeddedModel):
    type: Literal["resnet"] = Field(
        description="Residual MLP (Gorishniy et al. 2021): a linear layer to `width`, blocks of "
        "norm, linear, activation, dropout, linear, dropout plus the skip; then norm, activation, "
        "linear head."
    )
    width: PositiveInt = Field(128, description="Width of the residual stream (d_main).")
    blocks: PositiveInt = Field(2, description="Residual blocks (depth).")
    hidden_multiplier: PositiveFloat = Field(
        2.0, description="Inner width of a block = width x this (d_hidden_factor)."
    )
    norm: Literal["batch_norm", "layer_norm"] = Field(
        "batch_norm", description="Normalisation at the start of each block and before the head."
    )
    activation: Activation = Field("relu", description="Activation inside each block and before the head.")
    dropout: Fraction = Field(0.1, description="Dropout after the block's activation (hidden_dropout).")
    residual_dropout: Fraction = Field(0.0, description="Dropout on the block's output before the skip.")


class TabMModel(EmbeddedModel):
    type: Literal["tabm"] = Field(
        description="TabM (Gorishniy et al. 2025): k MLPs sharing weights, each trained on the "
        "MSE, predictions averaged."
    )
    k: PositiveInt = Field(32, description="Ensemble members trained at once in one network.")
    sharing: Literal["tabm", "tabm_mini", "packed"] = Field(
        "tabm",
        description="tabm: every layer has per-member scalings and biases (BatchEnsemble); "
        "tabm_mini: only one per-member scaling of the inputs, the rest shared; packed: no weight "
        "shared, k independent MLPs, each from its own initial weights (TabM-packed: the mean of "
        "k trainings in one).",
    )
    blocks: PositiveInt | None = Field(
        None, description="Hidden layers; null = 3, or 2 with a numeric embedding."
    )
    width: PositiveInt = Field(512, description="Width of each hidden layer (d_block).")
    activation: Activation = Field("relu", description="Activation after each hidden layer.")
    dropout: Fraction = Field(0.1, description="Dropout after each hidden activation.")

    def fill_defaults(self, config: Config) -> None:
        super().fill_defaults(config)
        if self.blocks is None:
            self.blocks = 3 if self.numeric_embedding == "none" else 2


ModelConfig = Annotated[
    Annotated[LinearModel, Tag("linear")]
    | Annotated[MLPModel, Tag("mlp")]
    | Annotated[ResNetModel, Tag("resnet")]
    | Annotated[TabMModel, Tag("tabm")],
    _tagged("model"),
    _shorthand("model"),
]


# ---------------------------------------------------------------------------- init
Bias = Literal["default", "zeros"]
BIAS_DESCRIPTION = "Bias init: default (PyTorch's own) or zeros."


class DefaultInit(Section):
    scheme: Literal["default"] = Field("default", description="PyTorch's own init.")
    bias: Bias = Field("default", description=BIAS_DESCRIPTION)


class XavierInit(Section):
    scheme: Literal["xavier_normal", "xavier_uniform"] = Field(
        description="Glorot: `nn.init.xavier_normal_` / `xavier_uniform_`, scaled by fan-in and fan-out."
    )
    gain: PositiveFloat = Field(1.0, description="Scale factor (`nn.init.calculate_gain`).")
    bias: Bias = Field("default", description=BIAS_DESCRIPTION)


class KaimingInit(Section):
    scheme: Literal["kaiming_normal", "kaiming_uniform"] = Field(
        description="He: `nn.init.kaiming_normal_` / `kaiming_uniform_`, scaled for rectifiers."
    )
    a: NonNegFloat = Field(0.0, description="Negative slope of the rectifier (leaky_relu).")
    mode: Literal["fan_in", "fan_out"] = Field("fan_in", description="Preserve variance forward or backward.")
    nonlinearity: Literal["relu", "leaky_relu", "linear", "tanh", "sigmoid", "selu"] = Field(
        "relu", description="The activation the gain is computed for."
    )
    bias: Bias = Field("default", description=BIAS_DESCRIPTION)


class NormalInit(Section):
    scheme: Literal["normal"] = Field(description="`nn.init.normal_`: N(mean, std²).")
    mean: Float = Field(0.0, description="Mean of the normal distribution.")
    std: PositiveFloat = Field(1.0, description="Standard deviation.")
    bias: Bias = Field("default", description=BIAS_DESCRIPTION)


class TruncNormalInit(Section):
    scheme: Literal["trunc_normal"] = Field(
        description="`nn.init.trunc_normal_`: normal, redrawn outside [a, b]."
    )
    mean: Float = Field(0.0, description="Mean of the normal distribution.")
    std: PositiveFloat = Field(1.0, description="Standard deviation.")
    a: Float = Field(-2.0, description="Lower cut-off.")
    b: Float = Field(2.0, description="Upper cut-off.")
    bias: Bias = Field("default", description=BIAS_DESCRIPTION)


class UniformInit(Section):
    scheme: Literal["uniform"] = Field(description="`nn.init.uniform_`: U(a, b).")
    a: Float = Field(0.0, description="Lower bound.")
    b: Float = Field(1.0, description="Upper bound.")
    bias: Bias = Field("default", description=BIAS_DESCRIPTION)


class ZerosInit(Section):
    scheme: Literal["zeros"] = Field(description="Every weight 0 (biases as `bias` says).")
    bias: Bias = Field("default", description=BIAS_DESCRIPTION)


class OrthogonalInit(Section):
    scheme: Literal["orthogonal"] = Field(description="`nn.init.orthogonal_`: a (semi-)orthogonal matrix.")
    gain: PositiveFloat = Field(1.0, description="Scale factor.")
    bias: Bias = Field("default", description=BIAS_DESCRIPTION)


InitConfig = Annotated[
    Annotated[DefaultInit, Tag("default")]
    | Annotated[XavierInit, Tag("xavier_normal")]
    | Annotated[XavierInit, Tag("xavier_uniform")]
    | Annotated[KaimingInit, Tag("kaiming_normal")]
    | Annotated[KaimingInit, Tag("kaiming_uniform")]
    | Annotated[NormalInit, Tag("normal")]
    | Annotated[TruncNormalInit, Tag("trunc_normal")]
    | Annotated[UniformInit, Tag("uniform")]
    | Annotated[ZerosInit, Tag("zeros")]
    | Annotated[OrthogonalInit, Tag("orthogonal")],
    _tagged("init"),
    _shorthand("init"),
]


# ----------------------------------------------------------------------- optimizer
WEIGHT_DECAY = "Decoupled/L2 decay applied by the optimizer to every parameter."


class SGDConfig(Section):
    name: Literal["sgd"] = Field("sgd", description="`torch.optim.SGD`.")
    lr: PositiveFloat = Field(0.01, description="Learning rate.")
    momentum: NonNegFloat = Field(0.0, description="Momentum factor.")
    dampening: NonNegFloat = Field(0.0, description="Dampening for momentum.")
    nesterov: Bool = Field(False, description="Nesterov momentum (needs momentum > 0).")
    weight_decay: NonNegFloat = Field(0.0, description=WEIGHT_DECAY)


class AdamConfig(Section):
    name: Literal["adam", "adamw"] = Field(description="`torch.optim.Adam` / `AdamW`.")
    lr: PositiveFloat = Field(0.001, description="Learning rate.")
    betas: tuple[Fraction, Fraction] = Field((0.9, 0.999), description="Averaging coefficients.")
    eps: PositiveFloat = Field(1e-8, description="Added to the denominator.")
    weight_decay: NonNegFloat | None = Field(
        None, description="Weight decay; null = PyTorch's default (adam 0, adamw 0.01)."
    )
    amsgrad: Bool = Field(False, description="Use the AMSGrad variant.")

    def fill_defaults(self, config: Config) -> None:
        if self.weight_decay is None:
            self.weight_decay = 0.01 if self.name == "adamw" else 0.0


class RMSpropConfig(Section):
    name: Literal["rmsprop"] = Field(description="`torch.optim.RMSprop`.")
    lr: PositiveFloat = Field(0.01, description="Learning rate.")
    alpha: Fraction = Field(0.99, description="Smoothing constant.")
    eps: PositiveFloat = Field(1e-8, description="Added to the denominator.")
    momentum: NonNegFloat = Field(0.0, description="Momentum factor.")
    centered: Bool = Field(False, description="Normalise by an estimate of the gradient's variance.")
    weight_decay: NonNegFloat = Field(0.0, description=WEIGHT_DECAY)


class LBFGSConfig(Section):
    name: Literal["lbfgs"] = Field(description="`torch.optim.LBFGS` (best with full batches).")
    lr: PositiveFloat = Field(1.0, description="Step length scale.")
    max_iter: PositiveInt = Field(20, description="Iterations per optimizer step (one per batch).")
    history_size: PositiveInt = Field(100, description="Update history kept.")
    line_search: Literal["strong_wolfe", "none"] = Field(
        "strong_wolfe", description="Line search; `none` uses fixed steps."
    )
    tolerance_grad: PositiveFloat = Field(1e-7, description="Stop when the gradient is this small.")
    tolerance_change: PositiveFloat = Field(1e-9, description="Stop when the loss changes less.")


OptimizerConfig = Annotated[
    Annotated[SGDConfig, Tag("sgd")]
    | Annotated[AdamConfig, Tag("adam")]
    | Annotated[AdamConfig, Tag("adamw")]
    | Annotated[RMSpropConfig, Tag("rmsprop")]
    | Annotated[LBFGSConfig, Tag("lbfgs")],
    _tagged("optimizer"),
    _shorthand("optimizer"),
]


# ----------------------------------------------------------------------- scheduler
class NoScheduler(Section):
    name: Literal["none"] = Field("none", description="Constant learning rate.")


class StepScheduler(Section):
    name: Literal["step"] = Field(description="`StepLR`: multiply lr by gamma every step_size epochs.")
    step_size: PositiveInt = Field(10, description="Epochs between decays.")
    gamma: PositiveFloat = Field(0.1, description="Decay factor.")


class MultiStepScheduler(Section):
    name: Literal["multistep"] = Field(description="`MultiStepLR`: decay at given epochs.")
    milestones: Annotated[list[PositiveInt], Field(min_length=1)] = Field(
        description="Epochs at which lr is multiplied by gamma."
    )
    gamma: PositiveFloat = Field(0.1, description="Decay factor.")


class ExponentialScheduler(Section):
    name: Literal["exponential"] = Field(description="`ExponentialLR`: lr *= gamma every epoch.")
    gamma: PositiveFloat = Field(0.95, description="Decay factor per epoch.")


class CosineScheduler(Section):
    name: Literal["cosine"] = Field(description="`CosineAnnealingLR` from lr down to eta_min.")
    t_max: PositiveInt | None = Field(None, description="Epochs of one half cosine; null = train.epochs.")
    eta_min: NonNegFloat = Field(0.0, description="Lowest learning rate.")

    def fill_defaults(self, config: Config) -> None:
        if self.t_max is None:
            self.t_max = config.train.epochs


class PlateauScheduler(Section):
    name: Literal["plateau"] = Field(
        description="`ReduceLROnPlateau` on val loss (train loss without validation)."
    )
    factor: Annotated[Float, Field(gt=0, lt=1)] = Field(0.1, description="Decay factor.")
    patience: Annotated[Int, Field(ge=0)] = Field(
        10, description="Epochs without improvement before decaying."
    )
    threshold: NonNegFloat = Field(1e-4, description="Relative improvement that counts.")
    min_lr: NonNegFloat = Field(0.0, description="Lower bound on the learning rate.")


SchedulerConfig = Annotated[
    Annotated[NoScheduler, Tag("none")]
    | Annotated[StepScheduler, Tag("step")]
    | Annotated[MultiStepScheduler, Tag("multistep")]
    | Annotated[ExponentialScheduler, Tag("exponential")]
    | Annotated[CosineScheduler, Tag("cosine")]
    | Annotated[PlateauScheduler, Tag("plateau")],
    _tagged("scheduler"),
    _shorthand("scheduler"),
]


# ---------------------------------------------------------------- the rest, and all
class RegularizationConfig(Section):
    l1: NonNegFloat = Field(
        0.0, description="Coefficient on sum |w| over weights (not biases), added to the loss."
    )
    l2: NonNegFloat = Field(
        0.0, description="Coefficient on sum w^2 over weights (not biases), added to the loss."
    )


class LossConfig(Section):
    reduction: Literal["mean", "sum"] = Field(
        "mean",
        description="`nn.MSELoss` reduction; sum is the old `size_average=False`. With "
        "`data.weight` w: mean = sum(w * err^2) / (sum(w) * targets), sum = sum(w * err^2).",
    )


class EarlyStoppingConfig(Section):
    patience: PositiveInt = Field(20, description="Epochs without improvement before stopping.")
    min_delta: NonNegFloat = Field(0.0, description="Smallest decrease that counts as improvement.")


def _check_threads(value: Any) -> Any:
    if value == "auto" or (type(value) is int and 1 <= value <= MAX_THREADS):
        return value
    raise PydanticCustomError("thread_count", f"must be {THREADS_CHOICES}")


Threads = Annotated[int | str, BeforeValidator(_check_threads)]


class TrainConfig(Section):
    epochs: PositiveInt = Field(100, description="Passes over the training rows.")
    batch_size: PositiveInt | None = Field(None, description="Rows per step; null = all rows in one batch.")
    shuffle: Bool = Field(True, description="Reshuffle rows every epoch (mini-batches only).")
    device: Annotated[str, Strict(), Field(pattern=r"^(auto|cpu|cuda(:[0-9]+)?)$")] = Field(
        "auto", description="auto (cuda when available), cpu, cuda or cuda:N."
    )
    early_stopping: EarlyStoppingConfig | None = Field(
        None, description="Stop when val loss (train loss without validation) stops improving."
    )
    precision: Literal["fp32", "tf32", "bf16"] = Field(
        "fp32",
        description="CUDA arithmetic: fp32; tf32 (float32 matrix products on TF32 tensor cores); "
        "bf16 (the forward pass autocast to bfloat16; weights, optimizer state and loss stay "
        "float32; trains as a module, not a stack). tf32 and bf16 need a CUDA device (exit 2 on a "
        "CPU). Validation, eval and predict score in float32.",
    )
    bags: Annotated[Int, Field(ge=1, le=50)] = Field(
        1,
        description="Train this many models, each on its own draw of `data.val_fraction` "
        "validation rows (bag j: seed + j, so its own rows, initial weights and batch order), each "
        "stopped early and kept at its best epoch on its own validation rows, side by side in one "
        "stack where the config stacks; best.pt predicts their mean (as AutoGluon bags), its "
        "intervals from the out-of-bag residuals. One preprocessing, fitted on all training rows, "
        "serves them all. Needs `data.val_fraction` > 0 and no `data.val`; writes no last.pt (no "
        "--resume; `output.checkpoint_every` writes nothing) and writes its files once every bag "
        "has trained. `cv` bags each fold the same way and scores the bags' mean. 1 = one model. "
        "`init` writes 5 for a network on tables of up to 10,000 rows.",
    )
    processes: Threads = Field(
        "auto",
        description="Processes that train a config's bags (`train.bags`) or its folds (`cv`, "
        "init's race, a sweep's trials) side by side where they train as torch modules (TabM, "
        "ResNet, dropout, L-BFGS: configs that do not stack; `--no-pack` too, but for a sweep's, "
        "which it trains one at a time): auto = one "
        "per usable CPU; 1 = one after another. Only on a CPU under Linux with `train.threads` 1 "
        "and no other thread at work (MLflow's, TensorBoard's: a fork beside threads is not "
        "safe); otherwise one after another. Each training draws from its "
        "own random state, so its model is the same either way.",
    )
    threads: Threads = Field(
        "auto",
        description="CPU threads torch uses within each operation: a whole number, or auto = "
        "OMP_NUM_THREADS when set, else 1 (on an idle machine 2 threads train the shipped models "
        "at most 1.6x faster, at batch 1024; when another busy program shares the cores they are "
        "21-45x slower: bench/results.md, Threads). Set 2 or more on cores of your own. The "
        "environment variable MSE_TRAIN_THREADS overrides it, for every command.",
    )


class OutputConfig(Section):
    dir: PathText | None = Field(
        None,
        description="Run folder, relative to the YAML file's folder; null = runs/<config name>. "
        "`--output-dir` overrides.",
    )
    checkpoint_every: Annotated[Int, Field(ge=0)] = Field(
        0, description="Also write last.pt (and best.pt) every N epochs; 0 = only at the end."
    )
    plot: Bool = Field(True, description="Write loss.png at the end of the run.")
    tensorboard: Bool = Field(False, description="Write TensorBoard scalars (needs the tensorboard extra).")
    mlflow: Bool = Field(
        False,
        description="Log params, per-epoch metrics, the summary and the run folder to MLflow, in the "
        "store `MLFLOW_TRACKING_URI` names (default sqlite:///mlflow.db in the current folder); needs "
        "the mlflow extra.",
    )
    mlflow_experiment: Str | None = Field(
        None, description="MLflow experiment to log into (created if missing); null = the config's name."
    )


class SweepRange(Section):
    """A numeric range to search: `{low: 1.0e-4, high: 0.1, log: true}`."""

    low: Float = Field(description="Smallest value.")
    high: Float = Field(description="Largest value.")
    log: Bool = Field(False, description="Sample on a log scale (low must be > 0).")
    step: PositiveFloat | None = Field(None, description="Only multiples of step above low.")
    integer: Bool = Field(False, description="Whole numbers only (layer widths, patience).")


_RANGE_KEYS = frozenset(SweepRange.model_fields)


def _sweep_kind(value: Any) -> str:
    """A mapping with a range's keys is a range; another mapping is a choice whose values
    bring settings of their own (branches); anything else must be a list."""
    if isinstance(value, SweepRange):  # serializing a validated config
        return "range"
    if isinstance(value, dict):
        return "range" if not value or set(value) & _RANGE_KEYS else "branches"
    return "list"


# `model.type: {linear: {optimizer.lr: ...}, mlp: {model.hidden: [...], ...}}`: the choice
# of model.type, and for each choice the keys searched only in its trials (null: none).
if typing.TYPE_CHECKING:  # mypy does not follow the recursion of TypeAliasType
    SweepValues = list[Any] | SweepRange | dict[Any, Any]
else:
    SweepValues = TypeAliasType(
        "SweepValues",
        Annotated[
            Annotated[Annotated[list[Any], Field(min_length=1)], Tag("list")]
            | Annotated[SweepRange, Tag("range")]
            | Annotated[
                Annotated[dict[Any, "dict[str, SweepValues] | None"], Field(min_length=1)], Tag("branches")
            ],
            Discriminator(_sweep_kind),
        ],
    )


class SweepConfig(Section):
    method: Literal["grid", "random", "tpe"] = Field(
        "tpe", description="Optuna's GridSampler, RandomSampler or TPESampler."
    )
    trials: PositiveInt = Field(20, description="Trials to run (random/tpe); grid runs every combination.")
    folds: Annotated[Int, Field(ge=0)] = Field(
        0, description="Score each trial by K-fold CV (K >= 2); 0 = on `data.val` / `data.val_fraction`."
    )
    refit: Bool = Field(
        True,
        description="Retrain the winner on all training rows into <sweep folder>/best/, for the epochs its "
        "validated training found best (their mean over the folds), or as its bags with `train.bags` > 1; "
        "with `ensemble`, the ensemble's trials into <sweep folder>/ensemble/.",
    )
    ensemble: Annotated[Int, Field(ge=0, le=1000)] = Field(
        0,
        description="Greedy ensemble selection (Caruana et al. 2004) over the trials' out-of-fold "
        "predictions (needs `folds` >= 2): N steps, each adding (with replacement) the trial that "
        "lowers the ensemble's out-of-fold MSE most; the refit trains the chosen trials as best.yaml "
        "trains the winner (on all training rows, or as its bags) into one checkpoint, "
        "<sweep folder>/ensemble/best.pt, predicting their mean weighted by times chosen / N. 0 = off, "
        "the default; `init` writes 20 for a bagged network starter: +0.0038 test R² over the best single "
        "trial's bagged refit on 34 splits of 12 tables, ahead on 24 (bench/results.md).",
    )
    refit_seeds: Annotated[Int, Field(ge=1, le=100)] = Field(
        1,
        description="The refit trains each model it refits (the winner, or each of `ensemble`'s "
        "trials) this many times, with seeds seed, seed + 1, ... (each its own initial weights and "
        "batch order; side by side in one stack where they pack; with `train.bags` K > 1, S x K bags), "
        "into one checkpoint, "
        "<sweep folder>/ensemble/best.pt, predicting their mean (its intervals from the out-of-fold "
        "residuals, with `folds` >= 2). 1 = one training each, the winner into best/. The mean's "
        "test MSE is at most its members' mean (measured 0.001-0.014 R² above it), but against "
        "the seed-0 refit, 5 seeds measured a wash on 14 splits of 5 small tables (bench/results.md).",
    )
    storage: Str | None = Field(
        None,
        description="Where the study lives, shared by every worker: an Optuna database URL "
        "(postgresql://, mysql://, sqlite:///) or a journal file's path; default sweep.journal (an "
        "Optuna journal file) in the sweep folder (<output.dir>-sweep, or -o; a folder made before "
        "holds sweep.db, which --resume continues). --storage and $MSE_TRAIN_SWEEP_STORAGE override it.",
    )
    study: Str = Field("sweep", description="The study's name in the storage (--study overrides it).")
    pruner: Literal["none", "median", "halving"] = Field(
        "none",
        description="Stop trials whose validation loss lags, epoch by epoch: Optuna's MedianPruner "
        "or SuccessiveHalvingPruner; a pruned model is frozen as early stopping freezes it.",
    )
    time_limit: PositiveFloat | None = Field(
        None,
        description="Seconds for the whole sweep, from the start of the command that began the "
        "study to the end of its refit, shared by every worker. The search stops early enough to "
        "leave the refit its time (measured: each model shape is timed alone on a few batches): no "
        "trial is asked after that, and trials still training stop, kept with the score of their "
        "best epoch as status `cut` (Optuna: PRUNED); the refit takes the best finished trial. "
        "None: until `trials` have run.",
    )
    heartbeat: Annotated[Int, Field(ge=1, le=3600)] = Field(
        10,
        description="Seconds between a worker's signs of life; the trials of a worker silent for "
        "3 heartbeats are failed and run once more by another worker.",
    )
    params: Annotated[dict[str, SweepValues], Field(min_length=1)] = Field(
        description="Dotted config key -> a list of choices, a range {low, high, log, step, integer}, "
        "or a mapping of choices to the keys searched only with that choice "
        "(`model.type: {linear: {optimizer.lr: ...}, mlp: {model.hidden: [...]}}`)."
    )


class Config(Section):
    seed: Annotated[Int, Field(ge=0, lt=2**64)] = Field(
        0, description="Seeds init, shuffling, dropout and the validation split."
    )
    data: DataConfig
    model: ModelConfig = Field(default_factory=LinearModel)
    init: InitConfig = Field(default_factory=DefaultInit)
    optimizer: OptimizerConfig = Field(default_factory=SGDConfig)
    scheduler: SchedulerConfig = Field(default_factory=NoScheduler)
    regularization: RegularizationConfig = Field(default_factory=RegularizationConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    sweep: SweepConfig | None = Field(
        None, description="What `mse-train sweep` searches; `run` and `cv` ignore it."
    )

    @property
    def targets(self) -> list[str]:
        """The target column(s) as a list."""
        target = self.data.target
        return [target] if isinstance(target, str) else list(target)


def model_in(annotation: Any) -> type[BaseModel] | None:
    """The first config section class inside a field's type (e.g. `X | None` -> X)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if isinstance(annotation, TypeAliasType):  # SweepValues
        annotation = annotation.__value__
    for arg in typing.get_args(annotation):
        found = model_in(arg)
        if found is not None:
            return found
    return None


def _variants(annotation: Any) -> dict[str, type[BaseModel]]:
    """Tag -> model class of a tagged-union section."""
    found: dict[str, type[BaseModel]] = {}
    for member in typing.get_args(annotation):
        model, *meta = typing.get_args(member)
        found.update({m.tag: model for m in meta if isinstance(m, Tag)})
    return found


# section -> tag -> model class, e.g. VARIANTS["optimizer"]["adam"] is AdamConfig.
VARIANTS: dict[str, dict[str, type[BaseModel]]] = {
    section: _variants(Config.model_fields[section].annotation) for section in TAG_KEYS
}


def literal_choices(annotation: Any) -> list[str]:
    """The allowed values of a `Literal` field (inside `X | None` too); [] for other types."""
    if typing.get_origin(annotation) is Literal:
        return [str(a) for a in typing.get_args(annotation)]
    for arg in typing.get_args(annotation):
        found = literal_choices(arg)
        if found:
            return found
    return []


def choices(key: str) -> list[str]:
    """The names a choice key accepts: `optimizer` -> sgd, adam, ...; `model.activation` -> relu, ...

    A tagged section gives its variants; a dotted key gives the values of its Literal.
    """
    if key in VARIANTS:
        return list(VARIANTS[key])
    section, _, name = key.partition(".")
    models = (
        list(VARIANTS[section].values())
        if section in VARIANTS
        else [model_in(Config.model_fields[section].annotation)]
    )
    for model in models:
        if model is not None and name in model.model_fields:
            return literal_choices(model.model_fields[name].annotation)
    raise KeyError(key)
