"""Reproduce the seed tutorial's table in one call: three networks and the SGD baseline, then a report.

The seed (a Keras tutorial) trained a softmax layer (batch 128), an MLP and a CNN (batch 200), each for 30
epochs with RMSprop, and scikit-learn's ``SGDClassifier(max_iter=200)`` on a 75/25 split of the training set.
Its published test accuracies are kept here to compare against.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from mnistlab import runs
from mnistlab.config import MODELS, TrainConfig
from mnistlab.errors import MnistlabError

ExperimentKind = Literal["network", "sgd"]


@dataclass(frozen=True)
class Experiment:
    """One line of the seed's table and how to rerun it (full and ``--quick``)."""

    name: str
    kind: ExperimentKind
    seed_accuracy: float
    epochs: int          # networks: epochs; sgd: max_iter
    batch_size: int | None
    quick_epochs: int


SEED_EXPERIMENTS: tuple[Experiment, ...] = (
    *(Experiment(name, "network", float(MODELS[name].seed_test_accuracy or 0.0), MODELS[name].recipe.epochs,
                 MODELS[name].recipe.batch_size, quick_epochs=1)
      for name in ("softmax", "mlp", "cnn")),
    Experiment("sgd", "sgd", 0.9111, epochs=200, batch_size=None, quick_epochs=5),
)


@dataclass(frozen=True)
class ExperimentResult:
    """One reproduced row: our figure beside the tutorial's, measured the way the tutorial measured it.

    ``accuracy`` is on ``evaluated_on``: the test set for the networks, the held-out quarter of the training
    set for the SGD baseline (the tutorial's own split); ``test_accuracy`` is always the official test set.
    """

    name: str
    params: int
    epochs: int
    batch_size: int | None
    accuracy: float
    seed_accuracy: float
    train_seconds: float
    run_dir: str
    test_accuracy: float
    evaluated_on: str = "test set"
    note: str = ""

    @property
    def difference_points(self) -> float:
        """Our accuracy minus the tutorial's, in percentage points."""
        return 100.0 * (self.accuracy - self.seed_accuracy)


@dataclass(frozen=True)
class ReproduceResult:
    """All rows plus where the report was written."""

    out_dir: Path
    report: Path
    rows: tuple[ExperimentResult, ...]
    quick: bool
    # Wall seconds of the whole call and its parts: data, each experiment (training + its test pass), the
    # evaluations and the report.
    timing: dict[str, float] = field(default_factory=dict)


def _run_network(exp: Experiment, *, out_dir: Path, quick: bool, seed: int, device: str, dataset: object,
                 observer: object) -> ExperimentResult:
    from mnistlab.training import fit

    config = TrainConfig.for_model(exp.name, epochs=exp.quick_epochs if quick else exp.epochs,
                                   batch_size=exp.batch_size, seed=seed, device=device)
    result = fit(config, run_dir=out_dir / exp.name, dataset=dataset, observer=observer)  # type: ignore[arg-type]
    return ExperimentResult(
        name=exp.name, params=int(result.metrics["params"]), epochs=config.epochs, batch_size=config.batch_size,
        accuracy=result.test.accuracy, seed_accuracy=exp.seed_accuracy,
        train_seconds=result.train_seconds, run_dir=str(result.run_dir), test_accuracy=result.test.accuracy,
    )


def _run_sgd(exp: Experiment, *, out_dir: Path, quick: bool, seed: int, dataset: object) -> ExperimentResult:
    """The seed's SGD baseline as a classical run: a 75/25 ``train_test_split`` held out as validation."""
    from mnistlab.training import fit

    max_iter = exp.quick_epochs if quick else exp.epochs
    config = TrainConfig.for_model("sgd", options={"max_iter": max_iter}, val_split=0.25, val_method="sklearn",
                                   seed=seed)
    result = fit(config, run_dir=out_dir / exp.name, dataset=dataset)  # type: ignore[arg-type]
    metrics = result.metrics
    split_accuracy = float(result.history[0].val_accuracy or 0.0)
    held_out = int(metrics["val_samples"])
    # The seed's figure is the held-out quarter of the training set, so that is the like-for-like number.
    return ExperimentResult(
        name="sgd", params=int(metrics["params"]), epochs=int(metrics["n_iter"]), batch_size=None,
        accuracy=split_accuracy, seed_accuracy=exp.seed_accuracy,
        train_seconds=result.train_seconds, run_dir=str(result.run_dir), test_accuracy=result.test.accuracy,
        evaluated_on="held-out 25% of train", note=f"75/25 split of train ({held_out:,} held out); official test set: "
             f"{result.test.accuracy:.4f}; {metrics['n_iter']} of max {max_iter} epochs",
    )


def reproduce(
    *,
    out_dir: str | Path,
    quick: bool = False,
    seed: int = 0,
    device: str = "auto",
    observer_for: Callable[[str], object] | None = None,
    on_result: Callable[[ExperimentResult], None] | None = None,
    only: tuple[str, ...] | None = None,
) -> ReproduceResult:
    """Run the seed's experiments into ``out_dir`` (one run directory each) and write ``report.md``.

    ``observer_for(name)`` supplies a training observer per network (progress display); ``on_result`` is
    called as each row completes; ``only`` restricts to some experiments (by name). A call that fails before
    any experiment finished leaves no folder behind.
    """
    from mnistlab.device import resolve_device

    started = time.perf_counter()
    resolve_device(device)  # refused before the folder exists
    out_dir = runs.prepare_run_dir(out_dir)
    try:
        return _reproduce_into(out_dir, quick=quick, seed=seed, device=device, observer_for=observer_for,
                               on_result=on_result, only=only, started=started)
    except BaseException:
        runs.discard_folder(out_dir, names=(runs.OWNER_FILE,))  # removed only if no experiment was kept
        raise


def _reproduce_into(out_dir: Path, *, quick: bool, seed: int, device: str,
                    observer_for: Callable[[str], object] | None, on_result: Callable[[ExperimentResult], None] | None,
                    only: tuple[str, ...] | None, started: float) -> ReproduceResult:
    """The body of :func:`reproduce` once its folder is claimed."""
    from mnistlab.data import load_dataset
    from mnistlab.report import write_reproduce_report

    dataset = load_dataset("mnist")
    timing = {"data": time.perf_counter() - started}
    rows: list[ExperimentResult] = []
    for exp in SEED_EXPERIMENTS:
        if only is not None and exp.name not in only:
            continue
        step = time.perf_counter()
        if exp.kind == "network":
            observer = observer_for(exp.name) if observer_for else None
            row = _run_network(exp, out_dir=out_dir, quick=quick, seed=seed, device=device, dataset=dataset,
                               observer=observer)
        else:
            row = _run_sgd(exp, out_dir=out_dir, quick=quick, seed=seed, dataset=dataset)
        rows.append(row)
        timing[exp.name] = time.perf_counter() - step
        if on_result:
            on_result(row)
    # Where each experiment fails: a full test-set evaluation per run (RUN/eval/test/, report.html included).
    from mnistlab.analysis import evaluate_report

    step = time.perf_counter()
    evaluations = [evaluate_report(row.run_dir, split="test", device=device, dataset=dataset).evaluation
                   for row in rows]
    timing["evaluations"] = time.perf_counter() - step
    timing["total"] = time.perf_counter() - started
    report = write_reproduce_report(out_dir=out_dir, rows=rows, quick=quick, total_seconds=timing["total"],
                                    evaluations=evaluations, timing=timing)
    timing["total"] = time.perf_counter() - started  # the report itself included
    runs.write_json_atomic(out_dir / "results.json", {
        "quick": quick, "seed": seed, "total_seconds": round(timing["total"], 3),
        "timing_seconds": {name: round(seconds, 3) for name, seconds in timing.items()},
        "rows": [{**asdict(row), "difference_points": row.difference_points} for row in rows],
        "environment": runs.environment(),
    })
    return ReproduceResult(out_dir=out_dir, report=report, rows=tuple(rows), quick=quick,
                           timing={name: round(seconds, 3) for name, seconds in timing.items()})


# ------------------------------------------------------------------------------------ over seeds, on Ray
@dataclass(frozen=True)
class SeedsRow:
    """One experiment over seeds: mean ± sample std of its figure beside the tutorial's single number.

    ``standard_errors`` is (mean - tutorial) / (std / sqrt(n)): how far the tutorial's number lies from our
    mean in units of the mean's standard error (None below two seeds, or when every seed agreed exactly).
    """

    name: str
    evaluated_on: str
    seeds: tuple[int, ...]
    accuracies: tuple[float, ...]
    mean: float | None
    std: float | None
    seed_accuracy: float
    standard_errors: float | None
    sweep_dir: str
    failed: tuple[str, ...] = ()

    @property
    def difference_points(self) -> float | None:
        """Our mean minus the tutorial's figure, in percentage points."""
        return None if self.mean is None else 100.0 * (self.mean - self.seed_accuracy)


@dataclass(frozen=True)
class SeedsResult:
    """``reproduce --seeds N``: one row per experiment and where its sweep lies."""

    out_dir: Path
    rows: tuple[SeedsRow, ...]
    quick: bool
    results: Path
    wall_seconds: float
    ray_start_seconds: float


def _seeds_settings(exp: Experiment, *, quick: bool, device: str) -> dict[str, object]:
    """The api.train keywords of one experiment, exactly as :func:`reproduce` trains it."""
    if exp.kind == "sgd":
        return {"options": {"max_iter": exp.quick_epochs if quick else exp.epochs}, "val_split": 0.25,
                "val_method": "sklearn"}
    return {"epochs": exp.quick_epochs if quick else exp.epochs, "batch_size": exp.batch_size, "device": device}


def seeds_row(exp: Experiment, trials: Sequence[Mapping[str, Any]], *, sweep_dir: str) -> SeedsRow:
    """Reduce one experiment's trials to its row (the SGD figure is its held-out quarter of train, as in the
    tutorial; the networks' is the test set)."""
    import math
    import statistics

    key = "val_accuracy" if exp.kind == "sgd" else "test_accuracy"
    done = [t for t in trials if t["state"] == "completed" and t.get(key) is not None]
    accuracies = tuple(float(t[key]) for t in done)
    mean = statistics.fmean(accuracies) if accuracies else None
    std = statistics.stdev(accuracies) if len(accuracies) > 1 else None
    z = None
    if mean is not None and std:
        z = (mean - exp.seed_accuracy) / (std / math.sqrt(len(accuracies)))
    return SeedsRow(name=exp.name, evaluated_on="held-out 25% of train" if exp.kind == "sgd" else "test set",
                    seeds=tuple(int(t["seed"]) for t in done), accuracies=accuracies, mean=mean, std=std,
                    seed_accuracy=exp.seed_accuracy, standard_errors=z, sweep_dir=sweep_dir,
                    failed=tuple(f"seed {t['seed']}: {t.get('error')}" for t in trials if t["state"] != "completed"))


def reproduce_seeds(
    *,
    out_dir: str | Path,
    seeds: Sequence[int],
    quick: bool = False,
    device: str = "auto",
    only: tuple[str, ...] | None = None,
    address: str | None = None,
    cpus_per_trial: float = 1.0,
    registry: str | None = None,
    on_row: Callable[[SeedsRow], None] | None = None,
) -> SeedsResult:
    """The tutorial's experiments, each over ``seeds``, through the sweep engine (:mod:`mnistlab.sweep`): one
    sweep folder per experiment under ``out_dir`` (each trial a normal run with its registry row), one Ray for
    all, and ``seeds.json`` with each figure as mean ± std beside the tutorial's number."""
    import logging

    from mnistlab.device import resolve_device
    from mnistlab.sweep import Resources, connect_ray, plan_sweep, require_ray, run_sweep

    started = time.perf_counter()
    resolve_device(device)
    resources = Resources(cpus_per_trial=cpus_per_trial)
    chosen = [exp for exp in SEED_EXPERIMENTS if only is None or exp.name in only]
    out = Path(out_dir).absolute()
    # Every plan is checked before Ray starts or a folder exists.
    plans = [plan_sweep(exp.name, seeds=seeds, grid={}, settings=_seeds_settings(exp, quick=quick, device=device),
                        resources=resources, out_dir=out / exp.name, registry=registry) for exp in chosen]
    ray = require_ray()
    if out.exists() and any(out.iterdir()):
        raise MnistlabError(f"`run_dir` {out}: already holds files; choose a new folder")
    out.mkdir(parents=True, exist_ok=True)
    logging.getLogger("ray").setLevel(logging.WARNING)
    owned = connect_ray(ray, address)
    ray_start = time.perf_counter() - started
    rows: list[SeedsRow] = []
    try:
        for exp, plan in zip(chosen, plans, strict=True):
            result = run_sweep(plan, compare=False)
            rows.append(seeds_row(exp, result.trials, sweep_dir=str(result.out_dir)))
            if on_row is not None:
                on_row(rows[-1])
    finally:
        if owned:
            ray.shutdown()
    wall = time.perf_counter() - started
    results = runs.write_json_atomic(out / "seeds.json", {
        "quick": quick, "seeds": list(seeds), "wall_seconds": round(wall, 3),
        "ray_start_seconds": round(ray_start, 3),
        "rows": [{**asdict(row), "difference_points": row.difference_points} for row in rows],
        "environment": runs.environment(),
    })
    return SeedsResult(out_dir=out, rows=tuple(rows), quick=quick, results=results, wall_seconds=wall,
                       ray_start_seconds=ray_start)
