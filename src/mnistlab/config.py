"""Configuration types and the model recipes, with no heavy imports.

The CLI validates flags against these before anything imports torch, so a bad flag fails in milliseconds.
A :class:`TrainConfig` is frozen and saved as ``config.json`` in every run directory.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, get_args

from mnistlab.errors import MnistlabError

ModelName = Literal["softmax", "mlp", "cnn", "fast"]
OptimizerName = Literal["rmsprop", "adam", "sgd"]
DeviceName = Literal["auto", "cpu", "cuda"]
# auto: bf16 where the hardware multiplies bf16 natively (AMX/AVX512-BF16 CPUs, CUDA GPUs), else fp32.
PrecisionName = Literal["auto", "fp32", "bf16"]
ScheduleName = Literal["constant", "onecycle"]

MODEL_NAMES: tuple[str, ...] = get_args(ModelName)
OPTIMIZER_NAMES: tuple[str, ...] = get_args(OptimizerName)
DEVICE_NAMES: tuple[str, ...] = get_args(DeviceName)
PRECISION_NAMES: tuple[str, ...] = get_args(PrecisionName)
SCHEDULE_NAMES: tuple[str, ...] = get_args(ScheduleName)


@dataclass(frozen=True)
class Recipe:
    """A model's default training recipe: the seed tutorial's hyper-parameters for its three networks."""

    epochs: int
    batch_size: int
    optimizer: OptimizerName = "rmsprop"
    lr: float | None = None  # None: the optimizer's Keras default
    schedule: ScheduleName = "constant"
    label_smoothing: float = 0.0
    # CPU threads. The dense models' matrix products are too small to split: a second thread only adds
    # synchronisation, and when another program competes for the cores it makes every step wait (measured:
    # an MLP epoch 0.6 s on one thread, 3-40 s on two under load). None: all cores (torch's default).
    threads: int | None = None


@dataclass(frozen=True)
class ModelInfo:
    """What a user sees about a model before building it: a description, its recipe, the seed's figure."""

    name: str
    description: str
    recipe: Recipe
    seed_test_accuracy: float | None = None


MODELS: dict[str, ModelInfo] = {
    "softmax": ModelInfo(
        "softmax", "one dense softmax layer on the 784 pixels (multinomial logistic regression)",
        Recipe(epochs=30, batch_size=128, threads=1), seed_test_accuracy=0.9275,
    ),
    "mlp": ModelInfo(
        "mlp", "two hidden dense layers of 100 ReLU units, then softmax",
        Recipe(epochs=30, batch_size=200, threads=1), seed_test_accuracy=0.9789,
    ),
    "cnn": ModelInfo(
        "cnn", "three 3x3 convolutions (32, 64, 64) with two 2x2 max-pools, then a dense softmax",
        Recipe(epochs=30, batch_size=200), seed_test_accuracy=0.9912,
    ),
    # Chosen on a validation split of the training set (never the test set) for the most accuracy per
    # second on a laptop CPU: one epoch, BatchNorm, a strided stem, Adam with a one-cycle schedule.
    "fast": ModelInfo(
        "fast", "mnistlab's speed recipe: a small BatchNorm convnet trained for one epoch with one-cycle Adam",
        Recipe(epochs=1, batch_size=256, optimizer="adam", lr=5e-3, schedule="onecycle", label_smoothing=0.0),
    ),
}

# Keras' default learning rates, which the seed relied on by passing optimizer names as strings.
DEFAULT_LR: dict[str, float] = {"rmsprop": 1e-3, "adam": 1e-3, "sgd": 1e-2}


def model_info(name: str) -> ModelInfo:
    """The :class:`ModelInfo` for ``name``, or a :class:`MnistlabError` listing the known models."""
    try:
        return MODELS[name]
    except KeyError:
        raise MnistlabError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}") from None


def _choice(value: str, choices: tuple[str, ...], flag: str) -> None:
    if value not in choices:
        raise MnistlabError(f"{flag} {value!r} is not one of {', '.join(choices)}")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run. Saved as ``config.json``; validated on construction."""

    model: str
    epochs: int
    batch_size: int
    optimizer: OptimizerName = "rmsprop"
    lr: float = DEFAULT_LR["rmsprop"]
    seed: int = 0
    val_split: float = 0.0
    dataset: str = "mnist"
    data_dir: str | None = None
    device: DeviceName = "auto"
    threads: int | None = None
    eval_batch_size: int = 2000
    precision: PrecisionName = "auto"
    schedule: ScheduleName = "constant"
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        model_info(self.model)
        _choice(self.optimizer, OPTIMIZER_NAMES, "--optimizer")
        _choice(self.device, DEVICE_NAMES, "--device")
        _choice(self.precision, PRECISION_NAMES, "--precision")
        _choice(self.schedule, SCHEDULE_NAMES, "--schedule")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise MnistlabError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise MnistlabError(f"--epochs must be a whole number >= 1, got {self.epochs}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise MnistlabError(f"--batch-size must be a whole number >= 1, got {self.batch_size}")
        if not self.lr > 0:
            raise MnistlabError(f"--lr must be > 0, got {self.lr}")
        if not 0.0 <= self.val_split < 1.0:
            raise MnistlabError(f"--val-split must be in [0, 1), got {self.val_split}")
        if self.threads is not None and self.threads < 1:
            raise MnistlabError(f"--threads must be >= 1, got {self.threads}")
        if self.eval_batch_size < 1:
            raise MnistlabError(f"eval_batch_size must be >= 1, got {self.eval_batch_size}")

    @classmethod
    def for_model(cls, model: str, **overrides: Any) -> TrainConfig:
        """The model's recipe with ``overrides`` applied; ``None`` overrides mean "use the recipe's value"."""
        recipe = model_info(model).recipe
        given = {key: value for key, value in overrides.items() if value is not None}
        optimizer = given.pop("optimizer", recipe.optimizer)
        _choice(optimizer, OPTIMIZER_NAMES, "--optimizer")
        lr = given.pop("lr", None)
        if lr is None:
            # A recipe's own lr belongs to its own optimizer; another optimizer gets its Keras default.
            lr = recipe.lr if recipe.lr is not None and optimizer == recipe.optimizer else DEFAULT_LR[optimizer]
        return cls(
            model=model,
            epochs=given.pop("epochs", recipe.epochs),
            batch_size=given.pop("batch_size", recipe.batch_size),
            optimizer=optimizer,
            lr=lr,
            schedule=given.pop("schedule", recipe.schedule),
            label_smoothing=given.pop("label_smoothing", recipe.label_smoothing),
            threads=given.pop("threads", recipe.threads),
            **given,
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Rebuild from :meth:`to_dict` output, ignoring keys this version does not know."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in names})
