"""mnistlab: MNIST done properly — canonical data, the classic Keras tutorial's models, fast training,
evaluation and a draw-a-digit page, from the shell or from Python.

    import mnistlab
    data = mnistlab.datasets.load("mnist")             # .train.images (60000, 28, 28) uint8, .train.labels
    print(mnistlab.models.summary("cnn"))              # the Keras-style table
    run = mnistlab.train("cnn", epochs=3)              # -> Run: .history, .metrics, .model, .path, .id
    run.evaluate().accuracy                            # per-class table, confusion, mistakes, calibration
    run.predict("my-digit.png")[0].label
    mnistlab.load(7)                                   # a run by registry id or by its directory

Importing the package is cheap on purpose (no torch, no numpy): every name below is loaded on first use
(PEP 562), so the CLI's ``--help`` stays instant.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# name -> (module, attribute); attribute None means the module itself.
_LAZY: dict[str, tuple[str, str | None]] = {
    "train": ("mnistlab.api", "train"),
    "load": ("mnistlab.api", "load"),
    "ensemble": ("mnistlab.api", "ensemble"),
    "Run": ("mnistlab.api", "Run"),
    "datasets": ("mnistlab.datasets", None),
    "models": ("mnistlab.models", None),
    "register_model": ("mnistlab.models", "register_model"),
    "Callback": ("mnistlab.callbacks", "Callback"),
    "History": ("mnistlab.callbacks", "History"),
    "LambdaCallback": ("mnistlab.callbacks", "LambdaCallback"),
    "TensorBoardLogger": ("mnistlab.tensorboard", "TensorBoardLogger"),
    "EpochRecord": ("mnistlab.results", "EpochRecord"),
    "TrainConfig": ("mnistlab.config", "TrainConfig"),
    "Evaluation": ("mnistlab.analysis", "Evaluation"),
    "Prediction": ("mnistlab.predict", "Prediction"),
    "prepare_image": ("mnistlab.imaging", "prepare_image"),
    "MnistlabError": ("mnistlab.errors", "MnistlabError"),
    "TrainingInterrupted": ("mnistlab.errors", "TrainingInterrupted"),
}
__all__ = [  # noqa: RUF022 - grouped as in _LAZY
    "__version__", "train", "load", "ensemble", "Run", "datasets", "models", "register_model", "Callback", "History",
    "LambdaCallback", "TensorBoardLogger", "EpochRecord", "TrainConfig", "Evaluation", "Prediction",
    "prepare_image", "MnistlabError", "TrainingInterrupted",
]

if TYPE_CHECKING:
    from mnistlab import datasets, models
    from mnistlab.analysis import Evaluation
    from mnistlab.api import Run, ensemble, load, train
    from mnistlab.callbacks import Callback, History, LambdaCallback
    from mnistlab.config import TrainConfig
    from mnistlab.errors import MnistlabError, TrainingInterrupted
    from mnistlab.imaging import prepare_image
    from mnistlab.models import register_model
    from mnistlab.predict import Prediction
    from mnistlab.results import EpochRecord
    from mnistlab.tensorboard import TensorBoardLogger


def __getattr__(name: str) -> Any:
    """Import the public names on first use."""
    if name not in _LAZY:
        raise AttributeError(f"module 'mnistlab' has no attribute {name!r}")
    module_name, attribute = _LAZY[name]
    module = importlib.import_module(module_name)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
