"""Seconds per epoch of the seed's three models: mnistlab's loop against a plain eager PyTorch loop.

    python benchmarks/epoch_time.py [--models softmax,mlp,cnn] [--epochs 3]

Both sides train the same architecture with the same recipe (Keras RMSprop, the seed's batch sizes) in the
same process; the first epoch is reported separately (warm-up) and the rest as a median.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
from pathlib import Path

import torch

from _common import ROOT, isolate_registry, load_mnist_numpy, machine, print_table, write_json
from peers import keras_rmsprop, seed_model, to_float, train_peer

BATCH = {"softmax": 128, "mlp": 200, "cnn": 200}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="softmax,mlp,cnn")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--no-peer", action="store_true", help="skip the plain-PyTorch peer")
    parser.add_argument("--keras-python", help="a Python with TensorFlow/Keras: also time the seed's Keras models")
    args = parser.parse_args()
    isolate_registry()

    from mnistlab.config import TrainConfig
    from mnistlab.data import load_dataset
    from mnistlab.training import fit

    dataset = load_dataset("mnist")
    x, y, xt, yt = load_mnist_numpy()
    x_f, xt_f = to_float(x), to_float(xt)
    y_t, yt_t = torch.from_numpy(y.astype("int64")), torch.from_numpy(yt.astype("int64"))
    rows, results = [], {"machine": machine(), "epochs": args.epochs, "models": {}}
    keras = None
    if args.keras_python:
        done = subprocess.run([args.keras_python, str(ROOT / "benchmarks" / "keras_seed.py"), "--only", args.models,
                               "--epochs", str(args.epochs)], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"keras run failed: {done.stderr[-3000:]}")
        keras = json.loads(done.stdout.strip().splitlines()[-1])
        results["keras"] = keras
    for name in args.models.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            ours = fit(TrainConfig.for_model(name, epochs=args.epochs, device="cpu"), run_dir=Path(tmp) / "r",
                       dataset=dataset)
        ours_times = [h.seconds for h in ours.history]
        entry = {"mnistlab": {"epoch_seconds": ours_times, "test_accuracy": ours.test.accuracy,
                              "precision": ours.metrics["precision"]}}
        ours_median = statistics.median(ours_times[1:] or ours_times)
        row = [name, f"{ours_times[0]:.2f}", f"{ours_median:.2f}", f"{ours.test.accuracy:.4f}"]
        if not args.no_peer:
            torch.manual_seed(0)
            model = seed_model(name)
            peer = train_peer(model, keras_rmsprop(model.parameters()), x_f, y_t, xt_f, yt_t,
                              epochs=args.epochs, batch_size=BATCH[name], seed=0)
            peer_median = statistics.median(peer.epoch_seconds[1:] or peer.epoch_seconds)
            entry["plain_pytorch"] = {"epoch_seconds": peer.epoch_seconds, "test_accuracy": peer.test_accuracy}
            entry["speedup"] = peer_median / ours_median
            row += [f"{peer_median:.2f}", f"{peer.test_accuracy:.4f}", f"{peer_median / ours_median:.2f}x"]
        if keras:
            keras_times = keras[name]["epoch_seconds"]
            keras_median = statistics.median(keras_times[1:] or keras_times)
            entry["keras_speedup"] = keras_median / ours_median
            row += [f"{keras_median:.2f}", f"{keras[name]['test_accuracy']:.4f}", f"{keras_median / ours_median:.2f}x"]
        results["models"][name] = entry
        rows.append(row)
        print(f"{name}: done", flush=True)
    print(f"\nseconds per epoch, {args.epochs} epochs, machine: {results['machine']['cpu']} "
          f"x{results['machine']['cores']}, torch {results['machine']['torch']}")
    headers = ["model", "mnistlab 1st", "mnistlab median", "mnistlab acc"]
    if not args.no_peer:
        headers += ["plain PyTorch median", "plain acc", "speed-up"]
    if keras:
        headers += ["Keras median", "Keras acc", "vs Keras"]
    print_table(headers, rows)
    print(f"\nwrote {write_json('epoch_time', results)}")


if __name__ == "__main__":
    main()
