"""Sweeps and multi-seed studies on Ray: every (configuration, seed) pair is one normal training run.

``mnistlab sweep MODEL --seeds 0-9 --grid lr=1e-3,3e-3 batch-size=128,256`` plans the product of the grid and
the seeds, checks every trial's :class:`~mnistlab.config.TrainConfig` before anything starts, and runs each trial
as a Ray task that calls :func:`mnistlab.api.train` into its own run directory under the sweep's folder (so each
trial has its own registry row). The folder also holds ``sweep.json`` (the plan, each trial's state and result,
rewritten atomically whenever something changes) and, at the end, a summary page and a comparison of runs.

Why Ray and not a home-made scheduler: it places trials by declared resources (``num_cpus``, fractional
``num_gpus``), so trials never oversubscribe cores, runs the same code embedded on one machine or on a cluster,
and retries a task whose worker process died. A retried trial finds its run directory and *resumes* it from the
last per-epoch checkpoint (:func:`mnistlab.api.resume`, bit-exact on the CPU) instead of starting over.

Requirements of a cluster (``address``): every node imports the same mnistlab, and the sweep folder (and the
registry file) are at the same path on every node (one machine, or a shared file system).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import itertools
import math
import os
import platform
import re
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mnistlab.config import TrainConfig, model_info
from mnistlab.errors import MnistlabError, TrainingInterrupted

SWEEP_JSON = "sweep.json"
ATTEMPTS_DIR = "attempts"
REPORT_HTML = "report.html"
INSTALL_HINT = "pip install 'mnistlab[scale]'"
# Bounds: a sweep is a plan a person reads; past these it is a typo (seeds 0-99999) rather than a study.
MAX_TRIALS = 1000
MAX_SEEDS = 1000
MAX_VALUES_PER_KEY = 100
# How often the driver looks at the trials' attempt files while it waits for results (seconds).
POLL_S = 0.5

TrialState = Literal["pending", "running", "completed", "failed", "interrupted", "cancelled"]
SweepState = Literal["running", "completed", "interrupted"]

# Grid keys: train's own flag names -> (api.train keyword, type). Seeds come from `seeds`, threads from
# `cpus_per_trial`, so neither is a grid key.
GRID_KEYS: dict[str, tuple[str, type]] = {
    "epochs": ("epochs", int),
    "batch-size": ("batch_size", int),
    "optimizer": ("optimizer", str),
    "lr": ("lr", float),
    "val-split": ("val_split", float),
    "precision": ("precision", str),
    "schedule": ("schedule", str),
    "label-smoothing": ("label_smoothing", float),
    "augment": ("augment", str),
    "weight-decay": ("weight_decay", float),
    "epoch-fraction": ("epoch_fraction", float),
    "backprop-fraction": ("backprop_fraction", float),
}


def require_ray() -> Any:
    """The ``ray`` module, or one line saying how to install it."""
    try:
        import ray
    except ImportError:
        raise MnistlabError(f"sweeps run on Ray, which is not installed; install it with {INSTALL_HINT}") from None
    return ray


# ------------------------------------------------------------------------------------------------ the plan
def parse_seeds(text: str) -> tuple[int, ...]:
    """``"0-9"`` -> 0..9; ``"0,3,7"``; ``"5"``; ranges and lists mix (``"0-2,10"``). Duplicates are refused."""
    seeds: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not match:
            raise MnistlabError(f"`seeds` {text!r}: use whole numbers, ranges or both, e.g. 0-9 or 0,3,7")
        first, last = int(match.group(1)), int(match.group(2) or match.group(1))
        if last < first:
            raise MnistlabError(f"`seeds` {part!r}: the range ends before it starts; write {last}-{first}")
        if last - first + 1 + len(seeds) > MAX_SEEDS:
            raise MnistlabError(f"`seeds` {text!r}: more than {MAX_SEEDS} seeds; a study needs far fewer")
        seeds.extend(range(first, last + 1))
    if len(set(seeds)) != len(seeds):
        raise MnistlabError(f"`seeds` {text!r}: a seed is listed twice; list each once")
    return tuple(seeds)


def _typed(key: str, raw: str) -> Any:
    kind = GRID_KEYS[key][1]
    try:
        return kind(raw)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise MnistlabError(f"`grid` {key}={raw!r}: {key} must be {what}") from None


def parse_grid(items: Sequence[str]) -> dict[str, tuple[Any, ...]]:
    """``["lr=1e-3,3e-3", "batch-size=128,256"]`` -> ``{"lr": (0.001, 0.003), "batch-size": (128, 256)}``."""
    grid: dict[str, tuple[Any, ...]] = {}
    for item in items:
        key, sep, values = str(item).partition("=")
        key = key.strip().replace("_", "-")
        if not sep or key not in GRID_KEYS:
            raise MnistlabError(f"`grid` {item!r}: use KEY=V1,V2,... with KEY one of {', '.join(GRID_KEYS)}")
        if key in grid:
            raise MnistlabError(f"`grid` {key}: given twice; list all its values in one KEY=V1,V2")
        raw = [value.strip() for value in values.split(",")]
        if not all(raw):
            raise MnistlabError(f"`grid` {item!r}: an empty value; separate values with single commas")
        if len(raw) > MAX_VALUES_PER_KEY:
            raise MnistlabError(f"`grid` {key}: more than {MAX_VALUES_PER_KEY} values")
        typed = tuple(_typed(key, value) for value in raw)
        if len(set(typed)) != len(typed):
            raise MnistlabError(f"`grid` {key}: a value is listed twice; list each once")
        grid[key] = typed
    return grid


@dataclass(frozen=True)
class Resources:
    """What one trial asks Ray for: CPUs (its torch threads too), GPUs (fractional allowed), retries."""

    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_retries: int = 3

    def __post_init__(self) -> None:
        if not (math.isfinite(self.cpus_per_trial) and 0 < self.cpus_per_trial <= 4 * (os.cpu_count() or 1)):
            raise MnistlabError(f"`cpus_per_trial` must be > 0 and at most 4x this machine's {os.cpu_count()} "
                                f"CPUs, got {self.cpus_per_trial}")
        if not (math.isfinite(self.gpus_per_trial) and self.gpus_per_trial >= 0):
            raise MnistlabError(f"`gpus_per_trial` must be >= 0, got {self.gpus_per_trial}")
        if self.gpus_per_trial > 1 and self.gpus_per_trial != int(self.gpus_per_trial):
            raise MnistlabError(f"`gpus_per_trial` {self.gpus_per_trial}: above 1 it must be a whole number")
        if isinstance(self.max_retries, bool) or not isinstance(self.max_retries, int) or not \
                0 <= self.max_retries <= 20:
            raise MnistlabError(f"`retries` must be a whole number in 0..20, got {self.max_retries}")

    @property
    def threads(self) -> int:
        """Torch threads of one trial: its CPUs (at least one), so trials side by side never oversubscribe."""
        return max(1, int(self.cpus_per_trial))


@dataclass(frozen=True)
class Trial:
    """One (configuration, seed) pair: the train() keywords it runs with and where its run goes."""

    index: int
    label: str                 # the configuration, e.g. "lr=0.003 batch-size=128" ("" for a seeds-only study)
    values: dict[str, Any]     # the grid's values of this configuration, by grid key
    seed: int
    run_dir: str


@dataclass(frozen=True)
class SweepPlan:
    """Everything a sweep runs: the model, fixed settings, the grid, the seeds, and the trials they make."""

    model: str
    grid: dict[str, tuple[Any, ...]]
    seeds: tuple[int, ...]
    settings: dict[str, Any]   # api.train keywords every trial shares (epochs, dataset, data_dir, options...)
    resources: Resources
    out_dir: str
    registry: str | None
    trials: tuple[Trial, ...] = field(default=())


def _label(values: Mapping[str, Any]) -> str:
    return " ".join(f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}"
                    for key, value in values.items())


def _folder_name(index: int, values: Mapping[str, Any], seed: int) -> str:
    parts = [f"{index:03d}", *(f"{key}{value:g}" if isinstance(value, float) else f"{key}{value}"
                               for key, value in values.items()), f"seed{seed}"]
    return re.sub(r"[^A-Za-z0-9._+-]", "_", "-".join(parts))


def plan_sweep(model: str, *, seeds: Sequence[int], grid: Mapping[str, Sequence[Any]],
               settings: Mapping[str, Any], resources: Resources, out_dir: str | os.PathLike[str],
               registry: str | None = None) -> SweepPlan:
    """The trials of a sweep, each one's TrainConfig built and checked now, so a bad key or value is one line
    before Ray starts. ``settings`` are api.train keywords shared by all trials; ``grid`` keys are train's
    flag names."""
    info = model_info(model)
    if not seeds:
        raise MnistlabError("`seeds`: give at least one seed, e.g. 0-4")
    for key in grid:
        if key not in GRID_KEYS:
            raise MnistlabError(f"`grid` {key}: not a grid key; use one of {', '.join(GRID_KEYS)}")
        shared = GRID_KEYS[key][0]
        if settings.get(shared) is not None:
            raise MnistlabError(f"`{shared}` is given both as a setting and in `grid` ({key}); keep one")
    combos = [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())] or [{}]
    if len(combos) * len(seeds) > MAX_TRIALS:
        raise MnistlabError(f"the sweep would run {len(combos) * len(seeds)} trials (more than {MAX_TRIALS}); "
                            "narrow `grid` or `seeds`")
    out = Path(out_dir).absolute()  # absolute: every Ray worker, on every node, writes to the same place
    trials: list[Trial] = []
    for combo, seed in itertools.product(combos, seeds):
        keywords = {**settings, **{GRID_KEYS[key][0]: value for key, value in combo.items()}}
        try:
            _config(model, keywords, seed=seed, threads=resources.threads)
        except MnistlabError as exc:
            where = f" (grid {_label(combo)})" if combo else ""
            raise MnistlabError(f"{exc}{where}") from None
        index = len(trials)
        trials.append(Trial(index=index, label=_label(combo), values=combo, seed=seed,
                            run_dir=str(out / _folder_name(index, combo, seed))))
    if info.family == "classical" and resources.gpus_per_trial:
        raise MnistlabError(f"{model} is a classical model fitted on the CPU; leave `gpus_per_trial` out")
    return SweepPlan(model=model, grid={key: tuple(values) for key, values in grid.items()}, seeds=tuple(seeds),
                     settings=dict(settings), resources=resources, out_dir=str(out), registry=registry,
                     trials=tuple(trials))


_CONFIG_KEYS = ("epochs", "batch_size", "optimizer", "lr", "val_split", "device", "precision", "schedule",
                "label_smoothing", "augment", "weight_decay", "epoch_fraction", "backprop_fraction", "options",
                "dataset", "data_dir", "val_method")


def _config(model: str, keywords: Mapping[str, Any], *, seed: int, threads: int) -> TrainConfig:
    """The TrainConfig api.train will build for these keywords (the same validation, no torch)."""
    given = {key: keywords.get(key) for key in _CONFIG_KEYS if keywords.get(key) is not None}
    if "data_dir" in given:
        given["data_dir"] = str(given["data_dir"])
    if info_family(model) == "network":
        given["threads"] = threads
    return TrainConfig.for_model(model, seed=seed, **given)


def info_family(model: str) -> str:
    """``network`` or ``classical`` for a model name."""
    return model_info(model).family


# ------------------------------------------------------------------------------------------------ one trial
def _attempts_file(trial: Mapping[str, Any]) -> Path:
    return Path(trial["out_dir"]) / ATTEMPTS_DIR / f"{trial['index']:03d}.json"


def read_attempts(out_dir: str | os.PathLike[str], index: int) -> list[dict[str, Any]]:
    """The attempts a trial recorded (one per start of its Ray task: a retry adds one)."""
    from mnistlab.runs import read_json

    path = Path(out_dir) / ATTEMPTS_DIR / f"{index:03d}.json"
    if not path.is_file():
        return []
    try:
        data = read_json(path)
    except MnistlabError:  # being replaced right now cannot happen (atomic), but a foreign file can
        return []
    return data if isinstance(data, list) else []


def _epochs_done(run_dir: Path) -> int:
    from mnistlab.runs import HISTORY_JSON, read_json

    with contextlib.suppress(MnistlabError):
        history = read_json(run_dir / HISTORY_JSON) if (run_dir / HISTORY_JSON).is_file() else []
        return len(history) if isinstance(history, list) else 0
    return 0


def run_trial(trial: dict[str, Any]) -> dict[str, Any]:
    """Run one trial in this (Ray worker) process and return its outcome as a JSON-ready dict.

    A first attempt trains into the trial's run directory; a retry (the worker of an earlier attempt died)
    finds the directory and resumes it from its last checkpoint. A user error (:class:`MnistlabError`) is the
    trial's result, not an exception, so it fails alone and is never retried.
    """
    from mnistlab import api
    from mnistlab.runs import CONFIG_FILE, METRICS_FILE, read_json, write_json_atomic

    run_dir = Path(trial["run_dir"])
    attempts = read_attempts(trial["out_dir"], trial["index"])
    resumable = trial["family"] == "network" and (run_dir / CONFIG_FILE).is_file()
    attempt = {"attempt": len(attempts) + 1, "pid": os.getpid(), "host": platform.node(),
               "node": _node_id(), "started": _now(), "resumed_from_epoch": _epochs_done(run_dir) if resumable
               else None}
    attempts.append(attempt)
    _attempts_file(trial).parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(_attempts_file(trial), attempts)
    outcome: dict[str, Any] = {"attempts": len(attempts), "pid": os.getpid(), "node": attempt["node"]}
    try:
        if resumable:
            status = None
            if (run_dir / METRICS_FILE).is_file():
                status = read_json(run_dir / METRICS_FILE).get("status")
            # Killed after its last write but before Ray heard back: the run is done, only its row is re-read.
            run = api.load(run_dir, registry=trial["registry"] or None) if status == "completed" else api.resume(
                run_dir, threads=trial["threads"], progress=False, registry=trial["registry"])
        else:
            keywords = dict(trial["settings"])
            if trial["family"] == "network":
                keywords["threads"] = trial["threads"]
            run = api.train(trial["model"], seed=trial["seed"], run_dir=run_dir, progress=False,
                            registry=trial["registry"], **keywords)
    except MnistlabError as exc:
        return {**outcome, "state": "failed", "error": str(exc).splitlines()[0]}
    except TrainingInterrupted as exc:  # the sweep was cancelled: the run keeps its completed epochs
        return {**outcome, "state": "interrupted", "error": str(exc)}
    metrics = run.metrics
    record_id = run.id
    if record_id is None:
        with contextlib.suppress(MnistlabError):
            from mnistlab.registry import Registry

            with Registry.open(trial["registry"], create=False) as registry:
                record_id = registry.resolve(str(run_dir)).id
    return {**outcome, "state": "completed" if metrics.get("status") == "completed" else "failed",
            "error": None if metrics.get("status") == "completed" else f"the run ended {metrics.get('status')}",
            "test_accuracy": metrics.get("test_accuracy"), "test_loss": metrics.get("test_loss"),
            "val_accuracy": _last_val_accuracy(run),
            "train_seconds": metrics.get("train_seconds"), "epochs_completed": metrics.get("epochs_completed"),
            "run_id": record_id}


def _last_val_accuracy(run: Any) -> float | None:
    """The last epoch's validation accuracy (None without a validation split)."""
    values = run.history.get("val_accuracy") or [None]
    return None if values[-1] is None else float(values[-1])


def _node_id() -> str | None:
    try:
        import ray

        return str(ray.get_runtime_context().get_node_id()) if ray.is_initialized() else None
    except Exception:  # outside Ray (a plain call in tests or the benchmark): no node
        return None


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


# ------------------------------------------------------------------------------------------------ the table
@dataclass(frozen=True)
class ConfigRow:
    """One configuration over its seeds: mean and sample std of test accuracy, time, retries, failures."""

    label: str
    trials: int
    completed: int
    mean_accuracy: float | None
    std_accuracy: float | None    # sample standard deviation (n - 1); None below two completed seeds
    mean_train_seconds: float | None
    retried: tuple[str, ...]      # "seed 3: 2 attempts, resumed from epoch 4"
    errors: tuple[str, ...]       # "seed 5: <one line>"


def summarize(trials: Sequence[Mapping[str, Any]]) -> list[ConfigRow]:
    """Group trial records by configuration; best mean test accuracy first (configurations without a
    completed trial last)."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for trial in trials:
        groups.setdefault(trial["label"], []).append(trial)
    rows = []
    for label, members in groups.items():
        done = [t for t in members if t.get("state") == "completed" and t.get("test_accuracy") is not None]
        accuracies = [float(t["test_accuracy"]) for t in done]
        seconds = [float(t["train_seconds"]) for t in done if t.get("train_seconds") is not None]
        retried = tuple(f"seed {t['seed']}: {t['attempts']} attempts" + (
            f", resumed from epoch {t['resumed_from_epoch']}" if t.get("resumed_from_epoch") is not None else "")
            for t in members if (t.get("attempts") or 0) > 1)
        errors = tuple(f"seed {t['seed']}: {t.get('error') or t.get('state')}" for t in members
                       if t.get("state") not in ("completed",))
        rows.append(ConfigRow(
            label=label or "(recipe)", trials=len(members), completed=len(done),
            mean_accuracy=statistics.fmean(accuracies) if accuracies else None,
            std_accuracy=statistics.stdev(accuracies) if len(accuracies) > 1 else None,
            mean_train_seconds=statistics.fmean(seconds) if seconds else None, retried=retried, errors=errors))
    rows.sort(key=lambda row: (row.mean_accuracy is None, -(row.mean_accuracy or 0.0)))
    return rows


# ------------------------------------------------------------------------------------------------ the sweep
@dataclass(frozen=True)
class SweepResult:
    """A finished (or interrupted) sweep: its folder, trial records, the table, the pages written."""

    out_dir: Path
    state: SweepState
    trials: tuple[dict[str, Any], ...]
    table: tuple[ConfigRow, ...]
    wall_seconds: float
    ray_start_seconds: float
    html: Path | None
    comparison_html: Path | None
    notes: tuple[str, ...] = ()

    @property
    def failed(self) -> int:
        """How many trials did not complete."""
        return sum(1 for trial in self.trials if trial["state"] != "completed")


def prepare_sweep_dir(path: str | os.PathLike[str] | None) -> Path:
    """The sweep's folder: a new or empty ``path``, or ``runs/sweep-<time>``; a folder holding files is refused."""
    from mnistlab.runs import default_run_dir

    if path is None:
        return default_run_dir("sweep").absolute()
    out = Path(path)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise MnistlabError(f"`run_dir` {out}: already exists and is not an empty folder; choose a new folder "
                            "(a sweep never overwrites runs)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MnistlabError(f"`run_dir` {out}: cannot create it ({exc.strerror}); choose a writable folder") from None
    return out.absolute()


class _Book:
    """The sweep's record, rewritten atomically to sweep.json on every change (a reader, or a Ctrl-C, only
    ever sees a whole version)."""

    def __init__(self, plan: SweepPlan, *, engine: dict[str, Any]) -> None:
        self.plan = plan
        self.path = Path(plan.out_dir) / SWEEP_JSON
        self.started = time.perf_counter()
        self.doc: dict[str, Any] = {
            "model": plan.model, "state": "running", "started": _now(), "finished": None,
            "grid": {key: list(values) for key, values in plan.grid.items()}, "seeds": list(plan.seeds),
            "settings": plan.settings, "resources": dataclasses.asdict(plan.resources), "engine": engine,
            "trials": [{"index": t.index, "label": t.label, "values": t.values, "seed": t.seed, "run_dir": t.run_dir,
                        "state": "pending", "attempts": 0, "resumed_from_epoch": None, "error": None,
                        "test_accuracy": None, "train_seconds": None, "run_id": None} for t in plan.trials],
            "table": None,
        }

    @property
    def trials(self) -> list[dict[str, Any]]:
        return self.doc["trials"]

    def save(self) -> None:
        from mnistlab.runs import write_json_atomic

        self.doc["wall_seconds"] = round(time.perf_counter() - self.started, 3)
        write_json_atomic(self.path, self.doc)

    def refresh_attempts(self) -> bool:
        """Mark trials whose task has started (their attempt files) as running; True if anything changed."""
        changed = False
        for trial in self.trials:
            if trial["state"] not in ("pending", "running"):
                continue
            attempts = read_attempts(self.plan.out_dir, trial["index"])
            if len(attempts) != trial["attempts"]:
                trial.update(state="running", attempts=len(attempts), pid=attempts[-1].get("pid"),
                             node=attempts[-1].get("node"))
                resumed = [a["resumed_from_epoch"] for a in attempts[1:] if a.get("resumed_from_epoch") is not None]
                trial["resumed_from_epoch"] = resumed[-1] if resumed else None
                changed = True
        return changed

    def finish(self, index: int, outcome: Mapping[str, Any]) -> None:
        trial = self.trials[index]
        self.refresh_attempts()
        trial.update({key: value for key, value in outcome.items() if key != "node" or value})
        attempts = read_attempts(self.plan.out_dir, index)
        trial["attempts"] = max(len(attempts), int(outcome.get("attempts") or 0))
        resumed = [a["resumed_from_epoch"] for a in attempts[1:] if a.get("resumed_from_epoch") is not None]
        trial["resumed_from_epoch"] = resumed[-1] if resumed else None


def run_sweep(plan: SweepPlan, *, address: str | None = None, on_trial: Callable[[dict[str, Any]], None]
              | None = None, compare: bool = True) -> SweepResult:
    """Run every trial of ``plan`` on Ray and write the sweep's records.

    Ray is embedded (started here with this machine's CPUs, shut down at the end) unless ``address`` names a
    running cluster (``HOST:PORT`` of ``ray start --head``), or this process already called ``ray.init``.
    ``on_trial`` hears each finished trial's record. A Ctrl-C cancels the trials still running (their run
    directories keep their completed epochs), marks them in sweep.json and re-raises.
    """
    ray = require_ray()
    out = Path(plan.out_dir)
    if (out / SWEEP_JSON).exists():
        raise MnistlabError(f"`run_dir` {out}: already holds a sweep; choose a new folder (sweeps never overwrite)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MnistlabError(f"`run_dir` {out}: cannot create it ({exc.strerror}); choose a writable folder") from None
    started = time.perf_counter()
    owned = connect_ray(ray, address)
    ray_start = time.perf_counter() - started
    try:
        check_fits(ray, plan.resources)
        with _stop_signals_as_ctrl_c():
            return _drive(ray, plan, address=address, ray_start=ray_start, on_trial=on_trial, compare=compare,
                          started=started)
    finally:
        if owned:
            ray.shutdown()


class _StopSignal(KeyboardInterrupt):
    """SIGTERM or SIGHUP to the sweep's driver; ``signum`` says which (the CLI exits 128 + it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def _stop_signals_as_ctrl_c() -> Iterator[None]:
    """SIGTERM (``timeout``, a scheduler) and SIGHUP (a closed terminal) stop the sweep the way Ctrl-C does:
    trials cancelled, sweep.json marked ``interrupted``. Without this the driver died with sweep.json still
    ``running`` and its trials ``pending`` for ever (Ray's own SIGTERM handler only exits). Outside the main
    thread (no signals there) it does nothing."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    received: list[int] = []

    def stop(signum: int, _frame: object) -> None:
        received.append(signum)
        raise _StopSignal(signum)

    previous = {signum: signal.signal(signum, stop) for signum in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    except KeyboardInterrupt as exc:
        # Ray's C++ waits check for signals and turn whatever the handler raised into a plain KeyboardInterrupt;
        # the signal's number (the exit code) comes from what the handler saw.
        if received and not isinstance(exc, _StopSignal):
            raise _StopSignal(received[0]) from None
        raise
    finally:
        for signum, handler in previous.items():  # Ray's own (ray.init installs one for SIGTERM), or the default
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)


def check_fits(ray: Any, resources: Resources) -> None:
    """Refuse (one line) a trial that no live node of the cluster can hold: Ray keeps such a task pending for
    ever ("infeasible") and the sweep would wait without end. (A cluster's autoscaler could add a bigger node
    later; a sweep asks for what its nodes have now.)"""
    nodes = [node.get("Resources") or {} for node in ray.nodes() if node.get("Alive")]
    most_cpus = max((float(node.get("CPU", 0.0)) for node in nodes), default=0.0)
    most_gpus = max((float(node.get("GPU", 0.0)) for node in nodes), default=0.0)
    if resources.cpus_per_trial > most_cpus:
        raise MnistlabError(f"`cpus_per_trial` {resources.cpus_per_trial:g}: no node of the Ray cluster has that many "
                            f"CPUs (the largest has {most_cpus:g}), so no trial could ever start; use "
                            f"`cpus_per_trial` <= {most_cpus:g}")
    if resources.gpus_per_trial > most_gpus:
        raise MnistlabError(f"`gpus_per_trial` {resources.gpus_per_trial:g}: no node of the Ray cluster has that many "
                            f"GPUs (the largest has {most_gpus:g}), so no trial could ever start; use "
                            f"`gpus_per_trial` <= {most_gpus:g}" + ("" if most_gpus else " (leave it out)"))


def connect_ray(ray: Any, address: str | None) -> bool:
    """Join the cluster at ``address``, or start an embedded Ray (unless this process already joined one); True
    when this call connected (and the caller must shut Ray down)."""
    import logging

    if ray.is_initialized():
        return False
    if address is not None:
        if not re.fullmatch(r"[\w.\-]+:\d{1,5}|auto|ray://[\w.\-]+:\d{1,5}", address):
            raise MnistlabError(f"`address` {address!r}: give HOST:PORT of a running Ray head "
                                "(`ray start --head --port PORT` prints it)")
        _probe_address(address)
        try:
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise MnistlabError(f"`address` {address}: no Ray cluster answers there ({first}); start one with "
                                "`ray start --head --port PORT`, or leave `address` out for an embedded one"
                                ) from None
        return True
    # address="local": a new Ray of our own, even when this machine already runs a cluster (plain ray.init()
    # would join the one named in /tmp/ray, alive or not, and refuse num_cpus).
    ray.init(address="local", num_cpus=os.cpu_count() or 1, include_dashboard=False, logging_level=logging.WARNING,
             log_to_driver=False)
    return True


# How long the sweep waits for a TCP answer from ``address`` before calling it unreachable.
PROBE_TIMEOUT_S = 5.0


def _probe_address(address: str) -> None:
    """Refuse (one line) a HOST:PORT where nothing listens. ``ray.init`` would retry its GCS connection for
    minutes, printing Ray's multi-line C++ warnings, before failing (measured: no answer within 2 minutes)."""
    import socket

    if address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=PROBE_TIMEOUT_S):
            pass
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise MnistlabError(f"`address` {address}: nothing answers there ({reason}); start a Ray head with "
                            "`ray start --head --port PORT`, or leave `address` out for an embedded one") from None


def _trial_payload(plan: SweepPlan, trial: Trial) -> dict[str, Any]:
    return {"index": trial.index, "model": plan.model, "family": info_family(plan.model), "seed": trial.seed,
            "run_dir": trial.run_dir, "out_dir": plan.out_dir, "registry": plan.registry,
            "threads": plan.resources.threads,
            "settings": {**plan.settings, **{GRID_KEYS[k][0]: v for k, v in trial.values.items()}}}


def _drive(ray: Any, plan: SweepPlan, *, address: str | None, ray_start: float,
           on_trial: Callable[[dict[str, Any]], None] | None, compare: bool, started: float) -> SweepResult:
    engine = {"ray": getattr(ray, "__version__", "?"), "address": address or "embedded",
              "ray_start_seconds": round(ray_start, 3),
              "nodes": sum(1 for node in ray.nodes() if node.get("Alive"))}
    book = _Book(plan, engine=engine)
    book.save()
    res = plan.resources
    remote = ray.remote(run_trial).options(
        num_cpus=res.cpus_per_trial, num_gpus=res.gpus_per_trial, max_retries=res.max_retries,
        retry_exceptions=False, scheduling_strategy="SPREAD")
    pending = {remote.remote(_trial_payload(plan, trial)): trial.index for trial in plan.trials}
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=POLL_S)
            changed = book.refresh_attempts()
            for ref in ready:
                index = pending.pop(ref)
                book.finish(index, _outcome(ray, ref, retries=res.max_retries))
                changed = True
                if on_trial is not None:
                    on_trial(book.trials[index])
            if changed:
                book.save()
    except KeyboardInterrupt:
        for ref, index in pending.items():
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)
            trial = book.trials[index]
            book.refresh_attempts()
            # A trial that had not yet written its run's config.json has nothing `--resume` could continue.
            started = trial["state"] == "running" and bool(trial.get("run_dir")) and Path(
                trial["run_dir"], "config.json").is_file()
            trial["state"] = "interrupted" if started else "cancelled"
            trial["error"] = ("the sweep was interrupted; the run keeps its completed epochs "
                              f"(`mnistlab train --resume {trial['run_dir']}` continues it)"
                              if trial["state"] == "interrupted" else "the sweep was interrupted before it started")
        book.doc.update(state="interrupted", finished=_now())
        book.doc["table"] = [dataclasses.asdict(row) for row in summarize(book.trials)]
        book.save()
        raise
    table = summarize(book.trials)
    book.doc.update(state="completed", finished=_now(), table=[dataclasses.asdict(row) for row in table])
    book.save()
    notes: list[str] = []
    comparison_html = _compare(plan, book.trials, table, notes) if compare else None
    html = _write_report(plan, book.doc, table, comparison_html)
    book.doc["report"] = str(html)
    book.doc["comparison"] = str(comparison_html) if comparison_html else None
    book.save()
    return SweepResult(out_dir=Path(plan.out_dir), state="completed", trials=tuple(book.trials), table=tuple(table),
                       wall_seconds=time.perf_counter() - started, ray_start_seconds=ray_start, html=html,
                       comparison_html=comparison_html, notes=tuple(notes))


def _outcome(ray: Any, ref: Any, *, retries: int) -> dict[str, Any]:
    """A finished task's record; a task Ray gave up on (its worker died on every try) or a bug is a failed trial
    with one line, and the other trials go on."""
    try:
        return dict(ray.get(ref))
    except ray.exceptions.TaskCancelledError:
        return {"state": "cancelled", "error": "cancelled"}
    except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError,
            ray.exceptions.LocalRayletDiedError) as exc:
        return {"state": "failed", "error": f"its worker process died on all {retries + 1} attempts "
                                            f"({type(exc).__name__})"}
    except ray.exceptions.RayTaskError as exc:  # a bug in mnistlab: keep its traceback in sweep.json
        cause = exc.cause if getattr(exc, "cause", None) is not None else exc
        first = str(cause).splitlines()[0] if str(cause) else ""
        return {"state": "failed", "error": f"bug: {type(cause).__name__}: {first}", "traceback": str(exc)}
    except ray.exceptions.RayError as exc:
        # Anything else Ray reports for one task (OutOfMemoryError from its memory monitor, ObjectLostError, ...)
        # fails that trial alone; raised, it ended the whole sweep with a traceback and sweep.json left `running`.
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return {"state": "failed", "error": f"Ray gave up on it: {type(exc).__name__}: {first}"}


def _compare(plan: SweepPlan, trials: Sequence[Mapping[str, Any]], table: Sequence[ConfigRow],
             notes: list[str]) -> Path | None:
    """``runs compare`` of each configuration's best seed (or, for one configuration, its first seeds): the
    existing side-by-side page, curves and failure analysis."""
    from mnistlab.compare import compare_runs
    from mnistlab.registry import Registry

    done = [t for t in trials if t["state"] == "completed" and t.get("run_id") is not None]
    picks: list[Mapping[str, Any]] = []
    if len({t["label"] for t in done}) > 1:
        for row in table:
            members = [t for t in done if (t["label"] or "(recipe)") == row.label]
            if members:
                picks.append(max(members, key=lambda t: float(t["test_accuracy"])))
    else:
        picks = done
    picks = picks[:8]  # each column is a full test-set evaluation: a page to read, not every trial
    if len(picks) < 2:
        return None
    try:
        with Registry.open(plan.registry, create=False) as registry:
            records = [registry.get(int(t["run_id"])) for t in picks]
        comparison = compare_runs(records, out_dir=Path(plan.out_dir) / "comparison", device="cpu")
    except MnistlabError as exc:
        notes.append(f"no comparison page: {exc}")
        return None
    return comparison.html


def accuracy_cell(mean: float | None, std: float | None) -> str:
    """``98.12% ± 0.08`` (points), or ``-``."""
    if mean is None:
        return "-"
    return f"{100 * mean:.2f}%" + (f" ± {100 * std:.2f}" if std is not None else "")


def _write_report(plan: SweepPlan, doc: Mapping[str, Any], table: Sequence[ConfigRow],
                  comparison_html: Path | None) -> Path:
    from mnistlab.htmlreport import esc, page
    from mnistlab.htmlreport import table as html_table
    from mnistlab.runs import write_text_atomic

    rows = [[row.label, f"{row.completed}/{row.trials}", accuracy_cell(row.mean_accuracy, row.std_accuracy),
             "-" if row.mean_train_seconds is None else f"{row.mean_train_seconds:.1f}",
             "; ".join(row.retried) or "", "; ".join(row.errors) or ""] for row in table]
    trials = [[str(t["index"]), t["label"] or "(recipe)", str(t["seed"]), t["state"], str(t["attempts"]),
               "-" if t.get("test_accuracy") is None else f"{100 * t['test_accuracy']:.2f}%",
               "-" if t.get("train_seconds") is None else f"{t['train_seconds']:.1f}", t["run_dir"],
               t.get("error") or ""] for t in doc["trials"]]
    where = esc(comparison_html.relative_to(plan.out_dir)) if comparison_html else ""
    link = f'<p>Runs side by side: <a href="{where}">{where}</a></p>' if comparison_html else ""
    body = (f"<h1>Sweep of {esc(plan.model)}: {len(plan.trials)} trials</h1>"
            f'<p class="meta">seeds {esc(", ".join(map(str, plan.seeds)))}; engine Ray {esc(doc["engine"]["ray"])} '
            f'({esc(doc["engine"]["address"])}); {doc.get("wall_seconds", 0):.1f} s</p>'
            "<h2>Test accuracy over seeds (mean ± sample std), best first</h2>"
            + html_table(["configuration", "completed", "test accuracy", "train s (mean)", "retried", "failed"], rows)
            + link + "<h2>Trials</h2>"
            + html_table(["#", "configuration", "seed", "state", "attempts", "test accuracy", "train s", "run",
                          "error"], trials))
    return write_text_atomic(Path(plan.out_dir) / REPORT_HTML, page(f"mnistlab sweep {plan.model}", body))
