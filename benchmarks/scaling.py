"""How cost grows: training images/s of `fast` and the seed CNN against threads and batch size, and
evaluation images/s against batch size.

    python benchmarks/scaling.py [--models fast,cnn] [--threads 1,2] [--batches 64,128,256,512]
                                 [--images 8192] [--eval-batches 100,500,1000,2500,10000] [--repeats 3]

Training runs mnistlab's own loop (training._train_epoch: the recipe's optimizer, precision and layout) over
the first ``--images`` training images, after one warm-up pass; evaluation is the one scoring path
(inference.evaluate_model) over the 10,000 test images. Each figure is the median of ``--repeats`` passes,
the threads x batch grid interleaved so that a change in machine load does not fall on one column.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time

import torch

from _common import isolate_registry, machine, print_table, write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="fast,cnn")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--batches", default="64,128,256,512")
    parser.add_argument("--images", type=int, default=8192, help="training images per timed pass")
    parser.add_argument("--eval-batches", default="100,500,1000,2500,10000")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    isolate_registry()

    from mnistlab import training
    from mnistlab.callbacks import CallbackList
    from mnistlab.config import TrainConfig
    from mnistlab.data import load_dataset
    from mnistlab.inference import as_uint8_tensor, evaluate_model

    dataset = load_dataset("mnist")
    threads = [int(t) for t in args.threads.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    results: dict = {"machine": machine(), "images": args.images, "train": {}, "eval": {}}
    train_rows, eval_rows = [], []
    for name in args.models.split(","):
        loops = {}
        for batch in batches:
            config = TrainConfig.for_model(name, batch_size=batch, device="cpu")
            train_idx, val_idx = training._split(config, dataset)
            loop = training._setup(config, dataset, torch.device("cpu"), train_idx[:args.images], val_idx,
                                   CallbackList([]))
            # _setup keeps the whole split without a validation split: cut it to the timed images here.
            loop.x_train, loop.y_train = loop.x_train[:args.images], loop.y_train[:args.images]
            loops[batch] = loop
        times: dict[tuple[int, int], list[float]] = {key: [] for key in itertools.product(threads, batches)}
        for repeat in range(args.repeats + 1):  # the first pass of each cell warms up and is not counted
            for key in times:
                torch.set_num_threads(key[0])
                started = time.perf_counter()
                training._train_epoch(loops[key[1]], CallbackList([]))
                if repeat:
                    times[key].append(time.perf_counter() - started)
        precision = loops[batches[0]].precision
        results["train"][name] = {"precision": precision, "cells": [
            {"threads": t, "batch": b, "seconds": times[(t, b)],
             "images_per_second": args.images / statistics.median(times[(t, b)])} for t, b in times]}
        for batch in batches:
            rates = [args.images / statistics.median(times[(t, batch)]) for t in threads]
            train_rows.append([name, precision, str(batch), *(f"{rate:,.0f}" for rate in rates)])
        print(f"{name}: training done", flush=True)
        model = loops[batches[0]].model
        images = as_uint8_tensor(dataset.test.images, torch.device("cpu"))
        cells = []
        for batch in (int(b) for b in args.eval_batches.split(",")):
            for t in threads:
                torch.set_num_threads(t)
                evaluate_model(model, images, dataset.test.labels, batch_size=batch, device="cpu",
                               precision=precision)  # warm-up
                seconds = []
                for _ in range(args.repeats):
                    started = time.perf_counter()
                    evaluate_model(model, images, dataset.test.labels, batch_size=batch, device="cpu",
                                   precision=precision)
                    seconds.append(time.perf_counter() - started)
                rate = len(dataset.test) / statistics.median(seconds)
                cells.append({"threads": t, "batch": batch, "seconds": seconds, "images_per_second": rate})
            eval_rows.append([name, precision, str(batch),
                              *(f"{c['images_per_second']:,.0f}" for c in cells if c["batch"] == batch)])
        results["eval"][name] = {"precision": precision, "cells": cells}
        print(f"{name}: evaluation done", flush=True)
    info = results["machine"]
    print(f"\nmachine: {info['cpu']} x{info['cores']}, torch {info['torch']}, load {info.get('loadavg_at_start')}")
    print(f"\ntraining images/s ({args.images} images a pass, median of {args.repeats})")
    print_table(["model", "precision", "batch", *(f"{t} thread{'s' * (t > 1)}" for t in threads)], train_rows)
    print(f"\nevaluation images/s (10,000 test images, median of {args.repeats})")
    print_table(["model", "precision", "batch", *(f"{t} thread{'s' * (t > 1)}" for t in threads)], eval_rows)
    print(f"\nwrote {write_json('scaling', results)}")


if __name__ == "__main__":
    main()
