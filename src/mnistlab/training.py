"""Training: one plain loop for every model, writing a complete run directory after each epoch.

Data flow: uint8 arrays -> one uint8 tensor on the device -> per step, a gathered uint8 batch converted to
float (``prepare_batch``) -> model -> cross-entropy on logits. No DataLoader: for in-memory arrays its
workers and per-sample collation only add copies.

Per-epoch loss/accuracy are running means over the epoch's samples, as Keras reports them; validation and
test figures are full passes in eval mode.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import signal
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mnistlab import checkpoint, distributed, fastpath, runs
from mnistlab.augment import AugmentSpec, augment_batch, augment_record, record_differences, spec_for
from mnistlab.callbacks import Callback, CallbackList
from mnistlab.config import SCHEDULE_NAMES, SCHEDULE_OPTIONS, TrainConfig
from mnistlab.data import Dataset, load_dataset, split_sha256, train_val_indices
from mnistlab.device import Precision, resolve_device, resolve_precision, tune_cpu_allocator
from mnistlab.errors import MnistlabError, TrainingInterrupted
from mnistlab.inference import as_uint8_tensor, evaluate_model
from mnistlab.models import build_model, is_convolutional, model_record, prepare_batch, to_device, weights_bytes
from mnistlab.optim import (
    Adam,
    CosineAnnealing,
    KerasRMSprop,
    OneCycle,
    Optimizer,
    ReduceOnPlateau,
    Schedule,
    SGDMomentum,
    StepDecay,
)
from mnistlab.results import EpochRecord, EvalResult, TrainResult

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


def build_schedule(name: str, optimizer: Optimizer, *, lr: float, total_steps: int,
                   options: Mapping[str, float] | None = None) -> Schedule | None:
    """The learning-rate schedule ``name`` over ``total_steps`` optimizer steps, with ``options`` (a
    :class:`TrainConfig`'s, checked there) over :data:`mnistlab.config.SCHEDULE_OPTIONS`' defaults.

    - ``constant``: no schedule (the seed's).
    - ``onecycle``: warm up for 25% of the steps to ``lr``, then anneal (cosine) to ~0, stepped once per batch:
      what makes one-epoch training reach 99%.
    - ``cosine``: from ``lr`` down to ``min_lr`` (default 0) along a half cosine over the whole run, per batch.
    - ``step``: ``lr`` times ``gamma`` (0.1) every ``step_size`` (10) epochs.
    - ``plateau``: Keras' ReduceLROnPlateau on the validation loss (training loss without a validation split):
      times ``factor`` (0.1) after ``patience`` (10) epochs without an improvement of ``min_delta`` (1e-4), then
      ``cooldown`` (0) epochs of rest, never below ``min_lr`` (0).
    """
    if name not in SCHEDULE_NAMES:
        raise MnistlabError(f"`schedule` {name!r} is not one of {', '.join(SCHEDULE_NAMES)}")
    unknown = sorted(set(options or {}) - set(SCHEDULE_OPTIONS[name]))
    if unknown:
        raise MnistlabError(f"option(s) {', '.join(unknown)} do not apply to the {name} schedule")
    params: dict[str, Any] = {**SCHEDULE_OPTIONS[name], **(options or {})}
    if name == "onecycle":
        return OneCycle(optimizer, max_lr=lr, total_steps=total_steps, warmup=0.25)
    if name == "cosine":
        return CosineAnnealing(optimizer, lr=lr, total_steps=total_steps, min_lr=float(params["min_lr"]))
    if name == "step":
        return StepDecay(optimizer, lr=lr, step_size=int(params["step_size"]), gamma=float(params["gamma"]))
    if name == "plateau":
        return ReduceOnPlateau(optimizer, factor=float(params["factor"]), patience=int(params["patience"]),
                               min_delta=float(params["min_delta"]), cooldown=int(params["cooldown"]),
                               min_lr=float(params["min_lr"]))
    return None


def build_optimizer(name: str, params: Any, *, lr: float, weight_decay: float = 0.0) -> Optimizer:
    """Keras-equivalent optimizers (see :mod:`mnistlab.optim`).

    - ``rmsprop``: Keras RMSprop (rho 0.9, epsilon 1e-7); torch's defaults (alpha 0.99, eps 1e-8) differ.
    - ``adam``: betas (0.9, 0.999), epsilon 1e-7 as in Keras; ``weight_decay`` > 0 makes it AdamW (decoupled,
      as ``torch.optim.AdamW``).
    - ``sgd``: momentum 0.9 (plain Keras SGD has none; momentum is what people mean by a usable SGD).

    ``weight_decay`` is refused for rmsprop and sgd (their torch/Keras weight decay is L2 in the gradient, another
    rule; :class:`TrainConfig` says so first).
    """
    if weight_decay and name != "adam":
        raise MnistlabError(f"`weight_decay` is decoupled weight decay for adam (AdamW); {name} has none here")
    if name == "rmsprop":
        return KerasRMSprop(params, lr=lr, rho=0.9, eps=1e-7)
    if name == "adam":
        return Adam(params, lr=lr, beta1=0.9, beta2=0.999, eps=1e-7, weight_decay=weight_decay)
    if name == "sgd":
        return SGDMomentum(params, lr=lr, momentum=0.9)
    raise MnistlabError(f"`optimizer` {name!r} is not one of rmsprop, adam, sgd")


# The signals that stop a run the way Ctrl-C does: a terminal closing (SIGHUP), `timeout`, `docker stop` or a
# cluster scheduler (SIGTERM).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class StopSignal(KeyboardInterrupt):
    """SIGINT, SIGTERM or SIGHUP received during training; ``signum`` says which."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_stop(signum: int, _frame: object) -> None:
    raise StopSignal(signum)


@contextmanager
def stop_signals_handled() -> Iterator[None]:
    """While training, SIGTERM and SIGHUP (and SIGINT) raise :class:`StopSignal`, so each leaves a consistent,
    resumable run marked ``interrupted``. Outside the main thread (no signal handling there) it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, _raise_stop) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold SIGINT, SIGTERM and SIGHUP until the block ends, then deliver the first one received to the handler
    that was in place: files that belong together are written together. Outside the main thread it does
    nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous: dict[int, Any] = {signum: signal.signal(signum, lambda signum, _frame: received.append(signum))
                                for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if received:
            handler = previous[received[0]]
            if callable(handler):
                handler(received[0], None)
            elif received[0] == signal.SIGINT and handler == signal.SIG_DFL:
                raise KeyboardInterrupt
            else:
                signal.raise_signal(received[0])


def _write_metrics(run_dir: Path, metrics: dict[str, Any]) -> None:
    """The one writer of ``metrics.json``, for networks and classical models, finished or stopped."""
    runs.write_json_atomic(run_dir / runs.METRICS_FILE, metrics)


def _stop_early(run_dir: Path, config: TrainConfig, history: list[EpochRecord], env: dict[str, Any],
                train_seconds: float, *, status: str, where: dict[str, Any] | None = None) -> None:
    """Record why a run stopped before its last epoch; its files still describe the last completed epoch.

    (A new run without a completed epoch is then discarded by :func:`fit`; a resumed one keeps the record.)
    """
    _write_metrics(run_dir, {"status": status, "model": config.model, "epochs_completed": len(history),
                             "epochs": config.epochs, "train_seconds": round(train_seconds, 3), **(where or {}),
                             "environment": env})
    if history:
        _write_curves(run_dir, history, title=f"{config.model} ({status})")


def _save_epoch(run_dir: Path, loop: _Loop, progress: _Progress) -> None:
    """The epoch's complete checkpoint (one commit point, :mod:`mnistlab.checkpoint`), then the top-level copies
    of weights and history that other tools read. Call with interrupts deferred."""
    weights = weights_bytes(loop.model)
    optimizer_tensors, optimizer_numbers = loop.optimizer.state_dict()
    tensors = {**{f"optimizer/{k}": v for k, v in optimizer_tensors.items()},
               **checkpoint.rng_tensors(loop.shuffle, loop.device),
               "rng/augment": loop.augment_rng.get_state().clone()}
    rows = [record.to_dict() for record in progress.history]
    state = {"history": rows, "best": progress.best, "train_seconds": progress.train_seconds,
             "optimizer": optimizer_numbers, "schedule": loop.schedule.state_dict() if loop.schedule else None,
             "rng": checkpoint.rng_numbers(), "data_sha256": loop.data_sha256, "config": loop.config.to_dict(),
             "early_stop": dataclasses.asdict(progress.early_stop) if progress.early_stop else None}
    checkpoint.commit(run_dir, epoch=len(rows), weights=weights, tensors=tensors, state=state,
                      best=progress.best_weights)
    if progress.best_weights is not None:
        runs.write_bytes_atomic(run_dir / checkpoint.BEST, progress.best_weights)
    runs.write_bytes_atomic(run_dir / runs.WEIGHTS_FILE, weights)
    runs.write_json_atomic(run_dir / runs.HISTORY_JSON, rows)
    runs.write_text_atomic(run_dir / runs.HISTORY_CSV, runs.history_csv_text(rows))


def _restore(loop: _Loop, saved: checkpoint.Checkpoint, progress: _Progress) -> None:
    """Put model, optimizer, schedule, RNGs and progress back exactly as the checkpoint recorded them."""
    state = saved.state
    if state.get("data_sha256") != loop.data_sha256:
        raise MnistlabError(f"{saved.folder.parent.parent}: the training data differ from the run's "
                            "(SHA-256 of the images and labels); resume with the run's dataset files")
    try:
        loop.model.load_state_dict(saved.weights)
        if loop.schedule is not None:  # first: it sets lr/beta1, which the optimizer's own numbers then confirm
            loop.schedule.load_state_dict(state["schedule"])
        prefix = "optimizer/"
        loop.optimizer.load_state_dict({k[len(prefix):]: v for k, v in saved.tensors.items() if k.startswith(prefix)},
                                       state["optimizer"])
        checkpoint.restore_rng(saved.tensors, state["rng"], loop.shuffle, loop.device)
        if "rng/augment" in saved.tensors:  # the augmentation stream continues where it stopped
            loop.augment_rng.set_state(saved.tensors["rng/augment"])
    except (KeyError, ValueError, RuntimeError, TypeError) as exc:
        raise MnistlabError(f"{saved.folder}: the checkpoint does not fit this run ({str(exc).splitlines()[0]}); "
                            "retrain the run") from None
    fields = EpochRecord.__dataclass_fields__
    progress.history[:] = [EpochRecord(**{k: v for k, v in row.items() if k in fields}) for row in state["history"]]
    progress.best = state.get("best")
    progress.train_seconds = float(state.get("train_seconds", 0.0))
    progress.early_stop = EarlyStop(**state["early_stop"]) if state.get("early_stop") else None
    progress.best_weights = saved.best


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
    early_stop: EarlyStop | None = None,
) -> TrainResult:
    """Train (or, for a classical model, fit) ``config.model`` into a new run directory at ``run_dir``.

    ``fit`` owns the directory's lifecycle for every kind of model: it claims ``run_dir`` (created; must be new
    or empty), and if the run stops before its first epoch completes (an error, Ctrl-C, divergence), it removes
    what it wrote, so the folder can be reused. After every epoch the directory holds that epoch's complete
    checkpoint (:mod:`mnistlab.checkpoint`), so Ctrl-C, SIGTERM or SIGHUP (raised as
    :class:`TrainingInterrupted`) leave a valid run of the last completed epoch that :func:`resume` continues.
    ``callbacks`` (and ``observer``, one more) hear about progress and may stop the run after an epoch.
    ``early_stop`` stops it once its monitored validation figure has not improved for ``patience`` epochs
    (Keras' EarlyStopping); ``best.safetensors`` then holds the best epoch's weights.
    Same config and seed on the CPU give the same numbers.
    """
    hooks = CallbackList([*callbacks, *([observer] if observer is not None else [])])
    device = _prepare_device(config)
    if early_stop is not None:
        early_stop.check(config)
    if config.init_from is not None:
        init_source(config.init_from)  # a missing or classical source is refused before any folder exists
    config, dataset = _with_dataset(config, dataset)
    train_idx, val_idx = _split(config, dataset)
    ddp = distributed.current()
    if ddp is None:
        path = runs.prepare_run_dir(run_dir)
    else:  # rank 0 claims the folder; the others only learn its name (and run no callbacks)
        path = distributed.share(ddp, runs.prepare_run_dir(run_dir) if ddp.primary else None)
        hooks = hooks if ddp.primary else CallbackList([])
    return _run(config, path=path, dataset=dataset, hooks=hooks, device=device, train_idx=train_idx,
                val_idx=val_idx, saved=None, resumed=False, early_stop=early_stop)


def resume(
    run_dir: str | Path,
    *,
    changes: Mapping[str, Any] | None = None,
    dataset: Dataset | None = None,
    callbacks: Sequence[Callback] = (),
    observer: Callback | None = None,
) -> TrainResult:
    """Continue the network run in ``run_dir`` (stopped, interrupted, crashed or finished) from its last
    checkpoint to its configured epochs, or to ``changes["epochs"]``.

    ``changes`` holds the settings the caller asked for: each must equal the run's own, except ``epochs``
    (more), ``threads`` and ``device`` (a note says a device change breaks bit-exactness); anything else is
    refused with one line naming the difference. On the CPU the result is bit-identical to the run left alone.
    A run killed in its first epoch (no checkpoint yet) restarts from its seed.
    """
    hooks = CallbackList([*callbacks, *([observer] if observer is not None else [])])
    path = Path(run_dir)
    stored, record = _stored_config(path)
    config, notes = resume_config(stored, dict(changes or {}))
    device = _prepare_device(config)
    ddp = distributed.current()
    recorded = record.get("environment", {}).get("distributed") or {}
    before, now = int(recorded.get("world_size", 1)), ddp.world_size if ddp is not None else 1
    if before != now:  # the same arithmetic, summed in another order: close, not bit for bit
        notes.append(f"resuming with {now} process{'es' if now > 1 else ''} (the run trained with {before}): the "
                     "result will not be bit-identical to the run left alone")
    config, dataset = _with_dataset(config, dataset)
    train_idx, val_idx = _split(config, dataset)
    ddp = distributed.current()
    writer = ddp is None or ddp.primary  # every rank reads the checkpoint; rank 0 alone takes the folder
    if writer:
        runs.reclaim_run_dir(path)
    else:
        hooks = CallbackList([])
    try:
        saved = checkpoint.load(path)
        if saved is None and (path / runs.HISTORY_JSON).exists():
            raise MnistlabError(f"{path}: trained by an mnistlab without full checkpoints (no "
                                f"{checkpoint.CHECKPOINT_DIR}/{checkpoint.MANIFEST}), so it cannot continue exactly; "
                                "train a new run")
        done = saved.epoch if saved is not None else 0
        finished = _status(path) in ("completed", "stopped")
        if saved is not None and saved.state.get("early_stop") and _status(path) == "stopped":
            raise MnistlabError(f"{path}: early stopping ended it after epoch {done}; it does not continue "
                                "(its best weights are in best.safetensors); train a new run")
        # A run killed after its last epoch but before its test figures resumes with no epoch left: it is scored.
        if done > config.epochs or (done == config.epochs and finished):
            raise MnistlabError(f"{path} already holds {done} of its {config.epochs} epochs; pass `epochs` "
                                f"above {done} to train it further")
        if saved is not None:  # with no checkpoint the run restarts from its seed: nothing trained with the old one
            notes += _augmentation_notes(record.get("augmentation"), config)
    except BaseException:
        if writer:
            runs.release_run_dir(path)
        raise
    for note in notes:
        hooks.on_message(note)
    return _run(config, path=path, dataset=dataset, hooks=hooks, device=device, train_idx=train_idx,
                val_idx=val_idx, saved=saved, resumed=True, early_stop=None)


def _prepare_device(config: TrainConfig) -> torch.device | None:
    """The device of a network run (checked before any folder is touched); None for a classical model."""
    if config.family != "network":
        if distributed.launched():
            raise MnistlabError(f"{config.model} is a classical model, fitted in one process; train it without "
                                "torchrun or `nproc`")
        return None
    device = resolve_device(config.device)
    if distributed.launched():
        device = distributed.setup(device)
    # Set every time (not only when given): the thread count is process-wide, and a previous run in this
    # process (e.g. reproduce's single-threaded MLP) must not leave the CNN on one thread.
    torch.set_num_threads(config.threads or DEFAULT_THREADS)
    return device


def _with_dataset(config: TrainConfig, dataset: Dataset | None) -> tuple[TrainConfig, Dataset]:
    if dataset is None:
        return config, load_dataset(config.dataset, data_dir=config.data_dir)
    # Record where the data really came from, so evaluate/predict reload the same files.
    return dataclasses.replace(config, dataset=dataset.name, data_dir=dataset.data_dir), dataset


def _run(config: TrainConfig, *, path: Path, dataset: Dataset, hooks: CallbackList, device: torch.device | None,
         train_idx: np.ndarray, val_idx: np.ndarray, saved: checkpoint.Checkpoint | None,
         resumed: bool, early_stop: EarlyStop | None) -> TrainResult:
    """Fit into the claimed ``path``; a new run that ends before its first checkpoint leaves nothing."""
    started = time.perf_counter()
    ddp = distributed.current()
    writer = ddp is None or ddp.primary
    try:
        with stop_signals_handled():
            if device is None:
                from mnistlab.baselines import fit_classical

                result = fit_classical(config, run_dir=path, dataset=dataset, callback=hooks,
                                       fit_indices=train_idx, val_indices=val_idx)
            else:
                result = _fit_network(config, run_dir=path, dataset=dataset, hooks=hooks, device=device,
                                      train_idx=train_idx, val_idx=val_idx, saved=saved, early_stop=early_stop)
    except BaseException:
        # Stopped before the first epoch completed: nothing is worth keeping, and the leftovers would block
        # reusing the folder. (A resumed run keeps its config, so --resume can restart it.)
        if not writer:
            raise
        if not resumed and checkpoint.read_manifest(path) is None and not (path / runs.HISTORY_JSON).exists():
            checkpoint.discard(path)
            runs.discard_run_dir(path)
        runs.release_run_dir(path)
        raise
    metrics = {**result.metrics, "total_seconds": round(time.perf_counter() - started, 3)}
    if not writer:  # rank 0's figures (test scores, history with validation) once its files are written
        assert ddp is not None
        metrics, history = distributed.share(ddp, None)
        return dataclasses.replace(result, metrics=metrics, history=history, test=_test_of(metrics))
    title = f"{config.model} on {dataset.name}"
    deferred = runs.writes_deferred()  # the CLI: curves.png after the metrics, while the summary prints
    try:
        if not deferred:
            _write_curves(path, result.history, title=title)
        _write_metrics(path, metrics)
    finally:
        runs.release_run_dir(path)  # the claim lasts while this process trains: a later --resume may take it
    if deferred:
        runs.write_later(_write_curves, path, result.history, title)
    if ddp is not None:
        distributed.share(ddp, (metrics, result.history))
    return dataclasses.replace(result, metrics=metrics)


def _test_of(metrics: dict[str, Any]) -> EvalResult:
    return EvalResult(loss=metrics["test_loss"], accuracy=metrics["test_accuracy"], count=metrics["test_count"])


def _status(path: Path) -> str | None:
    """The status metrics.json records (None without one)."""
    try:
        metrics = runs.read_json(path / runs.METRICS_FILE)
    except MnistlabError:
        return None
    return metrics.get("status") if isinstance(metrics, dict) else None


def _augmentation_notes(recorded: object, config: TrainConfig) -> list[str]:
    """Refuse to resume a run whose recorded augmentation (revision and ranges) differs from its level today.

    A run written before the record existed (or a resume of one, which keeps it unknown) cannot be checked:
    for a level other than ``none`` it gets a note instead.
    """
    if recorded is None:
        if config.augment == "none":
            return []
        return [f"this run does not record its `{config.augment}` augmentation (written by an earlier mnistlab); "
                "it continues with today's, which may differ from what it trained with"]
    differ = record_differences(recorded, config.augment)
    if differ:
        raise MnistlabError(f"`augment` {config.augment!r} has changed since this run trained ({', '.join(differ)}): "
                            "resuming would continue with another transform; train a new run")
    return []


def _stored_config(path: Path) -> tuple[TrainConfig, dict[str, Any]]:
    """The config of the run to resume and its whole config.json record, refused with one line when there is
    nothing resumable."""
    if not (path / runs.CONFIG_FILE).is_file():
        raise MnistlabError(f"`resume` {path}: no run there (no {runs.CONFIG_FILE}); pass a folder written by "
                            "`mnistlab train`")
    data = runs.read_json(path / runs.CONFIG_FILE)
    config = TrainConfig.from_dict({k: v for k, v in data.items() if k != "environment"})
    if config.family != "network":
        raise MnistlabError(f"`resume` {path}: a classical {config.model} model is fitted in one step; "
                            "there is nothing to resume (train it again)")
    return config, data


# Settings a resumed run may change: they do not change what it computes (device: not bit for bit).
_SAFE_CHANGES = ("epochs", "threads", "device", "data_dir")


def resume_config(stored: TrainConfig, changes: dict[str, Any]) -> tuple[TrainConfig, list[str]]:
    """The config to continue with, and notes; refuses (one line) any change that would alter the run."""
    notes: list[str] = []
    for key, value in changes.items():
        if value is None or key in _SAFE_CHANGES:
            continue
        current = stored.model if key == "model" else getattr(stored, key, None)
        if value != current:
            name = "model" if key == "model" else f"`{key}`"  # a positional argument in the CLI, not a flag
            raise MnistlabError(f"{name} {value!r} differs from the run's {current!r}: resuming would change the "
                                f"run; leave {name} out to continue it, or train a new run")
    allowed = {key: changes[key] for key in _SAFE_CHANGES if changes.get(key) is not None}
    epochs = allowed.get("epochs")
    if epochs is not None and epochs != stored.epochs and stored.schedule in ("onecycle", "cosine"):
        raise MnistlabError(f"`epochs` {epochs}: a {stored.schedule} schedule spans the run's {stored.epochs} epochs "
                            "(its total steps are fixed at the start); resume without `epochs`, or train a new run")
    if allowed.get("device", stored.device) != stored.device:
        notes.append(f"resuming on {allowed['device']} (the run trained on {stored.device}): the result will "
                     "not be bit-identical to the run left alone")
    return dataclasses.replace(stored, **allowed), notes


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
    schedule: Schedule | None
    shuffle: torch.Generator
    channels_last: bool
    augment: AugmentSpec
    # Its own stream, so turning augmentation on does not change the shuffle order or the initial weights.
    augment_rng: torch.Generator
    data_sha256: str               # of the images and labels: a resumed run must train on the same data
    split_digests: dict[str, str]  # per split (data.split_sha256), recorded in metrics.json by every path
    ddp: distributed.Context | None = None
    net: nn.Module | None = None   # what the steps call: ``model`` under DistributedDataParallel, or ``model``

    @property
    def images(self) -> int:
        """Training images per epoch (:func:`images_per_epoch`)."""
        return images_per_epoch(int(self.x_train.shape[0]), self.config.epoch_fraction)

    @property
    def steps(self) -> int:
        """Optimizer steps per epoch (the last batch may be smaller)."""
        return steps_per_epoch(int(self.x_train.shape[0]), self.config)


def images_per_epoch(count: int, fraction: float) -> int:
    """How many of ``count`` training images an epoch visits at ``epoch_fraction`` ``fraction`` (at least one)."""
    return count if fraction >= 1.0 else max(1, round(count * fraction))


def steps_per_epoch(count: int, config: TrainConfig) -> int:
    """Optimizer steps in an epoch over ``count`` training images (the schedule spans epochs times this)."""
    return math.ceil(images_per_epoch(count, config.epoch_fraction) / config.batch_size)


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
    optimizer = build_optimizer(config.optimizer, model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps = steps_per_epoch(int(x_train.shape[0]), config)
    schedule = build_schedule(config.schedule, optimizer, lr=config.lr, total_steps=config.epochs * steps,
                              options=config.options)
    digests = {name: split_sha256(dataset.split(name)) for name in ("train", "test")}
    ddp = distributed.current()
    if ddp is not None:
        distributed.check_batch(ddp, config.batch_size)
    return _Loop(config=config, device=device, precision=precision, x_train=x_train, y_train=y_train,
                 x_val=x_val, y_val=y_val, model=model, optimizer=optimizer, schedule=schedule,
                 shuffle=torch.Generator(device=device).manual_seed(config.seed), channels_last=channels_last,
                 augment=spec_for(config.augment),
                 augment_rng=torch.Generator(device=device).manual_seed(config.seed + 1),
                 data_sha256=_data_sha256(digests), split_digests=digests, ddp=ddp,
                 net=model if ddp is None else distributed.wrap(ddp, model))


def _data_sha256(split_digests: dict[str, str]) -> str:
    """One SHA-256 for the whole dataset, from the per-split digests (each split is hashed once per run)."""
    return hashlib.sha256("".join(split_digests[name] for name in ("train", "test")).encode()).hexdigest()


@dataclass(frozen=True)
class EarlyStop:
    """Keras' ``EarlyStopping(monitor, patience)``: stop once ``monitor`` has not improved (strictly) for
    ``patience`` epochs in a row. Needs a validation split."""

    patience: int
    monitor: Literal["val_loss", "val_accuracy"] = "val_loss"

    def check(self, config: TrainConfig) -> None:
        """Refuse settings it cannot work with, before anything is written."""
        if self.monitor not in ("val_loss", "val_accuracy"):
            raise MnistlabError(f"`monitor` {self.monitor!r} is not one of val_loss, val_accuracy")
        if not isinstance(self.patience, int) or self.patience < 1:
            raise MnistlabError(f"`early_stop` must be a whole number of epochs >= 1, got {self.patience}")
        if config.val_split <= 0:
            raise MnistlabError(f"`early_stop` watches {self.monitor}, which needs a validation split; "
                                "pass `val_split`, e.g. 0.1")

    def improved(self, value: float, best: float | None) -> bool:
        """Whether ``value`` beats ``best`` (lower loss, higher accuracy)."""
        if best is None:
            return True
        return value > best if self.monitor == "val_accuracy" else value < best


def early_stop_epoch(values: Sequence[float], rule: EarlyStop) -> int | None:
    """The 1-based epoch after which ``rule`` stops a run whose monitored figures are ``values``, if any."""
    best: float | None = None
    wait = 0
    for epoch, value in enumerate(values, start=1):
        if rule.improved(value, best):
            best, wait = value, 0
        else:
            wait += 1
            if wait >= rule.patience:
                return epoch
    return None


@dataclass
class _Progress:
    """What a run has done so far: the checkpointed part of its state that is not model or optimizer."""

    history: list[EpochRecord] = dataclasses.field(default_factory=list)
    best: dict[str, Any] | None = None
    train_seconds: float = 0.0
    early_stop: EarlyStop | None = None
    best_weights: bytes | None = None   # the best epoch's weights (safetensors), once a run monitors one

    def note_best(self, row: EpochRecord) -> bool:
        """Keep the best epoch so far by the early-stop monitor, else by validation loss (training loss without a
        validation split); True when ``row`` is the new best."""
        monitor = self.early_stop.monitor if self.early_stop else ("val_loss" if row.val_loss is not None else "loss")
        rule = self.early_stop or EarlyStop(patience=1)
        value = getattr(row, monitor)
        if value is None or not math.isfinite(value):
            return False
        if rule.improved(value, None if self.best is None else self.best["value"]):
            self.best = {"monitor": monitor, "epoch": row.epoch, "value": value}
            return self.early_stop is not None
        return False

    def should_stop(self) -> bool:
        """Whether the early-stop rule ends the run after the last recorded epoch."""
        if self.early_stop is None:
            return False
        values = [getattr(row, self.early_stop.monitor) for row in self.history]
        return early_stop_epoch(values, self.early_stop) == len(self.history)


def _train_epoch(loop: _Loop, hooks: Callback) -> tuple[float, float]:
    """One pass over the shuffled training images; returns the epoch's running (loss, accuracy).

    Dense networks (softmax layer, MLP) without augmentation or data parallelism take the hand-written
    :mod:`mnistlab.fastpath` (same shuffle, same numbers within fp32 rounding; an epoch 2.4x faster for the
    softmax layer and 1.5x for the MLP, benchmarks/RESULTS.md);
    everything else, autograd.
    """
    plain = loop.ddp is None and loop.augment.is_identity and loop.config.backprop_fraction == 1.0
    dense = fastpath.dense_layers(loop.model, loop.optimizer) if plain else None
    if dense is None:
        return _train_epoch_autograd(loop, hooks)
    order = _epoch_order(loop)
    return fastpath.train_epoch(
        dense, optimizer=loop.optimizer, schedule=loop.schedule, images=loop.x_train, labels=loop.y_train,
        order=order, batch_size=loop.config.batch_size, label_smoothing=loop.config.label_smoothing,
        bf16=loop.precision == "bf16",
        on_step=lambda step, steps, running: hooks.on_step(step=step, steps=steps, running=running))


def _epoch_order(loop: _Loop) -> torch.Tensor:
    """This epoch's training images, as indices in training order: the first ``loop.images`` of a fresh
    permutation. The whole permutation is drawn, so the shuffle stream stays the same at any epoch_fraction."""
    return torch.randperm(int(loop.x_train.shape[0]), generator=loop.shuffle, device=loop.device)[:loop.images]


@contextmanager
def _norm_statistics_frozen(model: nn.Module, frozen: bool) -> Iterator[None]:
    """While ``frozen``, BatchNorm layers in training mode normalise by the batch as usual but leave their
    running statistics as they are (momentum 0; the batch counter is restored too)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)] if frozen else []
    saved = [(m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone()) for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (momentum, tracked) in zip(norms, saved, strict=True):
            m.momentum = momentum
            if tracked is not None and m.num_batches_tracked is not None:
                m.num_batches_tracked.copy_(tracked)


def probe_logits(model: nn.Module, inputs: torch.Tensor, *, autocast: Any) -> torch.Tensor:
    """A batch's logits without gradients and in eval mode: BatchNorm uses its running statistics and does not
    update them, so probing leaves the model's state as it was."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), autocast:
            return model(inputs)
    finally:
        model.train(was_training)


def top_probability(logits: torch.Tensor) -> torch.Tensor:
    """Each row's top softmax probability (B,) float32: how sure the model is of its answer."""
    return logits.float().softmax(dim=1).amax(dim=1)


def lowest_rows(top: torch.Tensor, fraction: float) -> torch.Tensor:
    """Indices of the ``fraction`` of rows (rounded, at least one) with the lowest ``top``, in ascending row
    order so a batch keeps its shuffled order. Ties go to the lower row (a stable sort makes that explicit)."""
    count = max(1, round(int(top.shape[0]) * fraction))
    if count >= int(top.shape[0]):
        return torch.arange(int(top.shape[0]), device=top.device)
    order = torch.sort(top, stable=True).indices
    return torch.sort(order[:count]).values


def least_certain(logits: torch.Tensor, fraction: float) -> torch.Tensor:
    """Row indices of the ``fraction`` of a batch whose top softmax probability is lowest (:func:`lowest_rows`).
    The labels are not used: the measure is the model's own doubt, which needs no loss."""
    return lowest_rows(top_probability(logits), fraction)


def _train_epoch_autograd(loop: _Loop, hooks: Callback) -> tuple[float, float]:
    """:func:`_train_epoch` through autograd: every model, and the oracle the fast path is tested against."""
    config, model, optimizer, ddp = loop.config, loop.net or loop.model, loop.optimizer, loop.ddp
    autocast = torch.autocast(device_type=loop.device.type, dtype=torch.bfloat16, enabled=loop.precision == "bf16")
    model.train()
    order = _epoch_order(loop)
    meter = RunningMeans(loop.device)
    steps = loop.steps
    # Selective backprop reports the probe's figures, so the losses it trained on are checked apart: a
    # non-finite one makes the epoch's loss NaN, which the caller treats as divergence.
    finite = torch.ones((), dtype=torch.bool, device=loop.device)
    # A rank prepares only its share; augmenting, it warps the whole global batch (the same draws as a single
    # process, and the same generator state on every rank) and keeps its share.
    whole = ddp is not None and loop.augment != spec_for("none")
    for step in range(steps):
        index = order[step * config.batch_size:(step + 1) * config.batch_size]
        start, stop, factor = (0, len(index), 1.0) if ddp is None else distributed.shard(ddp, len(index))
        rows = index[start:stop]
        inputs = prepare_batch(loop.x_train[index if whole else rows], channels_last=loop.channels_last)
        inputs = augment_batch(inputs, spec=loop.augment, generator=loop.augment_rng)  # as-is for "none"
        if whole:
            inputs = inputs[start:stop]                                                 # (B, 1, 28, 28)
        targets = loop.y_train[rows]                                                    # (B,)
        probe = None
        weight = factor  # what this rank's mean loss is scaled by
        if config.backprop_fraction < 1.0:
            # The bare module, not DDP's wrapper: a probe must not broadcast buffers or prepare a reduction.
            probe = probe_logits(loop.model, inputs, autocast=autocast)
            if ddp is None:
                pick = least_certain(probe, config.backprop_fraction)
            else:  # the global batch's least certain rows, the same choice on every rank
                pick, weight = distributed.least_certain_share(
                    ddp, top_probability(probe) if factor else probe.new_empty(0), total=len(index),
                    fraction=config.backprop_fraction, lowest=lowest_rows)
            inputs, trained = inputs[pick], targets[pick]                               # (b, 1, 28, 28), (b,)
        else:
            trained = targets
        # A rank that selective backprop left without rows trains one with weight 0 (to join DDP's all-reduce):
        # that row must not move BatchNorm's running statistics either (rank 0's are broadcast and saved).
        with autocast, _norm_statistics_frozen(loop.model, probe is not None and weight == 0.0):
            logits = model(inputs)                                                      # (b, 10)
            loss = F.cross_entropy(logits, trained, label_smoothing=config.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        (loss if weight == 1.0 else loss * weight).backward()  # DDP's mean of these = the global mean gradient
        optimizer.step()
        if loop.schedule is not None:
            loop.schedule.step()
        if factor:
            if probe is None:
                meter.add(loss, logits, trained)
            else:  # the whole batch as the probe saw it, before the step, not only the rows it trained on
                meter.add(F.cross_entropy(probe.float(), targets, label_smoothing=config.label_smoothing),
                          probe, targets)
                finite &= torch.isfinite(loss.detach())
        hooks.on_step(step=step + 1, steps=steps, running=meter.read)
    if ddp is not None:
        # Folded in before the all-reduce, so a non-finite loss on any one rank makes every rank's epoch loss
        # NaN: all ranks then stop together (a rank raising alone would leave the others waiting).
        loss_sum = torch.where(finite, meter.loss_sum, torch.full_like(meter.loss_sum, math.nan))
        return distributed.reduce_means(ddp, loss_sum, meter.correct, meter.seen)
    mean_loss, accuracy = meter.read()
    return (mean_loss if bool(finite) else math.nan), accuracy


def _fit_network(config: TrainConfig, *, run_dir: Path, dataset: Dataset, hooks: Callback, device: torch.device,
                 train_idx: np.ndarray, val_idx: np.ndarray, saved: checkpoint.Checkpoint | None,
                 early_stop: EarlyStop | None) -> TrainResult:
    """The epochs of a network run, once the run directory is claimed; metrics.json is left to :func:`fit`."""
    loop = _setup(config, dataset, device, train_idx, val_idx, hooks)
    progress = _Progress(early_stop=early_stop)
    init: dict[str, Any] | None = None
    # What this folder's config.json already records (a resumed or restarted run): read once, kept below.
    previous = runs.read_json(run_dir / runs.CONFIG_FILE) if (run_dir / runs.CONFIG_FILE).is_file() else {}
    if saved is not None:
        _restore(loop, saved, progress)
    elif config.init_from is not None:
        init = init_weights(loop.model, config.init_from)  # every rank loads the same file
        recorded = previous.get("init_weights")
        if isinstance(recorded, dict) and recorded.get("sha256") != init["sha256"]:
            # A fine-tune killed in its first epoch restarts from its source: only if those are the same weights.
            raise MnistlabError(f"`init_from` {config.init_from}: its weights changed since this run started from "
                                "them (SHA-256 differs); train a new run")
    if loop.ddp is not None:
        distributed.barrier(loop.ddp)  # every rank has read the checkpoint before rank 0 writes anything
        if not loop.ddp.primary:
            return _follow(loop, progress, hooks, run_dir=run_dir)
    env = runs.environment()
    if loop.ddp is not None:
        env["distributed"] = loop.ddp.record()
    # The transform's revision and ranges, not just its level's name: a level can change between versions
    # (``strong`` did), and resuming must not silently continue with another transform. A resumed run keeps
    # the record it started with (None: unknown, an older run), so the record never claims more than it knows.
    augmentation = previous.get("augmentation") if saved is not None else augment_record(config.augment)
    stored = {**config.to_dict(), "augmentation": augmentation, "environment": env}
    if init is None:  # a resumed fine-tune keeps its record
        init = previous.get("init_weights")
    if init is not None:
        stored["init_weights"] = init
    runs.write_json_atomic(run_dir / runs.CONFIG_FILE, stored)
    record = model_record(config.model, loop.model, class_names=dataset.class_names, dataset=dataset.name,
                          precision=loop.precision)
    runs.write_json_atomic(run_dir / runs.MODEL_FILE, record)
    _write_metrics(run_dir, {"status": "running", **runs.process_identity(), "model": config.model,
                             "epochs_completed": len(progress.history), "epochs": config.epochs})
    hooks.on_train_start(config=config, run_dir=run_dir, steps_per_epoch=loop.steps,
                         samples=int(loop.x_train.shape[0]), device=str(device), precision=loop.precision)
    stopped_by = None
    try:
        for epoch in range(len(progress.history) + 1, config.epochs + 1):
            row = _one_epoch(loop, epoch, progress, hooks, run_dir=run_dir, env=env)
            # Everything of the epoch is committed together: signals wait until the checkpoint is published.
            with interrupts_deferred():
                progress.history.append(row)
                if loop.schedule is not None:
                    # After the row took the lr the epoch trained with; before the checkpoint, which must hold
                    # the schedule's state for the next epoch (a plateau's cut, its counters).
                    loop.schedule.epoch_end(row.val_loss if row.val_loss is not None else row.loss)
                if progress.note_best(row):
                    progress.best_weights = weights_bytes(loop.model)
                _save_epoch(run_dir, loop, progress)
            stop = hooks.on_epoch_end(row) or progress.should_stop()
            if loop.ddp is not None:  # the other ranks wait here for rank 0's decision (and its checkpoint)
                if loop.schedule is not None:  # a plateau decides on rank 0's validation figure: all follow it
                    distributed.share(loop.ddp, loop.schedule.state_dict())
                stop = distributed.agree(loop.ddp, bool(stop))
            if stop and epoch < config.epochs:
                stopped_by = epoch
                break
        # Inside the try: a signal during the test pass still leaves an `interrupted` run (resume scores it).
        return _finish_network(loop, dataset, progress.history, record, env, progress.train_seconds, run_dir,
                               stopped_by)
    except KeyboardInterrupt as exc:
        _stop_early(run_dir, config, progress.history, env, progress.train_seconds, status="interrupted",
                    where=_where(loop))
        raise TrainingInterrupted(run_dir=run_dir, epochs_completed=len(progress.history),
                                  signum=getattr(exc, "signum", signal.SIGINT)) from None
    except Exception:
        # Any other failure after an epoch (a callback's bug, a full disk): the run keeps its completed epochs
        # and says it failed, instead of a folder with no metrics.json. Divergence has written its own.
        if progress.history and _status(run_dir) == "running":
            _stop_early(run_dir, config, progress.history, env, progress.train_seconds, status="failed",
                        where=_where(loop))
        raise


def init_source(path: str) -> runs.RunFiles:
    """The run whose weights ``init_from`` names: a network run with weights (best where it kept them)."""
    try:
        source = runs.read_run(path, weights="auto")
    except MnistlabError as exc:
        raise MnistlabError(f"`init_from` {exc}") from None
    if source.model.get("family") == "classical":
        raise MnistlabError(f"`init_from` {path}: a classical {source.model.get('name')} model has no network "
                            "weights to start from; pass a network run")
    return source


def init_weights(model: nn.Module, path: str) -> dict[str, Any]:
    """Load the weights of run ``path`` into the freshly built ``model`` (fine-tuning); every tensor's name and
    shape must match. Returns what config.json records about them (run, which weights, SHA-256)."""
    from safetensors.torch import load_file

    source = init_source(path)
    tensors = load_file(str(source.weights))
    expected = model.state_dict()
    wrong = sorted(set(expected) ^ set(tensors)) + [
        f"{key} {tuple(tensors[key].shape)} vs {tuple(value.shape)}"
        for key, value in expected.items() if key in tensors and tensors[key].shape != value.shape]
    if wrong:
        raise MnistlabError(f"`init_from` {path}: its {source.model.get('name')} weights do not fit this "
                            f"network ({'; '.join(wrong[:3])}{'...' if len(wrong) > 3 else ''}); start from a run "
                            "of the same architecture and number of classes")
    with torch.no_grad():
        for key, value in model.state_dict().items():
            value.copy_(tensors[key])  # in place: keeps the device and channels-last layout of the built model
    return {"run": str(source.path.resolve()), "weights_used": source.weights_used,
            "sha256": runs.file_sha256(source.weights), "model": source.model.get("name")}


def _follow(loop: _Loop, progress: _Progress, hooks: Callback, *, run_dir: Path) -> TrainResult:
    """A rank other than 0: the same epochs (its share of each batch), writing nothing; rank 0 validates, saves
    and decides when to stop. Its figures come from rank 0 at the end (:func:`_run`)."""
    assert loop.ddp is not None
    for epoch in range(len(progress.history) + 1, loop.config.epochs + 1):
        train_loss, _accuracy = _train_epoch(loop, hooks)  # all-reduced: every rank sees the same loss
        if not math.isfinite(train_loss):
            raise MnistlabError(f"training diverged in epoch {epoch} (the loss became {train_loss}); "
                                f"lower `lr` (it was {loop.config.lr:g}); rank 0 keeps the run's record")
        if loop.schedule is not None:  # rank 0's schedule after the epoch (a plateau's cut, its counters)
            loop.schedule.load_state_dict(distributed.share(loop.ddp, None))
        if distributed.agree(loop.ddp, False):
            break
    return TrainResult(run_dir=run_dir, config=loop.config, history=(), test=EvalResult(math.nan, math.nan, 0),
                       train_seconds=0.0, model=loop.model)


def _where(loop: _Loop) -> dict[str, Any]:
    """Device and precision a run used, for the records of a run that stopped early."""
    return {"device": str(loop.device), "precision": loop.precision, "data_sha256": loop.split_digests}


def _one_epoch(loop: _Loop, epoch: int, progress: _Progress, hooks: Callback, *, run_dir: Path,
               env: dict[str, Any]) -> EpochRecord:
    """Train and validate epoch ``epoch``; a diverged loss stops the run with a clear error."""
    config = loop.config
    hooks.on_epoch_start(epoch=epoch, epochs=config.epochs, steps=loop.steps)
    epoch_start = time.perf_counter()
    train_loss, train_acc = _train_epoch(loop, hooks)
    epoch_seconds = time.perf_counter() - epoch_start
    progress.train_seconds += epoch_seconds
    history = progress.history
    if not math.isfinite(train_loss):
        _stop_early(run_dir, config, history, env, progress.train_seconds, status="diverged", where=_where(loop))
        kept = f"{run_dir} keeps epoch {len(history)}" if history else "nothing was kept"
        raise MnistlabError(f"training diverged in epoch {epoch} (the loss became {train_loss}); "
                            f"lower `lr` (it was {config.lr:g}); {kept}")
    val = None
    if loop.x_val is not None and loop.y_val is not None:
        val = evaluate_model(loop.model, loop.x_val, loop.y_val, batch_size=config.eval_batch_size,
                             device=loop.device, precision=loop.precision)
    return EpochRecord(epoch=epoch, loss=train_loss, accuracy=train_acc,
                       val_loss=val.loss if val else None, val_accuracy=val.accuracy if val else None,
                       seconds=round(epoch_seconds, 4), lr=float(loop.optimizer.lr))


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
        "world_size": loop.ddp.world_size if loop.ddp is not None else 1,
        "checksums": dataset.checksums, "data_sha256": loop.split_digests,
        "environment": env,
    }
    return TrainResult(run_dir=run_dir, config=config, history=tuple(history), test=test,
                       train_seconds=train_seconds, metrics=metrics, model=loop.model)
