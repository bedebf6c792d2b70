"""Configuration types and the model recipes, with no heavy imports.

The CLI validates flags against these before anything imports torch, so a bad flag fails in milliseconds.
A :class:`TrainConfig` is frozen and saved as ``config.json`` in every run directory.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from mnistlab.errors import MnistlabError

ModelName = Literal["softmax", "mlp", "cnn", "fast", "best"]
OptimizerName = Literal["rmsprop", "adam", "sgd"]
DeviceName = Literal["auto", "cpu", "cuda"]
# auto: bf16 where the hardware multiplies bf16 natively (AMX/AVX512-BF16 CPUs, CUDA GPUs), else fp32.
PrecisionName = Literal["auto", "fp32", "bf16"]
# constant: the seed's; onecycle: warm-up then cosine, per step; cosine: cosine annealing over the whole run, per
# step; step: times gamma every step_size epochs; plateau: Keras' ReduceLROnPlateau on the validation loss.
ScheduleName = Literal["constant", "onecycle", "cosine", "step", "plateau"]
# Batch augmentation (mnistlab.augment): none, light (slant/size/position), strong (+ elastic, stroke width),
# robust (light + grey background, faded ink, sensor noise).
AugmentName = Literal["none", "light", "strong", "robust"]

ClassicalName = Literal["sgd", "logreg", "knn", "svm", "forest"]
ModelFamily = Literal["network", "classical"]
# How a run's training split is cut into fit and validation parts: mnistlab's seeded permutation
# (data.train_val_indices) or scikit-learn's train_test_split (the seed's SGD baseline).
ValMethod = Literal["mnistlab", "sklearn"]

MODEL_NAMES: tuple[str, ...] = get_args(ModelName)
CLASSICAL_NAMES: tuple[str, ...] = get_args(ClassicalName)
ALL_MODEL_NAMES: tuple[str, ...] = MODEL_NAMES + CLASSICAL_NAMES
VAL_METHODS: tuple[str, ...] = get_args(ValMethod)
OPTIMIZER_NAMES: tuple[str, ...] = get_args(OptimizerName)
DEVICE_NAMES: tuple[str, ...] = get_args(DeviceName)
PRECISION_NAMES: tuple[str, ...] = get_args(PrecisionName)
SCHEDULE_NAMES: tuple[str, ...] = get_args(ScheduleName)
AUGMENT_NAMES: tuple[str, ...] = get_args(AugmentName)

# A network's ``options`` (``--option KEY=VALUE``) are its schedule's parameters, with these defaults (filled in,
# so config.json records every value a run used). cosine: the floor (torch's eta_min). step: torch's StepLR names.
# plateau: Keras' ReduceLROnPlateau names and defaults (min_delta absolute, patience/cooldown in epochs).
SCHEDULE_OPTIONS: dict[str, dict[str, int | float]] = {
    "constant": {},
    "onecycle": {},
    "cosine": {"min_lr": 0.0},
    "step": {"step_size": 10, "gamma": 0.1},
    "plateau": {"factor": 0.1, "patience": 10, "min_delta": 1e-4, "cooldown": 0, "min_lr": 0.0},
}
# (low, high, what): the allowed range of each schedule option; None leaves that side open. ``low`` is inclusive
# unless the key is in _OPEN_BELOW; ``high`` is exclusive unless in _CLOSED_ABOVE.
_SCHEDULE_RANGES: dict[str, tuple[float, float | None]] = {
    "min_lr": (0.0, None), "step_size": (1, None), "gamma": (0.0, 1.0), "factor": (0.0, 1.0),
    "patience": (0, None), "min_delta": (0.0, None), "cooldown": (0, None),
}
_OPEN_BELOW = ("gamma", "factor")
_CLOSED_ABOVE = ("gamma",)


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
    # auto: bf16 where the hardware has it. The softmax layer's 784x10 products are too small for bf16 to
    # pay for its casts (measured 0.27 s/epoch in fp32 against 0.36 s in bf16), so its recipe says fp32.
    precision: PrecisionName = "auto"
    augment: AugmentName = "none"
    epoch_fraction: float = 1.0
    backprop_fraction: float = 1.0


_RECIPE_FIELDS = tuple(f.name for f in dataclasses.fields(Recipe))


@dataclass(frozen=True)
class ModelInfo:
    """What a user sees about a model before building it: a description, its recipe, the seed's figure."""

    name: str
    description: str
    recipe: Recipe
    seed_test_accuracy: float | None = None
    family: ModelFamily = "network"
    # Classical models: their hyper-parameters and defaults (``--option KEY=VALUE``); networks have none.
    options: Mapping[str, int | float] = field(default_factory=dict)


MODELS: dict[str, ModelInfo] = {
    "softmax": ModelInfo(
        "softmax", "one dense softmax layer on the 784 pixels (multinomial logistic regression)",
        Recipe(epochs=30, batch_size=128, threads=1, precision="fp32"), seed_test_accuracy=0.9275,
    ),
    "mlp": ModelInfo(
        "mlp", "two hidden dense layers of 100 ReLU units, then softmax",
        Recipe(epochs=30, batch_size=200, threads=1), seed_test_accuracy=0.9789,
    ),
    "cnn": ModelInfo(
        "cnn", "three 3x3 convolutions (32, 64, 64) with two 2x2 max-pools, then a dense softmax",
        Recipe(epochs=30, batch_size=200), seed_test_accuracy=0.9912,
    ),
    # Chosen on a validation split of the training set (train[:50k] -> train[50k:], never the test set) for
    # the most accuracy per second on a 2-core CPU: BatchNorm, a strided stem, Adam with a one-cycle schedule,
    # label smoothing 0.1 (+0.15 pt on validation at no cost); since stop 25, 80% of one epoch's images, each
    # step back-propagating the half of its batch the model is least sure of, at a higher max lr (0.66-0.77x
    # the training time at the same validation accuracy, benchmarks/fast_selection.py; 1.28x faster on the
    # test set over 5 seeds).
    "fast": ModelInfo(
        "fast", "mnistlab's speed recipe: a small BatchNorm convnet, one-cycle Adam over 80% of one epoch, "
                "back-propagating the uncertain half of each batch",
        Recipe(epochs=1, batch_size=256, optimizer="adam", lr=2.4e-2, schedule="onecycle", label_smoothing=0.1,
               epoch_fraction=0.8, backprop_fraction=0.5),
    ),
    # Chosen the same way (benchmarks/best_selection.py, train[:50k] -> train[50k:]) for the most accuracy
    # within 15 minutes of training on a 2-core CPU: `fast`'s layout twice as wide with a fourth convolution,
    # light batch augmentation, one-cycle Adam over 20 epochs.
    "best": ModelInfo(
        "best", "mnistlab's accuracy recipe: a wider BatchNorm convnet, light augmentation, one-cycle Adam",
        Recipe(epochs=20, batch_size=128, optimizer="adam", lr=5e-3, schedule="onecycle", label_smoothing=0.1,
               augment="light"),
    ),
}

# Classical baselines (scikit-learn fits, numpy predictions; see mnistlab.baselines). One fit is one "epoch"
# and batch size does not apply, so their recipe is epochs=1, batch_size=1. ``max_train`` > 0 fits on a
# seeded random subset of that many training images (0: all).
_ONE_FIT = Recipe(epochs=1, batch_size=1)
CLASSICAL_MODELS: dict[str, ModelInfo] = {
    "sgd": ModelInfo(
        "sgd", "linear SVM fitted by SGD (hinge loss, one-vs-rest): the seed's SGDClassifier(max_iter=200)",
        _ONE_FIT, family="classical", options={"max_iter": 200, "max_train": 0},
    ),
    "logreg": ModelInfo(
        "logreg", "multinomial logistic regression (L2, lbfgs)",
        _ONE_FIT, family="classical", options={"C": 1.0, "max_iter": 100, "max_train": 0},
    ),
    "knn": ModelInfo(
        "knn", "k nearest neighbours by Euclidean (L2) distance on the raw pixels, majority vote",
        _ONE_FIT, family="classical", options={"k": 3, "max_train": 0},
    ),
    "svm": ModelInfo(
        "svm", "support vector machine with an RBF kernel (one-vs-one), on a 20,000-image subsample",
        _ONE_FIT, family="classical", options={"C": 5.0, "gamma": 0.05, "max_train": 20_000},
    ),
    "forest": ModelInfo(
        "forest", "random forest of fully grown decision trees",
        _ONE_FIT, family="classical", options={"n_estimators": 100, "max_train": 0},
    ),
}


@dataclass(frozen=True)
class PublishedFigure:
    """A classic published MNIST test error, to set our figures beside."""

    method: str
    test_error: float  # fraction, e.g. 0.012 for 1.2 %
    source: str = "LeCun et al. 1998; yann.lecun.com/exdb/mnist"


PUBLISHED: dict[str, PublishedFigure] = {
    "linear": PublishedFigure("linear classifier (1-layer NN)", 0.120),
    "knn": PublishedFigure("k-NN, Euclidean (L2)", 0.050),
    "svm": PublishedFigure("SVM, Gaussian kernel", 0.014),
    "mlp300_100": PublishedFigure("2-layer NN, 300+100 hidden units (no distortions)", 0.0305),
    "lenet5": PublishedFigure("LeNet-5 (the closest published convnet; not the same network)", 0.0095),
}
# Which published figure each of our models is the counterpart of (the forest has none in LeCun's table; the
# MLP's nearest is the 300-100 net, ours is 100-100).
PUBLISHED_FOR_MODEL: dict[str, str] = {
    "softmax": "linear", "sgd": "linear", "logreg": "linear", "knn": "knn", "svm": "svm", "mlp": "mlp300_100",
    "cnn": "lenet5",
}


def published_figure(model: str, dataset: str = "mnist") -> PublishedFigure | None:
    """The classic figure for ``model``'s method on MNIST, if there is one."""
    if dataset != "mnist" or model not in PUBLISHED_FOR_MODEL:
        return None
    return PUBLISHED[PUBLISHED_FOR_MODEL[model]]


# Evaluation batch, everywhere a model scores many images (training's test pass, evaluate, predict): large
# enough to amortise per-call overhead, small enough that the CNN's widest activation (500 x 32 x 26 x 26)
# stays ~20 MB (2000 put the peak RSS of `train cnn` at 630 MB). One value, so that every path batches alike
# and a bf16 model's figures agree to the last digit.
EVAL_BATCH_SIZE = 500

# Keras' default learning rates, which the seed relied on by passing optimizer names as strings.
DEFAULT_LR: dict[str, float] = {"rmsprop": 1e-3, "adam": 1e-3, "sgd": 1e-2}


# Networks users add with ``mnistlab.models.register_model`` (in this process), beside the built-in MODELS.
CUSTOM_MODELS: dict[str, ModelInfo] = {}


def model_info(name: str) -> ModelInfo:
    """The :class:`ModelInfo` for ``name``, or a :class:`MnistlabError` listing the known models."""
    if name in MODELS:
        return MODELS[name]
    if name in CUSTOM_MODELS:
        return CUSTOM_MODELS[name]
    if name in CLASSICAL_MODELS:
        return CLASSICAL_MODELS[name]
    custom = f", your registered {', '.join(CUSTOM_MODELS)}" if CUSTOM_MODELS else ""
    raise MnistlabError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}{custom} "
                        f"or a classical baseline: {', '.join(CLASSICAL_MODELS)} "
                        "(a model of your own: mnistlab.models.register_model)")


def parse_option(model: str, text: str) -> tuple[str, int | float]:
    """``"k=5"`` -> ``("k", 5)`` for a classical model, typed like the option's default. For a network the option
    is its schedule's (which :class:`TrainConfig` knows and checks): a whole number stays whole, else a float."""
    info = model_info(model)
    key, sep, raw = text.partition("=")
    key = key.strip().replace("-", "_")
    if info.family != "classical":
        if not sep or not key:
            raise MnistlabError(f"`options` {text!r}: use KEY=VALUE, a parameter of the `schedule` "
                                f"({_schedule_options_text()})")
        try:
            return key, int(raw.strip())
        except ValueError:
            pass
        try:
            return key, float(raw.strip())
        except ValueError:
            raise MnistlabError(f"`options` {text!r}: {key} must be a number") from None
    if not sep or key not in info.options:
        raise MnistlabError(f"`options` {text!r}: use KEY=VALUE with KEY one of {', '.join(info.options)} for {model}")
    kind = type(info.options[key])
    try:
        return key, kind(raw.strip())
    except ValueError:
        raise MnistlabError(f"`options` {text!r}: {key} must be {'a whole number' if kind is int else 'a number'}"
                            ) from None


def _check_options(model: str, options: Mapping[str, Any]) -> dict[str, int | float]:
    """Merge ``options`` over the model's defaults, checking names, types and ranges."""
    info = model_info(model)
    unknown = sorted(set(options) - set(info.options))
    if unknown:
        known = ", ".join(info.options) or "none"
        raise MnistlabError(f"option(s) {', '.join(unknown)} do not apply to {model} (its options: {known})")
    merged: dict[str, int | float] = {}
    for key, default in info.options.items():
        value = options.get(key, default)
        if isinstance(default, int) and (isinstance(value, bool) or not isinstance(value, int)):
            raise MnistlabError(f"`options` {key}={value!r}: must be a whole number")
        if isinstance(default, float):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise MnistlabError(f"`options` {key}={value!r}: must be a number")
            value = float(value)
        minimum = 0 if key == "max_train" else 1
        if isinstance(default, int) and value < minimum:
            raise MnistlabError(f"`options` {key}={value}: must be >= {minimum}")
        if isinstance(default, float) and not value > 0:
            raise MnistlabError(f"`options` {key}={value}: must be > 0")
        merged[key] = value
    return merged


def _schedule_options_text() -> str:
    """``cosine: min_lr; step: step_size, gamma; ...`` for messages."""
    return "; ".join(f"{name}: {', '.join(keys)}" for name, keys in SCHEDULE_OPTIONS.items() if keys)


def _check_schedule_options(schedule: str, options: Mapping[str, Any], *, lr: float) -> dict[str, int | float]:
    """Merge a network's ``options`` over its schedule's defaults (:data:`SCHEDULE_OPTIONS`), checking names,
    types and ranges; one line naming the option on any mistake."""
    defaults = SCHEDULE_OPTIONS[schedule]
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        known = f"its options: {', '.join(defaults)}" if defaults else "it has none"
        raise MnistlabError(f"`options` {', '.join(unknown)}: not for the {schedule} schedule ({known}); the "
                            f"`schedule` options are {_schedule_options_text()}")
    merged: dict[str, int | float] = {}
    for key, default in defaults.items():
        value = options.get(key, default)
        whole = isinstance(default, int)
        if isinstance(value, bool) or not isinstance(value, int | float) or (whole and not isinstance(value, int)):
            raise MnistlabError(f"`options` {key}={value!r}: the {schedule} schedule's {key} must be "
                                f"{'a whole number' if whole else 'a number'}")
        if not whole:
            value = float(value)
        low, high = _SCHEDULE_RANGES[key]
        too_low = value <= low if key in _OPEN_BELOW else value < low
        too_high = high is not None and (value > high if key in _CLOSED_ABOVE else value >= high)
        if too_low or too_high or not math.isfinite(value):
            left = "(" if key in _OPEN_BELOW else "["
            right = "inf)" if high is None else (f"{high:g}]" if key in _CLOSED_ABOVE else f"{high:g})")
            raise MnistlabError(f"`options` {key}={value}: the {schedule} schedule's {key} must be in "
                                f"{left}{low:g}, {right}")
        merged[key] = value
    if schedule == "cosine" and merged["min_lr"] >= lr:
        raise MnistlabError(f"`options` min_lr={merged['min_lr']}: the cosine schedule anneals from `lr` {lr:g} "
                            "down to min_lr, so min_lr must be below it")
    return merged


def _choice(value: str, choices: tuple[str, ...], flag: str) -> None:
    if value not in choices:
        raise MnistlabError(f"{flag} {value!r} is not one of {', '.join(choices)}")


_WHOLE_FIELDS = ("epochs", "batch_size", "seed", "eval_batch_size")
_NUMBER_FIELDS = ("lr", "val_split", "label_smoothing", "weight_decay", "epoch_fraction", "backprop_fraction")
_TEXT_FIELDS = ("model", "optimizer", "dataset", "device", "precision", "schedule", "val_method", "augment")


def _check_types(config: TrainConfig) -> None:
    """Wrong types from Python callers (``val_split="0.1"``, ``threads=1.5``, ``batch_size=True``) are one clear
    error, not a TypeError deep inside training."""
    for name in (*_WHOLE_FIELDS, "threads"):
        value = getattr(config, name)
        if name == "threads" and value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise MnistlabError(f"`{name}` must be a whole number, got {value!r} ({type(value).__name__})")
    for name in _NUMBER_FIELDS:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise MnistlabError(f"`{name}` must be a number, got {value!r} ({type(value).__name__})")
    for name in _TEXT_FIELDS:
        if not isinstance(getattr(config, name), str):
            raise MnistlabError(f"`{name}` must be a string, got {getattr(config, name)!r}")
    if config.init_from is not None and not isinstance(config.init_from, str):
        raise MnistlabError(f"`init_from` must be a run directory, got {config.init_from!r}")
    if config.data_dir is not None and not isinstance(config.data_dir, str):
        raise MnistlabError(f"`data_dir` must be a folder path, got {config.data_dir!r}")
    if config.threads is not None and config.threads > 4 * (os.cpu_count() or 1):
        raise MnistlabError(f"`threads` {config.threads} is far more than this machine's {os.cpu_count()} CPUs; "
                            "use at most that many")


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
    eval_batch_size: int = EVAL_BATCH_SIZE
    precision: PrecisionName = "auto"
    schedule: ScheduleName = "constant"
    label_smoothing: float = 0.0
    # Classical models: hyper-parameters; networks: their schedule's parameters (SCHEDULE_OPTIONS). Defaults
    # filled in.
    options: dict[str, Any] = field(default_factory=dict)
    val_method: ValMethod = "mnistlab"
    augment: AugmentName = "none"
    # Fine-tuning: start from this run's weights (its directory; best where it kept them) instead of the seed's
    # initialisation. Same architecture; the data and recipe may differ.
    init_from: str | None = None
    # Decoupled weight decay (AdamW): each step shrinks every weight by lr * weight_decay of itself. adam only.
    weight_decay: float = 0.0
    # Below 1: each epoch trains on only this share of the training images, the first of its shuffled order
    # (another subset every epoch). The shuffle is drawn in full either way, so the random streams are unchanged.
    epoch_fraction: float = 1.0
    # Selective backprop. Below 1: every step first scores its whole batch without gradients (eval mode), then
    # trains on only this share of it, the images the model is least sure of (mnistlab.training.least_certain).
    backprop_fraction: float = 1.0

    def __post_init__(self) -> None:
        _check_types(self)
        info = model_info(self.model)
        _choice(self.schedule, SCHEDULE_NAMES, "`schedule`")
        if not (isinstance(self.lr, int | float) and math.isfinite(self.lr) and self.lr > 0):
            raise MnistlabError(f"`lr` must be a finite number > 0, got {self.lr}")
        if info.family == "classical":
            object.__setattr__(self, "options", _check_options(self.model, self.options))
        else:
            object.__setattr__(self, "options", _check_schedule_options(self.schedule, self.options, lr=self.lr))
        if self.init_from is not None and info.family == "classical":
            raise MnistlabError(f"`init_from` starts a network from another run's weights; {self.model} is a "
                                "classical model fitted in one go")
        _choice(self.val_method, VAL_METHODS, "val_method")
        if self.val_method != "mnistlab" and info.family != "classical":
            raise MnistlabError(f"val_method {self.val_method!r} is only for classical models")
        _choice(self.optimizer, OPTIMIZER_NAMES, "`optimizer`")
        _choice(self.device, DEVICE_NAMES, "`device`")
        _choice(self.precision, PRECISION_NAMES, "`precision`")
        _choice(self.augment, AUGMENT_NAMES, "`augment`")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise MnistlabError(f"`label_smoothing` must be in [0, 1), got {self.label_smoothing}")
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise MnistlabError(f"`epochs` must be a whole number >= 1, got {self.epochs}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise MnistlabError(f"`batch_size` must be a whole number >= 1, got {self.batch_size}")
        for name in ("epoch_fraction", "backprop_fraction"):
            value = getattr(self, name)
            if not (math.isfinite(value) and 0.0 < value <= 1.0):
                raise MnistlabError(f"`{name}` must be a share in (0, 1], got {value}")
            if value < 1.0 and info.family == "classical":
                raise MnistlabError(f"`{name}` applies to a network's training steps; {self.model} is a "
                                    "classical model fitted in one go")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise MnistlabError(f"`weight_decay` must be a finite number >= 0, got {self.weight_decay}")
        if self.weight_decay and self.optimizer != "adam":
            # RMSprop and SGD have no decoupled form in Keras or torch.optim (their weight_decay is L2 in the
            # gradient, another rule): refused rather than silently meaning something else.
            raise MnistlabError(f"`weight_decay` {self.weight_decay:g} is decoupled weight decay for adam (AdamW); "
                                f"{self.optimizer} has none here: pass `optimizer` adam, or leave `weight_decay` out")
        if self.lr * self.weight_decay >= 1:
            raise MnistlabError(f"`weight_decay` {self.weight_decay:g} times `lr` {self.lr:g} must stay below 1 "
                                "(each step shrinks the weights by that fraction); use a smaller weight_decay")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**32:
            raise MnistlabError(f"`seed` must be a whole number in 0..{2**32 - 1}, got {self.seed}")
        if not 0.0 <= self.val_split < 1.0:
            raise MnistlabError(f"`val_split` must be in [0, 1), got {self.val_split}")
        if self.threads is not None and self.threads < 1:
            raise MnistlabError(f"`threads` must be >= 1, got {self.threads}")
        if self.eval_batch_size < 1:
            raise MnistlabError(f"eval_batch_size must be >= 1, got {self.eval_batch_size}")

    @classmethod
    def for_model(cls, model: str, **overrides: Any) -> TrainConfig:
        """The model's recipe with ``overrides`` applied; ``None`` overrides mean "use the recipe's value"."""
        info = model_info(model)
        recipe = info.recipe
        given = {key: value for key, value in overrides.items() if value is not None}
        if info.family == "classical":
            # Everything a network's recipe sets (but threads), and Adam's weight decay.
            network_only = [name for name in _RECIPE_FIELDS if name != "threads"] + ["weight_decay"]
            flags = [f"`{name}`" for name in network_only if name in given]
            if flags:
                verb = "does" if len(flags) == 1 else "do"
                raise MnistlabError(f"{', '.join(flags)} {verb} not apply to {model}, a classical model fitted in "
                                    f"one go; set its options with `options` KEY=VALUE ({', '.join(info.options)})")
        optimizer = given.pop("optimizer", recipe.optimizer)
        _choice(optimizer, OPTIMIZER_NAMES, "`optimizer`")
        lr = given.pop("lr", None)
        if lr is None:
            # A recipe's own lr belongs to its own optimizer; another optimizer gets its Keras default.
            lr = recipe.lr if recipe.lr is not None and optimizer == recipe.optimizer else DEFAULT_LR[optimizer]
        # Every other recipe field is the TrainConfig field of the same name: the recipe's value unless given.
        from_recipe = {name: given.pop(name, getattr(recipe, name)) for name in _RECIPE_FIELDS
                       if name not in ("optimizer", "lr")}
        return cls(model=model, optimizer=optimizer, lr=lr, **from_recipe, **given)

    @property
    def family(self) -> ModelFamily:
        """``network`` (trained by mnistlab.training's loop) or ``classical`` (mnistlab.baselines)."""
        return model_info(self.model).family

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field, plus the model's family."""
        return {**dataclasses.asdict(self), "family": self.family}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Rebuild from :meth:`to_dict` output, ignoring keys this version does not know."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in names})
