"""Callbacks: objects that :func:`mnistlab.training.fit` tells about progress, and that may stop a run.

A callback overrides any of the hooks below; the defaults do nothing. ``on_epoch_end`` may return ``True`` to
stop training after that epoch (the run is then complete, with ``status`` "stopped" and its test figures),
like setting ``model.stop_training`` in a Keras callback.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from mnistlab.config import TrainConfig
from mnistlab.results import EpochRecord


class Callback:
    """Receives progress from a fit; every hook is optional. The CLI's progress bar is one.

    ``running`` callbacks compute the epoch's running loss/accuracy on demand, so an observer that does not
    look at them never forces a device sync.
    """

    def on_train_start(self, *, config: TrainConfig, run_dir: Path, steps_per_epoch: int, samples: int,
                       device: str = "cpu", precision: str = "fp32") -> None:
        """Called once, after data and model are ready: what runs, where it is written, and on what device and
        in what arithmetic (``precision`` is what actually runs: ``auto`` resolved, fallbacks applied)."""

    def on_epoch_start(self, *, epoch: int, epochs: int, steps: int) -> None:
        """Called before the first step of each epoch."""

    def on_step(self, *, step: int, steps: int, running: Callable[[], tuple[float, float]]) -> None:
        """Called after every optimisation step (1-based ``step``)."""

    def on_epoch_end(self, record: EpochRecord) -> bool | None:
        """Called after each epoch's validation and checkpoint; return True to stop after this epoch."""
        return None

    def on_message(self, text: str) -> None:
        """A note for the user (e.g. a requested option that this machine cannot honour)."""


class CallbackList(Callback):
    """Several callbacks heard as one: every hook goes to each, in order; any of them may stop the run."""

    def __init__(self, callbacks: Sequence[Callback] = ()) -> None:
        self.callbacks = list(callbacks)

    def on_train_start(self, *, config: TrainConfig, run_dir: Path, steps_per_epoch: int, samples: int,
                       device: str = "cpu", precision: str = "fp32") -> None:
        for callback in self.callbacks:
            callback.on_train_start(config=config, run_dir=run_dir, steps_per_epoch=steps_per_epoch, samples=samples,
                                    device=device, precision=precision)

    def on_epoch_start(self, *, epoch: int, epochs: int, steps: int) -> None:
        for callback in self.callbacks:
            callback.on_epoch_start(epoch=epoch, epochs=epochs, steps=steps)

    def on_step(self, *, step: int, steps: int, running: Callable[[], tuple[float, float]]) -> None:
        for callback in self.callbacks:
            callback.on_step(step=step, steps=steps, running=running)

    def on_epoch_end(self, record: EpochRecord) -> bool:
        # Every callback hears the epoch, even after one has asked to stop.
        answers = [bool(callback.on_epoch_end(record)) for callback in self.callbacks]
        return any(answers)

    def on_message(self, text: str) -> None:
        for callback in self.callbacks:
            callback.on_message(text)


class History(Callback):
    """Collects each epoch's record, Keras-style: ``history.history["val_accuracy"]`` is a list per epoch."""

    def __init__(self) -> None:
        self.records: list[EpochRecord] = []

    def on_epoch_end(self, record: EpochRecord) -> None:
        self.records.append(record)

    @property
    def history(self) -> dict[str, list[float | None]]:
        """{"loss": [...], "accuracy": [...], "val_loss": [...], "val_accuracy": [...], "lr": [...]}."""
        keys = ("loss", "accuracy", "val_loss", "val_accuracy", "lr")
        return {key: [getattr(record, key) for record in self.records] for key in keys}


class LambdaCallback(Callback):
    """A callback from a plain function: ``LambdaCallback(on_epoch_end=lambda record: record.val_loss > 1)``."""

    def __init__(self, *, on_epoch_end: Callable[[EpochRecord], bool | None]) -> None:
        self._on_epoch_end = on_epoch_end

    def on_epoch_end(self, record: EpochRecord) -> bool | None:
        return self._on_epoch_end(record)
