"""The seed's table, full recipe: ``mnistlab reproduce`` timed, with the seed's own Keras code beside it.

    python benchmarks/reproduce_time.py [--keras-python /path/to/python-with-tensorflow] [--quick]

Training seconds are what each side spends fitting (mnistlab: sum of epoch times; Keras: ``model.fit``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import ROOT, isolate_registry, machine, print_table, run_timed, write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keras-python", help="a Python with TensorFlow/Keras installed")
    parser.add_argument("--quick", action="store_true", help="mnistlab reproduce --quick (and 1 Keras epoch)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    isolate_registry()
    results: dict = {"machine": machine(), "quick": args.quick}
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "repro")
        argv = [sys.executable, "-m", "mnistlab", "reproduce", "--out", out, "--seed", str(args.seed)]
        wall, done = run_timed(argv + (["--quick"] if args.quick else []))
        if done.returncode != 0:
            raise SystemExit(done.stderr)
        ours = json.loads(Path(out, "results.json").read_text())
    results["mnistlab"] = {"wall_seconds": wall, "rows": ours["rows"]}
    keras = None
    if args.keras_python:
        done = subprocess.run([args.keras_python, str(ROOT / "benchmarks" / "keras_seed.py"),
                               "--epochs", "1" if args.quick else "30"], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"keras run failed: {done.stderr[-3000:]}")
        keras = json.loads(done.stdout.strip().splitlines()[-1])
        results["keras"] = keras
    rows = []
    total_ours = total_keras = 0.0
    for row in ours["rows"]:
        name = row["name"]
        total_ours += row["train_seconds"]
        line = [name, f"{row['accuracy']:.4f}", f"{row['seed_accuracy']:.4f}",
                f"{row['difference_points']:+.2f}", f"{row['train_seconds']:.1f}"]
        if keras and name in keras:
            total_keras += keras[name]["train_seconds"]
            line += [f"{keras[name]['test_accuracy']:.4f}", f"{keras[name]['train_seconds']:.1f}",
                     f"{keras[name]['train_seconds'] / row['train_seconds']:.2f}x"]
        rows.append(line)
    total = ["total", "", "", "", f"{total_ours:.1f}"]
    if keras:
        total += ["", f"{total_keras:.1f}", f"{total_keras / total_ours:.2f}x"]
    rows.append(total)
    headers = ["experiment", "mnistlab acc", "seed acc", "diff pt", "mnistlab train s"]
    if keras:
        headers += ["keras acc", "keras train s", "speed-up"]
    print(f"reproduce{' --quick' if args.quick else ''}, machine: {results['machine']['cpu']} "
          f"x{results['machine']['cores']}; whole command {wall:.1f} s")
    print_table(headers, rows)
    results["total_train_seconds"] = {"mnistlab": total_ours, "keras": total_keras or None}
    print(f"\nwrote {write_json('reproduce_quick' if args.quick else 'reproduce', results)}")


if __name__ == "__main__":
    main()
