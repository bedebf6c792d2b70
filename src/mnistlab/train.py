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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mnistlab import runs
from mnistlab.callbacks import Callback
from mnistlab.config import TrainConfig
from mnistlab.data import Dataset, load_dataset, train_val_indices
from mnistlab.device import resolve_device, resolve_precision, tune_cpu_allocator
from mnistlab.errors import MnistlabError, TrainingInterrupted
from mnistlab.inference import as_uint8_tensor, evaluate_model
from mnistlab.models import build_model, is_convolutional, model_record, prepare_batch, weights_bytes
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
    raise MnistlabError(f"--schedule {name!r} is not one of constant, onecycle")


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
    raise MnistlabError(f"--optimizer {name!r} is not one of rmsprop, adam, sgd")


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


def _stop_early(run_dir: Path, config: TrainConfig, history: list[EpochRecord], env: dict[str, Any],
                train_seconds: float, *, status: str) -> None:
    """Record why a run stopped before its last epoch; its files still describe the last completed epoch."""
    if not history:
        return  # fit() discards a run directory without a single completed epoch
    metrics = {"status": status, "epochs_completed": len(history), "epochs": config.epochs,
               "train_seconds": round(train_seconds, 3), "environment": env}
    runs.write_json_atomic(run_dir / runs.METRICS_FILE, metrics)
    _write_curves(run_dir, history, title=f"{config.model} ({status})")


def _save_epoch(run_dir: Path, model: nn.Module, history: list[EpochRecord]) -> None:
    """Checkpoint weights and history; each file is replaced atomically, weights first."""
    runs.write_bytes_atomic(run_dir / runs.WEIGHTS_FILE, weights_bytes(model))
    rows = [asdict(record) for record in history]
    runs.write_json_atomic(run_dir / runs.HISTORY_JSON, rows)
    runs.write_text_atomic(run_dir / runs.HISTORY_CSV, runs.history_csv_text(rows))


def _write_curves(run_dir: Path, history: list[EpochRecord], title: str) -> None:
    from mnistlab.report import plot_curves

    plot_curves([asdict(record) for record in history], run_dir / runs.CURVES_PNG, title=title)


def fit(
    config: TrainConfig,
    *,
    run_dir: str | Path,
    dataset: Dataset | None = None,
    observer: Callback | None = None,
) -> TrainResult:
    """Train ``config.model`` and write a complete run directory at ``run_dir`` (created; must be new/empty).

    After every epoch the directory holds that epoch's weights and history, so Ctrl-C (raised here as
    :class:`TrainingInterrupted`) leaves a valid run of the last completed epoch. Same config and seed on
    the CPU give the same numbers.
    """
    if config.family == "classical":
        # Classical baselines are fitted in one go by scikit-learn; same run directory, different path.
        from mnistlab.baselines import fit_classical

        return fit_classical(config, run_dir=run_dir, dataset=dataset, observer=observer)  # type: ignore[no-any-return]
    observer = observer or Callback()
    started = time.perf_counter()
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

    train_idx, val_idx = train_val_indices(len(dataset.train), val_fraction=config.val_split, seed=config.seed)
    if len(train_idx) == 0:
        raise MnistlabError(f"--val-split {config.val_split} leaves none of the {len(dataset.train):,} training "
                            "images to train on; use a smaller --val-split")
    run_dir = runs.prepare_run_dir(run_dir)
    try:
        return _fit_into(config, run_dir=run_dir, dataset=dataset, observer=observer, device=device,
                         train_idx=train_idx, val_idx=val_idx, started=started)
    except BaseException:
        # Stopped (error, Ctrl-C, divergence) before the first epoch completed: nothing is worth keeping,
        # and the leftovers would block reusing --out.
        if not (run_dir / runs.HISTORY_JSON).exists():
            runs.discard_run_dir(run_dir)
        raise


def _fit_into(config: TrainConfig, *, run_dir: Path, dataset: Dataset, observer: Callback,
              device: torch.device, train_idx: Any, val_idx: Any, started: float) -> TrainResult:
    """The body of :func:`fit` once the run directory exists."""
    # The whole (train) split goes to the device once, as uint8: 47 MB for MNIST.
    x_all = as_uint8_tensor(dataset.train.images, device)                        # (N, 28, 28) uint8
    y_all = torch.tensor(dataset.train.labels, device=device).long()             # (N,)
    if len(val_idx):
        x_val, y_val = x_all[torch.from_numpy(val_idx).to(device)], y_all[torch.from_numpy(val_idx).to(device)]
        x_train, y_train = x_all[torch.from_numpy(train_idx).to(device)], y_all[torch.from_numpy(train_idx).to(device)]
    else:
        x_val = y_val = None
        x_train, y_train = x_all, y_all
    n_train = int(x_train.shape[0])
    steps = math.ceil(n_train / config.batch_size)

    precision, note = resolve_precision(config.precision, device)
    if note:
        observer.on_message(note)
    if device.type == "cpu":
        tune_cpu_allocator()
    torch.manual_seed(config.seed)
    model = build_model(config.model, num_classes=len(dataset.class_names))
    channels_last = is_convolutional(model)
    model = model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    optimizer = build_optimizer(config.optimizer, model.parameters(), lr=config.lr)
    schedule = build_schedule(config.schedule, optimizer, lr=config.lr, total_steps=config.epochs * steps)
    shuffle = torch.Generator(device=device).manual_seed(config.seed)
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16")

    env = runs.environment()
    runs.write_json_atomic(run_dir / runs.CONFIG_FILE, {**config.to_dict(), "environment": env})
    record = model_record(config.model, model, class_names=dataset.class_names, dataset=dataset.name,
                          precision=precision)
    runs.write_json_atomic(run_dir / runs.MODEL_FILE, record)
    observer.on_train_start(config=config, run_dir=run_dir, steps_per_epoch=steps, samples=n_train)

    history: list[EpochRecord] = []
    train_seconds = 0.0
    try:
        for epoch in range(1, config.epochs + 1):
            observer.on_epoch_start(epoch=epoch, epochs=config.epochs, steps=steps)
            epoch_start = time.perf_counter()
            model.train()
            order = torch.randperm(n_train, generator=shuffle, device=device)
            meter = RunningMeans(device)
            for step in range(steps):
                index = order[step * config.batch_size:(step + 1) * config.batch_size]
                inputs = prepare_batch(x_train[index], channels_last=channels_last)  # (B, 1, 28, 28)
                targets = y_train[index]                                             # (B,)
                with autocast:
                    logits = model(inputs)                                           # (B, 10)
                    loss = F.cross_entropy(logits, targets, label_smoothing=config.label_smoothing)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if schedule is not None:
                    schedule.step()
                meter.add(loss, logits, targets)
                observer.on_step(step=step + 1, steps=steps, running=meter.read)

            train_loss, train_acc = meter.read()
            epoch_seconds = time.perf_counter() - epoch_start
            train_seconds += epoch_seconds
            if not math.isfinite(train_loss):
                _stop_early(run_dir, config, history, env, train_seconds, status="diverged")
                kept = f"{run_dir} keeps epoch {len(history)}" if history else "nothing was kept"
                raise MnistlabError(f"training diverged in epoch {epoch} (the loss became {train_loss}); "
                                    f"lower --lr (it was {config.lr:g}); {kept}")
            val = None
            if x_val is not None:
                val = evaluate_model(model, x_val, y_val, batch_size=config.eval_batch_size, device=device,
                                     precision=precision)
            record_epoch = EpochRecord(
                epoch=epoch, loss=train_loss, accuracy=train_acc,
                val_loss=val.loss if val else None, val_accuracy=val.accuracy if val else None,
                seconds=round(epoch_seconds, 4),
            )
            # Weights and history change together: Ctrl-C waits until both files are replaced.
            with interrupts_deferred():
                history.append(record_epoch)
                _save_epoch(run_dir, model, history)
            observer.on_epoch_end(record_epoch)
    except KeyboardInterrupt:
        _stop_early(run_dir, config, history, env, train_seconds, status="interrupted")
        raise TrainingInterrupted(run_dir=run_dir, epochs_completed=len(history)) from None

    eval_start = time.perf_counter()
    test_images = as_uint8_tensor(dataset.test.images, device)
    test = evaluate_model(model, test_images, dataset.test.labels, batch_size=config.eval_batch_size,
                          device=device, precision=precision)
    eval_seconds = time.perf_counter() - eval_start
    final = history[-1]
    metrics = {
        "status": "completed",
        "model": config.model,
        "dataset": dataset.name,
        "epochs_completed": len(history),
        "epochs": config.epochs,
        "params": record["params"],
        "test_loss": test.loss,
        "test_accuracy": test.accuracy,
        "test_count": test.count,
        "train_loss": final.loss,
        "train_accuracy": final.accuracy,
        "val_loss": final.val_loss,
        "val_accuracy": final.val_accuracy,
        "train_seconds": round(train_seconds, 3),
        "seconds_per_epoch": round(train_seconds / len(history), 4),
        "eval_seconds": round(eval_seconds, 3),
        "total_seconds": round(time.perf_counter() - started, 3),
        "device": str(device),
        "precision": precision,
        "checksums": dataset.checksums,
        "environment": env,
    }
    _write_curves(run_dir, history, title=f"{config.model} on {dataset.name}")
    runs.write_json_atomic(run_dir / runs.METRICS_FILE, metrics)
    return TrainResult(run_dir=run_dir, config=config, history=tuple(history), test=test,
                       train_seconds=train_seconds, metrics=metrics)
