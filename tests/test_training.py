"""The training loop on tiny synthetic data: run files, reproducibility, interruption, loading back."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from mnistlab import checkpoint, runs
from mnistlab.analysis import evaluate_run
from mnistlab.augment import LEVELS
from mnistlab.callbacks import Callback as TrainObserver
from mnistlab.config import TrainConfig
from mnistlab.data import Split, load_dataset
from mnistlab.errors import MnistlabError, TrainingInterrupted
from mnistlab.inference import evaluate_model
from mnistlab.models import build_model, load_trained_model, prepare_batch, weights_bytes
from mnistlab.optim import Adam, KerasRMSprop, SGDMomentum
from mnistlab.training import EarlyStop, early_stop_epoch, fit, least_certain, probe_logits


def tiny_config(model: str = "mlp", **overrides) -> TrainConfig:
    return TrainConfig.for_model(model, **{"epochs": 3, "batch_size": 32, "device": "cpu", **overrides})


def test_fit_writes_a_complete_consistent_run(tmp_path: Path, tiny_data_dir: Path) -> None:
    dataset = load_dataset(data_dir=tiny_data_dir)
    result = fit(tiny_config(val_split=0.25), run_dir=tmp_path / "run", dataset=dataset)
    run = result.run_dir
    for name in (runs.CONFIG_FILE, runs.MODEL_FILE, runs.WEIGHTS_FILE, runs.HISTORY_JSON, runs.HISTORY_CSV,
                 runs.CURVES_PNG, runs.METRICS_FILE):
        assert (run / name).is_file(), name
    assert not list(run.glob(".*.tmp"))  # no temporary files left behind
    config = json.loads((run / runs.CONFIG_FILE).read_text())
    assert TrainConfig.from_dict(config) == result.config
    assert config["environment"]["torch"] == torch.__version__
    history = json.loads((run / runs.HISTORY_JSON).read_text())
    assert [row["epoch"] for row in history] == [1, 2, 3]
    with (run / runs.HISTORY_CSV).open() as handle:
        rows = list(csv.DictReader(handle))
    assert [float(r["loss"]) for r in rows] == pytest.approx([h["loss"] for h in history])
    # 25% of 256 held out: the validation figures exist and are probabilities.
    assert all(0.0 <= row["val_accuracy"] <= 1.0 for row in history)
    metrics = json.loads((run / runs.METRICS_FILE).read_text())
    assert metrics["status"] == "completed" and metrics["epochs_completed"] == 3
    assert metrics["test_count"] == 64
    assert metrics["train_seconds"] == pytest.approx(sum(h["seconds"] for h in history), abs=0.01)
    # The synthetic classes are separable: three epochs of an MLP learn them.
    assert metrics["test_accuracy"] >= 0.9
    # Reloading the weights gives exactly the recorded test figure.
    model, files = load_trained_model(run)
    assert files.model["precision"] == metrics["precision"] in ("fp32", "bf16")
    again = evaluate_model(model, dataset.test.images, dataset.test.labels, precision=metrics["precision"])
    assert again.accuracy == metrics["test_accuracy"]
    assert again.loss == pytest.approx(metrics["test_loss"], rel=1e-6)


def test_running_epoch_metrics_are_sample_weighted_means(tmp_path: Path, tiny_data_dir: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The epoch's loss is the mean over samples of the per-batch losses, as Keras reports it.

    Oracle: every training batch's loss and size, recorded as the real cross-entropy returns them, weighted
    here by batch size. The last batch is smaller (56 of 100), so an unweighted mean of batch losses differs.
    """
    from mnistlab import training as train

    batches: list[tuple[float, int]] = []
    real_cross_entropy = train.F.cross_entropy

    def recording_cross_entropy(logits, targets, **kwargs):
        loss = real_cross_entropy(logits, targets, **kwargs)
        if logits.requires_grad:   # training steps only; validation/test passes run without grad
            batches.append((float(loss.detach().float()), int(targets.shape[0])))
        return loss

    monkeypatch.setattr(train.F, "cross_entropy", recording_cross_entropy)
    # The batches are observed in the autograd loop; the dense fast path's running means are checked against
    # this loop's in tests/test_fastpath.py.
    monkeypatch.setattr(train.fastpath, "dense_layers", lambda *_args: None)
    seen: list[tuple[int, float]] = []

    class Spy(TrainObserver):
        def on_step(self, *, step, steps, running):
            seen.append((step, running()[0]))

    dataset = load_dataset(data_dir=tiny_data_dir)
    # 256 samples at batch 100: steps of 100, 100, 56.
    result = fit(tiny_config(epochs=1, batch_size=100), run_dir=tmp_path / "r", dataset=dataset, observer=Spy())
    assert [s for s, _ in seen] == [1, 2, 3]
    assert [n for _, n in batches] == [100, 100, 56]
    losses = np.array([loss for loss, _ in batches], dtype=np.float64)
    sizes = np.array([n for _, n in batches], dtype=np.float64)
    weighted = [float((losses[:k] * sizes[:k]).sum() / sizes[:k].sum()) for k in (1, 2, 3)]
    # The batches' losses differ enough that the two means are told apart by the tolerance below.
    assert abs(weighted[-1] - losses.mean()) > 1e-3
    assert [value for _, value in seen] == pytest.approx(weighted, rel=1e-5)
    assert result.history[0].loss == pytest.approx(weighted[-1], rel=1e-5)


@pytest.mark.parametrize("model", ["softmax", "mlp", "cnn"])
def test_same_seed_same_numbers(tmp_path: Path, tiny_data_dir: Path, model: str) -> None:
    dataset = load_dataset(data_dir=tiny_data_dir)
    a = fit(tiny_config(model, epochs=2), run_dir=tmp_path / "a", dataset=dataset)
    b = fit(tiny_config(model, epochs=2), run_dir=tmp_path / "b", dataset=dataset)
    assert [(h.loss, h.accuracy) for h in a.history] == [(h.loss, h.accuracy) for h in b.history]
    assert (a.run_dir / runs.WEIGHTS_FILE).read_bytes() == (b.run_dir / runs.WEIGHTS_FILE).read_bytes()
    c = fit(tiny_config(model, epochs=2, seed=1), run_dir=tmp_path / "c", dataset=dataset)
    assert [h.loss for h in c.history] != [h.loss for h in a.history]


class InterruptAt(TrainObserver):
    """Simulates Ctrl-C in the middle of an epoch."""

    def __init__(self, epoch: int, step: int) -> None:
        self.target, self.epoch = (epoch, step), 0

    def on_epoch_start(self, *, epoch, epochs, steps):
        self.epoch = epoch

    def on_step(self, *, step, steps, running):
        if (self.epoch, step) == self.target:
            raise KeyboardInterrupt


def test_ctrl_c_keeps_the_last_completed_epoch(tmp_path: Path, tiny_data_dir: Path) -> None:
    dataset = load_dataset(data_dir=tiny_data_dir)
    complete = fit(tiny_config(epochs=2), run_dir=tmp_path / "complete", dataset=dataset)
    with pytest.raises(TrainingInterrupted) as caught:
        fit(tiny_config(epochs=5), run_dir=tmp_path / "cut", dataset=dataset, observer=InterruptAt(3, 2))
    assert caught.value.epochs_completed == 2
    cut = tmp_path / "cut"
    metrics = json.loads((cut / runs.METRICS_FILE).read_text())
    assert metrics["status"] == "interrupted" and metrics["epochs_completed"] == 2
    assert len(json.loads((cut / runs.HISTORY_JSON).read_text())) == 2
    assert (cut / runs.CURVES_PNG).is_file()
    # The saved weights are exactly epoch 2's: the same as a run that stopped there on purpose.
    assert (cut / runs.WEIGHTS_FILE).read_bytes() == (complete.run_dir / runs.WEIGHTS_FILE).read_bytes()
    result, recorded = evaluate_run(cut, device="cpu")
    assert result.count == 64 and recorded["status"] == "interrupted"


def test_interrupt_in_first_epoch_keeps_nothing(tmp_path: Path, tiny_data_dir: Path) -> None:
    """No completed epoch means no weights worth keeping: the folder is removed, so --out can be reused."""
    dataset = load_dataset(data_dir=tiny_data_dir)
    with pytest.raises(TrainingInterrupted) as caught:
        fit(tiny_config(), run_dir=tmp_path / "r", dataset=dataset, observer=InterruptAt(1, 1))
    assert caught.value.epochs_completed == 0
    assert not (tmp_path / "r").exists()
    fit(tiny_config(epochs=1), run_dir=tmp_path / "r", dataset=dataset)
    assert (tmp_path / "r" / runs.WEIGHTS_FILE).is_file()


def test_failure_before_the_first_epoch_leaves_no_directory(tmp_path: Path, tiny_data_dir: Path) -> None:
    dataset = load_dataset(data_dir=tiny_data_dir)
    with pytest.raises(MnistlabError, match="leaves none of the 256 training images"):
        fit(tiny_config(val_split=0.999), run_dir=tmp_path / "r", dataset=dataset)
    assert not (tmp_path / "r").exists()
    (tmp_path / "mine").mkdir()

    class Boom(TrainObserver):
        def on_train_start(self, **_):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fit(tiny_config(), run_dir=tmp_path / "mine", dataset=dataset, observer=Boom())
    # config.json and model.json were written, then removed with the (now empty) folder.
    assert not (tmp_path / "mine").exists()


def test_a_failed_run_removes_only_its_own_files(tmp_path: Path, tiny_data_dir: Path) -> None:
    """discard_run_dir deletes mnistlab's file names only: a file someone put in the folder meanwhile survives,
    and so does the folder holding it."""
    dataset = load_dataset(data_dir=tiny_data_dir)
    run = tmp_path / "r"

    class NotesThenBoom(TrainObserver):
        def on_train_start(self, *, run_dir, **_):
            (run_dir / "notes.txt").write_text("mine")
            (run_dir / "weights-backup.safetensors").write_bytes(b"also mine")
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fit(tiny_config(), run_dir=run, dataset=dataset, observer=NotesThenBoom())
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt", "weights-backup.safetensors"]
    assert (run / "notes.txt").read_text() == "mine"


def test_out_that_is_a_file_is_refused_before_anything_is_written(capsys, tmp_path: Path,
                                                                  tiny_data_dir: Path) -> None:
    from tests.clitools import assert_one_line_error, run_cli

    target = tmp_path / "taken.txt"
    target.write_text("not a folder")
    code, _, err = run_cli(capsys, "train", "softmax", "--epochs", "1", "--device", "cpu",
                           "--data-dir", str(tiny_data_dir), "--out", str(target))
    assert_one_line_error(code, err, f"--out {target}: exists and is not a folder; choose a new folder name")
    assert target.read_text() == "not a folder"


def test_divergence_in_the_first_epoch_keeps_nothing(tmp_path: Path, tiny_data_dir: Path) -> None:
    dataset = load_dataset(data_dir=tiny_data_dir)
    with pytest.raises(MnistlabError, match=r"diverged in epoch 1 .*lower `lr` .*nothing was kept"):
        fit(tiny_config(optimizer="sgd", lr=1e6), run_dir=tmp_path / "r", dataset=dataset)
    assert not (tmp_path / "r").exists()


def test_divergence_stops_with_a_clear_error_and_keeps_the_last_good_epoch(tmp_path: Path, tiny_data_dir: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Epoch 1 trains normally; the learning rate then jumps to 1e6, so epoch 2 diverges and epoch 1 is kept."""
    from mnistlab import training as train

    dataset = load_dataset(data_dir=tiny_data_dir)
    one_epoch = fit(tiny_config(optimizer="sgd", lr=0.01, epochs=1), run_dir=tmp_path / "one", dataset=dataset)
    optimizers = []
    real_build_optimizer = train.build_optimizer

    def keep_optimizer(*args, **kwargs):
        optimizers.append(real_build_optimizer(*args, **kwargs))
        return optimizers[-1]

    class LrJump(TrainObserver):
        def on_epoch_start(self, *, epoch, epochs, steps):
            if epoch == 2:
                optimizers[-1].lr = 1e6

    monkeypatch.setattr(train, "build_optimizer", keep_optimizer)
    run = tmp_path / "r"
    with pytest.raises(MnistlabError) as caught:
        fit(tiny_config(optimizer="sgd", lr=0.01, epochs=3), run_dir=run, dataset=dataset, observer=LrJump())
    message = str(caught.value)
    assert "diverged in epoch 2 " in message and "lower `lr` (it was 0.01)" in message
    assert f"{run} keeps epoch 1" in message and "\n" not in message
    metrics = json.loads((run / runs.METRICS_FILE).read_text())
    assert metrics["status"] == "diverged" and metrics["epochs_completed"] == 1 and metrics["epochs"] == 3
    history = json.loads((run / runs.HISTORY_JSON).read_text())
    assert [row["epoch"] for row in history] == [1] and np.isfinite(history[0]["loss"])
    assert (run / runs.CURVES_PNG).is_file()
    # The kept weights are epoch 1's, not the diverged ones: the same bytes as a run that stopped there.
    assert (run / runs.WEIGHTS_FILE).read_bytes() == (one_epoch.run_dir / runs.WEIGHTS_FILE).read_bytes()
    result, recorded = evaluate_run(run, device="cpu")
    assert result.count == 64 and np.isfinite(result.loss) and recorded["status"] == "diverged"


def test_ctrl_c_during_a_checkpoint_waits_for_it(tmp_path: Path, tiny_data_dir: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGINT raised at the start of epoch 2's checkpoint (before its weights and history are written) is held
    until both are, so the interrupted run holds epoch 2's weights with epoch 2's history."""
    import signal

    from mnistlab import training as train

    dataset = load_dataset(data_dir=tiny_data_dir)
    complete = fit(tiny_config(epochs=2), run_dir=tmp_path / "two", dataset=dataset)
    original = train._save_epoch

    def save_with_signal(run_dir, loop, progress):
        if len(progress.history) == 2:
            signal.raise_signal(signal.SIGINT)   # arrives before any file of epoch 2's checkpoint is written
        original(run_dir, loop, progress)

    monkeypatch.setattr(train, "_save_epoch", save_with_signal)
    with pytest.raises(TrainingInterrupted) as caught:
        fit(tiny_config(epochs=4), run_dir=tmp_path / "r", dataset=dataset)
    assert caught.value.epochs_completed == 2
    assert len(json.loads((tmp_path / "r" / runs.HISTORY_JSON).read_text())) == 2
    assert (tmp_path / "r" / runs.WEIGHTS_FILE).read_bytes() == (complete.run_dir / runs.WEIGHTS_FILE).read_bytes()


def test_refuses_to_overwrite_a_run(tmp_path: Path, tiny_data_dir: Path) -> None:
    dataset = load_dataset(data_dir=tiny_data_dir)
    fit(tiny_config(epochs=1), run_dir=tmp_path / "r", dataset=dataset)
    before = (tmp_path / "r" / runs.WEIGHTS_FILE).read_bytes()
    with pytest.raises(MnistlabError, match="already holds a run"):
        fit(tiny_config(epochs=1, seed=3), run_dir=tmp_path / "r", dataset=dataset)
    assert (tmp_path / "r" / runs.WEIGHTS_FILE).read_bytes() == before


def test_cuda_request_without_gpu_is_a_clear_error(tmp_path: Path, tiny_data_dir: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU; the error path is for CPU-only machines")
    with pytest.raises(MnistlabError, match="`device` cuda: no CUDA GPU"):
        fit(tiny_config(device="cuda"), run_dir=tmp_path / "r", dataset=load_dataset(data_dir=tiny_data_dir))


# ------------------------------------------------------------------------------------ loading run dirs
def test_not_a_run_directory(tmp_path: Path) -> None:
    with pytest.raises(MnistlabError, match="no such run directory"):
        load_trained_model(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MnistlabError, match="not a run directory"):
        load_trained_model(tmp_path / "empty")


def _small_run(tmp_path: Path, tiny_data_dir: Path, model: str = "softmax") -> Path:
    return fit(tiny_config(model, epochs=1), run_dir=tmp_path / model,
               dataset=load_dataset(data_dir=tiny_data_dir)).run_dir


def test_weights_of_another_model_are_rejected(tmp_path: Path, tiny_data_dir: Path) -> None:
    run = _small_run(tmp_path, tiny_data_dir)
    runs.write_bytes_atomic(run / runs.WEIGHTS_FILE, weights_bytes(build_model("mlp")))
    with pytest.raises(MnistlabError, match="weights do not match model 'softmax'"):
        load_trained_model(run)


def test_corrupt_weights_are_rejected(tmp_path: Path, tiny_data_dir: Path) -> None:
    run = _small_run(tmp_path, tiny_data_dir)
    (run / runs.WEIGHTS_FILE).write_bytes(b"\x00" * 40)
    with pytest.raises(MnistlabError, match="not a readable safetensors file"):
        load_trained_model(run)


def test_malformed_config_is_rejected(tmp_path: Path, tiny_data_dir: Path) -> None:
    run = _small_run(tmp_path, tiny_data_dir)
    (run / runs.MODEL_FILE).write_text("{not json")
    with pytest.raises(MnistlabError, match="not readable JSON"):
        load_trained_model(run)


def test_weights_are_safetensors_not_pickle(tmp_path: Path, tiny_data_dir: Path) -> None:
    run = _small_run(tmp_path, tiny_data_dir, "cnn")
    raw = (run / runs.WEIGHTS_FILE).read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + header_len])
    assert header["0.weight"]["shape"] == [32, 1, 3, 3] and header["0.weight"]["dtype"] == "F32"
    assert not raw.startswith(b"\x80")  # not a pickle stream
    assert np.prod(header["9.weight"]["shape"]) == 5760


def test_each_run_sets_its_own_thread_count(tmp_path: Path, tiny_data_dir: Path) -> None:
    from mnistlab.training import DEFAULT_THREADS

    dataset = load_dataset(data_dir=tiny_data_dir)
    fit(tiny_config("mlp", epochs=1), run_dir=tmp_path / "a", dataset=dataset)
    assert torch.get_num_threads() == 1
    fit(tiny_config("cnn", epochs=1), run_dir=tmp_path / "b", dataset=dataset)
    assert torch.get_num_threads() == DEFAULT_THREADS


def test_run_files_get_ordinary_permissions(tmp_path: Path) -> None:
    """Atomic writes go through mkstemp (mode 0600); the final file gets the mode open() would give it."""
    umask = os.umask(0o022)
    os.umask(umask)
    path = runs.write_text_atomic(tmp_path / "x.json", "{}")
    plain = tmp_path / "plain.json"
    plain.write_text("{}")
    assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode) == 0o666 & ~umask


def test_two_trainings_on_one_out_folder_cannot_both_claim_it(tmp_path: Path) -> None:
    """The claim is an exclusive create: the second claimant of an empty folder is refused before writing."""
    from mnistlab.runs import OWNER_FILE, claim_run_dir, prepare_run_dir

    first = prepare_run_dir(tmp_path / "out")
    assert (first / OWNER_FILE).is_file()
    with pytest.raises(MnistlabError, match="another run is being written there"):
        claim_run_dir(first)
    # Two real processes racing for one fresh folder: exactly one wins.
    import subprocess
    import sys

    # Each claimant stays alive until both have answered, as a training would: a folder whose claimant died
    # before writing a run is abandoned, and may be claimed again (tests/test_checkpoint.py).
    code = ("import sys\nfrom mnistlab.runs import prepare_run_dir\nfrom mnistlab.errors import MnistlabError\n"
            "try:\n    prepare_run_dir(sys.argv[1]); print('won', flush=True)\n"
            "except MnistlabError:\n    print('lost', flush=True)\nsys.stdin.read()\n")
    for attempt in range(3):
        target = tmp_path / f"race-{attempt}"
        procs = [subprocess.Popen([sys.executable, "-c", code, str(target)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True) for _ in range(2)]
        results = sorted(proc.stdout.readline().strip() for proc in procs)  # type: ignore[union-attr]
        for proc in procs:
            proc.communicate()
        assert results == ["lost", "won"]


@pytest.mark.parametrize("level", ["strong", "robust"])
def test_augmentation_trains_reproducibly_and_leaves_the_rest_of_the_run_alone(tmp_path: Path, tiny_data_dir: Path,
                                                                              level: str) -> None:
    """Same seed + augment: the same weights. Augmentation draws from its own generator, so the initial weights
    and the shuffle order are those of the plain run (only what the model sees differs)."""
    dataset = load_dataset(data_dir=tiny_data_dir)
    plain = fit(tiny_config(epochs=1), run_dir=tmp_path / "plain", dataset=dataset)
    runs_ = [fit(dataclasses.replace(tiny_config(epochs=1), augment=level), run_dir=tmp_path / f"aug{i}",
                 dataset=dataset) for i in range(2)]
    digests = [hashlib.sha256((r.run_dir / "model.safetensors").read_bytes()).hexdigest() for r in (plain, *runs_)]
    assert digests[1] == digests[2] and digests[0] != digests[1]
    stored = json.loads((runs_[0].run_dir / "config.json").read_text())
    assert stored["augment"] == level
    assert stored["augmentation"] == {"revision": 1 if level == "robust" else 3, **dataclasses.asdict(LEVELS[level])}


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


def test_training_never_imports_torch_dynamo(tiny_data_dir: Path, tmp_path: Path) -> None:
    """torch.optim's first optimizer imports torch._dynamo (1.5 s); mnistlab's training must not."""
    import subprocess
    import sys

    code = ("import sys; from mnistlab.cli import main\n"
            f"assert main(['train', 'fast', '--epochs', '1', '--batch-size', '64',"
            f" '--data-dir', {str(tiny_data_dir)!r}, '--out', {str(tmp_path / 'r')!r}]) == 0\n"
            "assert 'torch._dynamo' not in sys.modules, 'torch._dynamo was imported'\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]


def test_fast_on_a_fraction_of_an_epoch_of_real_mnist(tmp_path: Path, mnist) -> None:
    """A fifth of the training set in one one-cycle pass (batch 64: 80% of the 12,000 images is 150 steps, each
    back-propagating its 32 least certain images): the recipe is already far past what a linear model reaches."""
    subset = mnist.train.subset(slice(0, 12_000))
    small = dataclasses.replace(mnist, splits={"train": Split(subset.images, subset.labels), "test": mnist.test})
    result = fit(TrainConfig.for_model("fast", batch_size=64, device="cpu"), run_dir=tmp_path / "fast",
                 dataset=small)
    assert result.history[0].epoch == 1
    assert result.test.accuracy >= 0.96


def test_channels_last_and_bf16_eval_agree_with_plain_fp32(tmp_path: Path, tiny_data_dir: Path) -> None:
    """The fast layout/precision path computes the same predictions as a plain fp32 pass (up to bf16 noise).

    The plain pass shares nothing with the fast one: weights read by hand from weights.safetensors, contiguous
    NCHW input, a functional fp32 forward (tests/reference.py), no autocast, no prepare_batch.
    """
    from mnistlab.inference import predict_logits
    from mnistlab.models import load_trained_model
    from tests.reference import cnn_logits, read_safetensors

    dataset = load_dataset(data_dir=tiny_data_dir)
    run = fit(TrainConfig.for_model("cnn", epochs=1, batch_size=32, device="cpu"), run_dir=tmp_path / "r",
              dataset=dataset).run_dir
    model, _ = load_trained_model(run)
    plain = cnn_logits(read_safetensors(run / runs.WEIGHTS_FILE), dataset.test.images)
    fast = predict_logits(model, dataset.test.images, precision="bf16")
    assert (fast.argmax(1) == plain.argmax(1)).float().mean() >= 0.98
    torch.testing.assert_close(fast, plain, atol=0.1, rtol=0.05)
    # And the channels-last fp32 path matches it to float rounding.
    torch.testing.assert_close(predict_logits(model, dataset.test.images, precision="fp32"), plain,
                               atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------------------------------ --init-from
def test_init_from_starts_from_the_other_runs_weights(tmp_path: Path, tiny_data_dir: Path) -> None:
    """Oracle: with a learning rate of 1e-12 one epoch cannot move the weights, so a fine-tuned run's weights
    equal its source's; a fresh run with the same seed does not."""
    from safetensors.torch import load_file

    dataset = load_dataset(data_dir=tiny_data_dir)
    source = fit(tiny_config(epochs=2), run_dir=tmp_path / "source", dataset=dataset)
    still = dataclasses.replace(tiny_config(epochs=1, lr=1e-12, seed=5), init_from=str(source.run_dir))
    tuned = fit(still, run_dir=tmp_path / "tuned", dataset=dataset)
    fresh = fit(dataclasses.replace(still, init_from=None), run_dir=tmp_path / "fresh", dataset=dataset)
    src, got, new = (load_file(str(r.run_dir / runs.WEIGHTS_FILE)) for r in (source, tuned, fresh))
    assert all(torch.allclose(got[k], src[k], atol=1e-6) for k in src)
    assert not all(torch.allclose(new[k], src[k], atol=1e-3) for k in src)
    record = json.loads((tuned.run_dir / runs.CONFIG_FILE).read_text())
    assert record["init_from"] == str(source.run_dir)
    assert record["init_weights"]["sha256"] == runs.file_sha256(source.run_dir / runs.WEIGHTS_FILE)
    assert record["init_weights"]["weights_used"] == "last"
    # It really trains from there: the tuned run's first-epoch loss is the source's level, not a fresh start's.
    assert tuned.history[0].loss < fresh.history[0].loss


def test_init_from_another_architecture_is_one_line_and_leaves_nothing(tmp_path: Path, tiny_data_dir: Path) -> None:
    dataset = load_dataset(data_dir=tiny_data_dir)
    source = fit(tiny_config("softmax", epochs=1), run_dir=tmp_path / "softmax", dataset=dataset)
    with pytest.raises(MnistlabError, match=r"`init_from` .*do not fit this network.*same architecture") as info:
        fit(dataclasses.replace(tiny_config(epochs=1), init_from=str(source.run_dir)), run_dir=tmp_path / "mlp",
            dataset=dataset)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "mlp").exists() or not any((tmp_path / "mlp").iterdir())
    with pytest.raises(MnistlabError, match=r"`init_from`.*no such run directory"):
        fit(dataclasses.replace(tiny_config(epochs=1), init_from=str(tmp_path / "nothing")),
            run_dir=tmp_path / "mlp2", dataset=dataset)
    assert not (tmp_path / "mlp2").exists()

# ------------------------------------------------------------ schedules cosine, step, plateau and AdamW in a run
def keras_plateau_lrs(lr: float, figures: list[float], options: dict) -> list[float]:
    """The lr each epoch trains with under Keras' ReduceLROnPlateau, computed by torch's ReduceLROnPlateau with
    Keras' rule mapped onto its arguments (patience and cooldown one less, absolute min_delta, eps 0; why: see
    tests/test_optim.py torch_plateau_for_keras), stepped with the recorded figures."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    oracle = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=options["factor"], patience=max(options["patience"] - 1, 0),
        threshold=options["min_delta"], threshold_mode="abs", cooldown=max(options["cooldown"] - 1, 0),
        min_lr=options["min_lr"], eps=0.0)
    lrs = [lr]
    for figure in figures[:-1]:
        oracle.step(figure)
        lrs.append(optimizer.param_groups[0]["lr"])
    return lrs


def expected_lrs(result) -> list[float]:  # type: ignore[no-untyped-def]
    """The history's lr column each schedule must produce, from its definition (independent of mnistlab.optim)."""
    import math

    config, history = result.config, result.history
    options = config.options
    if config.schedule == "step":
        return [config.lr * options["gamma"] ** ((row.epoch - 1) // options["step_size"]) for row in history]
    if config.schedule == "cosine":   # a row's lr is the one after its epoch's last step
        steps = math.ceil(int(0.75 * 256 if config.val_split else 256) / config.batch_size)
        total = config.epochs * steps
        return [options["min_lr"] + (config.lr - options["min_lr"]) * (1 + math.cos(math.pi * row.epoch * steps
                                                                                     / total)) / 2
                for row in history]
    assert config.schedule == "plateau"
    figures = [row.val_loss if row.val_loss is not None else row.loss for row in history]
    return keras_plateau_lrs(config.lr, figures, options)


class CtrlCInEpoch:
    """Ctrl-C at the second step of ``epoch`` (the previous epoch's checkpoint is the one resume continues)."""

    def __new__(cls, at_epoch: int):  # type: ignore[no-untyped-def]
        from mnistlab.callbacks import Callback

        class Stop(Callback):
            epoch = 0

            def on_epoch_start(self, *, epoch, epochs, steps):  # type: ignore[no-untyped-def]
                self.epoch = epoch

            def on_step(self, *, step, steps, running):  # type: ignore[no-untyped-def]
                if self.epoch == at_epoch and step == 2:
                    raise KeyboardInterrupt

        return Stop()


SCHEDULED_RUNS = {
    "cosine+adamw": {"schedule": "cosine", "options": {"min_lr": 1e-4}, "optimizer": "adam", "lr": 5e-3,
                     "weight_decay": 0.02},
    "step": {"schedule": "step", "options": {"step_size": 2, "gamma": 0.5}, "optimizer": "sgd"},
    # min_delta 0.05 makes the tiny data's falling val_loss cut the lr in epoch 3; Keras' cooldown 3 then rests
    # epochs 4 and 5, and epoch 6 counts: a resume in epoch 4 that lost the counters would cut in epoch 5.
    "plateau": {"schedule": "plateau", "options": {"patience": 1, "min_delta": 0.05, "cooldown": 3},
                "optimizer": "adam", "lr": 1e-2},
    "plateau-on-training-loss+adamw": {"schedule": "plateau", "val_split": 0.0, "optimizer": "adam", "lr": 1e-2,
                                       "weight_decay": 0.01, "options": {"patience": 1, "min_delta": 0.2}},
}


@pytest.mark.parametrize("settings", SCHEDULED_RUNS.values(), ids=SCHEDULED_RUNS.keys())
def test_each_schedule_shows_in_the_history_and_resumes_bit_exactly(tmp_path: Path, tiny_data_dir: Path,
                                                                     settings: dict) -> None:
    """The lr column is the schedule's (from its definition; plateau: torch's ReduceLROnPlateau mapped to Keras'
    rule, on the recorded figures) and changes; a run stopped by Ctrl-C in epoch 4 (after the 3rd checkpoint, with
    a plateau's counters mid-cooldown) and resumed ends with the same weights and history as the run left alone;
    config.json records every schedule option."""
    from mnistlab.training import resume

    dataset = load_dataset(data_dir=tiny_data_dir)
    config = tiny(epochs=6, **settings)
    alone = fit(config, run_dir=tmp_path / "alone", dataset=dataset)
    lrs = [row.lr for row in alone.history]
    assert lrs == pytest.approx(expected_lrs(alone), rel=1e-12, abs=1e-15)
    assert len(set(lrs)) > 1
    with pytest.raises(TrainingInterrupted):
        fit(config, run_dir=tmp_path / "cut", dataset=dataset, observer=CtrlCInEpoch(4))
    saved = json.loads((checkpoint.epoch_folder(tmp_path / "cut", 3) / checkpoint.STATE).read_text())
    assert saved["schedule"]["class"] in ("CosineAnnealing", "StepDecay", "ReduceOnPlateau")
    again = resume(tmp_path / "cut", dataset=dataset)
    assert [row.lr for row in again.history] == lrs
    assert [(row.loss, row.val_loss) for row in again.history] == [(row.loss, row.val_loss) for row in alone.history]
    assert (again.run_dir / runs.WEIGHTS_FILE).read_bytes() == (alone.run_dir / runs.WEIGHTS_FILE).read_bytes()
    stored = json.loads((again.run_dir / runs.CONFIG_FILE).read_text())
    assert set(stored["options"]) == set(TrainConfig.for_model("mlp", schedule=settings["schedule"]).options)
    assert stored["weight_decay"] == settings.get("weight_decay", 0.0)


def test_a_plateau_run_keeps_its_cooldown_across_a_resume(tmp_path: Path, tiny_data_dir: Path) -> None:
    """The checkpoint of epoch 3 holds the plateau's counters as they are then (a cut in epoch 3, so a cooldown of
    3 is running) and the cut lr, which the next epoch trains with."""
    dataset = load_dataset(data_dir=tiny_data_dir)
    config = tiny(epochs=3, **SCHEDULED_RUNS["plateau"])
    result = fit(config, run_dir=tmp_path / "run", dataset=dataset)
    state = json.loads((checkpoint.epoch_folder(result.run_dir, 3) / checkpoint.STATE).read_text())["schedule"]
    figures = [row.val_loss for row in result.history]
    assert state["cooldown_counter"] == 3 and state["wait"] == 0 and state["best"] == min(figures[:2])
    assert state["lr"] == pytest.approx(1e-3, rel=1e-12) and [row.lr for row in result.history] == [1e-2] * 3


def test_a_cosine_run_refuses_a_new_length_on_resume(tmp_path: Path, tiny_data_dir: Path) -> None:
    from mnistlab.training import resume

    dataset = load_dataset(data_dir=tiny_data_dir)
    run = fit(tiny(epochs=2, schedule="cosine"), run_dir=tmp_path / "run", dataset=dataset).run_dir
    with pytest.raises(MnistlabError, match="`epochs` 4: a cosine schedule spans the run's 2 epochs"):
        resume(run, changes={"epochs": 4}, dataset=dataset)


def test_plateau_with_early_stopping(tmp_path: Path, tiny_data_dir: Path) -> None:
    """Both watch val_loss: the plateau cuts the lr (by Keras' rule) and early stopping ends the run at its own
    rule's epoch; an interrupted run of the pair resumes to the same stop, lrs and best weights."""
    from mnistlab.training import resume

    dataset = load_dataset(data_dir=tiny_data_dir)
    config = tiny(schedule="plateau", optimizer="adam", lr=1e-2, options={"patience": 1, "min_delta": 0.05})
    rule = EarlyStop(patience=2)
    alone = fit(config, run_dir=tmp_path / "alone", dataset=dataset, early_stop=rule)
    figures = [row.val_loss for row in alone.history]
    stop = early_stop_epoch(figures, rule)  # type: ignore[arg-type]
    assert stop is not None and len(alone.history) == stop < 12 and alone.metrics["status"] == "stopped"
    lrs = [row.lr for row in alone.history]
    assert lrs == expected_lrs(alone) and lrs[-1] < lrs[0]
    with pytest.raises(TrainingInterrupted):
        fit(config, run_dir=tmp_path / "cut", dataset=dataset, early_stop=rule, observer=CtrlCInEpoch(stop - 1))
    again = resume(tmp_path / "cut", dataset=dataset)
    assert [row.lr for row in again.history] == lrs
    for name in (runs.WEIGHTS_FILE, runs.BEST_FILE):
        assert (again.run_dir / name).read_bytes() == (alone.run_dir / name).read_bytes()


def test_a_fine_tune_killed_in_its_first_epoch_restarts_only_from_the_same_source_weights(
        tmp_path: Path, tiny_data_dir: Path) -> None:
    """What a kill -9 in the first epoch leaves (config.json recording the source's SHA-256, no checkpoint) is
    rebuilt from a snapshot; after the source run changes, the restart is refused instead of silently starting
    from other weights."""
    import shutil

    from mnistlab.training import resume

    dataset = load_dataset(data_dir=tiny_data_dir)
    source = fit(tiny_config(epochs=1), run_dir=tmp_path / "source", dataset=dataset)
    snapshot = tmp_path / "snapshot"

    class KillInEpoch1(InterruptAt):
        def on_step(self, *, step, steps, running):  # type: ignore[no-untyped-def]
            if (self.epoch, step) == self.target:
                shutil.copytree(tmp_path / "tuned", snapshot)
                raise KeyboardInterrupt

    tuned = dataclasses.replace(tiny_config(epochs=2), init_from=str(source.run_dir))
    with pytest.raises(TrainingInterrupted):
        fit(tuned, run_dir=tmp_path / "tuned", dataset=dataset, observer=KillInEpoch1(1, 2))
    shutil.rmtree(tmp_path / "tuned", ignore_errors=True)
    shutil.copytree(snapshot, tmp_path / "tuned")
    (tmp_path / "tuned" / runs.OWNER_FILE).unlink(missing_ok=True)   # its process is gone
    recorded = json.loads((tmp_path / "tuned" / runs.CONFIG_FILE).read_text())["init_weights"]
    assert recorded["sha256"] == runs.file_sha256(source.run_dir / runs.WEIGHTS_FILE)
    shutil.rmtree(source.run_dir)
    fit(tiny_config(epochs=1, seed=9), run_dir=source.run_dir, dataset=dataset)      # other weights, same path
    with pytest.raises(MnistlabError, match="weights changed since this run started"):
        resume(tmp_path / "tuned", dataset=dataset)


@pytest.mark.integration
def test_best_end_to_end_on_a_fraction_of_real_mnist(tmp_path: Path, mnist) -> None:
    """``best`` (its own augmentation on) through the real loop on a tenth of the training set, 2 epochs: it
    trains, records its augmentation, and is already far past a linear model on the full test set."""
    subset = mnist.train.subset(slice(0, 6_000))
    small = dataclasses.replace(mnist, splits={"train": Split(subset.images, subset.labels), "test": mnist.test})
    result = fit(TrainConfig.for_model("best", epochs=2, device="cpu"), run_dir=tmp_path / "best", dataset=small)
    assert [row.epoch for row in result.history] == [1, 2]
    saved = json.loads((tmp_path / "best" / "config.json").read_text())
    assert saved["model"] == "best" and saved["augment"] == "light"
    assert result.test.accuracy >= 0.95


def test_resume_refuses_a_run_whose_augmentation_has_changed_since_it_trained(tmp_path: Path,
                                                                             tiny_data_dir: Path) -> None:
    """config.json records the transform's revision and ranges; a level that changed (as ``strong`` did, in its
    code and in its ranges) must not continue silently, and a run from before the record says it cannot be
    checked, on every resume (the unknown record is kept, never replaced by today's)."""
    from mnistlab.callbacks import Callback
    from mnistlab.training import resume

    dataset = load_dataset(data_dir=tiny_data_dir)
    fit(tiny(epochs=1, augment="strong"), run_dir=tmp_path / "run", dataset=dataset)
    path = tmp_path / "run" / runs.CONFIG_FILE
    saved = json.loads(path.read_text())
    assert saved["augmentation"]["revision"] == 3 and saved["augmentation"]["elastic_alpha"] == 1.0
    assert saved["augmentation"]["stroke"] == 0.3 and saved["augmentation"]["rotation"] == 15.0

    def resume_with(record: object, epochs: int) -> list[str]:
        path.write_text(json.dumps({**saved, "augmentation": record}))
        messages: list[str] = []

        class Notes(Callback):
            def on_message(self, text: str) -> None:
                messages.append(text)

        resume(tmp_path / "run", changes={"epochs": epochs}, dataset=dataset, callbacks=[Notes()])
        return messages

    old_ranges = {**saved["augmentation"], "elastic_alpha": 2.0}
    with pytest.raises(MnistlabError, match=r"^`augment` 'strong' has changed since this run trained "
                                            r"\(elastic_alpha 2\.0 -> 1\.0\)"):
        resume_with(old_ranges, 2)
    with pytest.raises(MnistlabError, match=r"\(revision 2 -> 3\): resuming would continue"):
        resume_with({**saved["augmentation"], "revision": 2}, 2)  # same ranges, older code
    with pytest.raises(MnistlabError, match=r"^the run's recorded augmentation is not an object \(list\)"):
        resume_with([1, 2], 2)
    # A field the record lacks counts as its default (strong's elastic_sigma is the default 3.0): no difference.
    lacking = {k: v for k, v in saved["augmentation"].items() if k != "elastic_sigma"}
    assert not any("augment" in m for m in resume_with(lacking, 2))
    assert json.loads(path.read_text())["augmentation"] == lacking  # kept as it was, not rewritten

    assert any("does not record its `strong` augmentation" in m for m in resume_with(None, 3))
    assert json.loads(path.read_text())["augmentation"] is None  # still unknown after resuming
    assert any("does not record its `strong` augmentation" in m for m in resume_with(None, 4))


# ------------------------------------------------------------------ fewer images, selective backprop (stop 25)
def test_least_certain_picks_the_lowest_top_probabilities_in_row_order() -> None:
    """Oracle: numpy's softmax and a stable argsort of each row's top probability."""
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(37, 10)).astype(np.float32) * 3
    logits[5] = logits[9] = logits[20]  # three rows tie: the lower rows go first
    top = np.exp(logits - logits.max(1, keepdims=True))
    top = (top / top.sum(1, keepdims=True)).max(1)
    for fraction in (0.5, 0.25, 1 / 3, 0.01, 1.0):
        count = max(1, round(37 * fraction))
        want = np.sort(np.argsort(top, kind="stable")[:count])
        got = least_certain(torch.from_numpy(logits), fraction)
        assert got.tolist() == want.tolist(), fraction
    # the ties at rows 5, 9 and 20: asking for exactly as many rows as come before and among them
    order = np.argsort(top, kind="stable")
    cut = int(np.where(order == 9)[0][0])
    assert 9 in least_certain(torch.from_numpy(logits), (cut + 1) / 37).tolist()
    assert 20 not in least_certain(torch.from_numpy(logits), (cut + 1) / 37).tolist()


def test_a_probe_leaves_the_model_as_it_was() -> None:
    """BatchNorm's running statistics, its batch counter and the training flag are untouched, and the
    logits are the eval-mode ones (running statistics, not the batch's)."""
    torch.manual_seed(0)
    model = build_model("fast")
    model.train()
    images = prepare_batch(torch.randint(0, 256, (16, 28, 28), dtype=torch.uint8))
    before = {name: value.clone() for name, value in model.state_dict().items()}
    logits = probe_logits(model, images, autocast=torch.autocast("cpu", enabled=False))
    assert model.training and not logits.requires_grad
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(logits, model(images))


def test_a_onecycle_spans_the_steps_an_epoch_fraction_leaves(tmp_path: Path, tiny_data_dir: Path) -> None:
    """Half of 256 images an epoch is 4 steps of 32, as a whole epoch over 128 images is: the one-cycle must
    span the same 8 steps in both, warming up and annealing to the same learning rate at every epoch's end."""
    dataset = load_dataset(data_dir=tiny_data_dir)
    half = dataset.train.subset(slice(0, 128))
    small = dataclasses.replace(dataset, splits={"train": Split(half.images, half.labels), "test": dataset.test})
    config = tiny_config("fast", epochs=2, precision="fp32", threads=1, backprop_fraction=1.0)
    fraction = fit(dataclasses.replace(config, epoch_fraction=0.5), run_dir=tmp_path / "a", dataset=dataset)
    whole = fit(dataclasses.replace(config, epoch_fraction=1.0), run_dir=tmp_path / "b", dataset=small)
    assert [row.lr for row in fraction.history] == [row.lr for row in whole.history]
    assert fraction.history[-1].lr < 1e-3 * config.lr  # annealed: the schedule really ended


@pytest.mark.parametrize("model", ["fast", "mlp"])
def test_selective_backprop_trains_on_the_uncertain_half_of_each_batch(tmp_path: Path, tiny_data_dir: Path,
                                                                       model: str) -> None:
    """Oracle: the same two epochs written out here with torch.optim.SGD (mnistlab's sgd: momentum 0.9, the
    first buffer the gradient itself): each epoch the first 75% of the seeded shuffle, each batch scored in
    eval mode, numpy's choice of the 16 of 32 rows with the lowest top probability, one step on those rows.
    The weights and BatchNorm's running statistics must agree to the bit (a probe that moved them, a
    selection off by one row or a wrong count of steps would not)."""
    dataset = load_dataset(data_dir=tiny_data_dir)
    config = tiny_config(model, epochs=2, optimizer="sgd", lr=0.05, schedule="constant", precision="fp32",
                         label_smoothing=0.1, epoch_fraction=0.75, backprop_fraction=0.5, threads=1)
    seen: list[tuple[int, int]] = []

    class Steps(TrainObserver):
        def on_step(self, *, step: int, steps: int, running) -> None:  # type: ignore[no-untyped-def]
            seen.append((step, steps))

    result = fit(config, run_dir=tmp_path / "run", dataset=dataset, callbacks=[Steps()])
    assert seen == [(step, 6) for step in range(1, 7)] * 2  # 192 of the 256 images in batches of 32

    torch.manual_seed(0)
    # channels-last as fit lays out a convnet, so both run the same kernels and agree to the bit. The MLP
    # would take the dense fast path without selection: agreeing here shows it took the selective one.
    convolutional = model == "fast"
    layout = torch.channels_last if convolutional else torch.contiguous_format
    net = build_model(model).to(memory_format=layout)  # type: ignore[call-overload]
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    shuffle = torch.Generator().manual_seed(0)
    images, labels = torch.from_numpy(np.array(dataset.train.images)), torch.from_numpy(
        np.array(dataset.train.labels)).long()
    for _ in range(2):
        order = torch.randperm(256, generator=shuffle)[:192]
        for step in range(6):
            index = order[step * 32:(step + 1) * 32]
            x, y = prepare_batch(images[index], channels_last=convolutional), labels[index]
            net.eval()
            with torch.no_grad():
                top = torch.softmax(net(x), dim=1).amax(dim=1).numpy()
            pick = torch.from_numpy(np.sort(np.argsort(top, kind="stable")[:16]))
            net.train()
            loss = torch.nn.functional.cross_entropy(net(x[pick]), y[pick], label_smoothing=0.1)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    trained, _ = load_trained_model(result.run_dir)
    for (name, want), got in zip(net.state_dict().items(), trained.state_dict().values(), strict=True):
        assert torch.equal(got, want), name
    config_json = json.loads((result.run_dir / runs.CONFIG_FILE).read_text())
    assert (config_json["epoch_fraction"], config_json["backprop_fraction"]) == (0.75, 0.5)


def test_a_selective_run_resumes_bit_exactly(tmp_path: Path, tiny_data_dir: Path) -> None:
    """Two epochs, then one more by resume, against three straight: the selection has no random stream of
    its own, so the continued run is the same bits."""
    from mnistlab.training import resume

    dataset = load_dataset(data_dir=tiny_data_dir)
    config = tiny_config("fast", precision="fp32", schedule="constant", epoch_fraction=0.5, backprop_fraction=0.25,
                         threads=1)
    straight = fit(config, run_dir=tmp_path / "straight", dataset=dataset)
    fit(dataclasses.replace(config, epochs=2), run_dir=tmp_path / "split", dataset=dataset)
    resumed = resume(tmp_path / "split", changes={"epochs": 3}, dataset=dataset)
    assert resumed.history[-1].loss == straight.history[-1].loss
    a, _ = load_trained_model(straight.run_dir)
    b, _ = load_trained_model(resumed.run_dir)
    for (name, want), got in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(got, want), name


def test_frozen_norm_statistics_normalise_by_the_batch_and_keep_the_running_estimates() -> None:
    """What a data-parallel rank left without chosen rows runs: the batch still normalises (the output is
    train-mode BatchNorm's), but the running mean, variance and batch counter stay as they were."""
    from mnistlab.training import _norm_statistics_frozen

    torch.manual_seed(0)
    model = build_model("fast")
    model.train()
    images = prepare_batch(torch.randint(0, 256, (8, 28, 28), dtype=torch.uint8))
    before = {name: value.clone() for name, value in model.state_dict().items()}
    with _norm_statistics_frozen(model, True):
        frozen = model(images)
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name
    assert all(m.momentum == 0.1 for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))  # restored
    with _norm_statistics_frozen(model, False):
        free = model(images)
    torch.testing.assert_close(frozen, free)  # the same train-mode output either way
    assert not torch.equal(model.state_dict()["1.running_mean"], before["1.running_mean"])  # and now they moved
