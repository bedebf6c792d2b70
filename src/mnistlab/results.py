"""The typed results the library returns (no torch, no numpy): a split's score, an epoch's record, a fit.

They live apart from the code that makes them, so training, classical fitting, evaluation and the API
share one definition without importing each other.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mnistlab.config import TrainConfig


@dataclass(frozen=True)
class EvalResult:
    """Mean cross-entropy and accuracy over ``count`` samples (loss is NaN for a model without probabilities)."""

    loss: float
    accuracy: float
    count: int


@dataclass(frozen=True)
class EpochRecord:
    """One row of history: training running means, optional validation, and wall seconds of the epoch."""

    epoch: int
    loss: float
    accuracy: float
    val_loss: float | None
    val_accuracy: float | None
    seconds: float
    lr: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready row (a NaN loss, for models without one, becomes None)."""
        row = asdict(self)
        if isinstance(row["loss"], float) and math.isnan(row["loss"]):
            row["loss"] = None
        return row


@dataclass(frozen=True)
class TrainResult:
    """What a fit returns: where the run lives, its history and its final test figures."""

    run_dir: Path
    config: TrainConfig
    history: tuple[EpochRecord, ...]
    test: EvalResult
    train_seconds: float
    metrics: dict[str, Any] = field(default_factory=dict)
    # The trained torch module for a network (None for a classical model); not compared or printed.
    model: Any = field(default=None, compare=False, repr=False)
