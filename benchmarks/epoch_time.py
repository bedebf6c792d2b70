"""Seconds per epoch of the seed's three models: mnistlab's loop against a plain eager PyTorch loop.

    python benchmarks/epoch_time.py [--models softmax,mlp,cnn] [--epochs 3]

Both sides train the same architecture with the same recipe (Keras RMSprop, the seed's batch sizes) in the
same process; the first epoch is reported separately (warm-up) and the rest as a median.

    python benchmarks/epoch_time.py --fastpath [--models softmax,mlp] [--epochs 5]

times the dense models' hand-written epoch (mnistlab.fastpath, what `fit` runs now) against the autograd epoch
it replaced (training._train_epoch_autograd, kept as its oracle), each on its own model from the same seed with
the model's recipe (threads, precision), epochs interleaved so that both see the same machine load.
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
    parser.add_argument("--fastpath", action="store_true",
                        help="time the dense models' fast path against the autograd epoch instead")
    args = parser.parse_args()
    isolate_registry()
    if args.fastpath:
        compare_fastpath(args.models if args.models != "softmax,mlp,cnn" else "softmax,mlp", args.epochs)
        return

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


def _products_seconds(model: torch.nn.Module, *, batch: int, steps: int, bf16: bool) -> float:
    """An epoch's matrix products alone (median of 3): every Linear layer's forward (with its bias), weight
    gradient and, above the first layer, input gradient, at full batches in the recipe's precision, as the
    fast path runs them (the softmax layer's forward as its K x B product). What is left of the fast path's
    epoch is everything else; the autograd epoch runs the same products (the softmax layer's forward as the
    slower B x K one)."""
    import time

    dtype = torch.bfloat16 if bf16 else torch.float32
    layers = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    shapes = [(layer.weight.detach().to(dtype), layer.bias.detach().to(dtype)) for layer in layers]
    inputs = [torch.rand(batch, layer.in_features).to(dtype) for layer in layers]
    grads = [torch.rand(batch, layer.out_features).to(dtype) for layer in layers]
    runs = []
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(steps):
            for i, (weight, bias) in enumerate(shapes):
                if len(shapes) == 1 and not bf16:  # fastpath's softmax layer: W x^T, then the bias
                    torch.add(torch.mm(weight, inputs[i].t()), bias.unsqueeze(1))
                else:
                    torch.addmm(bias, inputs[i], weight.t())
                torch.mm(grads[i].t(), inputs[i])
                if i:
                    torch.mm(grads[i], weight)
        runs.append(time.perf_counter() - started)
    return statistics.median(runs)


def compare_fastpath(models: str, epochs: int) -> None:
    """Seconds per epoch: the autograd epoch ("today") against mnistlab.fastpath ("new"), interleaved."""
    import time

    from mnistlab import training
    from mnistlab.callbacks import CallbackList
    from mnistlab.config import TrainConfig
    from mnistlab.data import load_dataset

    dataset = load_dataset("mnist")
    results = {"machine": machine(), "epochs": epochs, "models": {}}
    rows = []
    for name in models.split(","):
        config = TrainConfig.for_model(name, device="cpu")
        torch.set_num_threads(config.threads or training.DEFAULT_THREADS)
        train_idx, val_idx = training._split(config, dataset)
        loops = {side: training._setup(config, dataset, torch.device("cpu"), train_idx, val_idx, CallbackList([]))
                 for side in ("autograd", "fastpath")}
        epoch = {"autograd": training._train_epoch_autograd, "fastpath": training._train_epoch}
        times: dict[str, list[float]] = {"autograd": [], "fastpath": []}
        figures: dict[str, list[tuple[float, float]]] = {"autograd": [], "fastpath": []}
        for _ in range(epochs):
            for side in ("autograd", "fastpath"):
                started = time.perf_counter()
                figures[side].append(epoch[side](loops[side], CallbackList([])))
                times[side].append(time.perf_counter() - started)
        med = {side: statistics.median(values[1:] or values) for side, values in times.items()}
        floor = _products_seconds(loops["fastpath"].model, batch=config.batch_size, steps=loops["fastpath"].steps,
                                  bf16=loops["fastpath"].precision == "bf16")
        drift = max(abs(a - b).max().item() for a, b in zip(loops["autograd"].model.parameters(),
                                                            loops["fastpath"].model.parameters(), strict=True))
        results["models"][name] = {"epoch_seconds": times, "loss_accuracy": figures, "threads": config.threads,
                                   "precision": loops["fastpath"].precision,
                                   "speedup": med["autograd"] / med["fastpath"], "max_weight_difference": drift,
                                   "products_alone_seconds": floor}
        rows.append([name, loops["fastpath"].precision, str(config.threads or training.DEFAULT_THREADS),
                     f"{med['autograd']:.3f}", f"{med['fastpath']:.3f}", f"{med['autograd'] / med['fastpath']:.2f}x",
                     f"{floor:.3f}",
                     f"{figures['autograd'][-1][1]:.4f} / {figures['fastpath'][-1][1]:.4f}"])
        print(f"{name}: done", flush=True)
    print(f"\nseconds per epoch (median of epochs 2-{epochs}), machine: {results['machine']['cpu']} "
          f"x{results['machine']['cores']}, load {results['machine'].get('loadavg_at_start')}")
    print_table(["model", "precision", "threads", "autograd (today)", "fastpath (new)", "speed-up",
                 "products alone", "train acc autograd / fast"], rows)
    print(f"\nwrote {write_json('epoch_time_fastpath', results)}")


if __name__ == "__main__":
    main()
