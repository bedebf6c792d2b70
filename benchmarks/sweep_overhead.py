"""What a Ray sweep costs over running the same trials one after another in one process (issue 14).

    python benchmarks/sweep_overhead.py [--model mlp] [--epochs 2] [--seeds 4] [--parallel 2]

The same trials (MODEL on the bundled MNIST, one torch thread each, seeds 0..N-1) run three ways:

1. sequential: ``mnistlab.train`` in a loop in this process (the baseline);
2. sweep, one trial at a time: an embedded Ray with 1 CPU, so the only difference from 1. is Ray (task
   dispatch, worker processes importing torch, the sweep's bookkeeping); Ray's own start-up is timed apart;
3. sweep, ``--parallel`` trials at a time (Ray with that many CPUs): what a user of this machine gets.

The goal (issue 14): 2. costs at most 10% over 1., plus Ray's start-up, reported separately.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

from _common import isolate_registry, machine, print_table, write_json


def _sweep(model: str, epochs: int, seeds: int, cpus: int, out: Path) -> tuple[float, float, float]:
    """(Ray start-up s, sweep wall s without start-up, summed trial train s) on an embedded Ray of ``cpus``."""
    import ray

    from mnistlab.sweep import Resources, plan_sweep, run_sweep

    start = time.perf_counter()
    ray.init(address="local", num_cpus=cpus, include_dashboard=False, logging_level=logging.WARNING,
             log_to_driver=False)
    started = time.perf_counter() - start
    try:
        plan = plan_sweep(model, seeds=range(seeds), grid={}, settings={"epochs": epochs},
                          resources=Resources(cpus_per_trial=1), out_dir=out)
        begin = time.perf_counter()
        result = run_sweep(plan, compare=False)  # joins the Ray started above, leaves it running
        wall = time.perf_counter() - begin
    finally:
        ray.shutdown()
    if result.failed:
        raise SystemExit(f"{result.failed} trial(s) failed: see {out / 'sweep.json'}")
    return started, wall, sum(float(t["train_seconds"]) for t in result.trials)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--parallel", type=int, default=2, help="trials at a time in the third measurement")
    args = parser.parse_args()
    isolate_registry()
    import mnistlab

    info = machine()
    root = Path(tempfile.mkdtemp(prefix="mnistlab-sweep-bench-"))
    begin = time.perf_counter()
    sequential_train = 0.0
    for seed in range(args.seeds):
        run = mnistlab.train(args.model, epochs=args.epochs, seed=seed, threads=1, progress=False,
                             run_dir=root / f"sequential-{seed}")
        sequential_train += float(run.metrics["train_seconds"])
    sequential = time.perf_counter() - begin

    one_start, one_wall, one_train = _sweep(args.model, args.epochs, args.seeds, 1, root / "sweep-1")
    par_start, par_wall, par_train = _sweep(args.model, args.epochs, args.seeds, args.parallel,
                                            root / f"sweep-{args.parallel}")
    overhead = one_wall / sequential - 1
    rows = [
        ["sequential, one process", f"{sequential:.1f}", "-", f"{sequential_train:.1f}", "baseline"],
        ["sweep, 1 trial at a time", f"{one_wall:.1f}", f"{one_start:.1f}", f"{one_train:.1f}",
         f"{100 * overhead:+.1f}% (goal <= +10%)"],
        [f"sweep, {args.parallel} trials at a time", f"{par_wall:.1f}", f"{par_start:.1f}", f"{par_train:.1f}",
         f"{sequential / par_wall:.2f}x faster than sequential"],
    ]
    print(f"{args.seeds} trials of {args.model}, {args.epochs} epoch(s) each, 1 torch thread per trial, on "
          f"{info['cpu']} ({info['cores']} cores), load at start {info.get('loadavg_at_start')}")
    print_table(["how", "wall s (without Ray start-up)", "Ray start-up s", "sum of trials' train s", "vs sequential"],
                rows)
    write_json("sweep_overhead", {"machine": info, "model": args.model, "epochs": args.epochs, "seeds": args.seeds,
                                  "sequential_seconds": sequential, "sequential_train_seconds": sequential_train,
                                  "sweep_1_seconds": one_wall, "sweep_1_ray_start_seconds": one_start,
                                  "sweep_1_train_seconds": one_train, "overhead_fraction": overhead,
                                  "parallel": args.parallel, "sweep_parallel_seconds": par_wall,
                                  "sweep_parallel_ray_start_seconds": par_start,
                                  "sweep_parallel_train_seconds": par_train})


if __name__ == "__main__":
    main()
