"""Does bf16 change the answers? fp32 against bf16 autocast over several seeds, same recipe, same machine.

    python benchmarks/precision.py [--fast-seeds 5] [--cnn-seeds 3] [--cnn-epochs 5]

Reports test accuracy (mean, min) and training seconds for each precision. bf16 autocast keeps fp32 master
weights and optimizer state; only the forward/backward arithmetic of convolutions and matrix products
drops to bf16.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _common import isolate_registry, machine, print_table, summary, write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fast-seeds", type=int, default=5)
    parser.add_argument("--cnn-seeds", type=int, default=3)
    parser.add_argument("--cnn-epochs", type=int, default=5)
    args = parser.parse_args()
    isolate_registry()

    from mnistlab.config import TrainConfig
    from mnistlab.data import load_dataset
    from mnistlab.training import fit

    dataset = load_dataset("mnist")
    plans = [("fast", {}, args.fast_seeds), ("cnn", {"epochs": args.cnn_epochs}, args.cnn_seeds)]
    results: dict = {"machine": machine(), "runs": {}}
    rows = []
    for model, overrides, seeds in plans:
        for precision in ("fp32", "bf16"):
            accuracies, seconds = [], []
            for seed in range(seeds):
                with tempfile.TemporaryDirectory() as tmp:
                    run = fit(TrainConfig.for_model(model, seed=seed, device="cpu", precision=precision, **overrides),
                              run_dir=Path(tmp) / "r", dataset=dataset)
                accuracies.append(run.test.accuracy)
                seconds.append(run.train_seconds)
                print(f"{model} {precision} seed {seed}: {run.test.accuracy:.4f} in {run.train_seconds:.1f} s",
                      flush=True)
            key = f"{model} {precision}"
            results["runs"][key] = {"test_accuracy": summary(accuracies), "train_seconds": summary(seconds),
                                    "per_seed": accuracies, **overrides}
            rows.append([key, str(seeds), f"{summary(accuracies)['mean']:.4f}", f"{min(accuracies):.4f}",
                         f"{summary(seconds)['median']:.1f}"])
    print(f"\nfp32 vs bf16, machine: {results['machine']['cpu']} x{results['machine']['cores']}, "
          f"cnn for {args.cnn_epochs} epochs")
    print_table(["recipe", "seeds", "mean acc", "min acc", "median train s"], rows)
    print(f"\nwrote {write_json('precision', results)}")


if __name__ == "__main__":
    main()
