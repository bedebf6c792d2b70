"""Callbacks: objects that :func:`mnistlab.train` tells about progress, and that may stop a run.

A callback overrides any of the hooks below; the defaults do nothing. ``on_epoch_end`` may return ``True`` to
stop training after that epoch (the run is then complete, with ``status`` "stopped" and its test figures),
like setting ``model.stop_training`` in a Keras callback.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mnistlab.config import TrainConfig
from mnistlab.results import EpochRecord


class Callback:
    """Receives progress from a fit; every hook is optional. The CLI's progress bar is one.

    ``running`` callbacks compute the epoch's running loss/accuracy on demand, so an observer that does not
    look at them never forces a device sync.
    """

    def on_train_start(self, *, config: TrainConfig, run_dir: Path, steps_per_epoch: int, samples: int) -> None:
        """Called once, after data and model are ready."""

    def on_epoch_start(self, *, epoch: int, epochs: int, steps: int) -> None:
        """Called before the first step of each epoch."""

    def on_step(self, *, step: int, steps: int, running: Callable[[], tuple[float, float]]) -> None:
        """Called after every optimisation step (1-based ``step``)."""

    def on_epoch_end(self, record: EpochRecord) -> None:
        """Called after each epoch's validation and checkpoint."""

    def on_message(self, text: str) -> None:
        """A note for the user (e.g. a requested option that this machine cannot honour)."""
