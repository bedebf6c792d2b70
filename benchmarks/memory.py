"""Peak resident memory (RSS) of training the seed's CNN: mnistlab against plain PyTorch (and Keras).

    python benchmarks/memory.py [--epochs 1] [--keras-python /path/to/python-with-tensorflow]

Each side runs in its own fresh process; the peak RSS is the child's ``ru_maxrss`` (Linux: KiB).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import ROOT, isolate_registry, machine, print_table, write_json

PEER_SCRIPT = """
import sys; sys.path.insert(0, {bench!r})
import torch
from _common import load_mnist_numpy
from peers import keras_rmsprop, seed_model, to_float, train_peer
x, y, xt, yt = load_mnist_numpy()
model = seed_model("cnn")
train_peer(model, keras_rmsprop(model.parameters()), to_float(x), torch.from_numpy(y.astype("int64")),
           to_float(xt), torch.from_numpy(yt.astype("int64")), epochs={epochs}, batch_size=200, seed=0)
"""


def peak_rss_mib(argv: list[str]) -> float:
    """Run ``argv`` as the only child of a fresh helper process and return its peak RSS in MiB."""
    probe = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)")
    done = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{argv[:3]} failed: {done.stderr[-2000:]}")
    return int(done.stdout.strip().splitlines()[-1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--keras-python", help="a Python with TensorFlow/Keras installed, to measure the seed's code")
    args = parser.parse_args()
    isolate_registry()
    bench = str(ROOT / "benchmarks")
    results = {"machine": machine(), "epochs": args.epochs, "peak_rss_mib": {}}
    with tempfile.TemporaryDirectory() as tmp:
        runs = {
            "mnistlab train cnn": [sys.executable, "-m", "mnistlab", "train", "cnn", "--epochs", str(args.epochs),
                                   "--out", os.path.join(tmp, "r")],
            "plain PyTorch (same CNN)": [sys.executable, "-c", PEER_SCRIPT.format(bench=bench, epochs=args.epochs)],
        }
        if args.keras_python:
            runs["Keras (the seed's code)"] = [args.keras_python, str(Path(bench) / "keras_seed.py"),
                                               "--only", "cnn", "--epochs", str(args.epochs)]
        for label, argv in runs.items():
            results["peak_rss_mib"][label] = peak_rss_mib(argv)
            print(f"{label}: {results['peak_rss_mib'][label]:.0f} MiB", flush=True)
    print(f"\npeak RSS, CNN for {args.epochs} epoch(s), machine: {results['machine']['cpu']}")
    print_table(["process", "peak RSS MiB"], [[k, f"{v:.0f}"] for k, v in results["peak_rss_mib"].items()])
    print(f"\nwrote {write_json('memory', results)}")


if __name__ == "__main__":
    main()
