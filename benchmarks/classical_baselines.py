"""Fit each classical baseline on the full MNIST training set, one at a time, and print a results table.

    .venv/bin/python benchmarks/classical_baselines.py [--models sgd,logreg,knn,svm,forest] [--threads N]
                                                       [--out runs/classical-bench]

Each fit goes through ``mnistlab.training.fit`` (the same path as ``mnistlab train MODEL``) with the model's
default options, so the run directories it leaves can be evaluated and compared like any other. Figures:
fit time and test-set prediction time from the run's metrics.json (``time.perf_counter`` around each part),
test error beside the classic published figure of the same method.
"""

from __future__ import annotations

import argparse
import os
import platform
from pathlib import Path

from mnistlab.config import CLASSICAL_NAMES, TrainConfig, published_figure
from mnistlab.data import load_dataset
from mnistlab.runs import default_run_dir
from mnistlab.training import fit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(CLASSICAL_NAMES))
    parser.add_argument("--threads", type=int, help="BLAS/OpenMP threads and scikit-learn jobs (default: all)")
    parser.add_argument("--out", help="folder for the run directories (default runs/classical-bench-TIMESTAMP)")
    args = parser.parse_args()
    out = Path(args.out) if args.out else default_run_dir("classical-bench")
    dataset = load_dataset("mnist")
    rows = []
    for name in args.models.split(","):
        run_dir = out / name
        result = fit(TrainConfig.for_model(name, threads=args.threads), run_dir=run_dir, dataset=dataset)
        m = result.metrics
        size = sum(f.stat().st_size for f in run_dir.iterdir() if f.is_file()) / 1e6
        figure = published_figure(name)
        published = f"{100 * figure.test_error:.2f}% ({figure.method})" if figure else "-"
        options = ", ".join(f"{k}={v}" for k, v in m["options"].items())
        rows.append(f"| {name} | {options} | {m['train_samples']:,} | {m['train_seconds']:.1f} | "
                    f"{m['eval_seconds']:.1f} | {m['test_accuracy']:.4f} | {100 * (1 - m['test_accuracy']):.2f}% | "
                    f"{published} | {size:.1f} |")
        print(rows[-1], flush=True)
    print(f"\nMachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; threads "
          f"{args.threads or 'all'}\n")
    print("| model | options | train images | fit s | predict 10k s | test acc | test error | published error | "
          "run MB |")
    print("|---|---|---:|---:|---:|---:|---:|---|---:|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
