"""Shared helpers for the benchmark scripts: machine description, timing statistics, JSON output.

Benchmarks compare mnistlab with a peer measured in the same process on the same machine and report
ratios, because absolute seconds on a shared 2-core VM drift between runs.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "benchmarks" / "results"
MNIST_DIR = ROOT / "src" / "mnistlab" / "datasets" / "mnist"


def isolate_registry() -> Path:
    """Point MNISTLAB_HOME at a throwaway folder (unless the caller set one) before any mnistlab command runs.

    The commands a benchmark times record their runs; those runs live in temporary folders, so recording
    them in the user's real registry would leave rows that point nowhere.
    """
    if "MNISTLAB_HOME" not in os.environ:
        os.environ["MNISTLAB_HOME"] = tempfile.mkdtemp(prefix="mnistlab-bench-home-")
    return Path(os.environ["MNISTLAB_HOME"])


def machine() -> dict[str, Any]:
    """CPU model, cores, library versions and threads: printed with every result."""
    import torch

    from mnistlab.runs import cpu_model

    info = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    with contextlib.suppress(OSError):
        info["loadavg_at_start"] = Path("/proc/loadavg").read_text().split()[:3]
    return info


def load_mnist_numpy() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The four MNIST arrays read directly with gzip + numpy, as a peer script would (no mnistlab code)."""

    def read(name: str, offset: int) -> np.ndarray:
        with gzip.open(MNIST_DIR / f"{name}.gz", "rb") as handle:
            return np.frombuffer(handle.read(), dtype=np.uint8, offset=offset)

    return (read("train-images-idx3-ubyte", 16).reshape(-1, 28, 28), read("train-labels-idx1-ubyte", 8),
            read("t10k-images-idx3-ubyte", 16).reshape(-1, 28, 28), read("t10k-labels-idx1-ubyte", 8))


def summary(values: list[float]) -> dict[str, float]:
    """Mean, min, median, max and standard deviation of a list of numbers."""
    return {
        "mean": statistics.fmean(values),
        "min": min(values),
        "median": statistics.median(values),
        "max": max(values),
        "stdev": statistics.stdev(values) if len(values) > 1 else 0.0,
        "n": len(values),
    }


def write_json(name: str, payload: dict[str, Any]) -> Path:
    """Write ``benchmarks/results/<name>.json`` and return its path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def run_timed(argv: list[str], *, env: dict[str, str] | None = None) -> tuple[float, subprocess.CompletedProcess]:
    """Wall seconds of one subprocess run (the whole command, interpreter start included)."""
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    return time.perf_counter() - start, done


def print_table(headers: list[str], rows: list[list[Any]]) -> None:
    """A plain fixed-width table on stdout."""
    cells = [[str(c) for c in row] for row in [headers, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for n, row in enumerate(cells):
        print("  ".join(cell.rjust(width) if i else cell.ljust(width) for i, (cell, width) in
                        enumerate(zip(row, widths, strict=True))))
        if n == 0:
            print("  ".join("-" * w for w in widths))


def validation_dataset() -> Any:
    """MNIST with ``train[:50000]`` as its training split and ``train[50000:]`` as its "test" split: what the
    recipe selections score on, so that no selection ever sees the real test set."""
    import dataclasses

    from mnistlab.data import Split, load_dataset

    dataset = load_dataset("mnist")
    fit_part, val_part = dataset.train.subset(slice(0, 50_000)), dataset.train.subset(slice(50_000, 60_000))
    return dataclasses.replace(dataset, splits={"train": Split(fit_part.images, fit_part.labels),
                                                "test": Split(val_part.images, val_part.labels)})


def score_candidates(model: str, table: dict[str, tuple[Any, dict[str, Any]]], chosen: list[str], *, seeds: int,
                     defaults: dict[str, Any] | None = None) -> dict[str, list[tuple[float, float]]]:
    """Train each candidate (its builder swapped in for ``model``'s, its recipe values over ``defaults``) on the
    validation split through mnistlab's own loop; (train seconds, validation accuracy) per seed. Candidates are
    interleaved within each seed, so drift in the machine's load hits them alike.

    Two recipe keys are the script's, not ``TrainConfig``'s: ``_train_images`` trains on only the first that
    many of the 50,000 training images (fewer images per run), and ``_tta`` scores with test-time augmentation
    (:data:`mnistlab.inference.TTA_SHIFTS`), adding what it costs over a plain scoring pass to the seconds, so
    a cheaper network rescued by TTA is charged for it."""
    from mnistlab import models
    from mnistlab.config import TrainConfig
    from mnistlab.training import fit

    validation = validation_dataset()
    original = models.BUILDERS[model]
    scores: dict[str, list[tuple[float, float]]] = {name: [] for name in chosen}
    try:
        for seed in range(seeds):
            for name in chosen:
                builder, overrides = table[name]
                models.BUILDERS[model] = builder
                settings = {**(defaults or {}), **overrides}
                count, tta = settings.pop("_train_images", None), bool(settings.pop("_tta", False))
                data = validation if count is None else fewer_training_images(validation, int(count))
                with tempfile.TemporaryDirectory() as tmp:
                    run = fit(TrainConfig.for_model(model, seed=seed, device="cpu", **settings),
                              run_dir=Path(tmp) / "r", dataset=data)
                    seconds, accuracy = run.train_seconds, run.test.accuracy
                    if tta:
                        extra, accuracy = tta_score(Path(tmp) / "r", data)
                        seconds += extra
                scores[name].append((seconds, accuracy))
                print(f"{name} seed {seed}: val {accuracy:.4f} in {seconds:.2f} s", flush=True)
    finally:
        models.BUILDERS[model] = original
    return scores


def fewer_training_images(dataset: Any, count: int) -> Any:
    """``dataset`` with only its first ``count`` training images (MNIST's training order is already mixed)."""
    import dataclasses

    from mnistlab.data import Split

    part = dataset.train.subset(slice(0, count))
    return dataclasses.replace(dataset, splits={**dataset.splits, "train": Split(part.images, part.labels)})


def tta_score(run_dir: Path, dataset: Any) -> tuple[float, float]:
    """(seconds TTA scoring costs beyond a plain pass, accuracy with TTA) of a run on ``dataset``'s test split;
    each pass timed as the median of 3."""
    import torch

    from mnistlab.inference import load_network, predict_logits

    net = load_network(run_dir, device="cpu")
    labels = torch.as_tensor(np.asarray(dataset.test.labels)).long()
    timings: dict[bool, list[float]] = {False: [], True: []}
    logits = None
    for _ in range(3):
        for tta in (False, True):
            start = time.perf_counter()
            out = predict_logits(net.model, dataset.test.images, device=net.device, precision=net.precision, tta=tta)
            timings[tta].append(time.perf_counter() - start)
            if tta:
                logits = out
    assert logits is not None
    accuracy = float((logits.argmax(1) == labels).float().mean())
    return statistics.median(timings[True]) - statistics.median(timings[False]), accuracy
