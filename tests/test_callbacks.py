"""mnistlab.callbacks: every callback hears every hook in order; any of them can stop the run."""

from __future__ import annotations

from pathlib import Path

from mnistlab.callbacks import Callback, CallbackList, History, LambdaCallback
from mnistlab.config import TrainConfig
from mnistlab.results import EpochRecord


def record(epoch: int, loss: float) -> EpochRecord:
    return EpochRecord(epoch=epoch, loss=loss, accuracy=0.5, val_loss=loss + 1, val_accuracy=0.4, seconds=0.1,
                       lr=1e-3)


class Log(Callback):
    def __init__(self, name: str, log: list[str], stop_at: int | None = None) -> None:
        self.name, self.log, self.stop_at = name, log, stop_at

    def on_train_start(self, **kwargs: object) -> None:
        self.log.append(f"{self.name}:start")

    def on_epoch_end(self, record: EpochRecord) -> bool:
        self.log.append(f"{self.name}:end{record.epoch}")
        return record.epoch == self.stop_at


def test_hooks_reach_every_callback_in_order_and_any_can_stop() -> None:
    log: list[str] = []
    hooks = CallbackList([Log("a", log), Log("b", log, stop_at=2)])
    hooks.on_train_start(config=TrainConfig.for_model("mlp"), run_dir=Path("x"), steps_per_epoch=1, samples=1)
    assert hooks.on_epoch_end(record(1, 0.9)) is False
    assert hooks.on_epoch_end(record(2, 0.8)) is True
    assert log == ["a:start", "b:start", "a:end1", "b:end1", "a:end2", "b:end2"]  # a heard epoch 2 too


def test_history_is_keras_shaped_and_the_base_class_never_stops() -> None:
    history = History()
    for epoch, loss in ((1, 0.9), (2, 0.5)):
        assert history.on_epoch_end(record(epoch, loss)) is None
    assert history.history == {"loss": [0.9, 0.5], "accuracy": [0.5, 0.5], "val_loss": [1.9, 1.5],
                               "val_accuracy": [0.4, 0.4], "lr": [1e-3, 1e-3]}
    assert Callback().on_epoch_end(record(1, 1.0)) is None


def test_lambda_callback_passes_the_record_through() -> None:
    seen: list[float] = []
    callback = LambdaCallback(on_epoch_end=lambda r: seen.append(r.loss) or r.loss < 0.6)
    assert callback.on_epoch_end(record(1, 0.9)) is False
    assert callback.on_epoch_end(record(2, 0.5)) is True
    assert seen == [0.9, 0.5]
