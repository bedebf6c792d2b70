"""Cost of the full per-epoch checkpoint (#11): seconds and bytes per epoch for softmax, mlp and cnn.

    python benchmarks/checkpoint_cost.py [--epochs 3]

Each model trains on the real MNIST with its recipe for a few epochs; the checkpoint write
(``training._save_epoch``: weights, optimizer moments, RNG states, state.json, the manifest commit, pruning,
and the top-level copies) is timed inside the real loop and set against the epoch's own time.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from _common import isolate_registry, machine, print_table, write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--models", default="softmax,mlp,cnn")
    args = parser.parse_args()
    isolate_registry()
    from mnistlab import checkpoint, training
    from mnistlab.config import TrainConfig
    from mnistlab.data import load_dataset

    dataset = load_dataset("mnist")
    original = training._save_epoch
    saves: list[float] = []

    def timed(run_dir, loop, progress):  # type: ignore[no-untyped-def]
        start = time.perf_counter()
        original(run_dir, loop, progress)
        saves.append(time.perf_counter() - start)

    training._save_epoch = timed  # type: ignore[assignment]
    results, rows = {"machine": machine(), "models": {}}, []
    for name in args.models.split(","):
        saves.clear()
        out = Path(tempfile.mkdtemp(prefix="ckpt-bench-")) / name
        result = training.fit(TrainConfig.for_model(name, epochs=args.epochs, device="cpu"), run_dir=out,
                              dataset=dataset)
        manifest = checkpoint.read_manifest(out) or {}
        epoch_s = statistics.median(record.seconds for record in result.history)
        save_s = statistics.median(saves)
        top_bytes = sum((out / f).stat().st_size for f in ("model.safetensors", "history.json", "history.csv"))
        entry = {"epoch_seconds_median": epoch_s, "checkpoint_seconds_median": save_s,
                 "checkpoint_seconds_all": saves[:], "checkpoint_bytes": manifest.get("bytes"),
                 "top_level_copy_bytes": top_bytes, "share_of_epoch": save_s / epoch_s}
        results["models"][name] = entry
        rows.append([name, f"{epoch_s:.3f}", f"{save_s * 1000:.1f}", f"{manifest.get('bytes', 0):,}",
                     f"{top_bytes:,}", f"{100 * save_s / epoch_s:.2f}%"])
    print_table(["model", "epoch s", "checkpoint ms", "checkpoint bytes", "top-level copies bytes",
                 "share of epoch"], rows)
    write_json("checkpoint_cost", results)


if __name__ == "__main__":
    main()
