"""Time to 99%: mnistlab's ``fast`` recipe over several seeds, beside the best-known public one-epoch recipe.

    python benchmarks/time_to_accuracy.py [--seeds 5] [--peer-seeds 3] [--precision auto] [--no-previous]

Training seconds are measured in-process with the data already loaded (the training loop only). The whole
``mnistlab train fast`` command (interpreter start, imports, data verification, training, test pass, run
files) is timed separately as a subprocess.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch

from _common import isolate_registry, load_mnist_numpy, machine, print_table, run_timed, summary, write_json
from peers import public_one_epoch_model, to_float, train_peer

# `fast` as it was until stop 25: the recipe's values that changed since.
PREVIOUS_FAST = {"lr": 1.6e-2, "epoch_fraction": 1.0, "backprop_fraction": 1.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--peer-seeds", type=int, default=3, help="0 skips the peers")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--commands", type=int, default=3, help="whole-command runs to time (0 skips)")
    parser.add_argument("--no-previous", dest="previous", action="store_false",
                        help="skip the recipe before stop 25 (trained seed by seed beside today's)")
    args = parser.parse_args()
    isolate_registry()

    from mnistlab.config import TrainConfig
    from mnistlab.data import load_dataset
    from mnistlab.training import fit

    dataset = load_dataset("mnist")
    results: dict = {"machine": machine(), "fast": {}, "peers": {}}
    # The recipe before stop 25 (a whole epoch, every image back-propagated, max lr 1.6e-2), interleaved
    # seed by seed with today's so both see the same machine.
    recipes = {"fast": {}}
    if args.previous:
        recipes["fast before stop 25"] = PREVIOUS_FAST
    seconds: dict[str, list[float]] = {name: [] for name in recipes}
    accuracies: dict[str, list[float]] = {name: [] for name in recipes}
    precisions: dict[str, str] = {}
    for seed in range(args.seeds):
        for name, overrides in recipes.items():
            with tempfile.TemporaryDirectory() as tmp:
                run = fit(TrainConfig.for_model("fast", seed=seed, device="cpu", precision=args.precision,
                                                **overrides), run_dir=Path(tmp) / "r", dataset=dataset)
            seconds[name].append(run.train_seconds)
            precisions[name] = run.metrics["precision"]
            accuracies[name].append(run.test.accuracy)
            print(f"{name} seed {seed}: {run.test.accuracy:.4f} in {run.train_seconds:.2f} s", flush=True)
    times, accs = seconds["fast"], accuracies["fast"]
    results["fast"] = {"train_seconds": summary(times), "test_accuracy": summary(accs), "per_seed": accs,
                       "precision": precisions["fast"]}
    rows = [["mnistlab fast", f"{summary(accs)['mean']:.4f}", f"{min(accs):.4f}",
             f"{summary(times)['median']:.2f}", "1.00x"]]
    if args.previous:
        before, before_accs = seconds["fast before stop 25"], accuracies["fast before stop 25"]
        results["fast_before_stop25"] = {"train_seconds": summary(before), "test_accuracy": summary(before_accs),
                                         "per_seed": before_accs, "overrides": PREVIOUS_FAST}
        ratio = summary(before)["median"] / summary(times)["median"]
        rows.append(["mnistlab fast before stop 25", f"{summary(before_accs)['mean']:.4f}",
                     f"{min(before_accs):.4f}", f"{summary(before)['median']:.2f}", f"{ratio:.2f}x slower"])

    if args.peer_seeds:
        x, y, xt, yt = load_mnist_numpy()
        data = (to_float(x), torch.from_numpy(y.astype("int64")), to_float(xt), torch.from_numpy(yt.astype("int64")))
        for label, fast_path in (("public recipe, eager fp32", False), ("public recipe, bf16 + channels_last", True)):
            peer_times, peer_accs = [], []
            for seed in range(args.peer_seeds):
                torch.manual_seed(seed)
                model = public_one_epoch_model()
                optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

                def onecycle(opt, total):
                    return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=total)

                peer = train_peer(model, optimizer, *data, epochs=1, batch_size=256, seed=seed,
                                  scheduler_factory=onecycle, bf16=fast_path, channels_last=fast_path)
                peer_times.append(peer.epoch_seconds[0])
                peer_accs.append(peer.test_accuracy)
                print(f"{label} seed {seed}: {peer.test_accuracy:.4f} in {peer.epoch_seconds[0]:.2f} s", flush=True)
            results["peers"][label] = {"train_seconds": summary(peer_times), "test_accuracy": summary(peer_accs)}
            ratio = summary(peer_times)["median"] / summary(times)["median"]
            rows.append([label, f"{summary(peer_accs)['mean']:.4f}", f"{min(peer_accs):.4f}",
                         f"{summary(peer_times)['median']:.2f}", f"{ratio:.2f}x slower"])

    if args.commands:
        command_times = []
        for n in range(args.commands):
            with tempfile.TemporaryDirectory() as tmp:
                wall, done = run_timed([sys.executable, "-m", "mnistlab", "train", "fast", "--seed", str(n),
                                        "--out", os.path.join(tmp, "r")])
            if done.returncode != 0:
                raise SystemExit(done.stderr)
            command_times.append(wall)
        results["whole_command_seconds"] = summary(command_times)
        print(f"whole `mnistlab train fast` command: median {summary(command_times)['median']:.2f} s "
              f"(min {min(command_times):.2f} s) over {len(command_times)} runs")

    print(f"\ntime to accuracy, machine: {results['machine']['cpu']} x{results['machine']['cores']}, "
          f"torch {results['machine']['torch']}, mnistlab precision {results['fast']['precision']}")
    print_table(["recipe", "mean acc", "min acc", "median train s", "vs fast"], rows)
    print(f"\nwrote {write_json('time_to_accuracy', results)}")


if __name__ == "__main__":
    main()
