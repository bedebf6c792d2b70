"""Epoch time of data-parallel training (DDP, gloo, 1 thread per rank) against one process, on the full MNIST.

    python benchmarks/ddp_epoch.py [--models mlp,cnn] [--epochs 2]

Each configuration is one real ``mnistlab train`` command (``--nproc N`` for DDP, so torch's elastic launcher
starts the ranks); the figure is the epoch time the run records in history.json (training only, no start-up,
no test pass), the median of the epochs after the first (warm-up). Same global batch everywhere (the recipe's),
``--precision fp32``. Configurations:

- ``1 proc x 1 thread``: the baseline;
- ``1 proc x 2 threads``: the same two cores used by intra-op threads;
- ``DDP 1 x 1``: world size 1 (the cost of DDP's machinery alone);
- ``DDP 2 x 1``: world size 2, one thread per rank.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import ROOT, isolate_registry, machine, print_table, write_json

CONFIGS = {
    "1 proc x 1 thread": ["--threads", "1"],
    "1 proc x 2 threads": ["--threads", "2"],
    "DDP 1 x 1": ["--nproc", "1", "--threads", "1"],
    "DDP 2 x 1": ["--nproc", "2", "--threads", "1"],
}


def epoch_seconds(model: str, extra: list[str], *, epochs: int) -> tuple[list[float], float]:
    """The per-epoch seconds and test accuracy of one ``mnistlab train`` run."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
        command = [sys.executable, "-m", "mnistlab", "train", model, "--epochs", str(epochs), "--precision", "fp32",
                   "--device", "cpu", "--out", str(out), *extra]
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(command)} failed: {done.stderr[-3000:]}")
        history = json.loads((out / "history.json").read_text())
        metrics = json.loads((out / "metrics.json").read_text())
    return [row["seconds"] for row in history], metrics["test_accuracy"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="mlp,cnn")
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    isolate_registry()
    results: dict = {"machine": machine(), "epochs": args.epochs, "models": {}}
    rows = []
    for model in args.models.split(","):
        base = None
        for name, extra in CONFIGS.items():
            times, accuracy = epoch_seconds(model, extra, epochs=args.epochs)
            steady = statistics.median(times[1:] or times)
            base = base or steady
            results["models"].setdefault(model, {})[name] = {"epoch_seconds": times, "steady": steady,
                                                             "test_accuracy": accuracy}
            rows.append([model, name, f"{times[0]:.2f}", f"{steady:.2f}", f"{base / steady:.2f}x",
                         f"{accuracy:.4f}"])
    print_table(["model", "configuration", "epoch 1 s", "steady s", "speed-up", "test acc"], rows)
    print(f"wrote {write_json('ddp_epoch', results)}")


if __name__ == "__main__":
    main()
