"""Early stopping (Keras' EarlyStopping semantics) and the best weights it keeps, and the optimizer state's
round trip through a checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mnistlab import checkpoint, runs
from mnistlab.config import TrainConfig
from mnistlab.data import load_dataset
from mnistlab.errors import MnistlabError
from mnistlab.optim import Adam, KerasRMSprop, SGDMomentum
from mnistlab.training import EarlyStop, early_stop_epoch, fit


@pytest.mark.parametrize(("values", "rule", "expected"), [
    # Best 0.8 at epoch 2; epochs 3 and 4 do not improve: patience 2 is used up after epoch 4.
    ([1.0, 0.8, 0.85, 0.9, 0.7, 0.75, 0.76], EarlyStop(2), 4),
    # Patience 3: epoch 5 improves before the patience runs out; the last two are not enough.
    ([1.0, 0.8, 0.85, 0.9, 0.7, 0.75, 0.76], EarlyStop(3), None),
    # An equal value is no improvement (Keras' min_delta 0 means strictly better).
    ([0.5, 0.6, 0.6, 0.59], EarlyStop(2, "val_accuracy"), 4),
    # Accuracy is better when higher: a rising accuracy never stops.
    ([0.1, 0.2, 0.3, 0.4], EarlyStop(1, "val_accuracy"), None),
    ([0.4, 0.3, 0.2], EarlyStop(1, "val_accuracy"), 2),
])
def test_early_stop_epoch_on_crafted_histories(values: list[float], rule: EarlyStop, expected: int | None) -> None:
    assert early_stop_epoch(values, rule) == expected


def tiny(**overrides: object) -> TrainConfig:
    return TrainConfig.for_model("mlp", **{"epochs": 12, "batch_size": 32, "device": "cpu", "val_split": 0.25,
                                           **overrides})


def test_early_stopping_stops_at_the_rule_and_keeps_the_best_epochs_weights(tmp_path: Path,
                                                                             tiny_data_dir: Path) -> None:
    dataset = load_dataset(data_dir=tiny_data_dir)
    rule = EarlyStop(patience=2, monitor="val_accuracy")
    result = fit(tiny(), run_dir=tmp_path / "es", dataset=dataset, early_stop=rule)
    accuracies = [row.val_accuracy for row in result.history]
    stop = early_stop_epoch(accuracies, rule)            # type: ignore[arg-type]
    assert stop is not None and len(result.history) == stop < 12
    assert result.metrics["status"] == "stopped" and result.metrics["stopped_after_epoch"] == stop
    best_epoch = 1 + accuracies.index(max(accuracies))   # the first epoch that reached the best figure
    assert best_epoch == stop - rule.patience
    # Oracle: the same run trained for exactly best_epoch epochs ends with those weights.
    short = fit(tiny(epochs=best_epoch), run_dir=tmp_path / "short", dataset=dataset)
    best = (result.run_dir / runs.BEST_FILE).read_bytes()
    assert best == (short.run_dir / runs.WEIGHTS_FILE).read_bytes()
    assert best != (result.run_dir / runs.WEIGHTS_FILE).read_bytes()
    manifest = checkpoint.read_manifest(result.run_dir)
    assert manifest is not None and checkpoint.BEST in manifest["files"]
    state = json.loads((checkpoint.epoch_folder(result.run_dir, stop) / checkpoint.STATE).read_text())
    assert state["best"]["epoch"] == best_epoch and state["early_stop"] == {"patience": 2, "monitor": "val_accuracy"}


def test_early_stopping_needs_a_validation_split(tmp_path: Path, tiny_data_dir: Path) -> None:
    with pytest.raises(MnistlabError, match="needs a validation split; pass `val_split`"):
        fit(tiny(val_split=0.0), run_dir=tmp_path / "r", dataset=load_dataset(data_dir=tiny_data_dir),
            early_stop=EarlyStop(2))
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("make", [lambda p: KerasRMSprop(p, lr=1e-3), lambda p: Adam(p, lr=1e-3, beta1=0.87),
                                  lambda p: SGDMomentum(p, lr=1e-2, momentum=0.9)])
def test_optimizer_state_round_trips_exactly(make) -> None:  # type: ignore[no-untyped-def]
    """Two optimizers, one restored from the other's state after 3 steps, take identical further steps."""
    from safetensors.torch import load, save

    torch.manual_seed(0)
    a = torch.nn.Linear(5, 3)
    b = torch.nn.Linear(5, 3)
    opt_a = make(a.parameters())
    data = [torch.randn(4, 5) for _ in range(6)]
    for x in data[:3]:
        opt_a.zero_grad()
        a(x).square().sum().backward()
        opt_a.step()
    b.load_state_dict(a.state_dict())
    tensors, numbers = opt_a.state_dict()
    opt_b = make(b.parameters())
    opt_b.load_state_dict(load(save(tensors)), json.loads(json.dumps(numbers)))  # through the file formats
    for x in data[3:]:
        for model, opt in ((a, opt_a), (b, opt_b)):
            opt.zero_grad()
            model(x).square().sum().backward()
            opt.step()
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert opt_b.steps == opt_a.steps == 6


def test_an_interrupted_early_stopping_run_resumes_to_the_same_stop_and_best(tmp_path: Path,
                                                                             tiny_data_dir: Path) -> None:
    """The best-so-far record, the best weights and the rule travel in the checkpoint."""
    from mnistlab.callbacks import Callback
    from mnistlab.errors import TrainingInterrupted
    from mnistlab.training import resume

    dataset = load_dataset(data_dir=tiny_data_dir)
    rule = EarlyStop(patience=2, monitor="val_accuracy")
    alone = fit(tiny(), run_dir=tmp_path / "alone", dataset=dataset, early_stop=rule)

    class CtrlC(Callback):
        def on_epoch_end(self, record):  # type: ignore[no-untyped-def]
            if record.epoch == 2:
                raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted):
        fit(tiny(), run_dir=tmp_path / "cut", dataset=dataset, early_stop=rule, observer=CtrlC())
    again = resume(tmp_path / "cut", dataset=dataset)
    assert [r.epoch for r in again.history] == [r.epoch for r in alone.history]
    for name in (runs.WEIGHTS_FILE, runs.BEST_FILE):
        assert (again.run_dir / name).read_bytes() == (alone.run_dir / name).read_bytes()


def test_api_resume_extends_a_run_and_refuses_a_changed_setting(tmp_path: Path, tiny_data_dir: Path) -> None:
    import mnistlab
    from mnistlab import api

    registry = tmp_path / "registry.sqlite"
    settings = {"batch_size": 32, "device": "cpu", "threads": 1, "data_dir": tiny_data_dir, "progress": False,
                "registry": registry}
    four = mnistlab.train("mlp", epochs=4, run_dir=tmp_path / "four", **settings)  # type: ignore[arg-type]
    two = mnistlab.train("mlp", epochs=2, run_dir=tmp_path / "two", **settings)  # type: ignore[arg-type]
    with pytest.raises(MnistlabError, match=r"^`batch_size` 64 differs from the run's 32"):
        mnistlab.train("mlp", resume=two.path, batch_size=64, progress=False, registry=registry)
    extended = mnistlab.train("mlp", resume=two.id, epochs=4, progress=False, registry=registry)
    assert extended.path == two.path and extended.status == "completed" and len(extended.epochs) == 4
    assert (two.path / runs.WEIGHTS_FILE).read_bytes() == (four.path / runs.WEIGHTS_FILE).read_bytes()
    with pytest.raises(MnistlabError, match="already holds 4 of its 4 epochs"):
        api.resume(two.path, progress=False, registry=registry)


def test_a_onecycle_run_resumes_exactly_and_refuses_a_new_length(tmp_path: Path, tiny_data_dir: Path) -> None:
    """The schedule's position and Adam's cycled beta1 travel in the checkpoint; its length cannot change."""
    from mnistlab.callbacks import Callback
    from mnistlab.errors import TrainingInterrupted
    from mnistlab.training import resume

    dataset = load_dataset(data_dir=tiny_data_dir)
    config = tiny(epochs=4, optimizer="adam", schedule="onecycle", lr=5e-3)
    alone = fit(config, run_dir=tmp_path / "alone", dataset=dataset)

    class CtrlCInEpoch3(Callback):
        epoch = 0

        def on_epoch_start(self, *, epoch, epochs, steps):  # type: ignore[no-untyped-def]
            self.epoch = epoch

        def on_step(self, *, step, steps, running):  # type: ignore[no-untyped-def]
            if self.epoch == 3 and step == 2:
                raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted):
        fit(config, run_dir=tmp_path / "cut", dataset=dataset, observer=CtrlCInEpoch3())
    with pytest.raises(MnistlabError, match="onecycle schedule spans the run's 4 epochs"):
        resume(tmp_path / "cut", changes={"epochs": 6}, dataset=dataset)
    again = resume(tmp_path / "cut", dataset=dataset)
    assert [r.lr for r in again.history] == [r.lr for r in alone.history]
    assert (again.run_dir / runs.WEIGHTS_FILE).read_bytes() == (alone.run_dir / runs.WEIGHTS_FILE).read_bytes()


def test_a_run_without_checkpoints_is_not_restarted_by_resume(tmp_path: Path, tiny_data_dir: Path) -> None:
    import shutil

    from mnistlab.training import resume

    dataset = load_dataset(data_dir=tiny_data_dir)
    run = fit(tiny(epochs=1), run_dir=tmp_path / "old", dataset=dataset).run_dir
    shutil.rmtree(run / checkpoint.CHECKPOINT_DIR)   # as a run trained before full checkpoints
    before = (run / runs.WEIGHTS_FILE).read_bytes()
    with pytest.raises(MnistlabError, match="without full checkpoints"):
        resume(run, changes={"epochs": 3}, dataset=dataset)
    assert (run / runs.WEIGHTS_FILE).read_bytes() == before
