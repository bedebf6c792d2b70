"""Does augmentation raise accuracy under corruptions? The MNIST-C-style report per augmentation level (#13).

    python benchmarks/robustness.py --train fast:none fast:light fast:robust cnn:none cnn:light cnn:robust \\
        --epochs 3 --seeds 0 1 [--threads N]

For every ``MODEL:AUGMENT`` and seed, two runs with the model's fixed recipe (``--epochs`` applies to the
tutorial's cnn; ``fast`` and ``best`` keep theirs):

1. on the validation split (``train[:50000]`` -> ``train[50000:]``): the clean validation accuracy, the one
   figure a choice of augmentation may look at (robust's ranges were fixed before this was run; this checks
   that clean accuracy does not suffer);
2. on the whole training split, scored on the test split clean and under every corruption with
   ``Run.evaluate_corruptions`` (what ``mnistlab evaluate --corruptions`` runs).

The corruption figures never feed a choice: they are what the levels are reported with. Writes
benchmarks/results/robustness.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import isolate_registry, machine, print_table, validation_dataset, write_json


def validation_accuracy(model: str, augment: str, *, epochs: int | None, seed: int, threads: int | None,
                        dataset: Any) -> float:
    """Clean accuracy on ``train[50000:]`` of a run trained on ``train[:50000]``."""
    from mnistlab.config import TrainConfig
    from mnistlab.training import fit

    settings: dict[str, Any] = {"augment": augment, "seed": seed, "device": "cpu"}
    if epochs is not None and model not in ("fast", "best"):
        settings["epochs"] = epochs
    if threads is not None:
        settings["threads"] = threads
    with tempfile.TemporaryDirectory() as tmp:
        run = fit(TrainConfig.for_model(model, **settings), run_dir=Path(tmp) / "r", dataset=dataset)
    return run.test.accuracy


def test_report(model: str, augment: str, *, epochs: int | None, seed: int, threads: int | None,
                folder: Path) -> dict[str, Any]:
    """Train on the whole training split, then the robustness report on the test split."""
    import mnistlab

    out = folder / f"{model}-{augment}-seed{seed}"
    mnistlab.train(model, epochs=epochs if model not in ("fast", "best") else None, augment=augment,
                   threads=threads, seed=seed, device="cpu", run_dir=out, progress="none")
    report = mnistlab.load(out).evaluate_corruptions(device="cpu")
    return {"clean": report.clean_accuracy, "mean": report.mean_accuracy,
            "corruptions": {s.name: s.accuracy for s in report.scores}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", nargs="+", required=True, metavar="MODEL:AUGMENT")
    parser.add_argument("--epochs", type=int, help="epochs for the tutorial's cnn (default: its recipe's 30)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--threads", type=int)
    args = parser.parse_args()
    isolate_registry()
    specs = [(m, a or "none") for m, _, a in (s.partition(":") for s in args.train)]
    dataset = validation_dataset()

    results: dict[str, Any] = {"machine": machine(), "command": " ".join(sys.argv), "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:            # levels interleaved within a seed
            for model, augment in specs:
                started = time.perf_counter()
                val = validation_accuracy(model, augment, epochs=args.epochs, seed=seed, threads=args.threads,
                                          dataset=dataset)
                test = test_report(model, augment, epochs=args.epochs, seed=seed, threads=args.threads,
                                   folder=Path(tmp))
                key = f"{model}:{augment}"
                results["runs"].setdefault(key, []).append({"seed": seed, "val": val, **test})
                print(f"{key} seed {seed}: val {val:.4f} test {test['clean']:.4f} corrupted mean "
                      f"{test['mean']:.4f} ({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)

    names = list(next(iter(results["runs"].values()))[0]["corruptions"])
    headers = ["corruption", *results["runs"]]

    def mean(key: str, pick: Any) -> str:
        return f"{100 * statistics.fmean(pick(r) for r in results['runs'][key]):.2f}"

    rows = [["validation (clean)", *(mean(k, lambda r: r["val"]) for k in results["runs"])],
            ["test (clean)", *(mean(k, lambda r: r["clean"]) for k in results["runs"])]]
    rows += [[n, *(mean(k, lambda r, n=n: r["corruptions"][n]) for k in results["runs"])] for n in names]
    rows.append(["mean (corrupted)", *(mean(k, lambda r: r["mean"]) for k in results["runs"])])
    print(f"\naccuracy %, mean over seeds {args.seeds}")
    print_table(headers, rows)
    print(f"\nwrote {write_json('robustness', results)}")


if __name__ == "__main__":
    main()
