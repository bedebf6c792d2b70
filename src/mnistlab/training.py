"""Training: one plain loop for every model, writing a complete run directory after each epoch.

Data flow: uint8 arrays -> one uint8 tensor on the device -> per step, a gathered uint8 batch converted to
float (``prepare_batch``) -> model -> cross-entropy on logits. No DataLoader: for in-memory arrays its
workers and per-sample collation only add copies.

Per-epoch loss/accuracy are running means over the epoch's samples, as Keras reports them; validation and
test figures are full passes in eval mode.
"""

from __future__ import annotations

import dataclasses
import math
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mnistlab import runs
from mnistlab.augment import AugmentSpec, augment_batch, spec_for
from mnistlab.callbacks import Callback, CallbackList
from mnistlab.config import TrainConfig
from mnistlab.data import Dataset, load_dataset, train_val_indices
from mnistlab.device import Precision, resolve_device, resolve_precision, tune_cpu_allocator
from mnistlab.errors import MnistlabError, TrainingInterrupted
from mnistlab.inference import as_uint8_tensor, evaluate_model
from mnistlab.models import build_model, is_convolutional, model_record, prepare_batch, to_device, weights_bytes
from mnistlab.optim import Adam, KerasRMSprop, OneCycle, Optimizer, SGDMomentum
from mnistlab.results import EpochRecord, TrainResult

# torch's own choice (one per physical core), read before any run changes it.
DEFAULT_THREADS = torch.get_num_threads()


class RunningMeans:
    """An epoch's sample-weighted loss and accuracy sums, kept on the device.

    Reading them forces a device sync, so it happens only when someone asks (the progress bar, a few times a
    second; the epoch's end).
    """

    def __init__(self, device: torch.device) -> None:
        self.loss_sum = torch.zeros((), device=device)
        self.correct = torch.zeros((), device=device, dtype=torch.long)
        self.seen = 0

    def add(self, loss: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> None:
        """Accumulate one batch's mean ``loss`` (weighted by its size) and its correct predictions."""
        batch = int(targets.shape[0])
        self.seen += batch
        self.loss_sum += loss.detach() * batch
        self.correct += (logits.detach().argmax(dim=1) == targets).sum()

    def read(self) -> tuple[float, float]:
        """(mean loss, accuracy) so far this epoch."""
        seen = max(self.seen, 1)
        return self.loss_sum.item() / seen, self.correct.item() / seen


def build_schedule(name: str, optimizer: Optimizer, *, lr: float, total_steps: int) -> OneCycle | None:
    """``constant``: no schedule (the seed's). ``onecycle``: warm up for 25% of the steps to ``lr``, then
    anneal (cosine) to ~0, stepped once per batch: what makes one-epoch training reach 99%."""
    if name == "constant":
        return None
    if name == "onecycle":
        return OneCycle(optimizer, max_lr=lr, total_steps=total_steps, warmup=0.25)
    raise MnistlabError(f"`schedule` {name!r} is not one of constant, onecycle")


def build_optimizer(name: str, params: Any, *, lr: float) -> Optimizer:
    """Keras-equivalent optimizers (see :mod:`mnistlab.optim`).

    - ``rmsprop``: Keras RMSprop (rho 0.9, epsilon 1e-7); torch's defaults (alpha 0.99, eps 1e-8) differ.
    - ``adam``: betas (0.9, 0.999), epsilon 1e-7 as in Keras.
    - ``sgd``: momentum 0.9 (plain Keras SGD has none; momentum is what people mean by a usable SGD).
    """
    if name == "rmsprop":
        return KerasRMSprop(params, lr=lr, rho=0.9, eps=1e-7)
    if name == "adam":
        return Adam(params, lr=lr, beta1=0.9, beta2=0.999, eps=1e-7)
    if name == "sgd":
        return SGDMomentum(params, lr=lr, momentum=0.9)
    raise MnistlabError(f"`optimizer` {name!r} is not one of rmsprop, adam, sgd")


@contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold Ctrl-C (SIGINT) until the block ends, then deliver it: files that belong together are written
    together. Outside the main thread (where signals cannot be handled) it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, _frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received:
            if callable(previous):
                previous(signal.SIGINT, None)
            elif previous == signal.SIG_DFL:
                raise KeyboardInterrupt


def _write_metrics(run_dir: Path, metrics: dict[str, Any]) -> None:
    """The one writer of ``metrics.json``, for networks and classical models, finished or stopped."""
    runs.write_json_atomic(run_dir / runs.METRICS_FILE, metrics)


def _stop_early(run_dir: Path, config: TrainConfig, history: list[EpochRecord], env: dict[str, Any],
                train_seconds: float, *, status: str, where: dict[str, str]) -> None:
    """Record why a run stopped before its last epoch; its files still describe the last completed epoch."""
    if not history:
        return  # fit() discards a run directory without a single completed epoch
    _write_metrics(run_dir, {"status": status, "model": config.model, "epochs_completed": len(history),
                             "epochs": config.epochs, "train_seconds": round(train_seconds, 3), **where,
                             "environment": env})
    _write_curves(run_dir, history, title=f"{config.model} ({status})")


def _save_epoch(run_dir: Path, model: nn.Module, history: list[EpochRecord]) -> None:
    """Checkpoint weights and history; each file is replaced atomically, weights first."""
    runs.write_bytes_atomic(run_dir / runs.WEIGHTS_FILE, weights_bytes(model))
    rows = [record.to_dict() for record in history]
    runs.write_json_atomic(run_dir / runs.HISTORY_JSON, rows)
    runs.write_text_atomic(run_dir / runs.HISTORY_CSV, runs.history_csv_text(rows))


def _write_curves(run_dir: Path, history: Sequence[EpochRecord], title: str) -> None:
    from mnistlab.report import plot_curves

    plot_curves([record.to_dict() for record in history], run_dir / runs.CURVES_PNG, title=title)


def fit(
    config: TrainConfig,
    *,
    run_dir: str | Path,
    dataset: Dataset | None = None,
    callbacks: Sequence[Callback] = (),
    observer: Callback | None = None,
) -> TrainResult:
    """Train (or, for a classical model, fit) ``config.model`` into a new run directory at ``run_dir``.

    ``fit`` owns the directory's lifecycle for every kind of model: it claims ``run_dir`` (created; must be new
    or empty), and if the run stops before its first epoch completes (an error, Ctrl-C, divergence), it removes
    what it wrote, so the folder can be reused. After every epoch the directory holds that epoch's weights and
    history, so Ctrl-C (raised as :class:`TrainingInterrupted`) leaves a valid run of the last completed
    epoch. ``callbacks`` (and ``observer``, one more) hear about progress and may stop the run after an epoch.
    Same config and seed on the CPU give the same numbers.
    """
    hooks = CallbackList([*callbacks, *([observer] if observer is not None else [])])
    started = time.perf_counter()
    device = None
    if config.family == "network":
        # Everything that can be refused is checked before the run directory exists.
        device = resolve_device(config.device)
        # Set every time (not only when given): the thread count is process-wide, and a previous run in this
        # process (e.g. reproduce's single-threaded MLP) must not leave the CNN on one thread.
        torch.set_num_threads(config.threads or DEFAULT_THREADS)
    if dataset is None:
        dataset = load_dataset(config.dataset, data_dir=config.data_dir)
    else:
        # Record where the data really came from, so evaluate/predict reload the same files.
        config = dataclasses.replace(config, dataset=dataset.name, data_dir=dataset.data_dir)
    train_idx, val_idx = _split(config, dataset)
    path = runs.prepare_run_dir(run_dir)
    try:
        if device is None:
            from mnistlab.baselines import fit_classical

            result = fit_classical(config, run_dir=path, dataset=dataset, callback=hooks,
                                   fit_indices=train_idx, val_indices=val_idx)
        else:
            result = _fit_network(config, run_dir=path, dataset=dataset, hooks=hooks, device=device,
                                  train_idx=train_idx, val_idx=val_idx)
    except BaseException:
        # Stopped before the first epoch completed: nothing is worth keeping, and the leftovers would block
        # reusing the folder.
        if not (path / runs.HISTORY_JSON).exists():
            runs.discard_run_dir(path)
        raise
    metrics = {**result.metrics, "total_seconds": round(time.perf_counter() - started, 3)}
    _write_curves(path, result.history, title=f"{config.model} on {dataset.name}")
    _write_metrics(path, metrics)
    return dataclasses.replace(result, metrics=metrics)


def _split(config: TrainConfig, dataset: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """(fit, validation) indices of the training split, checked to leave something to train on."""
    n = len(dataset.train)
    if config.family == "classical":
        from mnistlab.baselines import holdout_indices, subsample_indices

        fit_idx, val_idx = holdout_indices(n, val_fraction=config.val_split, seed=config.seed,
                                           method=config.val_method)
        fit_idx = subsample_indices(fit_idx, max_train=int(config.options.get("max_train", 0)), seed=config.seed)
    else:
        fit_idx, val_idx = train_val_indices(n, val_fraction=config.val_split, seed=config.seed)
    if len(fit_idx) == 0:
        raise MnistlabError(f"`val_split` {config.val_split} leaves none of the {n:,} training images to train on; "
                            "use a smaller validation split")
    return fit_idx, val_idx


@dataclass
class _Loop:
    """What one network run trains with: data on the device, model, optimizer, schedule, shuffle order."""

    config: TrainConfig
    device: torch.device
    precision: Precision
    x_train: torch.Tensor          # (N, 28, 28) uint8
    y_train: torch.Tensor          # (N,) int64
    x_val: torch.Tensor | None
    y_val: torch.Tensor | None
    model: nn.Module
    optimizer: Optimizer
    schedule: OneCycle | None
    shuffle: torch.Generator
    channels_last: bool
    augment: AugmentSpec
    # Its own stream, so turning augmentation on does not change the shuffle order or the initial weights.
    augment_rng: torch.Generator

    @property
    def steps(self) -> int:
        """Optimizer steps per epoch (the last batch may be smaller)."""
        return math.ceil(int(self.x_train.shape[0]) / self.config.batch_size)


def _setup(config: TrainConfig, dataset: Dataset, device: torch.device, train_idx: np.ndarray,
           val_idx: np.ndarray, hooks: Callback) -> _Loop:
    """Move the data to the device once (uint8) and build model, optimizer and schedule from the seed."""
    # The whole (train) split goes to the device once, as uint8: 47 MB for MNIST.
    x_all = as_uint8_tensor(dataset.train.images, device)                        # (N, 28, 28) uint8
    y_all = torch.as_tensor(np.asarray(dataset.train.labels), device=device).long()  # (N,)
    x_val = y_val = None
    x_train, y_train = x_all, y_all
    if len(val_idx):
        val_at, train_at = torch.from_numpy(val_idx).to(device), torch.from_numpy(train_idx).to(device)
        x_val, y_val = x_all[val_at], y_all[val_at]
        x_train, y_train = x_all[train_at], y_all[train_at]
    precision, note = resolve_precision(config.precision, device)
    if note:
        hooks.on_message(note)
    if device.type == "cpu":
        tune_cpu_allocator()
    torch.manual_seed(config.seed)
    model = build_model(config.model, num_classes=len(dataset.class_names))
    channels_last = is_convolutional(model)
    model = to_device(model, device)
    optimizer = build_optimizer(config.optimizer, model.parameters(), lr=config.lr)
    steps = math.ceil(int(x_train.shape[0]) / config.batch_size)
    schedule = build_schedule(config.schedule, optimizer, lr=config.lr, total_steps=config.epochs * steps)
    return _Loop(config=config, device=device, precision=precision, x_train=x_train, y_train=y_train,
                 x_val=x_val, y_val=y_val, model=model, optimizer=optimizer, schedule=schedule,
                 shuffle=torch.Generator(device=device).manual_seed(config.seed), channels_last=channels_last,
                 augment=spec_for(config.augment),
                 augment_rng=torch.Generator(device=device).manual_seed(config.seed + 1))


def _train_epoch(loop: _Loop, hooks: Callback) -> tuple[float, float]:
    """One pass over the shuffled training images; returns the epoch's running (loss, accuracy)."""
    config, model, optimizer = loop.config, loop.model, loop.optimizer
    autocast = torch.autocast(device_type=loop.device.type, dtype=torch.bfloat16, enabled=loop.precision == "bf16")
    model.train()
    order = torch.randperm(int(loop.x_train.shape[0]), generator=loop.shuffle, device=loop.device)
    meter = RunningMeans(loop.device)
    steps = loop.steps
    for step in range(steps):
        index = order[step * config.batch_size:(step + 1) * config.batch_size]
        inputs = prepare_batch(loop.x_train[index], channels_last=loop.channels_last)  # (B, 1, 28, 28)
        inputs = augment_batch(inputs, spec=loop.augment, generator=loop.augment_rng)  # as-is for "none"
        targets = loop.y_train[index]                                                   # (B,)
        with autocast:
            logits = model(inputs)                                                      # (B, 10)
            loss = F.cross_entropy(logits, targets, label_smoothing=config.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if loop.schedule is not None:
            loop.schedule.step()
        meter.add(loss, logits, targets)
        hooks.on_step(step=step + 1, steps=steps, running=meter.read)
    return meter.read()


def _fit_network(config: TrainConfig, *, run_dir: Path, dataset: Dataset, hooks: Callback, device: torch.device,
                 train_idx: np.ndarray, val_idx: np.ndarray) -> TrainResult:
    """The epochs of a network run, once the run directory is claimed; metrics.json is left to :func:`fit`."""
    loop = _setup(config, dataset, device, train_idx, val_idx, hooks)
    env = runs.environment()
    runs.write_json_atomic(run_dir / runs.CONFIG_FILE, {**config.to_dict(), "environment": env})
    record = model_record(config.model, loop.model, class_names=dataset.class_names, dataset=dataset.name,
                          precision=loop.precision)
    runs.write_json_atomic(run_dir / runs.MODEL_FILE, record)
    hooks.on_train_start(config=config, run_dir=run_dir, steps_per_epoch=loop.steps,
                         samples=int(loop.x_train.shape[0]), device=str(device), precision=loop.precision)
    history: list[EpochRecord] = []
    train_seconds, stopped_by = 0.0, None
    where = {"device": str(device), "precision": loop.precision}
    try:
        for epoch in range(1, config.epochs + 1):
            hooks.on_epoch_start(epoch=epoch, epochs=config.epochs, steps=loop.steps)
            epoch_start = time.perf_counter()
            train_loss, train_acc = _train_epoch(loop, hooks)
            epoch_seconds = time.perf_counter() - epoch_start
            train_seconds += epoch_seconds
            if not math.isfinite(train_loss):
                _stop_early(run_dir, config, history, env, train_seconds, status="diverged", where=where)
                kept = f"{run_dir} keeps epoch {len(history)}" if history else "nothing was kept"
                raise MnistlabError(f"training diverged in epoch {epoch} (the loss became {train_loss}); "
                                    f"lower `lr` (it was {config.lr:g}); {kept}")
            val = None
            if loop.x_val is not None and loop.y_val is not None:
                val = evaluate_model(loop.model, loop.x_val, loop.y_val, batch_size=config.eval_batch_size,
                                     device=device, precision=loop.precision)
            row = EpochRecord(epoch=epoch, loss=train_loss, accuracy=train_acc,
                              val_loss=val.loss if val else None, val_accuracy=val.accuracy if val else None,
                              seconds=round(epoch_seconds, 4), lr=float(loop.optimizer.lr))
            # Weights and history change together: Ctrl-C waits until both files are replaced.
            with interrupts_deferred():
                history.append(row)
                _save_epoch(run_dir, loop.model, history)
            if hooks.on_epoch_end(row) and epoch < config.epochs:
                stopped_by = epoch
                break
    except KeyboardInterrupt:
        _stop_early(run_dir, config, history, env, train_seconds, status="interrupted", where=where)
        raise TrainingInterrupted(run_dir=run_dir, epochs_completed=len(history)) from None
    except Exception:
        # Any other failure after an epoch (a callback's bug, a full disk): the run keeps its completed epochs
        # and says it failed, instead of a folder with no metrics.json. Divergence has written its own.
        if not (run_dir / runs.METRICS_FILE).exists():
            _stop_early(run_dir, config, history, env, train_seconds, status="failed", where=where)
        raise
    return _finish_network(loop, dataset, history, record, env, train_seconds, run_dir, stopped_by)


def _finish_network(loop: _Loop, dataset: Dataset, history: list[EpochRecord], record: dict[str, Any],
                    env: dict[str, Any], train_seconds: float, run_dir: Path, stopped_by: int | None) -> TrainResult:
    """Score the trained network on the test split and assemble the run's metrics."""
    config = loop.config
    eval_start = time.perf_counter()
    test = evaluate_model(loop.model, as_uint8_tensor(dataset.test.images, loop.device), dataset.test.labels,
                          batch_size=config.eval_batch_size, device=loop.device, precision=loop.precision)
    final = history[-1]
    metrics = {
        "status": "completed" if stopped_by is None else "stopped",
        "model": config.model, "family": "network", "dataset": dataset.name,
        "epochs_completed": len(history), "epochs": config.epochs, "stopped_after_epoch": stopped_by,
        "params": record["params"],
        "test_loss": test.loss, "test_accuracy": test.accuracy, "test_count": test.count,
        "train_loss": final.loss, "train_accuracy": final.accuracy,
        "val_loss": final.val_loss, "val_accuracy": final.val_accuracy,
        "train_seconds": round(train_seconds, 3), "seconds_per_epoch": round(train_seconds / len(history), 4),
        "eval_seconds": round(time.perf_counter() - eval_start, 3),
        "device": str(loop.device), "precision": loop.precision,
        "checksums": dataset.checksums, "environment": env,
    }
    return TrainResult(run_dir=run_dir, config=config, history=tuple(history), test=test,
                       train_seconds=train_seconds, metrics=metrics, model=loop.model)
