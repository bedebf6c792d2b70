"""The Python API: ``mnistlab.train(...) -> Run`` and ``mnistlab.load(path or id) -> Run``.

Everything the command line does goes through here, so a notebook gets the same records: the run directory,
the registry row (with the data's checksums and the environment), the evaluation files. The CLI only parses
flags, calls these functions, and renders what they return.

    >>> import mnistlab
    >>> run = mnistlab.train("cnn", epochs=3)          # doctest: +SKIP
    >>> run.history["val_accuracy"], run.metrics["test_accuracy"]
    >>> run.evaluate().accuracy
    >>> run.predict(["my-digit.png"])[0].label
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from mnistlab.callbacks import Callback
from mnistlab.config import TrainConfig
from mnistlab.errors import MnistlabError, TrainingInterrupted
from mnistlab.results import EpochRecord, EvalResult

if TYPE_CHECKING:  # torch and the heavier modules load only when a Run needs them
    from torch import nn

    from mnistlab.analysis import Evaluation
    from mnistlab.calibration import CalibrationRecord
    from mnistlab.corruptions import RobustnessReport
    from mnistlab.data import Dataset
    from mnistlab.export import ExportFormat, ExportResult, Quantize
    from mnistlab.models import ModelSummary
    from mnistlab.predict import AnyPredictor, Prediction, Predictor
    from mnistlab.registry import Registry, RunRecord
    from mnistlab.runs import WeightsChoice

# ``registry=None``: the default registry ($MNISTLAB_HOME or the user's data folder); a path: that file;
# ``False``: do not record.
RegistryChoice = str | os.PathLike[str] | Literal[False] | None
Progress = Literal["auto", "bar", "lines", "notebook", "none"] | bool


def _open_registry(registry: RegistryChoice, *, create: bool = True) -> Registry | None:
    if registry is False:
        return None
    from mnistlab.registry import Registry

    return Registry.open(registry, create=create)


def record_runs(run_dirs: Sequence[str | os.PathLike[str]], *,
                source: Literal["train", "evaluate", "reproduce", "ensemble"],
                registry: RegistryChoice = None) -> list[RunRecord]:
    """Record finished (or interrupted) runs in the registry; if that fails, the error says they are safe."""
    opened = None
    try:
        opened = _open_registry(registry)
        if opened is None:
            return []
        return [opened.record_run(run_dir, source=source) for run_dir in run_dirs]
    except MnistlabError as exc:
        where = ", ".join(str(run_dir) for run_dir in run_dirs)
        raise MnistlabError(f"{where} saved, but not recorded in the registry: {exc} "
                            "(evaluating it records it later: `mnistlab evaluate RUN`, or Run.evaluate())") from None
    finally:
        if opened is not None:
            opened.close()


def check_registry(registry: RegistryChoice) -> None:
    """Open (creating if needed) the registry before long work, so a bad one fails in milliseconds."""
    opened = _open_registry(registry)
    if opened is not None:
        opened.close()


def progress_callbacks(progress: Progress, *, label: str = "") -> list[Callback]:
    """The progress display for ``progress``: a live bar on a terminal, a live line in Jupyter, plain lines
    elsewhere, or nothing (``False``/``"none"``)."""
    if progress is False or progress == "none":
        return []
    from mnistlab.progress import make_progress

    return [make_progress("auto" if progress is True else progress, label=label)]


def _resolve_model(model: str | Callable[..., nn.Module]) -> str:
    """A model name; a callable builder is registered under its ``__name__`` first."""
    if isinstance(model, str):
        return model
    if callable(model):
        from mnistlab.models import BUILDERS, register_model

        name = getattr(model, "__name__", None)
        if not name or name == "<lambda>":
            raise MnistlabError("train(model=...): give a named function or class that builds the network, "
                                "or register it with mnistlab.models.register_model(name)")
        if BUILDERS.get(name) is not model:
            register_model(name, replace=True)(model)
        return name
    raise MnistlabError(f"train(model=...): expected a model name or a builder function, got {type(model).__name__}")


# Over 60 lines only because of its signature and docstring: one keyword argument per training setting.
def train(
    model: str | Callable[..., nn.Module] = "cnn",
    *,
    epochs: int | None = None,
    batch_size: int | None = None,
    optimizer: str | None = None,
    lr: float | None = None,
    seed: int = 0,
    val_split: float = 0.0,
    dataset: str | Dataset = "mnist",
    data_dir: str | os.PathLike[str] | None = None,
    device: str = "auto",
    threads: int | None = None,
    precision: str | None = None,
    schedule: str | None = None,
    label_smoothing: float | None = None,
    augment: str | None = None,
    weight_decay: float | None = None,
    epoch_fraction: float | None = None,
    backprop_fraction: float | None = None,
    options: dict[str, Any] | None = None,
    init_from: str | int | os.PathLike[str] | None = None,
    run_dir: str | os.PathLike[str] | None = None,
    callbacks: Sequence[Callback] = (),
    progress: Progress = "auto",
    registry: RegistryChoice = None,
    resume: str | int | os.PathLike[str] | None = None,
    early_stop: int | None = None,
    monitor: Literal["val_loss", "val_accuracy"] = "val_loss",
    tensorboard: str | os.PathLike[str] | None = None,
    val_method: Literal["mnistlab", "sklearn"] = "mnistlab",
) -> Run:
    """Train a model (a name such as ``"cnn"``, a registered model, or a builder function) and return its Run.

    Unset hyper-parameters come from the model's recipe (the tutorial's for softmax/mlp/cnn). ``dataset`` is a
    registry name or an already loaded :class:`mnistlab.data.Dataset`. The run goes to ``run_dir`` (default
    ``runs/<model>-<time>``) and into the registry (``registry=False`` skips it). ``callbacks`` hear each
    epoch and may stop the run; ``progress`` picks the display. A Ctrl-C, SIGTERM or SIGHUP keeps and records
    the epochs done (``TrainingInterrupted`` says where they are). ``resume=RUN`` continues that run instead
    (see :func:`resume`); the settings given here (other than their defaults) must then match the run's.
    ``early_stop=PATIENCE`` stops once ``monitor`` has not improved for that many epochs (Keras' EarlyStopping;
    needs ``val_split``) and keeps the best epoch's weights in ``best.safetensors``. ``options`` are a classical
    model's hyper-parameters, or a network schedule's (``{"patience": 3}`` for ``schedule="plateau"``);
    ``weight_decay`` is Adam's decoupled weight decay (AdamW). ``epoch_fraction`` (0, 1] trains each epoch on
    that share of the images; ``backprop_fraction`` (0, 1] trains each step on that share of its batch, the
    images the model is least sure of (selective backprop; ``fast`` uses 0.8 and 0.5; the history's training
    loss and accuracy are then the scoring pass's, over the whole batch before the step). ``init_from=RUN`` (a run
    directory or id) fine-tunes: the network starts from that run's weights (best where it kept them) instead
    of its seeded initialisation; the architecture must be the same, the data and recipe may differ.
    ``tensorboard=DIR``
    logs the run to ``DIR/<run folder name>`` (:class:`mnistlab.tensorboard.TensorBoardLogger`; the optional
    ``mnistlab[tensorboard]`` extra). ``val_method="sklearn"``
    (classical models) cuts the validation split with scikit-learn's ``train_test_split``, as the tutorial's SGD
    baseline did.
    """
    if resume is not None:
        return _resume_from_train(resume, dict(locals()))
    from mnistlab.data import Dataset, load_dataset_in_background
    from mnistlab.distributed import is_replica
    from mnistlab.runs import default_run_dir

    replica = is_replica()  # under torchrun, rank 0 alone records and shows progress (and names the folder)
    if replica:
        registry, progress = False, False

    name = _resolve_model(model)
    loaded = dataset if isinstance(dataset, Dataset) else None
    config = TrainConfig.for_model(
        name, epochs=epochs, batch_size=batch_size, optimizer=optimizer, lr=lr, seed=seed, val_split=val_split,
        dataset=loaded.name if loaded else str(dataset), data_dir=str(data_dir) if data_dir is not None else None,
        device=device, threads=threads, precision=precision, schedule=schedule, label_smoothing=label_smoothing,
        augment=augment, weight_decay=weight_decay, epoch_fraction=epoch_fraction,
        backprop_fraction=backprop_fraction, **({"options": options} if options else {}),
        init_from=None if init_from is None else str(resolve_run_dir(init_from, registry=registry).resolve()),
        **({"val_method": val_method} if val_method != "mnistlab" else {}),
    )
    board = tensorboard_callbacks(tensorboard)  # a missing package is one line before any work starts
    check_registry(registry)
    # Reading and verifying the files overlaps the torch import that fit() triggers.
    pending = None if loaded else load_dataset_in_background(config.dataset, data_dir=config.data_dir)
    if config.family == "network":
        import mnistlab.training  # noqa: F401  (torch's 1-2 s import, now, while the files are read and hashed)
    hooks = [*progress_callbacks(progress), *_checked_callbacks(callbacks), *board]  # refused before any folder exists
    runs_root = Path("runs")
    root_existed = runs_root.is_dir()
    if replica:  # a placeholder: fit() takes rank 0's folder, and this rank creates nothing
        path = Path(run_dir) if run_dir is not None else runs_root
    else:
        path = Path(run_dir) if run_dir is not None else default_run_dir(config.model, root=runs_root)
    try:
        data = loaded if loaded is not None else pending.result()  # type: ignore[union-attr]
        result = _fit_and_record(config, path=path, dataset=data, hooks=hooks, registry=registry,
                                 early_stop=early_stop, monitor=monitor)
    except BaseException:
        if run_dir is None and not replica:  # the default folder was reserved here: a failed run leaves nothing behind
            _remove_if_empty(path)
            if not root_existed:
                _remove_if_empty(runs_root)
        raise
    finally:
        for hook in hooks:
            getattr(hook, "close", lambda: None)()  # a live progress bar left open by Ctrl-C
    return result


def tensorboard_callbacks(log_dir: str | os.PathLike[str] | None) -> list[Callback]:
    """``[TensorBoardLogger(log_dir=...)]``, or nothing without a ``log_dir``; fails at once without tensorboard."""
    if log_dir is None:
        return []
    from mnistlab.tensorboard import TensorBoardLogger

    return [TensorBoardLogger(log_dir=log_dir)]


def _checked_callbacks(callbacks: Sequence[Callback]) -> list[Callback]:
    if isinstance(callbacks, Callback):
        callbacks = [callbacks]
    wrong = [type(c).__name__ for c in callbacks if not isinstance(c, Callback)]
    if wrong:
        raise MnistlabError(f"`callbacks` must be mnistlab.Callback objects (got {', '.join(wrong)}); wrap a "
                            "function in mnistlab.LambdaCallback(on_epoch_end=...)")
    return list(callbacks)


def _resume_from_train(run: str | int | os.PathLike[str], given: dict[str, Any]) -> Run:
    """``train(resume=RUN, ...)``: the settings passed (those not left at their defaults) must match the run's."""
    import inspect

    defaults = {name: p.default for name, p in inspect.signature(train).parameters.items()}
    asked = {key: value for key, value in given.items() if value is not None and value is not defaults.get(key)
             and value != defaults.get(key)}
    if not isinstance(asked.get("dataset", ""), str):
        raise MnistlabError("train(resume=...): the run reloads its own dataset; leave `dataset` out")
    if asked.get("early_stop") is not None or {"options", "run_dir", "init_from"} & set(asked):
        raise MnistlabError("train(resume=...): the run continues in its own folder from its own weights with its "
                            "own early stopping; leave out `run_dir`, `options`, `init_from` and `early_stop`")
    keep = ("callbacks", "progress", "registry", "resume", "epochs", "threads", "device", "data_dir", "monitor",
            "tensorboard")
    changes = {key: value for key, value in asked.items() if key not in keep}
    return _resume(run, epochs=given["epochs"], threads=given["threads"], device=asked.get("device"),
                   data_dir=given["data_dir"], changes=changes, callbacks=given["callbacks"],
                   progress=given["progress"], registry=given["registry"], tensorboard=given["tensorboard"])


def _fit_and_record(config: TrainConfig, *, path: Path, dataset: Dataset, hooks: list[Callback],
                    registry: RegistryChoice, early_stop: int | None = None, monitor: str = "val_loss") -> Run:
    """Fit into ``path`` and record the run; an interrupted run with completed epochs is recorded too."""
    from mnistlab.training import EarlyStop, fit

    rule = EarlyStop(patience=early_stop, monitor=monitor) if early_stop is not None else None  # type: ignore[arg-type]
    return _recorded(lambda recorder: fit(config, run_dir=path, dataset=dataset, callbacks=[*hooks, recorder],
                                          early_stop=rule), path=path, registry=registry, fresh=True)


def _recorded(train: Callable[[Callback], Any], *, path: Path, registry: RegistryChoice, fresh: bool = False) -> Run:
    """Run ``train`` with a callback that records the run as it starts (``running``), then record its end.

    A run stopped by a signal is recorded as interrupted; one without a completed epoch was discarded, so its
    start record is forgotten. ``fresh``: a new run (not a resume), so a registry row left at the same path by an
    earlier run whose folder was deleted belongs to that other run and is replaced, never reused.
    """
    recorder = _StartRecorder(registry, fresh=fresh)
    try:
        result = train(recorder)
    except TrainingInterrupted as stop:
        if stop.epochs_completed or recorder.resumed:  # a partial run is still a run: listed as interrupted
            record_runs([path], source="train", registry=registry)
        else:
            recorder.forget()
        raise
    except BaseException:
        if not Path(path, "config.json").is_file():  # discarded: nothing left to list
            recorder.forget()
        elif Path(path, "metrics.json").is_file():
            # Diverged or failed after an epoch: still a run, listed with its status.
            with contextlib.suppress(MnistlabError):
                record_runs([path], source="train", registry=registry)
        raise
    records = record_runs([result.run_dir], source="train", registry=registry)
    # The live training module is not handed out: it may sit on a GPU and in training mode. Run.model loads the
    # saved weights (eval mode, CPU), exactly what load(run) gives.
    return Run(result.run_dir, run_id=records[0].id if records else None)


class _StartRecorder(Callback):
    """Records a network run in the registry the moment it starts (state ``running``, pid, host)."""

    def __init__(self, registry: RegistryChoice, *, fresh: bool = False) -> None:
        self.registry = registry
        self.fresh = fresh
        self.path: Path | None = None
        self.resumed = False

    def on_train_start(self, *, config: TrainConfig, run_dir: Path, steps_per_epoch: int, samples: int,
                       device: str = "cpu", precision: str = "fp32") -> None:
        if config.family != "network":
            return
        from mnistlab.runs import HISTORY_JSON, read_json

        self.path = Path(run_dir)
        history = read_json(self.path / HISTORY_JSON) if (self.path / HISTORY_JSON).is_file() else []
        self.resumed = bool(history)
        opened = _open_registry(self.registry)
        if opened is not None:
            with opened:
                opened.record_start(run_dir, config=config.to_dict(), model=config.model, dataset=config.dataset,
                                    history=history, fresh=self.fresh)

    def forget(self) -> None:
        """Drop the start record of a run that left nothing behind."""
        opened = _open_registry(self.registry) if self.path is not None else None
        if opened is not None:
            with opened, contextlib.suppress(MnistlabError):
                opened.remove([str(self.path.resolve())])  # type: ignore[union-attr]


def resume(
    run: str | int | os.PathLike[str],
    *,
    epochs: int | None = None,
    threads: int | None = None,
    device: str | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    changes: dict[str, Any] | None = None,
    callbacks: Sequence[Callback] = (),
    progress: Progress = "auto",
    registry: RegistryChoice = None,
    tensorboard: str | os.PathLike[str] | None = None,
) -> Run:
    """Continue a stopped, interrupted, crashed or finished network run (a directory or a registry id) from its
    last checkpoint: to its configured epochs, or to ``epochs``. On the CPU the result is bit-identical to the
    run left alone. ``threads`` and ``device`` may change (a device change gives up bit-exactness); any
    setting in ``changes`` that differs from the run's is refused with one line naming it. ``tensorboard=DIR``
    continues the run's TensorBoard events there (from the next epoch; missing checkpointed epochs filled in).
    """
    from mnistlab.distributed import is_replica
    from mnistlab.training import resume as resume_fit

    path = _resume_dir(run, registry=registry)
    if is_replica():  # rank 0 alone records and shows progress
        registry, progress = False, False
    asked = {**(changes or {}), "epochs": epochs, "threads": threads, "device": device,
             "data_dir": None if data_dir is None else str(data_dir)}
    check_registry(registry)
    board = tensorboard_callbacks(tensorboard)
    hooks = [*progress_callbacks(progress), *callbacks, *board]
    try:
        return _recorded(lambda recorder: resume_fit(path, changes=asked, callbacks=[*hooks, recorder]),
                         path=path, registry=registry)
    finally:
        for hook in hooks:
            getattr(hook, "close", lambda: None)()


_resume = resume  # train() has a parameter of that name


def _resume_dir(run: str | int | os.PathLike[str], *, registry: RegistryChoice) -> Path:
    """The folder of the run to resume: a directory (even one without a completed epoch) or a registry id."""
    text = str(run)
    if Path(text).is_dir() or not (isinstance(run, int) or text.isdigit()):
        return Path(text)
    opened = _open_registry(registry if registry is not False else None, create=False)
    assert opened is not None
    with opened:
        return Path(opened.get(int(text)).path)


def _remove_if_empty(path: Path) -> None:
    with contextlib.suppress(OSError):  # not empty, or already gone
        path.rmdir()


def load(run: str | int | os.PathLike[str], *, registry: RegistryChoice = None, weights: WeightsChoice = "auto"
         ) -> Run:
    """A saved run, by its registry id (``7`` or ``"7"``) or by its directory (``./7`` for a folder named 7).

    The same rule as ``mnistlab runs show``: digits are always an id, so ``evaluate 3`` and ``runs rm 3``
    mean the same run. ``weights``: which weights its model, evaluations and predictions use: ``best`` (the
    best epoch's, kept by runs trained with ``early_stop``), ``last`` (the last completed epoch's), or ``auto``
    (best where the run kept them, else last).
    """
    found = _load(run, registry=registry)
    if weights != "auto":
        found = Run(found.path, run_id=found.id, weights=weights)
        found.files  # noqa: B018  # read now: a bad choice (best of a run without them) fails here, in one line
    return found


def _load(run: str | int | os.PathLike[str], *, registry: RegistryChoice = None) -> Run:
    from mnistlab.registry import is_run_id
    from mnistlab.runs import check_run_dir

    if isinstance(run, bool) or not isinstance(run, str | int | os.PathLike):
        raise MnistlabError(f"load(run=...): give a run directory or a registry id, not {type(run).__name__}")
    if is_run_id(run):
        if registry is False:
            raise MnistlabError(f"run id {run}: ids live in the registry; pass its directory when registry=False")
        opened = _open_registry(registry, create=False)
        assert opened is not None
        with opened:
            record = opened.get(int(str(run).strip()))
        if not record.exists:
            raise MnistlabError(f"run {record.id}: its directory {record.path} is gone (the registry still lists "
                                "it; `mnistlab runs rm` forgets it)")
        return Run(check_run_dir(record.path), run_id=record.id)
    return Run(check_run_dir(Path(str(run))))


def ensemble(runs: Sequence[str | int | os.PathLike[str]], *, out: str | os.PathLike[str] | None = None,
             weights: WeightsChoice = "auto", device: str = "auto", registry: RegistryChoice = None) -> Run:
    """Average several network runs (directories or registry ids) into one run-like directory, and return it.

    The directory (``out``, default ``runs/ensemble-<time>``) holds a copy of every member's ``weights`` (best
    where a member kept them, with ``auto``), so it evaluates, predicts, serves and exports like a single run
    and keeps working when a member is deleted; its score is the mean of the members' softmax probabilities
    (:mod:`mnistlab.ensembles`). Members must share input, classes and dataset. Recorded in the registry.
    """
    from mnistlab.ensembles import make_ensemble

    if isinstance(runs, str | int | os.PathLike):
        raise MnistlabError("ensemble(runs=...): give a list of two or more runs (directories or ids)")
    check_registry(registry)
    found = [_load(run, registry=registry) for run in runs]
    path = make_ensemble([run.path for run in found], out=out, weights=weights, device=device,
                         run_ids=[run.id for run in found])
    records = record_runs([path], source="ensemble", registry=registry)
    return Run(path, run_id=records[0].id if records else None)


def resolve_run_dir(run: str | int | os.PathLike[str], *, registry: RegistryChoice = None) -> Path:
    """The directory of a run given as a path or a registry id (what every command that takes a run accepts)."""
    return _load(run, registry=registry).path


class Run:
    """A trained run: its files, its model, its history and figures; evaluate and predict with it.

    Cheap to create: the JSON files are read on first use, the weights when ``model`` or ``predict`` needs
    them (torch is imported then).
    """

    def __init__(self, path: str | os.PathLike[str], *, run_id: int | None = None, model: Any = None,
                 weights: WeightsChoice = "auto") -> None:
        self.path = Path(path)
        self.id = run_id
        self.weights = weights
        self._model = model
        self._predictors: dict[str, Predictor] = {}
        self._onnx: AnyPredictor | None = None  # Run.predict(backend="onnx")

    def __repr__(self) -> str:
        accuracy = self.metrics.get("test_accuracy")
        figure = f", test_accuracy={accuracy:.4f}" if isinstance(accuracy, float) else ""
        return f"Run({str(self.path)!r}, model={self.name!r}, status={self.status!r}{figure})"

    @functools.cached_property
    def files(self) -> Any:
        """The run's JSON files, read and checked (:class:`mnistlab.runs.RunFiles`)."""
        from mnistlab.runs import read_run

        return read_run(self.path, weights=self.weights)

    @property
    def weights_used(self) -> str:
        """Which weights :attr:`model`, :meth:`evaluate` and :meth:`predict` use: ``best`` or ``last``."""
        return str(self.files.weights_used)

    @property
    def name(self) -> str:
        """The model's name (``cnn``, ``sgd``, a registered model...)."""
        return str(self.files.model["name"])

    @property
    def config(self) -> TrainConfig:
        """The settings it was trained with."""
        if self.is_ensemble:
            raise MnistlabError(f"{self.path}: an ensemble was not trained, so it has no training settings; "
                                "Run.members are the runs it averages")
        return TrainConfig.from_dict(self.files.config)

    @property
    def is_ensemble(self) -> bool:
        """True for a directory made by :func:`ensemble` (several networks averaged as one)."""
        return self.files.model.get("name") == "ensemble"

    @property
    def members(self) -> tuple[dict[str, Any], ...]:
        """An ensemble's members as recorded (path, run id, which weights and their SHA-256, model record);
        empty for a single run."""
        return tuple(dict(member) for member in self.files.model.get("members") or ())

    @property
    def metrics(self) -> dict[str, Any]:
        """metrics.json: status, test loss/accuracy, timings, device, precision (empty if it never finished)."""
        return dict(self.files.metrics or {})

    @property
    def status(self) -> str:
        """``completed``, ``stopped`` (by a callback), ``interrupted``, ``diverged``, ``running``, ``crashed``
        (its process is gone without finishing), or ``unknown``."""
        from mnistlab.runs import run_status

        return run_status(self.path, self.metrics)

    @property
    def epochs(self) -> tuple[EpochRecord, ...]:
        """One record per completed epoch."""
        fields = EpochRecord.__dataclass_fields__
        rows: list[dict[str, Any]] = [{key: value for key, value in row.items() if key in fields}
                                      for row in self.files.history]
        for row in rows:
            if row.get("loss") is None:  # a classical model without a loss
                row["loss"] = float("nan")
        return tuple(EpochRecord(**row) for row in rows)

    @property
    def history(self) -> dict[str, list[Any]]:
        """Per-epoch figures by name, as Keras' ``History.history``: loss, accuracy, and val_loss/val_accuracy
        when the run held out a validation split; ``lr``, the learning rate at each epoch's end, for networks."""
        keys = ("loss", "accuracy", "val_loss", "val_accuracy", "lr")
        history = {key: [row.get(key) for row in self.files.history] for key in keys}
        # As in Keras, a run without a validation split has no val_* entries (rather than lists of None).
        return {key: values for key, values in history.items()
                if not (key.startswith("val_") or key == "lr") or any(v is not None for v in values)}

    @property
    def is_network(self) -> bool:
        """False for the classical (scikit-learn) baselines."""
        return self.files.model.get("family") != "classical"

    @property
    def model(self) -> nn.Module:
        """The trained torch module (networks only) with the run's chosen weights (:attr:`weights_used`), loaded
        on first use."""
        if self._model is None:
            from mnistlab.models import load_trained_model

            self._model = load_trained_model(self.path, device="cpu", weights=self.weights_used)[0]
        return self._model

    def summary(self) -> ModelSummary:
        """The Keras-style summary of the run's network."""
        from mnistlab.models import summarize

        return summarize(self.model, name=self.name)

    def score(self, *, split: str = "test", device: str = "auto") -> EvalResult:
        """Loss and accuracy on ``split`` (test, val or train): quick, writes nothing."""
        from mnistlab.analysis import evaluate_run

        return evaluate_run(self.path, split=split, device=device, weights=self.weights)[0]

    def evaluate(self, *, split: str = "test", device: str = "auto", html: str | os.PathLike[str] | None = None,
                 data_dir: str | os.PathLike[str] | None = None, registry: RegistryChoice = None,
                 tta: bool = False) -> Evaluation:
        """The full evaluation on ``split``: per-class table, confusion matrix, mistakes, calibration.

        Writes ``RUN/eval/<split>/`` (JSON, PNGs, a self-contained report.html; ``html`` copies the page) and
        records it in the registry. ``data_dir``: the run's data files moved to this folder (their checksums
        must match the run's). ``tta``: test-time augmentation, the probabilities averaged over each image and
        its copies shifted by one pixel (:data:`mnistlab.inference.TTA_SHIFTS`), written to
        ``RUN/eval/<split>-tta/``. The result's ``to_html()`` is the report page.
        """
        from mnistlab.analysis import evaluate_report

        if html is not None:
            from mnistlab.analysis import check_html_path

            check_html_path(html)
        check_registry(registry)
        dataset = None
        if data_dir is not None:
            from mnistlab.data import load_run_dataset

            dataset = load_run_dataset(self.files.config, data_dir=data_dir, run_name=str(self.path))
        out = evaluate_report(self.path, split=split, device=device, html=html, dataset=dataset,
                              weights=self.weights, tta=tta)
        opened = _open_registry(registry)
        if opened is not None:
            with opened:
                record, recorded = opened.record_evaluation(self.path, out.evaluation.to_dict(), report=out.html)
            self.id = record.id
            return out.evaluation.with_files(out.files, html=out.html, registry_ids=(record.id, recorded.id))
        return out.evaluation.with_files(out.files, html=out.html)

    def evaluate_corruptions(self, *, seed: int = 0, device: str = "auto",
                             data_dir: str | os.PathLike[str] | None = None) -> RobustnessReport:
        """Test accuracy clean and under each MNIST-C-style corruption (:mod:`mnistlab.corruptions`), seeded.

        Writes ``RUN/eval/test/corruptions.{json,png,html}``; never feeds training or selection.
        """
        from mnistlab.corruptions import robustness_report

        dataset = None
        if data_dir is not None:
            from mnistlab.data import load_run_dataset

            dataset = load_run_dataset(self.files.config, data_dir=data_dir, run_name=str(self.path))
        return robustness_report(self.path, seed=seed, device=device, dataset=dataset, weights=self.weights)

    def calibrate(self, *, target_accuracy: float = 0.995, device: str = "auto",
                  data_dir: str | os.PathLike[str] | None = None) -> CalibrationRecord:
        """Fit temperature scaling and the "not sure" threshold on the run's validation split and write
        ``RUN/calibration.json`` (:func:`mnistlab.calibration.calibrate_run`); later predictions use them.
        A run trained without ``val_split`` is refused: nothing else is held out honestly."""
        from mnistlab.analysis import calibrate_run

        dataset = None
        if data_dir is not None:
            from mnistlab.data import load_run_dataset

            dataset = load_run_dataset(self.files.config, data_dir=data_dir, run_name=str(self.path))
        record = calibrate_run(self.path, weights=self.weights, device=device, target_accuracy=target_accuracy,
                               dataset=dataset)
        self._predictors.clear()  # loaded before: they would answer uncalibrated
        return record

    def saliency(self, images: Any, *, invert: str = "auto", device: str = "cpu") -> Any:
        """float64 (N, 28, 28) input-gradient saliency maps in [0, 1] (which pixels drove each predicted class),
        for ``images`` as :meth:`predict` takes them (torch only: onnxruntime gives no gradients)."""
        import numpy as np

        prepared = self._prepared(images, invert=invert)
        if not prepared:
            return np.zeros((0, 28, 28), np.float64)
        return self.predictor(device=device).saliency(np.stack(prepared))

    def predictor(self, *, device: str = "cpu") -> Predictor:
        """The loaded model as a :class:`mnistlab.predict.Predictor` (kept for later calls)."""
        if device not in self._predictors:
            from mnistlab.predict import Predictor

            self._predictors[device] = Predictor(self.path, device=device, weights=self.weights_used)
        return self._predictors[device]

    def _onnx_predictor(self) -> AnyPredictor:
        """The run's ONNX export (made here on first use, registered custom models included) in onnxruntime."""
        if self._onnx is None:
            from mnistlab.predict import open_predictor

            self._onnx = open_predictor(self.path, backend="onnx", weights=self.weights_used)
        return self._onnx

    def export(self, out: str | os.PathLike[str] | None = None, *, format: ExportFormat = "onnx",
               opset: int = 17, quantize: Quantize = "none", card: bool = True) -> ExportResult:
        """Export to ONNX (default ``RUN/export/model.onnx``) with its contract as metadata and MODEL_CARD.md
        beside it; see :func:`mnistlab.export.export_run`. A network already loaded here (a registered custom
        model, say) is exported as it is."""
        from mnistlab.export import export_run

        model = self._model if self.is_network else None
        return export_run(self.path, out=out, format=format, opset=opset, quantize=quantize, card=card,
                          run_id=self.id, model=model, weights=self.weights_used)

    def predict(self, images: Any, *, invert: str = "auto", device: str = "cpu",
                backend: Literal["torch", "onnx"] = "torch", saliency: bool = False) -> list[Prediction]:
        """Read digits: ``images`` is one image or a list of them: file paths, PIL images, image bytes, or
        arrays (a 28x28 uint8 array is used as it is; an (N, 28, 28) array is N images).

        Photos and drawings are prepared as MNIST was made (:func:`mnistlab.imaging.prepare_image`).
        ``backend="onnx"`` scores with onnxruntime on the run's export (``RUN/export/model.onnx``, written on
        first use). A calibrated run (:meth:`calibrate`) says ``not_sure`` below its threshold;
        ``saliency=True`` adds each image's saliency map (torch only).
        """
        import numpy as np

        prepared = self._prepared(images, invert=invert)
        if not prepared:
            return []
        if backend not in ("torch", "onnx"):
            raise MnistlabError(f"predict(backend={backend!r}): choose torch or onnx")
        if backend == "onnx":
            if device not in ("cpu", "auto"):
                raise MnistlabError(f"predict(device={device!r}): the onnx backend runs on the CPU")
            return self._onnx_predictor().predict(np.stack(prepared), saliency=saliency)
        return self.predictor(device=device).predict(np.stack(prepared), saliency=saliency)

    def _prepared(self, images: Any, *, invert: str) -> list[Any]:
        """``images`` (see :meth:`predict`) prepared as MNIST was made: a list of uint8 28x28 arrays."""
        import numpy as np

        from mnistlab.imaging import prepare_image

        items: Iterable[Any]
        if type(images).__module__.startswith("torch"):  # a torch tensor: its numpy view (uint8 expected)
            images = images.detach().cpu().numpy()
        if images is None or isinstance(images, int | float | bool):
            raise MnistlabError(f"predict(images=...): give image paths, PIL images, bytes or uint8 arrays, "
                                f"not {type(images).__name__}")
        if isinstance(images, np.ndarray) and images.ndim == 3:
            items = list(images)
        elif isinstance(images, list | tuple) and not _is_pixel_rows(images):
            items = images
        else:
            items = [images]
        return [prepare_image(item, invert=invert).pixels for item in items]  # type: ignore[arg-type]


def _is_pixel_rows(value: Sequence[Any]) -> bool:
    """True for a nested list that is one 28x28 image rather than a list of images."""
    return len(value) == 28 and all(isinstance(row, list | tuple) and len(row) == 28 and
                                    all(isinstance(v, int | float) for v in row) for row in value)

